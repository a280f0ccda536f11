"""SAM-3D-Body's fused eager backbone kernels (``estimate_bodies(fused_backbone=True)``): bit-identical blocks.

The kernels run in Triton's CPU interpreter (a subprocess: the mode is read at import); bf16 rounding is the
kernels' own bit arithmetic, so the interpreter rounds as the GPU does. The CUDA test compares features under
bf16 autocast at the real block width bit for bit.
"""

from __future__ import annotations

import logging

import pytest
import torch

from body4d_core.sam3d_body import estimate_bodies, fused_vit, tiny_config
from body4d_core.sam3d_body.vit import Block
from body4d_core.testing.body import random_model

from .triton_interpreter import run_interpreted

KERNELS_CHECK = r"""
import torch
from body4d_core.sam3d_body import fused_triton as ft
from body4d_core.sam3d_body.vit import apply_rope

torch.manual_seed(0)
for dt in (torch.float32, torch.bfloat16, torch.float16):
    for b, n, p, heads, d in ((2, 21, 16, 2, 16), (3, 9, 9, 4, 8), (1, 7, 2, 1, 64)):  # prefix tokens or none
        qkv = (torch.randn(b, n, 3 * heads * d) * 3).to(dt)
        sin, cos = (torch.randn(p, d).to(dt) for _ in range(2))
        view = qkv.view(b, n, 3, heads, d).permute(2, 0, 3, 1, 4)
        for got, src in zip(ft.rope_qk(qkv, sin, cos, heads), view[:2]):
            want = apply_rope(src, sin, cos)
            assert got.dtype == want.dtype and got.shape == want.shape and got.stride() == want.stride()
            assert torch.equal(got, want), (dt, b, n, p, float((got.float() - want.float()).abs().max()))
    for xd, ad, gd in ((torch.float32, dt, torch.float32), (dt, dt, torch.float32), (dt, dt, dt)):
        x, a = torch.randn(2, 9, 40).to(xd), (torch.randn(2, 9, 40) * 5).to(ad)
        gamma = torch.randn(40).to(gd)
        want = x + a * gamma
        got = ft.scale_add(x, a, gamma)
        assert got.dtype == want.dtype and torch.equal(got, want), (xd, ad, gd)
print("ok")
"""

BACKBONE_CHECK = r"""
import torch
from body4d_core.sam3d_body import tiny_config
from body4d_core.sam3d_body.fused_vit import FusedBlocks, fused_block
from body4d_core.testing.body import random_model

model = random_model(tiny_config(), seed=0)
enc = model.backbone.encoder
x = torch.rand(3, 3, 64, 64)
for dtype, amp in ((torch.float32, False), (torch.bfloat16, True), (torch.bfloat16, False)):
    enc.to(dtype if not amp else torch.float32)
    inp = x.to(dtype if not amp else torch.float32)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        want = enc(inp)
        with FusedBlocks(enc, True, dtype) as fused:
            assert fused.active
            calls = []
            for blk in enc.blocks:
                inner = blk.forward
                blk.forward = lambda *a, _f=inner, **k: calls.append(1) or _f(*a, **k)
            got = enc(inp)
        assert len(calls) == len(enc.blocks)
        assert all("forward" not in blk.__dict__ for blk in enc.blocks), "the blocks' own forwards are back"
        assert torch.equal(enc(inp), want)
    assert got.dtype == want.dtype and torch.equal(got, want), (dtype, amp, float((got - want).abs().max()))
enc.to(torch.float32)

# whole calls, body and full mode (hands through the same backbone): the same results with and without
import numpy as np
from body4d_core.sam3d_body import BodyItem, estimate_bodies
rng = np.random.default_rng(0)
frames = rng.integers(0, 255, (3, 96, 128, 3), dtype=np.uint8)
items = [BodyItem(t, 1, [20, 10, 80, 90], None) for t in range(3)]
seen = []
real = FusedBlocks.__init__
def spy(self, *a, **k):
    real(self, *a, **k)
    seen.append(self.active)
FusedBlocks.__init__ = spy
for mode in ("body", "full"):
    a = estimate_bodies(model, frames, items, mode=mode, batch_size=2)
    b = estimate_bodies(model, frames, items, mode=mode, batch_size=2, fused_backbone=False)
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys() and all(np.array_equal(ra[k], rb[k]) for k in ra), mode
assert seen == [True, False, True, False], seen
print("ok")
"""


def test_kernels_equal_the_reference_ops_bit_for_bit():
    """rope_qk equals apply_rope (with and without prefix tokens) and scale_add equals x + a * gamma, in fp32,
    bf16 and fp16 with every residual-stream dtype a block sees."""
    assert "ok" in run_interpreted(KERNELS_CHECK)


def test_fused_blocks_equal_the_blocks_bit_for_bit():
    """The backbone's features in fp32, under bf16 autocast and in bf16 weights, and whole estimate_bodies calls
    in body and full mode: identical with the fused blocks; the blocks' own forwards are back afterwards."""
    assert "ok" in run_interpreted(BACKBONE_CHECK)


def test_self_check_catches_a_kernel_that_rounds_differently(caplog):
    """One ulp off in a kernel's output: the kernels are refused with a warning (the blocks run as they are)."""
    from types import SimpleNamespace

    from body4d_core.sam3d_body.vit import apply_rope

    def rope_qk(qkv, sin, cos, heads):
        b, n, c3 = qkv.shape
        view = qkv.view(b, n, 3, heads, c3 // 3 // heads).permute(2, 0, 3, 1, 4)
        q, k = (apply_rope(t, sin, cos) for t in view[:2])
        return q, k

    def scale_add(x, a, gamma):
        return x + a * gamma

    exact = SimpleNamespace(rope_qk=rope_qk, scale_add=scale_add)
    assert fused_vit.self_check(exact, torch.device("cpu"), torch.bfloat16) == ""
    off = SimpleNamespace(rope_qk=lambda *a: tuple(torch.nextafter(t, t + 1) for t in rope_qk(*a)), scale_add=scale_add)
    assert "rotary" in fused_vit.self_check(off, torch.device("cpu"), torch.bfloat16)
    off = SimpleNamespace(rope_qk=rope_qk, scale_add=lambda x, a, g: torch.nextafter(x + a * g, x + a * g + 1))
    assert "layer-scale" in fused_vit.self_check(off, torch.device("cpu"), torch.float32)


def test_on_the_cpu_or_when_compiled_the_blocks_run_as_they_are(monkeypatch):
    """No Triton device: not active, nothing replaced. A compiled or FP8 backbone: not asked for."""
    model = random_model(tiny_config(), seed=0)
    enc = model.backbone.encoder
    fused = fused_vit.FusedBlocks(enc, True, torch.float32)
    assert fused.blocks and all(type(b) is Block for b in fused.blocks) and not fused.active
    with fused:
        assert all("forward" not in blk.__dict__ for blk in enc.blocks)
    asked = []
    real = fused_vit.FusedBlocks

    class Spy(real):
        def __init__(self, encoder, enabled, dtype):
            asked.append(enabled)
            super().__init__(encoder, enabled, dtype)

    import body4d_core.sam3d_body.infer as infer

    monkeypatch.setattr(infer, "FusedBlocks", Spy)
    import numpy as np
    from body4d_core.sam3d_body import BodyItem

    frames = np.zeros((1, 64, 64, 3), np.uint8)
    items = [BodyItem(0, 1, [8, 8, 56, 56], None)]
    estimate_bodies(model, frames, items)
    estimate_bodies(model, frames, items, fused_backbone=False)
    from body4d_core.sam3d_body.runner import BodyRunner

    compiled = BodyRunner("default", "", compiler=lambda *a, **k: None)  # a compile policy (that cannot compile here)
    estimate_bodies(model, frames, items, runner=compiled)
    assert asked == [True, False, False]


def test_a_kernel_failure_falls_back_with_a_warning(monkeypatch, caplog):
    monkeypatch.setattr(fused_vit, "runs_triton", lambda device: True)

    def broken(k, device, dtype):
        raise RuntimeError("triton too old")

    monkeypatch.setattr(fused_vit, "self_check", broken)
    with caplog.at_level(logging.WARNING):
        assert fused_vit.kernels_for(torch.device("cpu"), torch.float32) is None
    assert "fused backbone kernels not used" in caplog.text and "triton too old" in caplog.text


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fused_blocks_on_cuda_bit_identical_under_bf16_autocast():
    """Real block width (1280, 20 heads of 64, 5 prefix + 1024 patch tokens) under bf16 autocast on the GPU."""
    torch.manual_seed(0)
    blk = Block(1280, 20, 5120, swiglu=True).cuda().eval()
    for p in blk.parameters():
        torch.nn.init.normal_(p, std=0.02)
    from body4d_core.sam3d_body.vit import RopeEmbed

    rope = RopeEmbed(64, 100.0).cuda()(32, 32, torch.device("cuda"))
    k = fused_vit.kernels_for(torch.device("cuda"), torch.bfloat16)
    assert k is not None
    for stream in (torch.bfloat16, torch.float32):
        x = torch.randn(8, 1029, 1280, device="cuda").to(stream)
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
            want = blk(x, rope)
            got = fused_vit.fused_block(blk, x, rope, k)
        assert got.dtype == want.dtype and torch.equal(got, want), stream
