"""VAE-side options of the Diffusion-VAS sampler (issue 5): skip unused decode chunks, batched
decode/encode, channels_last / compiled decoder. Kept frames must not change."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from body4d_core.amodal.accel import AccelConfig
from body4d_core.amodal.config import OcclusionConfig, SamplerConfig
from body4d_core.amodal.job import VideoJob
from body4d_core.amodal.models import DEFAULT_ACCEL, AmodalModels
from body4d_core.amodal.sampler import VASPipeline, decode_calls, decode_items
from body4d_core.amodal.stage import run_amodal
from body4d_core.testing.amodal import build_vas_parts, build_vas_pipeline, random_conditions
from body4d_core.data import Tracks
from body4d_core.errors import InputError
from tests.test_amodal_pipeline import TruthMask  # the same ground-truth mask model

T, H, W = 10, 16, 24
SMP = SamplerConfig(steps=2, decode_chunk_size=4)


@pytest.fixture(scope="module")
def pipe():
    return build_vas_pipeline("tiny", seed=6)


def conds(b: int = 2, t: int = T, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    return random_conditions(b, t, H, W, seed)


class CallCounter:
    """Counts vae.decode / vae.encode calls and the frames each got."""

    def __init__(self, vae, name: str, monkeypatch) -> None:
        self.frames: list[int] = []
        real = getattr(vae, name)

        def wrapped(x, *args, **kwargs):
            self.frames.append(int(x.shape[0]))
            return real(x, *args, **kwargs)

        monkeypatch.setattr(vae, name, wrapped)


def with_accel(pipe: VASPipeline, cfg: AccelConfig, fn):
    try:
        pipe.accelerate(cfg)
        return fn()
    finally:
        pipe.accelerate(None)


def test_decode_plan_helpers():
    assert decode_items(2, 10, 4) == [(0, 0, 4), (0, 4, 4), (0, 8, 2), (1, 0, 4), (1, 4, 4), (1, 8, 2)]
    keep = torch.zeros(2, 10, dtype=torch.bool)
    keep[0, [1, 9]] = True
    keep[1, 5] = True
    assert decode_items(2, 10, 4, keep) == [(0, 0, 4), (0, 8, 2), (1, 4, 4)]
    assert decode_items(2, 10, 4, torch.zeros(2, 10, dtype=torch.bool)) == []
    with pytest.raises(ValueError, match=r"keep must be \[2, 10\]"):
        decode_items(2, 10, 4, keep[:, :5])
    calls = decode_calls(decode_items(3, 10, 4), 9)  # at most 9 frames a call: 2 chunks of 4, 4 chunks of 2
    assert [(n, [(v, s) for v, s, _ in c]) for n, c in calls] == [
        (4, [(0, 0), (0, 4)]), (4, [(1, 0), (1, 4)]), (4, [(2, 0), (2, 4)]), (2, [(0, 8), (1, 8), (2, 8)])]
    assert len(decode_calls(decode_items(3, 10, 4), 0)) == 9  # at least one chunk per call


def test_skip_unkept_decodes_only_needed_chunks_and_keeps_frames_bit_identical(pipe, monkeypatch):
    a, b = conds()
    ref = pipe.generate(a, b, [5, 6], SMP)
    keep = torch.zeros(2, T, dtype=torch.bool)
    keep[0, [1, 9]] = True  # chunks [0, 4) and [8, 10) of video 0
    keep[1, 5] = True  # chunk [4, 8) of video 1
    counter = CallCounter(pipe.vae, "decode", monkeypatch)
    out = with_accel(pipe, AccelConfig(skip_unkept=True), lambda: pipe.generate(a, b, [5, 6], SMP, keep=keep))
    assert sorted(counter.frames) == [2, 4, 4]  # 3 of the 6 chunks
    decoded = torch.zeros(2, T, dtype=torch.bool)
    decoded[0, :4] = decoded[0, 8:] = decoded[1, 4:8] = True
    assert torch.equal(out[decoded], ref[decoded])  # every frame of a decoded chunk, kept or not: bit-identical
    assert out[~decoded].abs().max() == 0  # skipped chunks are zeros, never plausible frames
    # the option is off by default: keep is then ignored
    assert torch.equal(pipe.generate(a, b, [5, 6], SMP, keep=keep), ref)


def test_run_jobs_skips_windows_without_kept_frames(pipe):
    a, b = conds(1)
    smp = SamplerConfig(steps=2, decode_chunk_size=4, window=6, overlap=2, seed=7)  # windows (0, 6), (4, 10)
    keep = np.zeros(T, bool)
    keep[:3] = True  # only the first window reaches a kept frame
    ref = pipe.run_jobs([VideoJob(a[0], b[0], 3)], smp)[0]
    pipe.profile = {}
    try:
        out = with_accel(pipe, AccelConfig(skip_unkept=True),
                         lambda: pipe.run_jobs([VideoJob(a[0], b[0], 3, keep=keep)], smp)[0])
        calls = pipe.profile["unet_frames"]
    finally:
        pipe.profile = None
    assert calls == 2 * 6 * smp.steps  # one window of 6 frames (x2 for guidance) instead of two
    torch.testing.assert_close(out[:3], ref[:3], atol=1e-4, rtol=0)  # batch of 1 instead of 2: rounding only
    assert out[6:].abs().max() == 0
    nothing = with_accel(pipe, AccelConfig(skip_unkept=True),
                         lambda: pipe.run_jobs([VideoJob(a[0], b[0], 3, keep=np.zeros(T, bool))], smp)[0])
    assert nothing.abs().max() == 0


def test_batched_decode_matches_per_video_loop(pipe, monkeypatch):
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(3, T, 4, H // pipe.vae_scale, W // pipe.vae_scale, generator=g)  # frames H x W
    ref = pipe._decode(lat, 4)
    counter = CallCounter(pipe.vae, "decode", monkeypatch)
    big = with_accel(pipe, AccelConfig(decode_px=1 << 30), lambda: pipe._decode(lat, 4))
    assert counter.frames == [24, 6]  # six 4-frame chunks in one call, three 2-frame chunks in another
    torch.testing.assert_close(big, ref, atol=1e-5, rtol=0)
    counter.frames.clear()
    two = with_accel(pipe, AccelConfig(decode_px=8 * H * W + 5), lambda: pipe._decode(lat, 4))
    assert counter.frames == [8, 8, 8, 6]  # at most 8 frames (the pixel budget) per call, whole chunks only
    torch.testing.assert_close(two, ref, atol=1e-5, rtol=0)
    counter.frames.clear()
    keep = torch.zeros(3, T, dtype=torch.bool)
    keep[:, 9] = True
    keep[2, 0] = True
    both = with_accel(pipe, AccelConfig(decode_px=1 << 30, skip_unkept=True), lambda: pipe._decode(lat, 4, keep))
    assert counter.frames == [6, 4]  # the three last 2-frame chunks, then video 2's first chunk
    torch.testing.assert_close(both[keep], ref[keep], atol=1e-5, rtol=0)


def test_encode_pixel_budget_is_per_frame_exact(pipe, monkeypatch):
    x = torch.rand(21, 3, H, W, generator=torch.Generator().manual_seed(1)) * 2 - 1
    counter = CallCounter(pipe.vae, "encode", monkeypatch)
    ref = pipe._encode(x)
    assert counter.frames == [8, 8, 5]  # upstream's chunks of 8
    counter.frames.clear()
    out = with_accel(pipe, AccelConfig(encode_px=16 * H * W), lambda: pipe._encode(x))
    assert counter.frames == [16, 5]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_vae_layout_and_compile_are_wired_and_undone(pipe, monkeypatch):
    a, b = conds()
    ref = pipe.generate(a, b, [5, 6], SMP)
    eager = CallCounter(pipe.vae, "decode", monkeypatch)
    cfg = AccelConfig(vae_channels_last=True, compile_vae=True, compile_backend="eager")

    def check():
        assert pipe.vae.compiled_decoder is not None and "compiled_decoder" not in dict(pipe.vae.named_children())
        assert pipe.vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
        assert pipe.vae.encoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
        return pipe.generate(a, b, [5, 6], SMP)

    torch.testing.assert_close(with_accel(pipe, cfg, check), ref, atol=1e-4, rtol=0)
    assert eager.frames == [2, 2]  # full 4-frame chunks went through the compiled decoder, the short ones eagerly
    assert not hasattr(pipe.vae, "compiled_decoder")
    assert pipe.vae.decoder.conv_in.weight.is_contiguous() and pipe.vae._accel == AccelConfig()


def test_default_options_include_the_exact_vae_options():
    assert DEFAULT_ACCEL.skip_unkept and DEFAULT_ACCEL.decode_px == DEFAULT_ACCEL.encode_px == 8 * 512 * 1024
    assert not (DEFAULT_ACCEL.vae_channels_last or DEFAULT_ACCEL.compile_vae)
    assert DEFAULT_ACCEL.native_dtype  # as upstream runs its half-precision weights: no autocast
    assert DEFAULT_ACCEL.split_geglu and DEFAULT_ACCEL.vae_contiguous_temporal  # exact layout options
    assert not DEFAULT_ACCEL.contiguous_temporal  # no gain measured in the UNet
    assert DEFAULT_ACCEL.fused_resblocks and DEFAULT_ACCEL.vae_fused_resblocks  # fused kernels (CUDA only)
    assert DEFAULT_ACCEL.fused_geglu and DEFAULT_ACCEL.fused_transformers


def test_bad_keep_and_budgets():
    a, b = conds(1)
    with pytest.raises(ValueError, match=r"keep must be bool \[10\]"):
        VideoJob(a[0], b[0], 1, keep=np.ones(9, bool))
    with pytest.raises(ValueError, match="keep must be bool"):
        VideoJob(a[0], b[0], 1, keep=np.ones(T, np.int64))
    assert VideoJob(a[0], b[0], 1).kept.all()
    for name in ("decode_px", "encode_px"):
        with pytest.raises(InputError, match=f"{name} must be >= 0"):
            AccelConfig(**{name: -1})


class NaNUnkept:
    """Wraps a sampler: frames a job does not keep come back as NaN (the stage must never read them)."""

    def __init__(self, pipe: VASPipeline) -> None:
        self.pipe, self.keeps = pipe, []

    def run_jobs(self, jobs, sampler, hooks=None, budget_px=1 << 20):
        outs = self.pipe.run_jobs(jobs, sampler, budget_px=budget_px)
        self.keeps += [j.kept.copy() for j in jobs]
        for j, o in zip(jobs, outs):
            o[torch.from_numpy(~j.kept)] = float("nan")
        return outs


def test_stage_completion_reads_only_kept_frames_and_skipping_changes_nothing(pipe):
    gt = np.zeros((32, 48), bool)
    gt[5:27, 19:29] = True
    cover = (np.arange(48) >= 15) & (np.arange(48) < 27)
    vis = np.stack([gt & ~cover[None, :] if 2 <= k <= 3 else gt for k in range(6)])
    frames = torch.rand(6, 32, 48, 3, generator=torch.Generator().manual_seed(1))
    tracks = Tracks.from_masks([4], vis[None])
    occ = OcclusionConfig(detection_resolution=(16, 24), completion_resolution=(32, 48))
    depth = lambda fr, hooks=None: torch.rand(fr.shape[0], 8, 8, generator=torch.Generator().manual_seed(2))  # noqa: E731
    ref, _ = run_amodal(frames, tracks, AmodalModels(TruthMask(gt), pipe, depth), occ, SMP)
    wrapped = NaNUnkept(pipe)
    cfg = AccelConfig(skip_unkept=True, decode_px=1 << 30, encode_px=1 << 30)
    out, stats = with_accel(pipe, cfg, lambda: run_amodal(frames, tracks, AmodalModels(TruthMask(gt), wrapped, depth),
                                                        occ, SMP))
    assert [k.tolist() for k in wrapped.keeps] == [[False, False, True, True, False, False]]  # the occluded frames
    assert out.completed_index.tolist() == [[0, 2], [0, 3]] and np.isfinite(out.completed_rgb).all()
    assert np.array_equal(out.completed_rgb, ref.completed_rgb)  # chunk [4, 6) skipped, kept frames identical
    assert np.array_equal(out.packed_amodal, ref.packed_amodal) and np.array_equal(out.occluded, ref.occluded)


def test_vae_native_skips_autocast_in_the_vae_only(monkeypatch):
    """bf16 VAE without autocast: the UNet still autocasts, results stay near the fp32 reference."""
    import contextlib

    from body4d_core.amodal import sampler as pl

    p = build_vas_parts("tiny", seed=6)
    ref = VASPipeline(p["unet"], p["vae"], p["image_encoder"], p["scheduler"]).generate(*conds(), [5, 6], SMP)
    for k in ("unet", "vae", "image_encoder"):
        p[k].to(torch.bfloat16)
    pipe = VASPipeline(p["unet"], p["vae"], p["image_encoder"], p["scheduler"], dtype=torch.bfloat16)
    state = {"in": False}

    @contextlib.contextmanager
    def recording(dev, dt):  # stands in for runtime.autocast (a no-op on the CPU anyway)
        state["in"] = True
        try:
            yield
        finally:
            state["in"] = False

    monkeypatch.setattr(pl, "autocast", recording)
    seen = {"unet": [], "vae": []}
    for name, mod, fn in (("unet", pipe.unet, "forward"), ("vae", pipe.vae, "decode")):
        real = getattr(mod, fn)
        monkeypatch.setattr(mod, fn, lambda *args, _r=real, _n=name, **kw: seen[_n].append(state["in"]) or _r(*args, **kw))
    out = with_accel(pipe, AccelConfig(vae_native=True), lambda: pipe.generate(*conds(), [5, 6], SMP))
    assert seen["vae"] and not any(seen["vae"]) and all(seen["unet"]) and torch.isfinite(out).all()
    assert (out - ref).abs().mean() < 0.05  # bf16 rounding only
    seen["vae"].clear()
    pipe.generate(*conds(), [5, 6], SMP)
    assert seen["vae"] and all(seen["vae"])  # the reference path autocasts the VAE


def test_temporal_conv3d_as_2d_is_exact_and_undone(pipe):
    from body4d_core.amodal.accel import _conv3d_as_2d

    torch.manual_seed(0)
    conv = torch.nn.Conv3d(6, 5, kernel_size=(3, 1, 1), padding=(1, 0, 0))
    x = torch.randn(2, 6, 7, 4, 5).permute(0, 1, 2, 4, 3)  # non-contiguous, as the decoder's permuted input
    torch.testing.assert_close(_conv3d_as_2d(conv, x), conv(x), atol=1e-5, rtol=0)
    a, b = conds()
    ref = pipe.generate(a, b, [5, 6], SMP)

    def check():
        routed = [m for m in list(pipe.unet.modules()) + list(pipe.vae.modules()) if "forward" in m.__dict__]
        assert routed and all(isinstance(m, torch.nn.Conv3d) for m in routed)
        assert any(m is pipe.vae.decoder.time_conv_out for m in routed)
        return pipe.generate(a, b, [5, 6], SMP)

    out = with_accel(pipe, AccelConfig(temporal_2d=True, vae_temporal_2d=True), check)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=0)
    assert not any("forward" in m.__dict__ for m in list(pipe.unet.modules()) + list(pipe.vae.modules()))
