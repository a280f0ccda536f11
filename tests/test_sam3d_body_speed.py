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
from body4d_core.sam3d_body.infer import _warp_masks
from body4d_core.sam3d_body.synthetic import random_model
from body4d_core.sam3d_body.vit import DinoV3ViT, fp8_linear, fp8_quantize_rows


def _vit(seed: int = 0) -> DinoV3ViT:
    torch.manual_seed(seed)
    m = DinoV3ViT(64, 3, 4, 128, True, 16).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.05)
    return m


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
    torch._dynamo.reset()
    vit = _vit()
    x = torch.randn(4, 3, 64, 64)
    ref = vit(x)
    counter = CountingBackend()
    assert vit.compile_blocks("default", backend=counter, bucket=4)
    out = vit(x)
    assert torch.allclose(out, ref, atol=1e-6)
    assert counter.graphs == 1, "all three identical blocks must reuse one compiled graph"
    vit.uncompile()
    assert vit.compiled == ""


@torch.inference_mode()
def test_partial_batch_is_padded_to_the_bucket_without_recompiling() -> None:
    torch._dynamo.reset()
    vit = _vit(1)
    x = torch.randn(7, 3, 64, 64)
    ref = vit(x)
    counter = CountingBackend()
    vit.compile_blocks("default", backend=counter, bucket=4)
    out = vit(x)  # chunks of 4 + 3 (padded to 4)
    assert out.shape == ref.shape
    assert torch.allclose(out, ref, atol=1e-5)
    vit(x[:2])
    assert counter.graphs == 1


@torch.inference_mode()
def test_aot_eager_compile_matches_eager() -> None:
    torch._dynamo.reset()
    vit = _vit(2)
    x = torch.randn(2, 3, 64, 64)
    ref = vit(x)
    vit.compile_blocks("default", backend="aot_eager", bucket=2)
    assert torch.allclose(vit(x), ref, atol=1e-5)


@torch.inference_mode()
def test_compile_failure_falls_back_to_eager_with_a_log(caplog) -> None:
    torch._dynamo.reset()
    vit = _vit(3)
    x = torch.randn(2, 3, 64, 64)
    ref = vit(x)

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


def test_batched_mask_warp_equals_per_item_window_warp(scene) -> None:
    frames, items = scene
    items = items + [BodyItem(0, 9, [-60, -40, -5, -2], np.ones((96, 128), bool)), BodyItem(1, 9, [0, 0, 5, 5])]
    boxes = torch.tensor([it.box for it in items], dtype=torch.float64)
    centre, side = C.crop_boxes(boxes, 1.25)
    grid = C.sample_grid(C.affine_matrices(centre, side, 32), 32, (96, 128))
    mask = torch.zeros(len(items), 1, 32, 32)
    score = torch.zeros(len(items))
    _warp_masks(items, grid, mask, score, (96, 128))
    for i, it in enumerate(items):
        if it.mask is None:
            assert score[i] == 0 and mask[i].abs().max() == 0
            continue
        assert score[i] == 1
        ref = C.warp_window(it.mask, grid[i], torch.device("cpu"))
        assert torch.allclose(mask[i], ref, atol=1e-6), i
