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
from body4d_core.sam3d_body.synthetic import random_model
from body4d_core.sam3d_body.vit import (DinoV3ViT, PatchEmbed, fp8_linear, fp8_quantize_rows, fp8_quantize_tensor,
                                        run_block)


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


@pytest.fixture(scope="module")
def scene():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (2, 96, 128, 3), dtype=np.uint8)
    items = []
    for t in range(2):
        for p, (x0, x1) in enumerate([(10, 50), (60, 110), (70, 100)]):
            m = np.zeros((96, 128), bool)
            m[15:80, x0:x1] = True
            items.append(BodyItem(t, p + 1, [x0, 15, x1, 80], m))
    return frames, items


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


@torch.inference_mode()
def test_fp8_backbone_is_close_and_switches_off_exactly() -> None:
    vit = _vit(4)
    x = torch.randn(2, 3, 64, 64)
    ref = vit(x)
    vit.enable_fp8(True)
    assert all(hasattr(m, "w_fp8") for m in vit.blocks[0].modules() if isinstance(m, torch.nn.Linear))
    out = vit(x).float()
    err = (out - ref).abs()
    assert 0 < err.max() < 0.1 * ref.abs().max()
    vit.enable_fp8(False)
    assert torch.equal(vit(x), ref)


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
    grid = C.sample_grid(C.affine_matrices(centre, side, 32), 32, (96, 128), flip=flip)
    windows = _mask_windows(items, 1.25, 32, (96, 128), flip)
    mask, score = _warp_masks(items, grid, windows, (96, 128))
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


@torch.inference_mode()
@pytest.mark.parametrize("parts", ["", "all", "mlp"])
def test_block_is_one_graph_without_breaks(parts) -> None:
    torch._dynamo.reset()
    vit = _vit(5)
    if parts:
        vit.enable_fp8(True, parts=parts)  # the activation quantisation must trace inside the block graph
    sin, cos = vit.rope_embed(4, 4, torch.device("cpu"))
    tokens = torch.randn(2, 16 + 5, 64)
    ex = torch._dynamo.explain(run_block)(vit.blocks[0], tokens, sin, cos)
    assert ex.graph_count == 1 and ex.graph_break_count == 0, ex.break_reasons
    ops = str(ex.graphs[0].graph)
    assert "scaled_dot_product_attention" in ops
    assert ("amax" in ops) == bool(parts)


def test_fp8_mlp_only_keeps_attention_projections_and_is_close() -> None:
    vit = _vit(6)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        ref = vit(x)
        vit.enable_fp8(True, parts="mlp")
        names = {n for n, m in vit.blocks[0].named_modules() if hasattr(m, "w_fp8")}
        assert names == {"mlp.w1", "mlp.w2", "mlp.w3"}
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
