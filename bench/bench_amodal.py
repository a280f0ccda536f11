"""Amodal Complete on a GPU: real-size random networks, 5 people x 90 frames with occlusion.

Networks at the released sizes with random weights: two Diffusion-VAS pipelines (SVD-XT UNet
+ conv_in2, SVD temporal VAE, CLIP ViT-H/14) and Depth Anything V2 Large. Random weights do
not segment anything, so the amodal-mask sampler runs for real (its time counts) but its
output is replaced by known amodal masks: each person is hidden behind a moving bar for 14
frames, which fixes how much refinement and completion work follows, as in a real clip.

Runs each speed/memory variant (body4d_core/amodal/accel.py; baseline first) for --variant-steps
sampler steps on the whole clip and projects every sub-stage to --steps (the extra denoising
steps at the measured per-step time), then prints one table: per-sub-stage seconds, total,
peak VRAM per sub-stage, achieved UNet TFLOP/s (FLOPs counted on the meta device), and the max
abs difference of one fixed UNet call against the baseline. Targets: total < 60 s, peak < 24 GB.

    python -m bench.bench_amodal                # H200, bf16, 5 people x 90 frames at 720p (~6-7 min)
    python -m bench.bench_amodal --variants baseline,xattn --fast-path --upstream-style
    python -m bench.bench_amodal --quick --variants default   # per-pass parts of the default options (~80 s)
    python -m bench.bench_amodal --quick --variants default,default+native   # + no-autocast A/B (~140 s)
    python -m bench.bench_amodal --tiny         # CPU smoke test of the script
    # issue 5, step-independent cost: VAE options side by side + kernel-level profile (~6-7 min)
    python -m bench.bench_amodal --quick --time-limit 460 --compile-estimate 120 --profile default,t2d+vae-cl \
        --variants prev-default,default,vae-compile,t2d,vae-cl,vae-native

--quick prints one compact side-by-side table at the end (fixed seconds, per-step seconds, VAE
decode/encode seconds per pass, peak VRAM, compile seconds). --profile NAMES runs torch.profiler
(before the variants) over ONE UNet call at the completion size (batch as in the stage's refine
pass), ONE VAE decode chunk and ONE VAE encode call with each named variant's options and
prints the top CUDA kernels by self time with a category column and totals per category.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import fields

_T0 = time.perf_counter()  # --time-limit counts from here (before the heavy imports)

import numpy as np
import torch
import torch.nn.functional as F

from bench.clips import occluded_ellipses  # noqa: E402
from bench.kernel_profile import timed_profile  # noqa: E402
from bench.peak_memory import gpu_peak_gib, reset_gpu_peak  # noqa: E402
from bench.rows import RowWriter, add_rows_args  # noqa: E402
from bench.timers import sync  # noqa: E402
from body4d_core.amodal.config import OcclusionConfig, SamplerConfig  # noqa: E402
from body4d_core.amodal.accel import AccelConfig  # noqa: E402
from body4d_core.amodal.models import VAE_CALL_PX, AmodalModels, DepthEstimator  # noqa: E402
from body4d_core.profile import RunProfile  # noqa: E402
from body4d_core.amodal.occlusion import detection_size  # noqa: E402
from body4d_core.amodal.stage import run_amodal  # noqa: E402
from body4d_core.testing.amodal import build_depth_model, build_vas_pipeline  # noqa: E402
from body4d_core.data import Tracks  # noqa: E402


class Recorder:
    """Wraps a sampler: times each run_jobs call (whole call and its parts) and its peak VRAM.

    With ``truth`` it returns the known amodal masks instead of the (random-weight) output;
    their resized copies are made once (``prepare``), outside the timed runs, and the time the
    replacement still takes is recorded as ``truth_s`` (bench overhead, not stage time)."""

    def __init__(self, pipe, truth: dict[int, np.ndarray] | None = None, resized: dict | None = None) -> None:
        self.pipe, self.truth, self.calls = pipe, truth, []
        self.resized = resized if resized is not None else {}

    def prepare(self, sizes) -> "Recorder":
        """Resize every person's truth to each diffusion size once (area, like the per-window resize)."""
        for o, masks in (self.truth or {}).items():
            for size in sizes:
                if (o, tuple(size)) not in self.resized:
                    m = torch.from_numpy(masks).float()[:, None]
                    self.resized[(o, tuple(size))] = torch.cat([F.interpolate(m[s:s + 16], size=tuple(size),
                                                                              mode="area") for s in range(0, len(m), 16)])
        return self

    def run_jobs(self, jobs, sampler, hooks=None, budget_px=1 << 20):
        dev = self.pipe.device
        sync(dev)
        reset_gpu_peak(dev)
        self.pipe.profile = {}
        t0 = time.perf_counter()
        res = self.pipe.run_jobs(jobs, sampler, budget_px=budget_px)
        sync(dev)
        call = {"seconds": time.perf_counter() - t0, **self.pipe.profile, "peak": gpu_peak_gib(dev)}
        self.calls.append(call)
        self.pipe.profile = None
        if self.truth is None:
            return res
        t1 = time.perf_counter()
        out = []
        for j in jobs:
            size = tuple(j.cond_a.shape[-2:])
            if (j.obj_id, size) not in self.resized:
                self.prepare([size])
            m = self.resized[(j.obj_id, size)][torch.as_tensor(j.frames, dtype=torch.long)]
            out.append(m.expand(-1, 3, -1, -1))
        call["truth_s"] = time.perf_counter() - t1
        return out


def upstream_style(models: AmodalModels, mask_pipe, content_pipe, rgb: torch.Tensor, tracks: Tracks,
                   segments: dict[int, list[tuple[int, int]]], occ: OcclusionConfig, smp: SamplerConfig,
                   budget_px: int) -> float:
    """Seconds for SAM-Body4D's orchestration of the same networks and the same occluded windows:
    people one at a time in consecutive 64-frame batches, and for every occluded person the
    depth of the whole clip recomputed before its refinement and completion."""
    from body4d_core.amodal.depth import normalize_depth, resize_depth
    from body4d_core.amodal.job import VideoJob
    from body4d_core.amodal.occlusion import detection_size

    one = SamplerConfig(steps=smp.steps, window=64, overlap=0, people_batch=1, decode_chunk_size=smp.decode_chunk_size)
    h, w = rgb.shape[1:3]
    det = detection_size((h, w), occ.detection_resolution)
    comp = detection_size((h, w), occ.completion_resolution)
    sync()
    t0 = time.perf_counter()
    depth = resize_depth(normalize_depth(models.depth(rgb)), det)
    for k, o in enumerate(tracks.obj_ids.tolist()):
        m = F.interpolate(torch.from_numpy(tracks.masks_of(o)).float()[:, None], size=det, mode="area") * 2 - 1
        for s in range(0, tracks.num_frames, 64):
            mask_pipe.run_jobs([VideoJob(m[s:s + 64], depth[s:s + 64], o, np.arange(s, min(s + 64, len(m))), o)],
                               one, budget_px=budget_px)
    for o, segs in segments.items():
        if not segs:
            continue
        a, b = segs[0][0], segs[-1][1]
        dcomp = resize_depth(normalize_depth(models.depth(rgb)), comp)[a:b]
        m = F.interpolate(torch.from_numpy(tracks.masks_of(o, slice(a, b))).float()[:, None], size=comp,
                          mode="area") * 2 - 1
        mask_pipe.run_jobs([VideoJob(m, dcomp, o, np.arange(a, b), o)], one, budget_px=budget_px)
        content_pipe.run_jobs([VideoJob(m.expand(-1, 3, -1, -1), m, o, np.arange(a, b), o)], one, budget_px=budget_px)
    sync()
    return time.perf_counter() - t0


def _accel(cfg: AccelConfig | None = None, **over) -> dict:
    """AccelConfig fields as kwargs (backend chosen per device later), with overrides; default: the run profile's."""
    cfg = RunProfile().accel_config() if cfg is None else cfg
    out = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name != "compile_backend"}
    out.update(over)
    return out


PREV_DEFAULT = _accel(AccelConfig(), cross_attn_shortcut=True, ff_rows=1 << 18)  # before the VAE options
VARIANTS = {
    # name: (AccelConfig kwargs, compute dtype or None = --dtype, budget multiplier, note)
    "baseline": ({}, None, 1, "reference path (before issue 5)"),
    "xattn": ({"cross_attn_shortcut": True}, None, 1, "exact 1-token cross-attention"),
    "cl": ({"channels_last": True}, None, 1, "channels_last convs"),
    "xattn+cl": ({"cross_attn_shortcut": True, "channels_last": True}, None, 1, ""),
    "xattn+compile": ({"cross_attn_shortcut": True, "compile_blocks": True}, None, 1, "regional torch.compile"),
    "xattn+cl+compile": ({"cross_attn_shortcut": True, "channels_last": True, "compile_blocks": True}, None, 1, ""),
    "xattn+fp16": ({"cross_attn_shortcut": True}, torch.float16, 1, "fp16 instead of bf16"),
    "xattn+ff": ({"cross_attn_shortcut": True, "ff_rows": 1 << 18}, None, 1, "chunked feed-forward (memory)"),
    "prev-default": (PREV_DEFAULT, None, 1, "second session's defaults (xattn + chunked FF), VAE as upstream"),
    "skip-unkept": ({**PREV_DEFAULT, "skip_unkept": True}, None, 1, "exact: decode only chunks with a kept frame"),
    "batched-vae": ({**PREV_DEFAULT, "decode_px": VAE_CALL_PX, "encode_px": VAE_CALL_PX}, None, 1,
                    "exact: VAE decode/encode calls batched up to 8x512x1024 frame-pixels"),
    "default": (_accel(), None, 1, "load_amodal_models' options (prev-default + skip-unkept + batched-vae, native)"),
    "autocast": (_accel(native_dtype=False), None, 1, "default under bf16 autocast (fp32 norms; the default until "
                 "the third session)"),
    "vae-2x": (_accel(decode_px=2 * VAE_CALL_PX, encode_px=2 * VAE_CALL_PX), None, 1,
               "default, VAE calls up to 2x the pixels (more VRAM)"),
    "vae-cl": (_accel(vae_channels_last=True), None, 1, "default + channels_last VAE convs"),
    "vae-compile": (_accel(compile_vae=True), None, 1, "default + torch.compile of the VAE decoder"),
    "vae-t2d": (_accel(vae_temporal_2d=True), None, 1, "default + VAE temporal Conv3d as 2-D convs (exact)"),
    "t2d": (_accel(temporal_2d=True, vae_temporal_2d=True), None, 1,
            "default + UNet and VAE temporal Conv3d as 2-D convs (exact)"),
    "t2d+vae-cl": (_accel(temporal_2d=True, vae_temporal_2d=True, vae_channels_last=True), None, 1,
                   "t2d + channels_last VAE"),
    "vae-native": (_accel(vae_native=True), None, 1, "default + VAE in bf16 without autocast (close, not exact)"),
    "vae-cl+native": (_accel(vae_channels_last=True, vae_native=True), None, 1,
                      "default + channels_last VAE in bf16 without autocast (close, not exact)"),
    "vae-cl+compile": (_accel(vae_channels_last=True, compile_vae=True), None, 1, "default + both"),
    "cl+vae-cl": (_accel(channels_last=True, vae_channels_last=True), None, 1,
                  "default + channels_last UNet and VAE"),
    "default+native": (_accel(native_dtype=True), None, 1, "no autocast: bf16 norms (close, not exact)"),
    "default+gn": (_accel(fast_groupnorm=True), None, 1, "default + GroupNorm statistics as Triton kernels (close)"),
    "default+fused": (_accel(fused_resblocks=True, vae_fused_resblocks=True, fused_geglu=True,
                                              fused_transformers=True), None, 1,
                      "default + fused kernels (the same as default since the twelfth session)"),
    "no-fused": (_accel(fused_resblocks=False, vae_fused_resblocks=False, fused_geglu=False,
                                         fused_transformers=False), None, 1,
                 "default without the fused kernels (amodal_accel=unfused; the default before)"),
    "native+t2d+vae-cl": (_accel(native_dtype=True, temporal_2d=True, vae_temporal_2d=True, vae_channels_last=True),
                          None, 1, "default+native + temporal convs as 2-D + channels_last VAE"),
    "mixed": (_accel(mixed_lengths=True), None, 1,
              "default + windows of different lengths in one UNet call (amodal_accel=mixed; up to GEMM rounding)"),
    "xattn+ff+batch2x": ({"cross_attn_shortcut": True, "ff_rows": 1 << 18}, None, 2, "2x people per UNet batch"),
}
DEFAULT_VARIANTS = "baseline,xattn,cl,xattn+ff,xattn+fp16,xattn+compile"
STAGES = ("detect", "refine", "complete")


def unet_gflops(pipe, size: tuple[int, int], shortcut: bool, frames: int = 16) -> float:
    """UNet GFLOP per video frame (CFG counted separately) at a pixel size, counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    from body4d_core.amodal.accel import AccelConfig, apply_accel
    from body4d_core.testing.amodal import UNET
    from body4d_core.amodal.unet import VASUNet

    preset = "tiny" if pipe.unet.config.block_out_channels[0] < 320 else "real"
    with torch.device("meta"):
        u = VASUNet(**UNET[preset]).eval()
    u.to("meta")
    apply_accel(u, AccelConfig(cross_attn_shortcut=shortcut), dict(u.attn_processors))
    h, w = size[0] // pipe.vae_scale, size[1] // pipe.vae_scale
    with torch.device("meta"):
        x, ctx, ids = torch.randn(1, frames, 12, h, w), torch.randn(frames, 1, u.config.cross_attention_dim), \
            torch.randn(1, 3)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        u(x, torch.tensor(1.0, device="meta"), ctx, ids)
    return counter.get_total_flops() / frames / 1e9


def set_dtype(pipes, dtype: torch.dtype) -> None:
    """Cast the pipelines' networks (weights) and compute precision."""
    for p in pipes:
        for m in p.models():
            m.to(dtype)
        p.dtype = dtype


def check_output(pipe, size: tuple[int, int]) -> torch.Tensor:
    """One UNet call on a fixed input (2 videos x 8 frames at ``size``) to compare variants numerically."""
    from body4d_core.runtime import autocast

    g = torch.Generator().manual_seed(0)
    h, w = size[0] // pipe.vae_scale, size[1] // pipe.vae_scale
    x = torch.randn(2, 8, 12, h, w, generator=g)
    ctx = torch.randn(16, 1, pipe.unet.config.cross_attention_dim, generator=g)
    ids = torch.tensor([[7.0, 127.0, 0.02]] * 2)
    dev, udtype = pipe.device, next(pipe.unet.parameters()).dtype
    with torch.no_grad(), autocast(dev, pipe.dtype):
        out = pipe.unet(x.to(dev, udtype), torch.tensor(1.0, device=dev), ctx.to(dev, udtype), ids.to(dev, udtype))[0]
    return out.float().cpu()


def _shape_key(cfg: AccelConfig) -> tuple:
    """What decides the VAE decoder's input shapes in a run (not the layout or compilation)."""
    return cfg.decode_px, cfg.skip_unkept


def record_decode_shapes(pipes, store: set) -> list:
    """Forward pre-hooks adding (pipe index, latent shape, num_frames) of every VAE decoder call to ``store``."""
    def hook(k):
        def fn(module, args, kwargs):
            z = args[0] if args else kwargs["sample"]
            store.add((k, tuple(z.shape), int(kwargs.get("num_frames", 1))))
        return fn
    return [p.vae.decoder.register_forward_pre_hook(hook(k), with_kwargs=True) for k, p in enumerate(pipes)]


def warm_vae_decoder(pipes, shapes: set, chunk: int) -> tuple[float, int]:
    """Run each recorded full-chunk decoder shape once on random latents through the compiled decoder
    (compiles it; short chunks run eagerly anyway); returns the seconds and the number of shapes."""
    sync()
    t0 = time.perf_counter()
    full = sorted(s for s in shapes if s[2] == chunk)
    for k, shape, n in full:
        pipe = pipes[k]
        z = torch.randn(shape, device=pipe.device, dtype=next(pipe.vae.parameters()).dtype)
        with torch.no_grad(), pipe._vae_context():
            pipe._vae_decode(z, n, compiled=True)
    sync()
    return time.perf_counter() - t0, len(full)


def run_variant(name: str, spec, ctx: dict, a) -> dict:
    """Apply one variant, (compile-)warm up, time the stage at --variant-steps, project to --steps."""
    kwargs, vdtype, budget_mult, note = spec
    pipes = (ctx["mask_pipe"], ctx["content_pipe"])
    dev, base_dtype = ctx["dev"], ctx["dtype"]
    vdtype = vdtype if (vdtype is not None and dev.type == "cuda") else base_dtype
    if vdtype != base_dtype:
        set_dtype(pipes, vdtype)
    cfg = AccelConfig(**kwargs, compile_backend="inductor" if dev.type == "cuda" else "eager")  # CPU smoke: no C++ build
    for p in pipes:
        p.accelerate(cfg)
    budget = a.budget_px * budget_mult
    smp = SamplerConfig(steps=a.variant_steps, people_batch=a.people_batch * budget_mult, window=a.window)
    warm_s = 0.0
    shapes = ctx.setdefault("decode_shapes", {}).get(_shape_key(cfg))
    hooks = []
    try:
        if cfg.compile_vae and not cfg.compile_blocks and shapes:
            warm_s, n_shapes = warm_vae_decoder(pipes, shapes, smp.decode_chunk_size)  # met by an earlier variant
            print(f"  {name}: compiled the VAE decoder for {n_shapes} shapes in {warm_s:.1f} s", flush=True)
        elif cfg.compile_blocks or cfg.compile_vae:  # compile every shape of the three passes once, with 1 step
            t0 = time.perf_counter()
            warm = AmodalModels(Recorder(ctx["mask_pipe"], ctx["truth"]), ctx["content_pipe"], ctx["depth"], dev,
                                vdtype)
            run_amodal(ctx["rgb"], ctx["tracks"], warm, ctx["occ"], SamplerConfig(steps=1, window=a.window,
                       people_batch=smp.people_batch), budget_px=budget)
            sync()
            warm_s = time.perf_counter() - t0
        if not (cfg.compile_vae or cfg.compile_blocks):
            hooks = record_decode_shapes(pipes, ctx["decode_shapes"].setdefault(_shape_key(cfg), set()))
        check = None if a.quick else check_output(ctx["mask_pipe"], ctx["det"])
        mask_rec = Recorder(ctx["mask_pipe"], ctx["truth"], ctx["resized"])
        content_rec = Recorder(ctx["content_pipe"])
        models = AmodalModels(mask_rec, content_rec, ctx["depth"], dev, vdtype)
        reset_gpu_peak(dev)
        sync()
        t0 = time.perf_counter()
        _, stats = run_amodal(ctx["rgb"], ctx["tracks"], models, ctx["occ"], smp, budget_px=budget)
        sync()
        truth_s = sum(c.get("truth_s", 0.0) for c in mask_rec.calls)
        measured = time.perf_counter() - t0 - truth_s  # the bench's mask replacement is not stage time
        peak = gpu_peak_gib(dev)
    finally:
        for h in hooks:
            h.remove()
        for p in pipes:
            p.accelerate(None)
        if vdtype != base_dtype:
            set_dtype(pipes, base_dtype)
    scale = a.steps / a.variant_steps
    calls = dict(zip(STAGES, mask_rec.calls[:2] + content_rec.calls[:1]))
    row = {"name": name, "note": note, "warm_s": warm_s, "check": check, "stats": stats, "peak": peak,
           "depth": stats.timings["depth"], "measured": measured, "calls": calls}
    for st in STAGES:
        c = calls.get(st, {})
        # every denoising step costs the same, so the 25-step time is the measured time plus the extra steps
        row[st] = stats.timings[st] - c.get("truth_s", 0.0) + c.get("denoise", 0.0) * (scale - 1)
        row[st + "_host"] = stats.timings[st] - c.get("truth_s", 0.0) - c.get("seconds", 0.0)
        row[st + "_peak"] = c.get("peak", float("nan"))
        row[st + "_tfs"] = (ctx["gflops"][(st, cfg.cross_attn_shortcut)] * c.get("unet_frames", 0) / 1e3
                            / max(c.get("denoise", 0.0), 1e-9))
    row["total"] = row["depth"] + sum(row[st] for st in STAGES)
    log_row(row)
    row["fixed"], row["per_step"] = log_parts(row, a)
    return row


PARTS = ("noise", "upload", "clip", "encode", "denoise", "decode", "download", "blend")
COUNTS = ("unet_calls", "unet_frames", "decode_calls", "decode_frames", "encode_calls", "encode_frames")


def log_parts(row: dict, a) -> tuple[float, float]:
    """Per pass: where the seconds went (sampler parts from VASPipeline.profile, host = the stage's own
    pre/post-processing outside the sampler); fixed = everything but denoising (independent of steps)."""
    fixed_all, step_all = row["depth"], 0.0
    print(f"  {row['name']} parts at {a.variant_steps} steps (s): depth {row['depth']:.2f}", flush=True)
    for st in STAGES:
        c = row["calls"].get(st)
        if not c:
            print(f"    {st:8s}: not run", flush=True)
            continue
        parts = {k: c.get(k, 0.0) for k in PARTS}  # (counters in COUNTS are not seconds)
        parts["sampler-other"] = c["seconds"] - sum(parts.values())
        parts["host"] = row[st + "_host"]
        per_step = parts["denoise"] / a.variant_steps
        fixed = sum(v for k, v in parts.items() if k != "denoise")
        fixed_all, step_all = fixed_all + fixed, step_all + per_step
        print(f"    {st:8s}: " + " ".join(f"{k} {v:.2f}" for k, v in parts.items())
              + f" | fixed {fixed:.1f}, per step {per_step:.2f}, UNet calls {c.get('unet_calls', 0)}", flush=True)
    print(f"  {row['name']}: fixed {fixed_all:.1f} s + {step_all:.2f} s/step -> {a.steps} steps: "
          f"{fixed_all + step_all * a.steps:.1f} s", flush=True)
    return fixed_all, step_all


def print_quick_table(rows: list[dict], a) -> None:
    """--quick: the variants side by side (fixed = everything but denoising; VAE parts per pass)."""
    if not rows:
        return
    base = rows[0]
    print(f"\nside by side ({a.variant_steps} steps measured; fixed = all but denoising; projected = fixed + "
          f"{a.steps} x per step; VAE seconds per pass det/ref/comp; peak = whole stage)")
    print("| variant | measured s | fixed s | fixed vs first | per step s | projected s | VAE decode s | "
          "decoded frames (calls) | VAE encode s | encoded frames (calls) | clip s | peak GiB det/ref/comp | "
          "compile s | notes |")
    print("|" + "---|" * 14)
    for r in rows:
        part = {k: "/".join(f"{r['calls'].get(st, {}).get(k, 0.0):.1f}" for st in STAGES)
                for k in ("decode", "encode", "clip")}
        cnt = {k: "/".join(f"{r['calls'].get(st, {}).get(k + '_frames', 0)}({r['calls'].get(st, {}).get(k + '_calls', 0)})"
                           for st in STAGES) for k in ("decode", "encode")}
        peaks = "/".join(f"{r[st + '_peak']:.1f}" for st in STAGES)
        proj = r["fixed"] + r["per_step"] * a.steps
        print(f"| {r['name']} | {r['measured']:.1f} | {r['fixed']:.1f} | {r['fixed'] - base['fixed']:+.1f} | "
              f"{r['per_step']:.2f} | {proj:.1f} | {part['decode']} | {cnt['decode']} | {part['encode']} | "
              f"{cnt['encode']} | {part['clip']} | {r['peak']:.2f} ({peaks}) | {r['warm_s']:.0f} | {r['note']} |")


def log_row(row: dict) -> None:
    parts = ", ".join(f"{st} {row[st]:.1f} s/{row[st + '_peak']:.1f} GiB" for st in STAGES)
    print(f"  {row['name']}: measured {row['measured']:.1f} s, projected {row['total']:.1f} s "
          f"(depth {row['depth']:.2f} s, {parts}), peak {row['peak']:.2f} GiB, warm-up {row['warm_s']:.0f} s",
          flush=True)


def profile_variants(names: list[str], ctx: dict, a, seg_len: int) -> None:
    """Kernel-level profile of one UNet call at the completion size (refine-pass batch), one VAE decode
    chunk and one VAE encode call, under each named variant's options (mask pipeline, bench dtype)."""
    pipe, dev = ctx["mask_pipe"], ctx["dev"]
    cuda = dev.type == "cuda"
    comp = ctx["comp"]
    lh, lw = comp[0] // pipe.vae_scale, comp[1] // pipe.vae_scale
    per = max(1, min(a.people_batch, a.budget_px // max(1, 2 * seg_len * lh * lw)))
    smp = SamplerConfig(window=a.window)
    chunk = smp.decode_chunk_size
    g = torch.Generator().manual_seed(0)
    udtype = next(pipe.unet.parameters()).dtype
    x = torch.randn(2 * per, seg_len, 12, lh, lw, generator=g).to(dev, udtype)
    cond = torch.randn(2 * per * seg_len, 1, pipe.unet.config.cross_attention_dim, generator=g).to(dev, udtype)
    ids = torch.tensor([[7.0, 127.0, 0.02]] * (2 * per)).to(dev, udtype)
    tstep = torch.tensor(1.0, device=dev)
    lat = torch.randn(1, chunk, pipe.latent_channels, lh, lw, generator=g).to(dev)
    pix = (torch.rand(chunk, 3, *comp, generator=g) * 2 - 1).to(dev)
    for name in names:
        kwargs = VARIANTS[name][0]
        cfg = AccelConfig(**kwargs, compile_backend="inductor" if cuda else "eager")
        pipe.accelerate(cfg)
        try:
            print(f"\n=== profile '{name}' ({comp[0]}x{comp[1]}; UNet batch {per} videos x {seg_len} frames x 2 "
                  f"(CFG), decode chunk {chunk} frames, encode {chunk} frames) ===", flush=True)

            def unet_call():
                with pipe._amp():
                    pipe.unet(x, tstep, cond, ids)

            timed_profile(unet_call, f"[{name}] UNet call", cuda)
            timed_profile(lambda: pipe._decode(lat, chunk), f"[{name}] VAE decode chunk", cuda)
            timed_profile(lambda: pipe._encode(pix), f"[{name}] VAE encode", cuda)
        finally:
            pipe.accelerate(None)


def print_table(rows: list[dict], a, ctx: dict) -> None:
    """One table: per-sub-stage seconds (projected to --steps), peak VRAM per sub-stage, agreement."""
    base = rows[0]
    det, comp = ctx["det"], ctx["comp"]
    print(f"\nseconds at {a.steps} steps (measured at {a.variant_steps} steps + the extra denoising steps at the "
          f"measured per-step time); peaks in GiB per sub-stage; UNet TFLOP/s = counted FLOPs / denoising time")
    print(f"| {'variant':18s} | depth | detect@{det[0]}x{det[1]} | refine@{comp[0]}x{comp[1]} | "
          f"complete@{comp[0]}x{comp[1]} | total | vs base | peak GiB (det/ref/comp) | UNet TFLOP/s (det/ref/comp) "
          f"| max abs diff | warm-up s | notes")
    print("|" + "---|" * 12)
    for r in rows:
        diff = float((r["check"] - base["check"]).abs().max())
        tfs = "/".join(f"{r[s + '_tfs']:.0f}" for s in STAGES)
        peaks = "/".join(f"{r[s + '_peak']:.1f}" for s in STAGES)
        print(f"| {r['name']:18s} | {r['depth']:5.2f} | {r['detect']:8.1f} | {r['refine']:8.1f} | "
              f"{r['complete']:8.1f} | {r['total']:6.1f} | {base['total'] / r['total']:5.2f}x | {r['peak']:.1f} "
              f"({peaks}) | {tfs} | {diff:.2e} | {r['warm_s']:.0f} | {r['note']} |")
    best = min(rows, key=lambda r: r["total"])
    per_step = {st: best["calls"].get(st, {}).get("denoise", 0.0) / a.variant_steps for st in STAGES}
    print(f"\nopt-in approximations (derived from '{best['name']}', NOT measured for quality: random weights):")
    print(f"  refine off (reuse the {det[0]}x{det[1]} masks, OcclusionConfig(refine=False)): "
          f"{best['total'] - best['refine']:.1f} s")
    for steps in [n for n in (15, 10) if n < a.steps]:
        t = best["total"] - sum(per_step.values()) * (a.steps - steps)
        print(f"  {steps} steps instead of {a.steps}: {t:.1f} s")
    s = base["stats"]
    frames = {st: base["calls"].get(st, {}).get("unet_frames", 0) * a.steps // max(a.variant_steps, 1)
              for st in STAGES}
    print(f"\nUNet work at {a.steps} steps (frames through the UNet incl. the CFG doubling): "
          + ", ".join(f"{st} {frames[st]} x {ctx['gflops'][(st, False)]:.0f} GFLOP = "
                      f"{frames[st] * ctx['gflops'][(st, False)] / 1e6:.1f} PFLOP" for st in STAGES))
    print(f"segments: {sum(len(v) for v in s.segments.values())}, completed person-frames: {s.completed_frames}")


def write_rows(out: RowWriter, rows: list[dict], extra: dict) -> None:
    """Per variant: projected total, measured seconds, fixed and per-step seconds, peaks, per sub-stage."""
    for r in rows:
        for metric, unit in (("total", "s"), ("measured", "s"), ("fixed", "s"), ("per_step", "s"), ("peak", "GiB"),
                             ("depth", "s"), ("warm_s", "s")):
            out.add(r["name"], metric, r[metric], unit, note=r["note"], **extra)
        for st in STAGES:
            out.add(r["name"], st, r[st], "s", peak_gib=r[st + "_peak"], unet_tflops=r[st + "_tfs"], **extra)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--people", type=int, default=5)
    ap.add_argument("--frames", type=int, default=90)
    ap.add_argument("--size", default="720x1280", help="clip height x width")
    ap.add_argument("--steps", type=int, default=25, help="sampler steps the times are projected to")
    ap.add_argument("--variant-steps", type=int, default=2, help="steps each variant really runs")
    ap.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"comma list of {', '.join(VARIANTS)}")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--people-batch", type=int, default=4)
    ap.add_argument("--budget-px", type=int, default=1 << 20, help="latent pixels x frames x 2 per UNet call")
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--fast-path", action="store_true", help="also time the no-occlusion clip (baseline, full steps)")
    ap.add_argument("--upstream-style", action="store_true",
                    help="also time SAM-Body4D's orchestration of the same networks (full steps; slow)")
    ap.add_argument("--no-refine", action="store_true", help="reuse detection masks instead of the 512x1024 pass")
    ap.add_argument("--tiny", action="store_true", help="tiny networks on the CPU (smoke test)")
    ap.add_argument("--quick", action="store_true",
                    help="only the given variants (no baseline needed, default: 'default'), per-pass parts printed as "
                         "each finishes; no numeric check, no table; stops starting variants near --time-limit")
    ap.add_argument("--time-limit", type=float, default=135.0,
                    help="--quick: seconds the whole run (imports included) should stay under")
    ap.add_argument("--profile", default="", metavar="NAMES",
                    help="comma list of variants to profile at kernel level (one UNet call, one VAE decode chunk and "
                         "one encode call at the completion size), before the variants run")
    ap.add_argument("--compile-estimate", type=float, default=150.0,
                    help="--quick: seconds a compiled variant's warm-up is assumed to take (for --time-limit)")
    add_rows_args(ap)
    a = ap.parse_args()
    t_start = _T0
    if a.quick and a.variants == DEFAULT_VARIANTS:
        a.variants = "default"
    names = [n.strip() for n in a.variants.split(",") if n.strip()]
    if not names or any(n not in VARIANTS for n in names) or (not a.quick and names[0] != "baseline"):
        ap.error(f"--variants must start with baseline (unless --quick) and use only: {', '.join(VARIANTS)}")
    prof_names = [n.strip() for n in a.profile.split(",") if n.strip()]
    if any(n not in VARIANTS for n in prof_names):
        ap.error(f"--profile takes variant names: {', '.join(VARIANTS)}")

    dev = torch.device("cpu" if a.tiny or not torch.cuda.is_available() else "cuda")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[a.dtype] if dev.type == "cuda" \
        else torch.float32
    preset = "tiny" if a.tiny else "real"
    h, w = (int(v) for v in a.size.split("x"))
    occ = OcclusionConfig(refine=not a.no_refine)
    if a.tiny:
        h, w, a.frames, a.people = 64, 96, min(a.frames, 12), min(a.people, 2)
        occ = OcclusionConfig(detection_resolution=(32, 48), completion_resolution=(64, 96), refine=not a.no_refine)
        a.steps, a.variant_steps = min(a.steps, 3), 1

    t0 = time.perf_counter()
    mask_pipe = build_vas_pipeline(preset, 0, dev, dtype)
    content_pipe = build_vas_pipeline(preset, 1, dev, dtype)
    dmodel, prep = build_depth_model(preset, 2, dev)
    dmodel.to(dtype if dev.type == "cuda" else torch.float32)
    build_s = time.perf_counter() - t0
    params = {n: sum(p.numel() for p in m.parameters()) / 1e6
              for n, m in zip(("unet", "vae", "clip"), mask_pipe.models())}
    params["depth"] = sum(p.numel() for p in dmodel.parameters()) / 1e6

    rgb, truth, tracks = occluded_ellipses(a.people, a.frames, h, w, hide=4 if a.tiny else 14)
    depth = DepthEstimator(dmodel, prep, dtype)
    det = detection_size((h, w), occ.detection_resolution)
    comp = detection_size((h, w), occ.completion_resolution)
    per_size = {(size, sc): unet_gflops(mask_pipe, size, sc) for size in (det, comp) for sc in (False, True)}
    gflops = {(st, sc): per_size[(det if st == "detect" else comp, sc)] for st in STAGES for sc in (False, True)}
    ctx = {"mask_pipe": mask_pipe, "content_pipe": content_pipe, "dev": dev, "dtype": dtype, "truth": truth,
           "rgb": rgb, "tracks": tracks, "occ": occ, "depth": depth, "det": det, "comp": comp, "gflops": gflops,
           "resized": Recorder(mask_pipe, truth).prepare([det, comp]).resized}
    # warm-up (kernel selection, lazy init) on a short slice
    wt = min(6, a.frames)
    wclip = Tracks.from_masks(tracks.obj_ids[:1], tracks.masks_of(1, slice(0, wt))[None])
    run_amodal(rgb[:wt], wclip, AmodalModels(mask_pipe, content_pipe, depth, dev, dtype), occ,
               SamplerConfig(steps=1, window=a.window), budget_px=a.budget_px)

    name = torch.cuda.get_device_name() if dev.type == "cuda" else "CPU"
    print(f"\nAmodal Complete benchmark - {name}, {a.dtype if dev.type == 'cuda' else 'fp32'}, {preset} networks "
          f"(M params: UNet {params['unet']:.0f}, VAE {params['vae']:.0f}, CLIP {params['clip']:.0f}, "
          f"depth {params['depth']:.0f}; built in {build_s:.1f} s)")
    print(f"clip: {a.people} people x {a.frames} frames at {h}x{w}; {a.steps} steps, guidance 1.5, "
          f"window {a.window}/8, people batch {a.people_batch}, budget {a.budget_px} px", flush=True)
    print(f"set-up (build, clip, warm-up) {time.perf_counter() - t_start:.1f} s", flush=True)
    if prof_names:
        t1 = time.perf_counter()
        profile_variants(prof_names, ctx, a, seg_len=min(a.frames, (4 if a.tiny else 14) + 2 * occ.pad_frames))
        print(f"profiles took {time.perf_counter() - t1:.1f} s", flush=True)
    rows, last = [], 75.0
    for n in names:
        elapsed = time.perf_counter() - t_start
        kw = VARIANTS[n][0]
        extra = a.compile_estimate if (kw.get("compile_vae") or kw.get("compile_blocks")) else 0.0
        if a.quick and elapsed + 1.1 * last + extra > a.time_limit:
            print(f"  {n}: skipped (would end past --time-limit {a.time_limit:.0f} s)", flush=True)
            continue
        try:
            t1 = time.perf_counter()
            rows.append(run_variant(n, VARIANTS[n], ctx, a))
            last = time.perf_counter() - t1 - rows[-1]["warm_s"]  # a compile is not repeated by the next variant
        except Exception as err:  # noqa: BLE001 - one failing variant must not lose the others' rows
            if n == "baseline" and not a.quick:
                raise
            print(f"  {n}: FAILED ({type(err).__name__}: {str(err)[:300]})", flush=True)
    if a.quick:
        print_quick_table(rows, a)
    else:
        print_table(rows, a, ctx)
    print(f"wall {time.perf_counter() - t_start:.1f} s", flush=True)
    out = RowWriter.from_args("bench_amodal", a, dev)
    extra = {"people": a.people, "frames": a.frames, "size": f"{h}x{w}", "steps": a.steps,
             "measured_steps": a.variant_steps, "dtype": a.dtype if dev.type == "cuda" else "fp32", "preset": preset}
    write_rows(out, rows, extra)

    if a.fast_path:
        rgb2, truth2, tracks2 = occluded_ellipses(a.people, a.frames, h, w, occluded=False)
        smp = SamplerConfig(steps=a.steps, people_batch=a.people_batch, window=a.window)
        fast_models = AmodalModels(Recorder(mask_pipe, truth2), content_pipe, depth, dev, dtype)
        t1 = time.perf_counter()
        _, fstats = run_amodal(rgb2, tracks2, fast_models, occ, smp, budget_px=a.budget_px)
        sync()
        fast_s = time.perf_counter() - t1
        print(f"no-occlusion clip (fast path, baseline, {a.steps} steps): {fast_s:.1f} s")
        out.add("no-occlusion clip (fast path, baseline)", "seconds", fast_s, "s", **extra)
    if a.upstream_style:
        smp = SamplerConfig(steps=a.steps, people_batch=a.people_batch, window=a.window)
        models = AmodalModels(Recorder(mask_pipe, truth), content_pipe, depth, dev, dtype)
        up_s = upstream_style(models, mask_pipe, content_pipe, rgb, tracks, rows[0]["stats"].segments, occ, smp,
                              a.budget_px)
        print(f"upstream-style orchestration ({a.steps} steps): {up_s:.1f} s")
        out.add("upstream-style orchestration", "seconds", up_s, "s", **extra)


if __name__ == "__main__":
    main()
