"""SAM-3D-Body speed options: compiled blocks/decoder, padded buckets, FP8 matmuls, batched mask warps.

Every option must give the eager result (compile) or a bounded deviation (FP8). torch.compile runs
with the 'eager'/'aot_eager' backends here (inductor needs minutes on this CPU; the GPU bench uses it).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from body4d_core.sam3d_body import BodyItem, estimate_bodies, tiny_config
from body4d_core.sam3d_body import crop as C
from body4d_core.sam3d_body.infer import CropPrefetcher, _mask_windows, _warp_masks
from body4d_core.testing.body import random_model
from body4d_core.sam3d_body.fp8 import (FP8_BLOCK_ATTRS, FP8_LINEAR_ATTRS, fp8_linear, fp8_quantize_rows,
                                        fp8_quantize_tensor, fused_unavailable, register_ops)
from body4d_core.sam3d_body.vit import DinoV3ViT, PatchEmbed, run_block

from .triton_interpreter import run_interpreted


def _vit(seed: int = 0) -> DinoV3ViT:
    torch.manual_seed(seed)
    m = DinoV3ViT(64, 3, 4, 128, True, 16).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.05)
    return m


def _fresh_vit_and_reference(seed: int, batch: int) -> tuple[DinoV3ViT, torch.Tensor, torch.Tensor]:
    """A ViT with no compiled graphs around, an input batch and its eager output."""
    torch._dynamo.reset()
    vit = _vit(seed)
    x = torch.randn(batch, 3, 64, 64)
    return vit, x, vit(x)


class CountingBackend:
    """A torch.compile backend that counts graph compilations and runs the graph eagerly."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return gm.forward


@pytest.fixture(scope="module")
def model():
    return random_model(tiny_config(), seed=0)


def three_people(seed: int) -> tuple[np.ndarray, list[BodyItem]]:
    """Two random 96x128 frames with three boxed people each (one overlapping): 6 body items."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 255, (2, 96, 128, 3), dtype=np.uint8)
    items = []
    for t in range(2):
        for p, (x0, x1) in enumerate([(10, 50), (60, 110), (70, 100)]):
            m = np.zeros((96, 128), bool)
            m[15:80, x0:x1] = True
            items.append(BodyItem(t, p + 1, [x0, 15, x1, 80], m))
    return frames, items


@pytest.fixture(scope="module")
def scene():
    return three_people(0)


@torch.inference_mode()
def test_compiled_blocks_match_eager_and_share_one_graph() -> None:
    vit, x, ref = _fresh_vit_and_reference(0, 4)
    counter = CountingBackend()
    assert vit.compile_blocks("default", backend=counter, bucket=4)
    out = vit(x)
    assert torch.allclose(out, ref, atol=1e-6)
    assert counter.graphs == 1, "all three identical blocks must reuse one compiled graph"
    vit.uncompile()
    assert vit.compiled == ""


@torch.inference_mode()
def test_partial_batch_is_padded_to_the_bucket_without_recompiling() -> None:
    vit, x, ref = _fresh_vit_and_reference(1, 7)
    counter = CountingBackend()
    vit.compile_blocks("default", backend=counter, bucket=4)
    out = vit(x)  # chunks of 4 + 3 (padded to 4)
    assert out.shape == ref.shape
    assert torch.allclose(out, ref, atol=1e-5)
    vit(x[:2])
    assert counter.graphs == 1


@torch.inference_mode()
def test_aot_eager_compile_matches_eager() -> None:
    vit, x, ref = _fresh_vit_and_reference(2, 2)
    vit.compile_blocks("default", backend="aot_eager", bucket=2)
    assert torch.allclose(vit(x), ref, atol=1e-5)


@torch.inference_mode()
def test_compile_failure_falls_back_to_eager_with_a_log(caplog) -> None:
    vit, x, ref = _fresh_vit_and_reference(3, 2)

    def broken(gm, example_inputs):
        raise RuntimeError("no compiler here")

    vit.compile_blocks("default", backend=broken)
    with caplog.at_level(logging.WARNING):
        out = vit(x)
    assert torch.allclose(out, ref, atol=1e-6)
    assert vit.compiled == ""
    assert "falling back to eager" in caplog.text


def test_fp8_quantisation_and_linear_are_accurate() -> None:
    torch.manual_seed(0)
    w = torch.randn(48, 64)
    q, s = fp8_quantize_rows(w)
    assert q.dtype == torch.float8_e4m3fn and s.shape == (48, 1)
    rel = ((q.float() * s - w).abs() / w.abs().amax(1, keepdim=True)).max()
    assert rel < 1 / 16  # E4M3: 3 mantissa bits
    x = torch.randn(5, 7, 64)
    b = torch.randn(48)
    y = fp8_linear(x, q, s, b).float()
    ref = F.linear(x, w, b)
    assert y.shape == (5, 7, 48)
    assert (y - ref).abs().max() / ref.abs().max() < 0.05


@torch.inference_mode()
def test_patch_embed_matmul_equals_the_strided_conv() -> None:
    torch.manual_seed(3)
    pe = PatchEmbed(16, 24)
    x = torch.randn(2, 3, 48, 80)
    tokens = pe(x)
    ref = pe.proj(x).flatten(2).transpose(1, 2)  # the conv the checkpoint's weights belong to
    assert tokens.shape == (2, 3 * 5, 24)
    torch.testing.assert_close(tokens, ref, rtol=1e-5, atol=1e-5)


def test_fp8_tensor_scaling_is_accurate_and_options_are_checked() -> None:
    torch.manual_seed(1)
    w = torch.randn(48, 64)
    q, s = fp8_quantize_tensor(w)
    assert q.dtype == torch.float8_e4m3fn and s.ndim == 0
    assert ((q.float() * s - w).abs().max() / w.abs().max()) < 1 / 16
    x, b = torch.randn(3, 64), torch.randn(48)
    y = fp8_linear(x, q, s, b, fast_accum=True).float()  # fast accumulation only matters on CUDA
    ref = F.linear(x, w, b)
    assert (y - ref).abs().max() / ref.abs().max() < 0.08
    vit = _vit(5)
    with pytest.raises(ValueError, match="fp8 scaling must be one of"):
        vit.enable_fp8(True, scaling="block")
    vit.enable_fp8(True, scaling="tensor", fast_accum=True)
    qkv = vit.blocks[0].attn.qkv
    assert qkv.w_scale.ndim == 0 and qkv.fp8_fast_accum is True
    vit.enable_fp8(True)  # a second call replaces the first's options
    assert qkv.w_scale.shape == (qkv.out_features, 1) and qkv.fp8_fast_accum is False
    vit.enable_fp8(False)
    assert not hasattr(qkv, "w_fp8") and not hasattr(qkv, "fp8_fast_accum")


def _fp8_attrs(vit: DinoV3ViT) -> set[str]:
    """'module.attr' for every FP8 attribute ``enable_fp8`` left on the blocks."""
    return {f"{n}.{a}" for n, m in vit.named_modules() for a in FP8_LINEAR_ATTRS + FP8_BLOCK_ATTRS if a in m.__dict__}


@torch.inference_mode()
@pytest.mark.parametrize("fused", [True, False])
def test_fp8_backbone_is_close_and_switches_off_exactly(fused) -> None:
    vit = _vit(4)
    x = torch.randn(2, 3, 64, 64)
    ref = vit(x)
    vit.enable_fp8(True, fused=fused)
    blk = vit.blocks[0]
    with_w8 = {n for n, m in blk.named_modules() if "w_fp8" in m.__dict__}
    if fused:  # w1/w2 run as one merged matmul; the norms feed quantised rows to qkv and the MLP
        assert with_w8 == {"attn.qkv", "attn.proj", "mlp.w3"}
        assert blk.mlp.w12_fp8.shape == (2 * 128, 64) and blk.mlp.w12_scale.shape == (2 * 128, 1)
        assert blk.attn.qkv.fp8_rows_in and blk.mlp.fp8_rows_in
    else:
        assert with_w8 == {"attn.qkv", "attn.proj", "mlp.w1", "mlp.w2", "mlp.w3"}
        assert not hasattr(blk.mlp, "w12_fp8") and not hasattr(blk.mlp, "fp8_rows_in")
    out = vit(x).float()
    err = (out - ref).abs()
    assert 0 < err.max() < 0.1 * ref.abs().max()
    vit.enable_fp8(False)
    assert _fp8_attrs(vit) == set()
    assert torch.equal(vit(x), ref)


@torch.inference_mode()
def test_fused_fp8_quantisers_agree_with_the_unfused_path() -> None:
    """Fused (one op per norm / SwiGLU, merged w1|w2) and unfused FP8 quantise the same values the same
    way; they differ only where the unfused path rounds the norm / SwiGLU output to bf16 first."""
    vit = _vit(9)
    x = torch.randn(2, 3, 64, 64)
    ref = vit(x).float()
    vit.enable_fp8(True, fused=False)
    unfused = vit(x).float()
    vit.enable_fp8(True, fused=True)
    fused = vit(x).float()
    scale = ref.abs().max()
    assert (fused - unfused).abs().max() < 0.25 * (unfused - ref).abs().max() + 1e-3 * scale
    assert (fused - ref).abs().max() < 0.1 * scale
    vit.enable_fp8(True, scaling="tensor")  # per-tensor scales have no fused kernels: nothing fused
    assert "mlp.w12_fp8" not in _fp8_attrs(vit) and vit.blocks[0].attn.proj.fp8_fused is False


@torch.inference_mode()
def test_fused_fp8_on_a_gelu_mlp_vit_is_close_and_undone() -> None:
    """A ViT with a plain GELU MLP (no SwiGLU to merge): the fused norms still feed fc1 FP8 rows."""
    torch.manual_seed(6)
    vit = DinoV3ViT(64, 2, 4, 128, False, 16).eval()
    with torch.no_grad():
        for p in vit.parameters():
            p.normal_(0, 0.05)
    x = torch.randn(2, 3, 48, 48)
    ref = vit(x).float()
    vit.enable_fp8(True)
    assert vit.blocks[0].mlp.fp8_rows_in and "w12_fp8" not in vit.blocks[0].mlp.__dict__
    out = vit(x).float()
    assert 0 < (out - ref).abs().max() < 0.1 * ref.abs().max()
    vit.enable_fp8(False)
    assert _fp8_attrs(vit) == set() and torch.equal(vit(x).float(), ref)


@torch.inference_mode()
def test_fused_fp8_ops_match_their_formulas() -> None:
    """The torch.library ops (CPU reference implementation, the same one the Triton kernels are checked
    against) return [M, K] E4M3 rows and [M] scales equal to the plain formulas."""
    register_ops()
    register_ops()  # a second registration (e.g. a second import of the package) is a no-op
    torch.manual_seed(2)
    x, w, b = torch.randn(7, 48, dtype=torch.bfloat16), torch.randn(48), torch.randn(48)
    q, s = torch.ops.body4d.fp8_layer_norm_rows(x, w, b, 1e-5)
    rq, rs = fp8_quantize_rows(F.layer_norm(x.float(), (48,), w, b, 1e-5))
    assert q.dtype == torch.float8_e4m3fn and q.shape == (7, 48) and s.shape == (7,)
    assert torch.equal(q.view(torch.uint8), rq.view(torch.uint8)) and torch.equal(s, rs[:, 0])
    h = torch.randn(7, 96, dtype=torch.bfloat16)
    q, s = torch.ops.body4d.fp8_swiglu_rows(h)
    rq, rs = fp8_quantize_rows(F.silu(h[:, :48].float()) * h[:, 48:].float())
    assert q.shape == (7, 48) and torch.equal(q.view(torch.uint8), rq.view(torch.uint8)) and torch.equal(s, rs[:, 0])
    q, s = torch.ops.body4d.fp8_rows(torch.zeros(3, 16))
    assert torch.equal(q.float(), torch.zeros(3, 16)) and bool(torch.isfinite(s).all()) and bool((s > 0).all())
    res, gamma = torch.randn(7, 48, dtype=torch.bfloat16), torch.randn(48)
    xo, q, s = torch.ops.body4d.fp8_add_layer_norm_rows(x, res, gamma, w, b, 1e-5)
    assert torch.equal(xo, (x.float() + res.float() * gamma).to(torch.bfloat16))
    rq, rs = fp8_quantize_rows(F.layer_norm(xo.float(), (48,), w, b, 1e-5))
    assert torch.equal(q.view(torch.uint8), rq.view(torch.uint8)) and torch.equal(s, rs[:, 0])
    heads = torch.randn(2, 3, 5, 16)  # [B, heads, N, head_dim]
    q, s = torch.ops.body4d.fp8_heads_rows(heads)
    rq, rs = fp8_quantize_rows(heads.transpose(1, 2).reshape(10, 48))
    assert q.shape == (10, 48) and torch.equal(q.view(torch.uint8), rq.view(torch.uint8))


def test_fp8_without_triton_falls_back_to_unfused_with_a_log(monkeypatch, caplog) -> None:
    """A CUDA build without triton (e.g. torch's Windows wheels) must not fail mid-call: the FP8 backbone
    then quantises with torch ops (the unfused path), and says so."""
    import body4d_core.sam3d_body.vit as vit_mod

    vit = _vit(3)
    monkeypatch.setattr(vit_mod, "fused_unavailable", lambda device: "the fused FP8 kernels need triton (test)")
    with caplog.at_level(logging.WARNING):
        vit.enable_fp8(True)
    blk = vit.blocks[0]
    assert "quantising activations with plain torch ops" in caplog.text
    assert blk.attn.proj.fp8_fused is False and "w12_fp8" not in blk.mlp.__dict__ and "w_fp8" in blk.mlp.w1.__dict__
    monkeypatch.undo()
    assert fused_unavailable(torch.device("cpu")) == ""


TRITON_CHECK = r"""
import torch, torch.nn.functional as F
from body4d_core.sam3d_body import fp8_triton as k

def ref(y):  # the fp8 module's formula, before the E4M3 cast (the interpreter stores into float32)
    s = y.abs().amax(-1).clamp(min=1e-12) / 448.0
    return (y / s[:, None]).clamp(-448.0, 448.0), s

torch.manual_seed(0)
worst = 0.0
for rows, cols in ((13, 40), (4, 64), (5, 300), (9, 1280)):  # 1280 = 1024 + 256 tiles; 64 = 64 + an empty tile
    x = torch.randn(rows, cols, dtype=torch.bfloat16) * 3 + 1
    x[1] = 0  # an all-zero row keeps a finite scale
    w, b = torch.randn(cols), torch.randn(cols)
    h = torch.randn(rows, 2 * cols, dtype=torch.bfloat16)
    g, u = h.float().chunk(2, -1)
    for got, want in ((k.layer_norm_rows(x, w, b, 1e-5, torch.float32), ref(F.layer_norm(x.float(), (cols,), w, b, 1e-5))),
                      (k.swiglu_rows(h, torch.float32), ref(F.silu(g) * u)),
                      (k.quantize_rows(x, torch.float32), ref(x.float()))):
        assert got[0].shape == want[0].shape and got[1].shape == want[1].shape, (got[0].shape, want[0].shape)
        worst = max(worst, float((got[0] - want[0]).abs().max()), float(((got[1] - want[1]) / want[1]).abs().max()))
    gamma, hres = torch.randn(cols) * 0.1, torch.randn(rows, cols, dtype=torch.bfloat16)
    xo, q, s = k.add_layer_norm_rows(x, hres, gamma, w, b, 1e-5, torch.float32)
    want_xo = x.float() + hres.float() * gamma  # the interpreter truncates to bf16 (the GPU rounds): 1 ulp
    assert xo.dtype == torch.bfloat16 and bool(((xo.float() - want_xo).abs() <= want_xo.abs() / 128 + 1e-6).all())
    rq, rs = ref(F.layer_norm(xo.float(), (cols,), w, b, 1e-5))
    worst = max(worst, float((q - rq).abs().max()), float(((s - rs) / rs).abs().max()))
heads = torch.randn(2, 7, 4, 16).transpose(1, 2)  # SDPA-like [B, heads, N, head_dim], not contiguous
q, s = k.heads_rows(heads, torch.float32)
rq, rs = ref(heads.transpose(1, 2).reshape(14, 64))
assert q.shape == (14, 64)
worst = max(worst, float((q - rq).abs().max()), float(((s - rs) / rs).abs().max()))
print("worst", worst)
assert worst < 1e-3, worst
"""


def test_triton_fp8_kernels_match_the_formula_in_the_interpreter() -> None:
    """The Triton kernels themselves (run by Triton's CPU interpreter) against the fp8 module's formula,
    before the E4M3 cast: quotients in [-448, 448] within 1e-3 absolute, scales within 1e-3 relative."""
    assert "worst" in run_interpreted(TRITON_CHECK)


def test_optimized_model_matches_eager_end_to_end(model, scene) -> None:
    frames, items = scene
    items = items[:3]
    ref = estimate_bodies(model, frames, items, mode="full", batch_size=2)
    torch._dynamo.reset()
    state = model.optimize("default", "default", bucket=2, backend="eager")
    try:
        assert state == {"backbone": "default", "decoder": "default"}
        out = estimate_bodies(model, frames, items, mode="full", batch_size=2)
    finally:
        assert model.optimize() == {"backbone": "", "decoder": ""}
    for r, o in zip(ref, out):
        for key in ("body_pose", "global_rot", "keypoints_2d", "keypoints_3d", "hand_pose", "cam_t"):
            np.testing.assert_allclose(o[key], r[key], atol=1e-4, rtol=1e-4, err_msg=key)


def test_decoder_dtype_is_ignored_on_cpu(model, scene) -> None:
    frames, items = scene
    a = estimate_bodies(model, frames, items[:2], batch_size=2)
    b = estimate_bodies(model, frames, items[:2], batch_size=2, decoder_dtype=torch.bfloat16)
    for r, o in zip(a, b):
        np.testing.assert_array_equal(r["body_pose"], o["body_pose"])


@pytest.mark.parametrize("flip", [False, True])
def test_packed_mask_windows_equal_whole_frame_warp(scene, flip) -> None:
    frames, items = scene
    soft = np.linspace(0, 1, 96 * 128, dtype=np.float32).reshape(96, 128)
    items = items + [BodyItem(0, 9, [-60, -40, -5, -2], np.ones((96, 128), bool)), BodyItem(1, 9, [0, 0, 5, 5]),
                     BodyItem(1, 8, [100, 70, 160, 140], np.ones((96, 128), bool)), BodyItem(0, 7, [20, 20, 60, 70], soft)]
    boxes = torch.tensor([it.box for it in items], dtype=torch.float64)
    centre, side = C.crop_boxes(boxes, 1.25)
    affine = C.affine_matrices(centre, side, 32)
    grid = C.sample_grid(affine, 32, (96, 128), flip=flip)
    windows = _mask_windows(items, 1.25, 32, (96, 128), flip)
    mask, score = _warp_masks(items, affine, 32, windows, (96, 128), flip)
    assert mask.shape == (len(items), 1, 32, 32) and score.shape == (len(items),)
    for i, it in enumerate(items):
        if it.mask is None:
            assert score[i] == 0 and mask[i].abs().max() == 0
            continue
        assert score[i] == 1
        ref = C.warp(torch.as_tensor(np.asarray(it.mask)).float()[None, None], grid[i:i + 1])[0]
        assert torch.allclose(mask[i], ref, atol=1e-5), (i, (mask[i] - ref).abs().max())


def test_prefetched_batches_give_identical_results(model, scene) -> None:
    frames, items = scene
    a = estimate_bodies(model, frames, items, batch_size=2, prefetch=False, overlap=False)
    b = estimate_bodies(model, frames, items, batch_size=2, prefetch=True, overlap=False)
    c = estimate_bodies(model, frames, items, batch_size=4)  # default: next batch encoded before decoding
    d = estimate_bodies(model, frames, items, batch_size=4, prefetch=False, overlap=False)
    for r, o in zip(a, b):
        for key in ("body_pose", "keypoints_2d", "cam_t"):
            np.testing.assert_array_equal(o[key], r[key], err_msg=key)
    for r, o in zip(d, c):
        for key in ("body_pose", "keypoints_2d", "cam_t", "shape"):
            np.testing.assert_array_equal(o[key], r[key], err_msg=key)


def test_prefetcher_rebuilds_when_the_range_changes() -> None:
    built = []
    pre = CropPrefetcher(lambda a, b: built.append((a, b)) or (a, b))
    pre.ahead(4, 8)
    assert pre.take(4, 8) == (4, 8) and built == [(4, 8)]
    pre.ahead(8, 12)
    assert pre.take(8, 10) == (8, 10)  # after an OOM halving: built anew, the prefetched one dropped
    assert built == [(4, 8), (8, 12), (8, 10)] and pre.batch is None
    pre.ahead(12, 12)
    assert pre.batch is None


FUSED_OPS = {  # norm1 -> qkv; SDPA output -> proj; residual + norm2 -> w1|w2; SwiGLU -> w3
    "all": {"fp8_layer_norm_rows": 1, "fp8_heads_rows": 1, "fp8_add_layer_norm_rows": 1, "fp8_swiglu_rows": 1},
    "mlp": {"fp8_layer_norm_rows": 0, "fp8_heads_rows": 0, "fp8_add_layer_norm_rows": 1, "fp8_swiglu_rows": 1}}


@torch.inference_mode()
@pytest.mark.parametrize("parts", ["", "all", "mlp", "all-unfused"])
def test_block_is_one_graph_without_breaks(parts) -> None:
    torch._dynamo.reset()
    vit = _vit(5)
    if parts:  # the activation quantisation (torch ops or the fused ops) must trace inside the block graph
        vit.enable_fp8(True, parts=parts.split("-")[0], fused=not parts.endswith("unfused"))
    sin, cos = vit.rope_embed(4, 4, torch.device("cpu"))
    tokens = torch.randn(2, 16 + 5, 64)
    ex = torch._dynamo.explain(run_block)(vit.blocks[0], tokens, sin, cos)
    assert ex.graph_count == 1 and ex.graph_break_count == 0, ex.break_reasons
    ops = str(ex.graphs[0].graph)
    assert "scaled_dot_product_attention" in ops
    assert ("amax" in ops) == parts.endswith("unfused")
    for op, n in FUSED_OPS.get(parts, {}).items():
        assert ops.count(f"target=torch.ops.body4d.{op}") == n, op


def test_fp8_mlp_only_keeps_attention_projections_and_is_close() -> None:
    vit = _vit(6)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        ref = vit(x)
        vit.enable_fp8(True, parts="mlp")
        names = {n for n, m in vit.blocks[0].named_modules() if "w_fp8" in m.__dict__ or "w12_fp8" in m.__dict__}
        assert names == {"mlp", "mlp.w3"}  # w1|w2 merged into the MLP's one FP8 matmul
        mlp_only = vit(x).float()
        vit.enable_fp8(True, parts="all")
        assert hasattr(vit.blocks[0].attn.qkv, "w_fp8") and hasattr(vit.blocks[0].attn.proj, "w_fp8")
        full = vit(x).float()
        vit.enable_fp8(False)
        assert torch.equal(vit(x), ref)
    for out in (mlp_only, full):
        err = (out - ref).abs().max()
        assert 0 < err < 0.1 * ref.abs().max()
    with pytest.raises(ValueError, match="fp8 parts must be 'all' or 'mlp'"):
        vit.enable_fp8(True, parts="attn")


@torch.inference_mode()
def test_reduce_overhead_mode_matches_eager() -> None:
    vit, x, ref = _fresh_vit_and_reference(7, 3)
    counter = CountingBackend()
    assert vit.compile_blocks("reduce-overhead", backend=counter, bucket=2)
    assert vit.compiled.endswith("reduce-overhead")
    assert torch.allclose(vit(x), ref, atol=1e-5)
    assert counter.graphs == 1


@torch.inference_mode()
def test_pinned_sdpa_kernel_matches_eager_and_rejects_unknown_names() -> None:
    vit, x, ref = _fresh_vit_and_reference(8, 2)
    assert vit.compile_blocks("default", backend="eager", bucket=2, sdpa="math")
    assert vit.sdpa == "math"
    assert torch.allclose(vit(x), ref, atol=1e-5)
    vit.uncompile()
    assert vit.sdpa == ""
    with pytest.raises(ValueError, match="sdpa must be"):
        vit.compile_blocks("default", backend="eager", sdpa="fast")


@torch.inference_mode()
def test_fp8_scope_quantises_for_the_call_only() -> None:
    vit = _vit(6)
    x = torch.randn(1, 3, 32, 32)
    ref = vit(x)
    with vit.fp8_scope(True, scaling="row", fast_accum=True):
        assert vit.blocks[0].mlp.w3.fp8_fast_accum is True
        inside = vit(x)
    assert not any(hasattr(m, "w_fp8") for m in vit.modules())
    assert not torch.equal(inside, ref) and torch.equal(vit(x), ref)
    with vit.fp8_scope(False):
        assert not hasattr(vit.blocks[0].attn.qkv, "w_fp8")


def test_fp8_request_without_a_capable_gpu_logs_and_runs_unchanged(model, scene, caplog) -> None:
    frames, items = scene
    ref = estimate_bodies(model, frames, items[:2])
    with caplog.at_level(logging.WARNING):
        out = estimate_bodies(model, frames, items[:2], fp8=True)
    assert "FP8 backbone requested but FP8 matmuls need a CUDA GPU" in caplog.text
    for a, b in zip(out, ref):
        assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not any(hasattr(m, "w_fp8") for m in model.modules())


def _decoder_graphs(model, frames, items, dynamic: bool) -> tuple[int, list]:
    """(graphs compiled, results) of full-mode runs in batches of 2, 2, 1 and then 3, 2 crops."""
    torch._dynamo.reset()
    counter = CountingBackend()
    model.optimize("", "default", backend=counter, decoder_dynamic=dynamic)
    try:
        out = estimate_bodies(model, frames, items, mode="full", batch_size=2)
        estimate_bodies(model, frames, items, mode="full", batch_size=3)
    finally:
        model.optimize()
    return counter.graphs, out


def test_dynamic_decoder_compiles_one_graph_per_layer_kind_for_any_batch(model, scene) -> None:
    """Batches of 1 to 3 crops, body and hand passes, and the prompt tokens of the full-mode re-run:
    the dynamic decoder needs one graph per layer kind (first / rest) plus torch's batch-of-1
    specialisation, where static shapes recompile for each size; both equal eager."""
    frames, items = scene
    items = items[:5]
    ref = estimate_bodies(model, frames, items, mode="full", batch_size=2)
    dyn, out_dyn = _decoder_graphs(model, frames, items, True)
    static, out_static = _decoder_graphs(model, frames, items, False)
    assert dyn <= 4, dyn
    assert static > dyn, (static, dyn)
    for r, a, b in zip(ref, out_dyn, out_static):
        for key in ("body_pose", "hand_pose", "keypoints_3d", "cam_t"):
            np.testing.assert_allclose(a[key], r[key], atol=1e-5, rtol=1e-5, err_msg=key)
            np.testing.assert_allclose(b[key], r[key], atol=1e-5, rtol=1e-5, err_msg=key)


def test_auto_compile_pays_only_for_large_jobs_or_warm_graphs(model) -> None:
    from body4d_core.sam3d_body.runner import AUTO_COMPILE_MIN_CROPS

    assert model._auto_compile_mode(64, 450, "full") == ""
    assert model._auto_compile_mode(64, AUTO_COMPILE_MIN_CROPS["full"], "full") == "default"
    assert model._auto_compile_mode(64, AUTO_COMPILE_MIN_CROPS["full"], "body") == ""
    assert model._auto_compile_mode(64, AUTO_COMPILE_MIN_CROPS["body"], "body") == "default"
    assert model._auto_compile_mode(64, None, "body") == "default"  # job size unknown: as before
    saved = model._compiled_for
    model._compiled_for = ("default", 64)  # this process already compiled for batch 64: keep it
    try:
        assert model._auto_compile_mode(64, 10, "body") == "default"
        assert model._auto_compile_mode(32, 10, "body") == ""
    finally:
        model._compiled_for = saved
    assert model.compile_for("auto", 64, crops=10**6) is None  # CPU: eager whatever the job
    assert not model.backbone.encoder.compiled


CROP_CHECK = r"""
import numpy as np, torch
from body4d_core.sam3d_body import BodyItem, crop as C
from body4d_core.sam3d_body.crop_triton import crop_rgb
from body4d_core.sam3d_body.infer import _crop_images, _mask_windows, _warp_masks
rng = np.random.default_rng(0)
frames = torch.from_numpy(rng.integers(0, 256, (3, 37, 53, 3), dtype=np.uint8))
replacement = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
boxes = [[5, 4, 30, 33], [-10, -5, 20, 12], [40, 20, 70, 50], [1, 1, 2, 2], [3, 3, 40, 30]]
items = [BodyItem(f, i + 1, b, None) for i, (f, b) in enumerate(zip([0, 1, 1, 2, 0], boxes))]
items[4].image = replacement  # an occluded person's completed frame replaces frame 0 for this crop
worst = 0.0
for flip in (False, True):
    centre, side = C.crop_boxes(torch.tensor(boxes, dtype=torch.float64), 1.25)
    a = C.affine_matrices(centre, side, 16)
    grid = C.sample_grid(a, 16, (37, 53), flip=flip)
    cpu = torch.device("cpu")
    ref = _crop_images(frames, items, a, 16, flip, cpu, use_triton=False)  # grid_sample per source
    out = _crop_images(frames, items, a, 16, flip, cpu, use_triton=True)  # one kernel launch
    assert out.shape == ref.shape == (5, 3, 16, 16)
    worst = max(worst, float((out - ref).abs().max()))
    # float sources are read as they are (ComfyUI IMAGE batches), uint8 ones scaled by 1/255
    coef = C.scale_shift(a)
    out_f = crop_rgb(frames.float().div(255), torch.tensor([0, 1, 1, 2]), coef[:4], 16, flip=flip, block=128)
    worst = max(worst, float((out_f - ref[:4]).abs().max()))
    # masks: the kernel on the packed windows equals grid_sample of each whole mask
    masks = [np.zeros((37, 53), bool) for _ in boxes]
    masks[0][5:30, 6:28] = True
    masks[2][:, 45:] = True
    masks[4] = np.linspace(0, 1, 37 * 53, dtype=np.float32).reshape(37, 53)  # a soft mask: float windows
    mitems = [BodyItem(it.frame, it.obj_id, it.box, m) for it, m in zip(items, masks)]
    for sub in (mitems[:4], mitems):  # uint8 windows, then float ones
        k = len(sub)
        windows = _mask_windows(sub, 1.25, 16, (37, 53), flip)
        got, score = _warp_masks(sub, a[:k], 16, windows, (37, 53), flip, use_triton=True)
        assert got.shape == (k, 1, 16, 16) and bool((score == 1).all())
        for i, m in enumerate(masks[:k]):
            want = C.warp(torch.as_tensor(m).float()[None, None], grid[i:i + 1])[0]
            worst = max(worst, float((got[i] - want).abs().max()))
    # a float replacement image beside uint8 frames: every source is made float 0..1 for the one launch
    items[4].image = replacement.astype(np.float32) / 255
    mixed = _crop_images(frames, items, a, 16, flip, cpu, use_triton=True)
    worst = max(worst, float((mixed - _crop_images(frames, items, a, 16, flip, cpu, use_triton=False)).abs().max()))
    items[4].image = replacement
assert float(ref[4].abs().sum()) > 0 and not torch.equal(ref[4], ref[0])  # the replacement was used
assert float(out[1, :, 0, 0].abs().max()) == 0.0  # outside the frame: zeros, as grid_sample
print("worst", worst)
assert worst < 1e-4, worst
"""


def test_triton_crop_kernel_matches_grid_sample_in_the_interpreter() -> None:
    """The crop kernel (Triton's CPU interpreter) against grid_sample per source: frames and a replacement
    image (also a float one beside uint8 frames), crops partly outside the frame, mirrored (hand) crops,
    uint8 and float sources, and the masks sampled from their packed windows (bool and soft) against
    grid_sample of the whole mask."""
    assert "worst" in run_interpreted(CROP_CHECK)
