"""SAM-3's fused backbone kernels (``SpeedOptions.fused_backbone``): bit-identical to transformers' layers.

The kernels run in Triton's CPU interpreter (a subprocess: the mode is read at import); bf16 rounding is
the kernels' own bit arithmetic, so the interpreter rounds as the GPU does. The CUDA tests compare the
features and masks of a fused and an unfused propagation bit for bit under bf16 autocast.
"""

from __future__ import annotations

import pytest
import torch

from body4d_core.profile import RunProfile
from body4d_core.sam3.fused_backbone import FusedBackbone, layer_applies
from body4d_core.sam3.propagate import BASELINE, SpeedOptions
from body4d_core.testing.sam3 import tiny_sam3

from .triton_interpreter import run_interpreted

KERNELS_CHECK = r"""
import torch
from transformers.models.sam3.modeling_sam3 import apply_rotary_pos_emb_2d, window_partition, window_unpartition
from body4d_core.sam3 import fused_triton as ft

torch.manual_seed(0)
for dt in (torch.float32, torch.bfloat16):
    b, n, heads, d = 3, 20, 4, 8
    q, k = (torch.randn(b, n, heads * d).to(dt) for _ in range(2))
    cos, sin = torch.randn(1, n, d), torch.randn(1, n, d)
    ref = apply_rotary_pos_emb_2d(q.view(b, n, heads, d).transpose(1, 2), k.view(b, n, heads, d).transpose(1, 2),
                                  cos, sin)
    for got, want in zip(ft.rope_qk(q, k, cos, sin, heads), ref):
        assert got.dtype == want.dtype and got.stride() == want.stride(), (got.stride(), want.stride())
        assert torch.equal(got, want), (dt, float((got.float() - want.float()).abs().max()))
    x = torch.randn(2, 9, 7, 12)
    for ws in (3, 4, 9):  # whole windows, padded windows, one window
        windows, padded = window_partition(x, ws)
        got, got_padded = ft.window_partition(x, ws, dt)
        assert got_padded == padded and torch.equal(got, windows.to(dt)), (dt, ws)
        win = torch.randn_like(windows).to(dt)
        for res in (torch.randn(2, 9, 7, 12), torch.randn(2, 9, 7, 12).to(dt)):
            want = res + window_unpartition(win, ws, padded, (9, 7))
            got = ft.merge_add(res, win, ws)
            assert got.dtype == want.dtype and torch.equal(got, want), (dt, ws, res.dtype)
print("ok")
"""

LAYER_CHECK = r"""
import torch
from body4d_core.sam3.fused_backbone import FusedBackbone, vit_layer, _rope
from body4d_core.testing.sam3 import tiny_sam3

for size in (112, 126):  # 8x8 patches (whole 4x4 windows) and 9x9 (padded windows)
    tracker = tiny_sam3(image_size=size, seed=1).tracker
    layers = tracker.vision_encoder.backbone.layers
    assert [layer.window_size for layer in layers] == [4, 0]
    pixels = torch.randn(1, 3, size, size)
    for dtype, amp in ((torch.float32, False), (torch.bfloat16, False), (torch.float32, True)):
        tracker.to(dtype)
        x = torch.randn(1, size // 14, size // 14, 32, dtype=dtype)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            for layer in layers:
                want = layer(x)
                got = vit_layer(layer, x, rope=_rope(layer, x.device))
                assert got.dtype == want.dtype and torch.equal(got, want), (size, dtype, amp, layer.window_size)
            want = tracker.get_image_features(pixels.to(dtype), return_dict=True)
            with FusedBackbone(tracker, True) as fused:
                assert fused.active and all("forward" in vars(layer) for layer in layers)
                got = tracker.get_image_features(pixels.to(dtype), return_dict=True)
            assert not any("forward" in vars(layer) for layer in layers)
        for a, b in zip(got.fpn_hidden_states + got.fpn_position_encoding,
                        want.fpn_hidden_states + want.fpn_position_encoding):
            assert torch.equal(a, b), (size, dtype, amp)

# a kernel that rounds differently (here: one ulp off in one value) is caught by the self-check
import sys, types
from body4d_core.sam3 import fused_backbone, fused_triton as ft
reference = sys.modules[type(layers[0].attention).__module__]
for dt in (torch.float32, torch.bfloat16):
    assert fused_backbone.self_check(ft, reference, torch.device("cpu"), dt) == ""
real = ft.rope_qk
def off(q, k, *args):
    out = real(q, k, *args)
    v = out[0][0, 0, 0, 0]
    out[0][0, 0, 0, 0] = torch.nextafter(v.float(), torch.tensor(float("inf"))).to(v.dtype) \
        if v.dtype == torch.float32 else v + v.abs() * 2 ** -7
    return out
bad = types.SimpleNamespace(rope_qk=off, window_partition=ft.window_partition, merge_add=ft.merge_add)
for dt in (torch.float32, torch.bfloat16):
    assert fused_backbone.self_check(bad, reference, torch.device("cpu"), dt) == f"rotary embedding differs in {dt}"
ft.rope_qk = off
assert not FusedBackbone(tracker, True).active
print("ok")
"""

PROPAGATE_CHECK = r"""
import numpy as np, torch
from dataclasses import replace
from body4d_core.data import ObjectPrompt, Prompts
from body4d_core.sam3 import fused_backbone
from body4d_core.sam3.propagate import SpeedOptions, propagate
from body4d_core.testing.sam3 import tiny_sam3

bundle = tiny_sam3(image_size=112, seed=0)
rng = np.random.default_rng(0)
frames = rng.integers(0, 255, (6, 96, 96, 3), dtype=np.uint8)
prompts = Prompts([ObjectPrompt(1, 2, [[48, 40]], [1]), ObjectPrompt(2, 2, box=[5, 5, 40, 50])], (96, 96), 6)
calls = []
real = fused_backbone.vit_layer
def counted(*a, **k):
    calls.append(1)
    return real(*a, **k)
fused_backbone.vit_layer = counted
runs = {}
for fused in (False, True):
    speed = SpeedOptions(prefetch=False, fused_backbone=fused)
    runs[fused] = propagate(bundle, frames, prompts, "both", speed=speed)
assert len(calls) > 0
a, b = runs[False], runs[True]
assert np.array_equal(a.packed, b.packed) and np.array_equal(a.scores, b.scores)
assert a.present.any()
print("ok", len(calls))
"""


def test_kernels_equal_transformers_functions_bit_for_bit():
    """Rotary embedding, window partition (+ cast) and window merge + residual add, fp32 and bf16."""
    assert "ok" in run_interpreted(KERNELS_CHECK)


def test_fused_layers_equal_transformers_layers_bit_for_bit():
    """Windowed and global layers, whole and padded windows, fp32, bf16 and bf16 autocast; the block
    restores the class forwards."""
    assert "ok" in run_interpreted(LAYER_CHECK)


def test_fused_propagation_gives_the_same_masks():
    """A whole propagation (both directions, two objects) with and without the fused layers."""
    assert "ok" in run_interpreted(PROPAGATE_CHECK)


def test_fused_backbone_is_the_default_and_profiles_turn_it_off():
    assert SpeedOptions().fused_backbone and RunProfile().speed_options().fused_backbone
    assert not BASELINE.fused_backbone
    assert not RunProfile(sam3_speed="reference").speed_options().fused_backbone
    assert not RunProfile(sam3_speed="unfused").speed_options().fused_backbone
    unfused = RunProfile(sam3_speed="unfused").speed_options()
    assert unfused.cuda_graphs and unfused.batch_objects  # only the kernels are off


def test_on_the_cpu_transformers_layers_run():
    """Without CUDA (and outside the interpreter) nothing is replaced."""
    tracker = tiny_sam3(image_size=112, seed=0).tracker
    layers = [m for m in tracker.modules() if layer_applies(m)]
    assert len(layers) == 2
    with FusedBackbone(tracker, True) as fused:
        if torch.cuda.is_available():
            pytest.skip("a CUDA machine: the CPU case does not apply")
        assert not fused.active and not any("forward" in vars(m) for m in layers)


def _cuda_tracker(image_size: int, hidden: int, heads: int):
    from body4d_core.sam3.loading import _transformers
    from body4d_core.testing.sam3 import tiny_tracker_config

    cfg = tiny_tracker_config(image_size)
    vit = cfg.vision_config.backbone_config
    vit.hidden_size, vit.num_attention_heads, vit.intermediate_size = hidden, heads, 4 * hidden
    vit.num_hidden_layers, vit.window_size, vit.global_attn_indexes = 4, 24, [1, 3]
    vit.pretrain_image_size = 336
    torch.manual_seed(0)
    return _transformers().Sam3TrackerVideoModel(cfg).eval().cuda().bfloat16()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fused_backbone_on_cuda_bit_identical_under_bf16_autocast():
    """SAM-3's image size (72x72 patches, 24x24 windows), head_dim 64, as the pipeline runs it."""
    tracker = _cuda_tracker(1008, 256, 4)
    pixels = torch.randn(1, 3, 1008, 1008, device="cuda")
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        want = tracker.get_image_features(pixels, return_dict=True)
        with FusedBackbone(tracker, True) as fused:
            assert fused.active
            got = tracker.get_image_features(pixels, return_dict=True)
    for a, b in zip(got.fpn_hidden_states + got.fpn_position_encoding,
                    want.fpn_hidden_states + want.fpn_position_encoding):
        assert torch.equal(a, b), float((a.float() - b.float()).abs().max())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fused_propagation_on_cuda_same_masks_with_graphs():
    """Fused layers inside the captured backbone graph: the same masks as without them."""
    import numpy as np

    from body4d_core.data import ObjectPrompt, Prompts
    from body4d_core.sam3.propagate import propagate

    bundle = tiny_sam3(image_size=112, seed=0)
    bundle.tracker.cuda().bfloat16()
    bundle = type(bundle)(bundle.tracker, bundle.processor, None, None, torch.bfloat16)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (10, 96, 96, 3), dtype=np.uint8)
    prompts = Prompts([ObjectPrompt(1, 3, [[48, 40]], [1]), ObjectPrompt(2, 3, box=[5, 5, 40, 50])], (96, 96), 10)
    runs = [propagate(bundle, frames, prompts, "both", speed=SpeedOptions(fused_backbone=f)) for f in (False, True)]
    assert np.array_equal(runs[0].packed, runs[1].packed) and np.array_equal(runs[0].scores, runs[1].scores)
