"""Speed/memory options of the Diffusion-VAS UNet: defaults untouched, exact options agree with the reference."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch.utils.flop_counter import FlopCounterMode

from body4d_core.amodal.accel import AccelConfig, SingleTokenCrossAttention
from body4d_core.amodal.config import SamplerConfig
from body4d_core.amodal.job import VideoJob
from body4d_core.amodal.sampler import VASPipeline
from body4d_core.testing.amodal import build_vas_parts
from body4d_core.errors import InputError

from .triton_interpreter import run_interpreted

T, H, W = 4, 16, 24
FAST = SamplerConfig(steps=2, decode_chunk_size=4)


@pytest.fixture(scope="module")
def pipe():
    p = build_vas_parts("tiny", seed=4)
    return VASPipeline(p["unet"], p["vae"], p["image_encoder"], p["scheduler"])


@pytest.fixture(scope="module")
def reference(pipe):
    """Output of the untouched pipeline (no accelerate call, no profiling)."""
    a, b = conds()
    return pipe.generate(a, b, [11, 12], FAST)


def conds(b: int = 2, t: int = T, seed: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, t, 1, H, W, generator=g) * 2 - 1, torch.rand(b, t, 3, H, W, generator=g) * 2 - 1


def run(pipe: VASPipeline, cfg: AccelConfig) -> torch.Tensor:
    a, b = conds()
    try:
        pipe.accelerate(cfg)
        return pipe.generate(a, b, [11, 12], FAST)
    finally:
        pipe.accelerate(None)


def test_default_options_and_profiling_change_nothing(pipe, reference):
    assert torch.equal(run(pipe, AccelConfig()), reference)
    a, b = conds()
    pipe.profile = {}
    try:
        out = pipe.generate(a, b, [11, 12], FAST)
        prof = dict(pipe.profile)
    finally:
        pipe.profile = None
    assert torch.equal(out, reference)
    assert prof["unet_calls"] == FAST.steps and prof["unet_frames"] == 2 * 2 * T * FAST.steps
    assert all(prof[k] >= 0 for k in ("noise", "encode", "denoise", "decode"))


def test_single_token_shortcut_matches_attention_and_falls_back():
    torch.manual_seed(0)
    attn = Attention(query_dim=16, cross_attention_dim=12, heads=2, dim_head=8).eval()
    x, ctx = torch.randn(3, 7, 16), torch.randn(3, 1, 12)
    ref = AttnProcessor2_0()(attn, x, ctx)
    short = SingleTokenCrossAttention(AttnProcessor2_0())
    torch.testing.assert_close(short(attn, x, ctx), ref, atol=1e-6, rtol=1e-6)
    ctx2 = torch.randn(3, 2, 12)  # two tokens: the shortcut must not apply
    assert torch.equal(short(attn, x, ctx2), AttnProcessor2_0()(attn, x, ctx2))
    self_attn = Attention(query_dim=16, heads=2, dim_head=8).eval()
    assert torch.equal(short(self_attn, x, None), AttnProcessor2_0()(self_attn, x, None))


def test_shortcut_is_exact_in_the_pipeline_and_saves_flops(pipe, reference):
    torch.testing.assert_close(run(pipe, AccelConfig(cross_attn_shortcut=True)), reference, atol=1e-4, rtol=0)
    x = torch.randn(2, T, 12, 4, 4)
    ctx, ids = torch.randn(2 * T, 1, 32), torch.randn(2, 3)
    flops = []
    for cfg in (AccelConfig(), AccelConfig(cross_attn_shortcut=True)):
        pipe.accelerate(cfg)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            pipe.unet(x, 10.0, ctx, ids)
        flops.append(counter.get_total_flops())
    pipe.accelerate(None)
    assert flops[1] < flops[0]
    assert not any(isinstance(p, SingleTokenCrossAttention) for p in pipe.unet.attn_processors.values())


def test_chunked_feed_forward_and_channels_last_are_exact(pipe, reference):
    torch.testing.assert_close(run(pipe, AccelConfig(ff_rows=7)), reference, atol=1e-4, rtol=0)  # 7 divides nothing
    assert not any("forward" in m.__dict__ for m in pipe.unet.modules())  # undone
    torch.testing.assert_close(run(pipe, AccelConfig(channels_last=True)), reference, atol=1e-4, rtol=0)
    assert pipe.unet.conv_in2.weight.is_contiguous()  # back to NCHW


def test_split_geglu_equals_diffusers_geglu_and_is_undone(pipe, reference):
    from diffusers.models.activations import GEGLU

    from body4d_core.amodal.accel import _split_geglu
    torch.manual_seed(0)
    geglu = GEGLU(6, 5).eval()
    x = torch.randn(3, 7, 6)
    out = _split_geglu(geglu, x)
    assert out.is_contiguous() and out.shape == (3, 7, 5)
    torch.testing.assert_close(out, geglu(x), atol=1e-6, rtol=1e-6)
    assert float((out - geglu(x * 1.01)).abs().max()) > 1e-4  # the comparison can fail
    cfg = AccelConfig(split_geglu=True, ff_rows=5)
    n = sum(type(m).__name__ == "GEGLU" for m in pipe.unet.modules())
    try:
        pipe.accelerate(cfg)
        assert n > 0 and sum("forward" in m.__dict__ for m in pipe.unet.modules() if type(m).__name__ == "GEGLU") == n
    finally:
        pipe.accelerate(None)
    torch.testing.assert_close(run(pipe, cfg), reference, atol=1e-4, rtol=0)
    assert not any("forward" in m.__dict__ for m in pipe.unet.modules())  # undone


def test_contiguous_temporal_resblocks_are_exact_and_undone(pipe, reference):
    cfg = AccelConfig(contiguous_temporal=True)
    n = sum(type(m).__name__ == "SpatioTemporalResBlock" for m in pipe.unet.modules())
    try:
        pipe.accelerate(cfg)
        wired = [m for m in pipe.unet.modules()
                 if type(m).__name__ == "SpatioTemporalResBlock" and "forward" in m.__dict__]
        assert n > 0 and len(wired) == n
    finally:
        pipe.accelerate(None)
    torch.testing.assert_close(run(pipe, cfg), reference, atol=1e-6, rtol=0)
    assert not any("forward" in m.__dict__ for m in pipe.unet.modules())  # undone
    # the VAE decoder's resblocks too: the same decode, and undone by the next apply_vae_accel
    from body4d_core.amodal.accel import apply_vae_accel
    vae = pipe.vae
    z = torch.randn(4, vae.config.latent_channels, 3, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = vae.decode(z, num_frames=4).sample
        apply_vae_accel(vae, AccelConfig(vae_contiguous_temporal=True))
        assert any("forward" in m.__dict__ for m in vae.modules() if type(m).__name__ == "SpatioTemporalResBlock")
        out = vae.decode(z, num_frames=4).sample
        apply_vae_accel(vae, AccelConfig())
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)
    assert not any("forward" in m.__dict__ for m in vae.modules())


def test_compiled_blocks_are_wired_and_undone(pipe):
    pipe.accelerate(AccelConfig(compile_blocks=True, compile_backend="eager"))
    names = {type(m).__name__ for m in pipe.unet.modules() if getattr(m, "_compiled_call_impl", None) is not None}
    assert names == {"SpatioTemporalResBlock", "TransformerSpatioTemporalModel"}
    pipe.accelerate(None)
    assert all(getattr(m, "_compiled_call_impl", None) is None for m in pipe.unet.modules())


def test_run_jobs_with_every_exact_option(pipe):
    a, b = conds(1, t=8)
    smp = SamplerConfig(steps=2, decode_chunk_size=4, window=6, overlap=2)
    jobs = [VideoJob(a[0], b[0], 3), VideoJob(a[0, :4], b[0, :4], 5)]
    ref = pipe.run_jobs(jobs, smp)
    pipe.accelerate(AccelConfig(cross_attn_shortcut=True, channels_last=True, ff_rows=5))
    try:
        fast = pipe.run_jobs(jobs, smp)
    finally:
        pipe.accelerate(None)
    for r, f in zip(ref, fast):
        torch.testing.assert_close(f, r, atol=1e-4, rtol=0)


def test_native_dtype_skips_autocast_and_stays_close(monkeypatch, reference):
    """bf16 weights computing natively (no autocast) run end to end and stay near the fp32 result."""
    from body4d_core.amodal import sampler as pl

    p = build_vas_parts("tiny", seed=4)
    for k in ("unet", "vae", "image_encoder"):
        p[k].to(torch.bfloat16)
    pipe = VASPipeline(p["unet"], p["vae"], p["image_encoder"], p["scheduler"], dtype=torch.bfloat16)
    entered = []
    monkeypatch.setattr(pl, "autocast", lambda dev, dt: entered.append(dt) or __import__("contextlib").nullcontext())
    a, b = conds()
    pipe.accelerate(AccelConfig(cross_attn_shortcut=True, native_dtype=True))
    out = pipe.generate(a, b, [11, 12], FAST)
    assert entered == [] and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert (out - reference).abs().mean() < 0.05  # bf16 rounding only (same seeds, same weights)
    pipe.accelerate(None)
    pipe.generate(a, b, [11, 12], FAST)
    assert entered and set(entered) == {torch.bfloat16}  # the reference path autocasts


def test_bad_accel_option():
    with pytest.raises(InputError, match="ff_rows must be >= 0"):
        AccelConfig(ff_rows=-1)


def test_fast_groupnorm_is_wired_exact_off_cuda_and_undone(pipe, reference):
    """On CPU the routed GroupNorms fall back to F.group_norm (bit-identical); every GroupNorm of the UNet
    and the VAE is routed, none with a compile option, and ``accelerate(None)`` undoes it."""
    n_unet = sum(isinstance(m, torch.nn.GroupNorm) for m in pipe.unet.modules())
    n_vae = sum(isinstance(m, torch.nn.GroupNorm) for m in pipe.vae.modules())
    a, b = conds()
    try:
        pipe.accelerate(AccelConfig(fast_groupnorm=True))
        routed = [m for m in list(pipe.unet.modules()) + list(pipe.vae.modules()) if "forward" in m.__dict__]
        assert len(routed) == n_unet + n_vae > 0 and all(isinstance(m, torch.nn.GroupNorm) for m in routed)
        out = pipe.generate(a, b, [11, 12], FAST)
        pipe.accelerate(AccelConfig(fast_groupnorm=True, compile_blocks=True, compile_backend="eager"))
        assert not any(isinstance(m, torch.nn.GroupNorm) and "forward" in m.__dict__ for m in pipe.unet.modules())
    finally:
        pipe.accelerate(None)
    assert torch.equal(out, reference)
    assert not any("forward" in m.__dict__ for m in list(pipe.unet.modules()) + list(pipe.vae.modules()))


GROUPNORM_CHECK = r"""
import torch, torch.nn.functional as F
from body4d_core.amodal import fused_triton as ft

torch.manual_seed(0)
worst = 0.0
cases = (((3, 8, 5, 7), 4, True), ((2, 6, 3, 4, 5), 3, False), ((2, 4, 9, 11), 2, True))
for shape, groups, affine in cases:
    x = torch.randn(shape) * 2 + 40.0  # a large mean: the chunked statistics must not cancel
    w = torch.randn(shape[1]) if affine else None
    b = torch.randn(shape[1]) if affine else None
    for tile in (16, 64, 8192):  # several partials per group, with partial last ones; and one partial
        mean, rstd = ft._group_stats(ft._view(x), groups, 1e-5, tile=tile)
        xg = x.double().reshape(shape[0], groups, -1)
        worst = max(worst, float((mean.view(shape[0], groups) - xg.mean(-1)).abs().max()),
                    float((rstd.view(shape[0], groups) - (xg.var(-1, unbiased=False) + 1e-5).rsqrt()).abs().max()))
        y = ft.group_norm_act(x, groups, w, b, 1e-5, silu=False, tile=tile)
        assert y.shape == x.shape and y.dtype == x.dtype
        worst = max(worst, float((y - F.group_norm(x, groups, w, b, 1e-5)).abs().max()))
print("worst", worst)
assert worst < 2e-3, worst
"""


def test_triton_groupnorm_matches_torch_in_the_interpreter():
    """The Triton GroupNorm kernels (run by Triton's CPU interpreter): statistics against fp64 and the
    output against F.group_norm, for 4-D and 5-D inputs, with and without affine, over 1..n chunks."""
    assert "worst" in run_interpreted(GROUPNORM_CHECK)
