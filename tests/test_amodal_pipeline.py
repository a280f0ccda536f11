"""Diffusion-VAS sampler, Depth Anything and the whole Amodal stage on tiny random networks.

The sampler was also compared locally with the official DiffusionVASPipeline on shared
random weights (not committed): max abs difference 1.4e-6 with embed_order="upstream".
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from body4d_core.amodal.config import OcclusionConfig, SamplerConfig
from body4d_core.amodal.depth import estimate_depth, load_depth_model, network_size, normalize_depth, resize_depth
from body4d_core.amodal.job import VideoJob
from body4d_core.amodal.models import AmodalModels, DepthEstimator, load_amodal_models
from body4d_core.amodal.sampler import VASPipeline
from body4d_core.amodal.stage import run_amodal
from body4d_core.testing.amodal import (build_depth_model, build_vas_parts, save_depth_folder, save_vas_folder)
from body4d_core.data import Amodal, Tracks
from body4d_core.errors import MissingWeightsError, WeightsMismatchError

T, H, W = 4, 16, 24
FAST = SamplerConfig(steps=2, decode_chunk_size=4)


@pytest.fixture(scope="module")
def parts():
    return build_vas_parts("tiny", seed=1)


@pytest.fixture(scope="module")
def pipe(parts):
    return VASPipeline(parts["unet"], parts["vae"], parts["image_encoder"], parts["scheduler"])


def conds(b: int = 1, t: int = T, seed: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, t, 1, H, W, generator=g) * 2 - 1, torch.rand(b, t, 3, H, W, generator=g) * 2 - 1


def test_generate_shapes_determinism_and_batch_invariance(pipe):
    a, b = conds(2)
    out = pipe.generate(a, b, [23, 99], FAST)
    assert out.shape == (2, T, 3, H, W) and out.min() >= 0 and out.max() <= 1
    again = pipe.generate(a, b, [23, 99], FAST)
    assert torch.equal(out, again)
    single = pipe.generate(a[1:], b[1:], [99], FAST)
    torch.testing.assert_close(single[0], out[1], atol=1e-4, rtol=0)
    other = pipe.generate(a[1:], b[1:], [100], FAST)
    assert (other - single).abs().max() > 1e-3


def test_cfg_context_layouts(pipe):
    pos = torch.arange(1, 4, dtype=torch.float32).view(1, 3, 1).expand(1, 3, 2)  # frames 1, 2, 3
    up = pipe._context(pos, "upstream")[:, 0, 0].tolist()
    # released pipeline: [0, p1, 0, p2, 0, p3] split into uncond (first T) and cond (last T) rows
    assert up == [0.0, 1.0, 0.0, 2.0, 0.0, 3.0]  # uncond rows [0, p1, 0], cond rows [p2, 0, p3]
    assert pipe._context(pos, "aligned")[:, 0, 0].tolist() == [0.0, 0.0, 0.0, 1.0, 2.0, 3.0]
    a, b = conds(1)
    diff = pipe.generate(a, b, [3], FAST) - pipe.generate(a, b, [3], SamplerConfig(steps=2, decode_chunk_size=4,
                                                                                    embed_order="aligned"))
    assert diff.abs().max() > 1e-4  # the layout reaches the UNet


def test_run_jobs_windows_match_single_call_and_blend(pipe):
    a, b = conds(1, t=10)  # 10 frames in windows of 6 sharing 2
    smp = SamplerConfig(steps=2, decode_chunk_size=4, window=6, overlap=2, seed=7)
    job = VideoJob(a[0], b[0], seed_key=3)
    out = pipe.run_jobs([job], smp)[0]
    assert out.shape == (10, 3, H, W) and torch.isfinite(out).all()
    # windows (0,6) (4,10): frames 0..3 come only from the first window, with its seed
    first = pipe.generate(a[:, :6], b[:, :6], [7 + 1_000_003 * 3 + 0], smp)[0]
    torch.testing.assert_close(out[:4], first[:4], atol=1e-4, rtol=0)
    second = pipe.generate(a[:, 4:], b[:, 4:], [7 + 1_000_003 * 3 + 4], smp)[0]
    torch.testing.assert_close(out[6:], second[2:], atol=1e-4, rtol=0)
    mid = out[4:6]
    lo, hi = torch.minimum(first[4:6], second[:2]), torch.maximum(first[4:6], second[:2])
    assert torch.all(mid >= lo - 1e-4) and torch.all(mid <= hi + 1e-4)
    short = pipe.run_jobs([VideoJob(a[0, :4], b[0, :4], 3), job], smp)
    assert [o.shape[0] for o in short] == [4, 10]


def test_prefetched_noise_is_upstream_order_and_changes_nothing(pipe, monkeypatch):
    from body4d_core.amodal import sampler as pl

    g = torch.Generator().manual_seed(41)
    ref = (torch.randn(3, 3, H, W, generator=g), torch.randn(3, 3, H, W, generator=g),
           torch.randn(3, 4, H // 8, W // 8, generator=g))
    drawn = VASPipeline.draw_noise(41, (3, 3, H, W), (3, 3, H, W), (3, 4, H // 8, W // 8))
    assert all(torch.equal(x, y) for x, y in zip(drawn, ref))
    a, b = conds(3, t=10)
    smp = SamplerConfig(steps=2, decode_chunk_size=4, window=6, overlap=2, seed=7, people_batch=2)
    jobs = [VideoJob(a[i], b[i], seed_key=i) for i in range(3)]
    pipe.profile = {}
    try:
        fast = pipe.run_jobs(jobs, smp)  # 6 windows in batches of 2: noise drawn on worker threads, ahead
        prof = dict(pipe.profile)
    finally:
        pipe.profile = None
    assert {"noise", "upload", "clip", "encode", "denoise", "decode", "download", "blend"} <= set(prof)

    class Inline(pl.NoisePrefetcher):  # noise drawn inside generate, batch by batch, as before
        def take(self, items):
            return None

    monkeypatch.setattr(pl, "NoisePrefetcher", Inline)
    slow = pipe.run_jobs(jobs, smp)
    assert all(torch.equal(x, y) for x, y in zip(fast, slow))
    with pytest.raises(ValueError, match="noise for 1 videos, expected 2"):
        pipe.generate(a[:2, :4], b[:2, :4], [1, 2], smp, noise=[drawn])


def test_out_of_memory_halves_the_batch_and_reuses_the_drawn_noise(pipe, monkeypatch):
    a, b = conds(3, t=4)
    smp = SamplerConfig(steps=1, decode_chunk_size=4, people_batch=4, seed=3)
    jobs = [VideoJob(a[i], b[i], seed_key=i) for i in range(3)]
    ref = pipe.run_jobs(jobs, smp)
    draws, real = [], VASPipeline.draw_noise
    monkeypatch.setattr(VASPipeline, "draw_noise", staticmethod(lambda *args: draws.append(args[0]) or real(*args)))
    generate = pipe.generate

    def small_only(ca, *args, **kwargs):
        if ca.shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (test)")
        return generate(ca, *args, **kwargs)

    monkeypatch.setattr(pipe, "generate", small_only)
    out = pipe.run_jobs(jobs, smp)  # 3 -> 1 per batch after two halvings
    for x, y in zip(out, ref):
        torch.testing.assert_close(x, y, atol=1e-4, rtol=0)  # same noise; batch size changes GEMM rounding only
    assert sorted(draws) == sorted(smp.seed + 1_000_003 * i for i in range(3))  # each window drawn once


def test_folder_roundtrip_and_weight_errors(parts, pipe, tmp_path):
    folder = save_vas_folder(parts, tmp_path / "vas")
    loaded = VASPipeline.from_pretrained(folder)
    a, b = conds(1)
    assert torch.equal(loaded.generate(a, b, [1], FAST), pipe.generate(a, b, [1], FAST))
    from safetensors.torch import load_file, save_file
    wpath = folder / "unet" / "diffusion_pytorch_model.safetensors"
    sd = load_file(str(wpath))
    save_file({k: v for k, v in sd.items() if not k.startswith("conv_in2")}, str(wpath))
    with pytest.raises(WeightsMismatchError, match="conv_in2"):
        VASPipeline.from_pretrained(folder)
    wpath.unlink()
    with pytest.raises(MissingWeightsError, match="no UNet weights"):
        VASPipeline.from_pretrained(folder)
    with pytest.raises(MissingWeightsError, match="no unet/ inside"):
        VASPipeline.from_pretrained(tmp_path)


def test_depth_model_and_clip_normalisation(tmp_path):
    model, prep = build_depth_model("tiny", seed=2)
    assert network_size((64, 96), 70, 14) == (70, 112)
    assert network_size((1080, 1920), 518, 14) == (518, 924)
    frames = torch.rand(3, 32, 48, 3, generator=torch.Generator().manual_seed(0))
    raw = estimate_depth(model, frames, prep, batch_size=2)
    assert raw.shape == (3, 70, 112)
    save_depth_folder(model, prep, tmp_path / "da")
    model2, prep2 = load_depth_model(tmp_path / "da")
    assert prep2["size"] == 70
    torch.testing.assert_close(estimate_depth(model2, frames, prep2), raw)
    as_bytes = (frames * 255).round().to(torch.uint8)  # uint8 frames (the stage accepts them) are scaled, not clipped
    torch.testing.assert_close(estimate_depth(model, as_bytes, prep), estimate_depth(model, as_bytes.float() / 255, prep))
    fake = torch.stack([torch.full((4, 4), float(v)) for v in (2, 3, 6)])
    norm = normalize_depth(fake)
    assert norm[0].eq(-1).all() and norm[2].eq(1).all() and norm[1].eq(-0.5).all()  # global, not per frame
    assert normalize_depth(torch.ones(2, 3, 3)).abs().max() == 0
    assert resize_depth(norm, (8, 6), torch.tensor([1])).shape == (1, 1, 8, 6)


def _clip(t: int):
    gt = np.zeros((32, 48), bool)
    gt[5:27, 19:29] = True
    cover = (np.arange(48) >= 15) & (np.arange(48) < 27)
    vis = np.stack([gt & ~cover[None, :] if 2 <= k <= 3 else gt for k in range(t)])
    frames = torch.rand(t, 32, 48, 3, generator=torch.Generator().manual_seed(1))
    return frames, gt, vis


class TruthMask:
    def __init__(self, gt: np.ndarray) -> None:
        self.gt = torch.from_numpy(gt).float()

    def run_jobs(self, jobs, sampler, hooks=None, budget_px=0):
        import torch.nn.functional as F
        return [F.interpolate(self.gt[None, None], size=tuple(j.cond_a.shape[-2:])).expand(j.length, 3, -1, -1)
                for j in jobs]


def test_stage_end_to_end_with_tiny_networks(parts):
    frames, gt, vis = _clip(6)
    tracks = Tracks.from_masks([4], vis[None])
    depth_model, prep = build_depth_model("tiny", seed=2)
    content = VASPipeline(parts["unet"], parts["vae"], parts["image_encoder"], parts["scheduler"])
    occ = OcclusionConfig(detection_resolution=(16, 24), completion_resolution=(32, 48))
    # real content completion + depth, amodal masks known: frames 2, 3 occluded, segment [0, 6)
    models = AmodalModels(TruthMask(gt), content, DepthEstimator(depth_model, prep))
    out, stats = run_amodal(frames, tracks, models, occ, FAST)
    assert isinstance(out, Amodal) and out.occluded[0].tolist() == [False, False, True, True, False, False]
    assert out.completed_rgb.shape == (2, 32, 48, 3) and out.completed_index.tolist() == [[0, 2], [0, 3]]
    assert out.completed_rgb.std() > 0
    out2, _ = run_amodal(frames, tracks, models, occ, FAST)
    assert np.array_equal(out2.completed_rgb, out.completed_rgb)
    assert set(stats.timings) == {"depth", "detect", "refine", "complete"}
    # every network real: a valid, deterministic result whatever the random masks say
    real = AmodalModels(content, content, DepthEstimator(depth_model, prep))
    a1, _ = run_amodal(frames, tracks, real, occ, FAST)
    a2, _ = run_amodal(frames, tracks, real, occ, FAST)
    assert np.array_equal(a1.occluded, a2.occluded) and np.array_equal(a1.packed_amodal, a2.packed_amodal)
    np.testing.assert_array_equal(a1.iou, a2.iou)


def test_load_amodal_models_from_folder_tree(parts, tmp_path):
    save_vas_folder(parts, tmp_path / "diffusion_vas" / "diffusion-vas-amodal-segmentation")
    save_vas_folder(parts, tmp_path / "diffusion_vas" / "diffusion-vas-content-completion")
    model, prep = build_depth_model("tiny", seed=2)
    with pytest.raises(MissingWeightsError, match="depth_anything.*python -m body4d_core setup --models depth_anything"):
        load_amodal_models([tmp_path], device="cpu")
    save_depth_folder(model, prep, tmp_path / "depth_anything" / "Depth-Anything-V2-Large-hf")
    models = load_amodal_models([tmp_path], device="cpu", dtype="auto")
    assert models.dtype == torch.float32 and len(models.modules()) == 7
    # the loader turns on the exact speed/memory options (single-token cross-attention, chunked FF)
    procs = {type(p).__name__ for p in models.mask.unet.attn_processors.values()}
    assert "SingleTokenCrossAttention" in procs
    frames, gt, vis = _clip(4)
    out, _ = run_amodal(frames, Tracks.from_masks([1], vis[None, :4]), models,
                        OcclusionConfig(detection_resolution=(16, 24), completion_resolution=(16, 24)), FAST)
    assert out.occluded.shape == (1, 4)
