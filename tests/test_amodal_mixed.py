"""One UNet call over videos of different lengths (``VASUNet.forward_runs``, amodal/mixed.py) gives what one
``forward`` call per length gives: diffusers' blocks in-process, the fused kernels under Triton's interpreter."""

from __future__ import annotations

import pytest
import torch

from body4d_core.amodal.accel import AccelConfig, apply_accel
from body4d_core.amodal.mixed import run_rows
from body4d_core.testing.amodal import build_vas_parts

from .triton_interpreter import run_interpreted

CHECK = r"""
import sys
import torch
from body4d_core.amodal.accel import AccelConfig, apply_accel
from body4d_core.testing.amodal import build_vas_parts

torch.manual_seed(0)
unet = build_vas_parts("tiny", seed=3)["unet"].eval()
cfg = AccelConfig(fused_resblocks=FUSED, fused_transformers=FUSED)
apply_accel(unet, cfg, dict(unet.attn_processors))


def inputs(lengths, videos, h, w):
    g = torch.Generator().manual_seed(5)
    dim = unet.config.cross_attention_dim
    xs = [torch.randn(v, t, 12, h, w, generator=g) for v, t in zip(videos, lengths)]
    ctx = [torch.randn(v * t, 1, dim, generator=g) for v, t in zip(videos, lengths)]
    ids = [torch.tensor([[7.0, 127.0, 0.02]]).repeat(v, 1) + torch.arange(v)[:, None] for v in videos[:len(lengths)]]
    return xs, ctx, ids


xs, ctx, ids = inputs(SIZES)
with torch.inference_mode():
    want = [unet(x, torch.tensor(500.0), c, i)[0] for x, c, i in zip(xs, ctx, ids)]
    got = unet.forward_runs(xs, torch.tensor(500.0), ctx, ids)
worst = 0.0
for w, g in zip(want, got):
    assert g.shape == w.shape, (g.shape, w.shape)
    worst = max(worst, float((g - w).abs().max() / w.abs().max()))
assert worst < 1e-5, worst
print("ok", worst)
if not FULL:
    sys.exit(0)
with torch.inference_mode():  # the blocks' own forwards are back after the call
    again = [unet(x, torch.tensor(500.0), c, i)[0] for x, c, i in zip(xs, ctx, ids)]
assert all(torch.equal(a, w) for a, w in zip(again, want))
# a video's frames mix only with its own: changing one entry leaves the others' outputs as they were
xs2 = [xs[0], xs[1] + 1.0, xs[2]]
with torch.inference_mode():
    got2 = unet.forward_runs(xs2, torch.tensor(500.0), ctx, ids)
assert torch.allclose(got2[0], got[0], atol=1e-6) and torch.allclose(got2[2], got[2], atol=1e-6)
assert not torch.allclose(got2[1], got[1], atol=1e-3)
"""


BLOCKS_CHECK = r"""
import torch
from diffusers.models.resnet import SpatioTemporalResBlock
from diffusers.models.transformers.transformer_temporal import TransformerSpatioTemporalModel
from body4d_core.amodal import fused_blocks as fb
from body4d_core.amodal.mixed import resblock_runs, transformer_runs
from body4d_core.testing.amodal import randomise

torch.manual_seed(0)


runs = ((2, 3), (1, 2))  # 2 videos of 3 frames, then 1 of 2: rows 0-5 and 6-7
for dtype in (torch.float32, torch.bfloat16):
    res = randomise(SpatioTemporalResBlock(32, 32, temb_channels=16)).to(dtype).eval()
    tr = randomise(TransformerSpatioTemporalModel(num_attention_heads=2, attention_head_dim=16, in_channels=32,
                                                  num_layers=1, cross_attention_dim=24)).to(dtype).eval()
    x, temb = torch.randn(8, 32, 4, 5, dtype=dtype), torch.randn(8, 16, dtype=dtype)
    ctx = torch.randn(8, 1, 24, dtype=dtype)
    with torch.no_grad():
        got = resblock_runs(res, runs, True, x, temb)
        want = torch.cat([fb.st_resblock(res, x[a:b], temb[a:b], torch.zeros(v, f, dtype=dtype))
                          for (v, f), (a, b) in zip(runs, ((0, 6), (6, 8)))])
        # the spatial half's GEMMs see 8 rows instead of 6 and 2: allow their rounding, nothing more
        assert float((got.float() - want.float()).abs().max()) <= 1e-5 * float(want.float().abs().max()) or (
            dtype == torch.bfloat16 and float(((got != want).float()).mean()) < 0.05), dtype
        got = transformer_runs(tr, runs, True, x, ctx, return_dict=False)[0]
        want = torch.cat([fb.st_transformer(tr, x[a:b], ctx[a:b], torch.zeros(v, f, dtype=dtype), return_dict=False)[0]
                          for (v, f), (a, b) in zip(runs, ((0, 6), (6, 8)))])
        tol = 1e-5 if dtype == torch.float32 else 2 ** -6
        assert float((got.float() - want.float()).abs().max()) <= tol * float(want.float().abs().max()), dtype
print("ok")
"""


def test_run_rows_lay_runs_end_to_end():
    assert run_rows([(2, 3), (1, 5), (3, 2)]) == [(2, 3, 0, 6), (1, 5, 6, 11), (3, 2, 11, 17)]


@pytest.mark.parametrize("fused", [False, True], ids=["diffusers-blocks", "fused-interpreted"])
def test_forward_runs_equals_one_call_per_length(fused):
    if fused:  # the interpreter is slow: the two block types alone, against one fused call per run
        assert run_interpreted(BLOCKS_CHECK).startswith("ok")
        return
    scope: dict = {}
    script = CHECK.replace("FUSED", "False").replace("SIZES", "(3, 5, 2), (2, 1, 3), 8, 16").replace("FULL", "True")
    exec(compile(script, "check", "exec"), scope)  # noqa: S102 - our own script


def test_forward_runs_rejects_a_context_of_the_wrong_length():
    unet = build_vas_parts("tiny", seed=3)["unet"].eval()
    apply_accel(unet, AccelConfig(), dict(unet.attn_processors))
    x = torch.randn(2, 3, 12, 8, 16)
    with pytest.raises(ValueError, match="expected batch\\*frames=6"):
        unet.forward_runs([x], 500.0, [torch.randn(5, 1, unet.config.cross_attention_dim)],
                          [torch.zeros(2, 3)])


def test_unet_bench_times_one_call_per_length_against_forward_runs():
    import subprocess
    import sys

    from .media import REPO

    res = subprocess.run([sys.executable, "-m", "bench.bench_unet_compile", "--tiny", "--mixed", "2,3", "--reps", "1",
                          "--no-results"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    row = next(ln for ln in res.stdout.splitlines() if ln.startswith("| CFG x 1 video each"))
    separate, together, deviation = (float(c) for c in row.strip("| ").split("|")[1:])
    assert separate > 0 and together > 0 and deviation < 1e-5


def test_sampler_mixed_lengths_makes_one_unet_call_a_step_with_the_same_frames():
    """Jobs of three lengths (one longer than the window): with AccelConfig.mixed_lengths the sampler denoises
    them in one UNet call per step instead of one per length, and every frame matches the default path."""
    from body4d_core.amodal.config import SamplerConfig
    from body4d_core.amodal.job import VideoJob
    from body4d_core.amodal.lowmem import LowMemory
    from body4d_core.amodal.sampler import VASPipeline

    parts = build_vas_parts("tiny", seed=4)
    pipe = VASPipeline(parts["unet"], parts["vae"], parts["image_encoder"], parts["scheduler"])
    g = torch.Generator().manual_seed(9)
    jobs = [VideoJob(torch.rand(t, 1, 16, 24, generator=g) * 2 - 1, torch.rand(t, 3, 16, 24, generator=g) * 2 - 1, k)
            for k, t in enumerate((3, 5, 8, 5))]
    smp = SamplerConfig(steps=2, decode_chunk_size=4, window=6, overlap=2, people_batch=8)  # 8 frames: 2 windows of 5

    def run(cfg: AccelConfig, memory: LowMemory = LowMemory()) -> tuple[list[torch.Tensor], dict]:
        pipe.accelerate(cfg)
        pipe.profile = {}
        try:
            return pipe.run_jobs(jobs, smp, memory=memory), dict(pipe.profile)
        finally:
            pipe.accelerate(None)
            pipe.profile = None

    ref, ref_prof = run(AccelConfig())
    got, prof = run(AccelConfig(mixed_lengths=True))
    assert ref_prof["unet_calls"] == 2 * smp.steps  # lengths 5 and 3: one call per length and step
    assert prof["unet_calls"] == smp.steps and prof["unet_frames"] == ref_prof["unet_frames"]
    for r, m in zip(ref, got):
        assert m.shape == r.shape
        torch.testing.assert_close(m, r, atol=1e-4, rtol=0)  # fp32 GEMM batch rounding, through the VAE
    # a low-memory mode keeps one length a call
    _, low = run(AccelConfig(mixed_lengths=True), LowMemory(sequential_cfg=True))
    assert low["unet_calls"] == 2 * 2 * smp.steps


def test_blend_kernels_write_into_a_given_output_or_refuse_it():
    pytest.importorskip("triton")
    from body4d_core.amodal.fused_triton import _out_like

    x = torch.zeros(4, 3, 2, 2)
    y = torch.empty(8, 3, 2, 2)
    assert _out_like(x, y[4:]).data_ptr() == y[4:].data_ptr()  # a run's rows of the block's output
    assert _out_like(x, None).shape == x.shape
    for bad in (torch.empty(4, 3, 2, 2, dtype=torch.float16), torch.empty(3, 4, 2, 2).transpose(0, 1),
                torch.empty(5, 3, 2, 2)):
        with pytest.raises(ValueError, match="out must be contiguous"):
            _out_like(x, bad)
