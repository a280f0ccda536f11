"""One Diffusion-VAS UNet call at real size: eager vs regional torch.compile, plus where the time goes.

The UNet (SVD-XT size + conv_in2, random weights, bf16 under the pipeline's scoped autocast,
with the default exact accelerations) is called once at the stage's two shapes: the
completion/refine shape (2 x 1 video x 64 frames at 512x1024 -> latents 64x128) and the
detection shape (2 x 4 videos x 64 frames at 256x512). ``--compile`` picks how the repeated
blocks are compiled: '' (eager), 'static' (dynamic=False, one graph per shape) or 'dynamic'
(symbolic shapes, one graph per block type). Prints compile time, ms per call, TFLOP/s and a
kernel-category profile of the eager call.

    python -m bench.bench_unet_compile --compile '' --profile      # H200, ~1 min
    python -m bench.bench_unet_compile --native --profile          # the same without autocast
    python -m bench.bench_unet_compile --compile dynamic           # H200, compile time is the question
    python -m bench.bench_unet_compile --native --vae --groupnorm-ab   # fast_groupnorm off vs on
    python -m bench.bench_unet_compile --native --ab split_geglu       # any boolean AccelConfig option
    python -m bench.bench_unet_compile --native --ab fused_resblocks --truth   # + each side's error vs fp32
    python -m bench.bench_unet_compile --frames 8,16,32,64 --shapes hi   # ms per frame against the window length
    python -m bench.bench_unet_compile --mixed 12,17,30 --shapes hi   # one call per length vs one forward_runs call
    python -m bench.bench_unet_compile --tiny                      # CPU smoke test

``--frames`` times the call of one video at several window lengths: the stage batches only windows of one
length, so short occluded segments of different lengths make small calls; the ms per frame says what
batching them together could gain. ``--mixed`` measures it: one CFG call per window length (one video each)
against one ``VASUNet.forward_runs`` call over all of them (amodal/mixed.py), with their deviation.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from bench.kernel_profile import timed_profile
from bench.peak_memory import gpu_peak_gib
from bench.rows import RowWriter, add_rows_args
from bench.timers import first_then_mean
from body4d_core.amodal.accel import (COMPILED_BLOCKS, AccelConfig, _raise_recompile_limit, apply_accel,
                                      apply_vae_accel)
from body4d_core.profile import RunProfile
from body4d_core.testing.amodal import build_vas_parts


def compile_blocks(unet: torch.nn.Module, how: str) -> int:
    """Regional compile of the repeated blocks; returns how many modules were wrapped."""
    if not how:
        return 0
    _raise_recompile_limit()
    backend = "inductor" if torch.cuda.is_available() else "eager"
    n = 0
    for m in unet.modules():
        if type(m).__name__ in COMPILED_BLOCKS:
            m.compile(backend=backend, dynamic=how == "dynamic")
            n += 1
    return n


def frame_sweep(shapes: dict[str, tuple[int, int, int, int]], frames: str) -> dict[str, tuple[int, int, int, int]]:
    """Each shape's latent size with one video of each window length in ``frames`` ("8,16,64")."""
    lengths = [int(f) for f in frames.split(",") if f.strip()]
    if not lengths or min(lengths) < 1:
        raise SystemExit(f"--frames needs positive window lengths, got {frames!r}")
    return {f"{name.split(',')[0]}, 1 video x {t} frames": (1, t, h, w)
            for name, (_, _, h, w) in shapes.items() for t in lengths}


def unet_call(unet, shape: tuple[int, int, int, int], dev: torch.device, dtype: torch.dtype, native: bool = False):
    """A closure running one CFG UNet call on random inputs of [videos, frames, latent h, latent w]."""
    b, t, h, w = shape
    x = torch.randn(2 * b, t, 12, h, w, device=dev, dtype=dtype)
    ctx = torch.randn(2 * b * t, 1, unet.config.cross_attention_dim, device=dev, dtype=dtype)
    ids = torch.tensor([[7.0, 127.0, 0.02]], device=dev, dtype=dtype).repeat(2 * b, 1)
    amp = dev.type == "cuda" and not native

    def run() -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            return unet(x, torch.tensor(500.0, device=dev), ctx, ids)[0]
    run.inputs = (x, ctx, ids)  # for --truth: the same call in fp32
    return run


def mixed_rows(unet, name: str, lengths: list[int], latent: tuple[int, int], dev: torch.device, dtype: torch.dtype,
               a, out: RowWriter) -> None:
    """One CFG call per window length (one video each) against one ``forward_runs`` call over all of them."""
    if not lengths or min(lengths) < 1:
        raise SystemExit(f"--mixed needs positive window lengths, got {a.mixed!r}")
    calls = [unet_call(unet, (1, t, *latent), dev, dtype, a.native) for t in lengths]
    xs, ctxs, ids = zip(*(c.inputs for c in calls))
    amp = dev.type == "cuda" and not a.native

    def separate() -> list[torch.Tensor]:
        return [c() for c in calls]

    def together() -> list[torch.Tensor]:
        with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            return unet.forward_runs(xs, torch.tensor(500.0, device=dev), ctxs, ids)

    _, ms_sep = first_and_ms(separate, a.reps)
    _, ms_mix = first_and_ms(together, a.reps)
    dev_max = max(float((m.float() - s.float()).abs().max() / s.float().abs().max())
                  for m, s in zip(together(), separate()))
    frames = ",".join(map(str, lengths))
    print(f"\n| {name.split(',')[0]}, windows of {frames} frames | one call per length ms | one forward_runs call ms "
          f"| max abs dev / max abs value |\n|---|---:|---:|---:|\n| CFG x 1 video each | {ms_sep:.0f} | {ms_mix:.0f} "
          f"| {dev_max:.1e} |", flush=True)
    out.add(f"UNet {name.split(',')[0]} windows {frames}, one call per length", "ms_per_call", ms_sep, "ms")
    out.add(f"UNet {name.split(',')[0]} windows {frames}, forward_runs", "ms_per_call", ms_mix, "ms", rel_dev=dev_max)


def fp32_truth(unet, calls: dict) -> dict:
    """Each UNet call's output from an fp32 copy of the UNet on the same inputs (reference for the bf16 error)."""
    import copy

    unet32 = copy.deepcopy(unet).float()
    apply_accel(unet32, AccelConfig(), None)
    truth = {}
    prev = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.inference_mode():
            for name, run in calls.items():
                if hasattr(run, "inputs"):
                    x, ctx, ids = (t.float() for t in run.inputs)
                    truth[name] = unet32(x, torch.tensor(500.0, device=x.device), ctx, ids)[0]
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = prev
        del unet32
    return truth


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(max abs error / max abs value, mean abs error / mean abs value) of ``out`` against ``ref``."""
    d = (out.float() - ref.float()).abs()
    return float(d.max() / ref.abs().max()), float(d.mean() / ref.abs().mean())


def first_and_ms(run, reps: int) -> tuple[float, float]:
    """(seconds of the first call, incl. any compile; milliseconds per later call)."""
    first, mean = first_then_mean(run, reps)
    return first, mean * 1000


def vae_rows(vae, dev: torch.device, dtype: torch.dtype, a, out: RowWriter) -> dict:
    """Decode chunks as the stage makes them: 8 frames at 512x1024, 4 videos x 8 frames at 256x512."""
    amp = dev.type == "cuda" and not a.native
    chunks = {"8 frames 512x1024": (8, 64, 128), "4 x 8 frames 256x512": (32, 32, 64)}
    if a.tiny:
        chunks = {"tiny 8 frames": (8, 8, 16)}
    print("\n| VAE decode chunk | first call s | ms / call |\n|---|---:|---:|")
    calls = {}
    for name, (n, h, w) in chunks.items():
        z = torch.randn(n, 4, h, w, device=dev, dtype=dtype)

        def run() -> torch.Tensor:
            with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                return vae.decode(z, num_frames=8).sample

        first, ms = first_and_ms(run, a.reps)
        print(f"| {name} | {first:.1f} | {ms:.0f} |", flush=True)
        out.add(f"VAE decode {name}", "ms_per_call", ms, "ms", first_call_s=first, native=a.native)
        if a.profile:
            timed_profile(run, f"VAE decode {name}", top=8)
        calls[f"VAE decode {name}"] = run
    return calls


def option_ab(unet, vae, cfg, base: dict, calls: dict, reps: int, option: str, rows: RowWriter,
              truth: dict | None = None) -> None:
    """Each call with the boolean AccelConfig ``option`` off, then on (same process): ms and deviation; with
    ``truth`` also each side's error against the fp32 UNet (max / mean, relative)."""
    off, on = replace(cfg, **{option: False}), replace(cfg, **{option: True})
    apply_accel(unet, off, base)
    apply_vae_accel(vae, off)
    with torch.inference_mode():
        ref = {name: run().float() for name, run in calls.items()}
    truth = truth or {}
    print(f"\n| call | ms, {option} off | ms, {option} on | max abs dev / max abs value | error vs fp32, off "
          f"(max / mean) | error vs fp32, on (max / mean) |\n|---|---:|---:|---:|---:|---:|")
    for name, run in calls.items():
        apply_accel(unet, off, base)
        apply_vae_accel(vae, off)
        plain = first_and_ms(run, reps)[1]
        apply_accel(unet, on, base)
        apply_vae_accel(vae, on)
        fast = first_and_ms(run, reps)[1]
        with torch.inference_mode():
            got = run().float()
        dev = float((got - ref[name]).abs().max() / ref[name].abs().max())
        errs = ["%.1e / %.1e" % rel_err(o, truth[name]) if name in truth else "-" for o in (ref[name], got)]
        print(f"| {name} | {plain:.0f} | {fast:.0f} | {dev:.1e} | {errs[0]} | {errs[1]} |", flush=True)
        rows.add(f"{name}, {option} off", "ms_per_call", plain, "ms")
        rows.add(f"{name}, {option} on", "ms_per_call", fast, "ms", rel_dev=dev)
    apply_accel(unet, cfg, base)
    apply_vae_accel(vae, cfg)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--compile", default="", choices=["", "static", "dynamic"])
    ap.add_argument("--profile", action="store_true", help="kernel-category profile of each shape's call")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--native", action="store_true", help="no autocast: every op in the weights' bf16")
    ap.add_argument("--vae", action="store_true", help="also time VAE decode chunks")
    ap.add_argument("--shapes", default="all", choices=["all", "hi"], help="hi: only the 512x1024 UNet call")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--mixed", default="", metavar="T,T,...",
                    help="window lengths: one call per length against one forward_runs call over all of them")
    ap.add_argument("--frames", default="", metavar="T,T,...",
                    help="window lengths: each shape's call with 1 video of each length instead of 64 frames")
    ap.add_argument("--groupnorm-ab", action="store_true", help="the same as --ab fast_groupnorm")
    ap.add_argument("--ab", default="", metavar="OPTIONS",
                    help="comma list of boolean AccelConfig options: each call with the option off, then on, "
                         "with the deviation")
    ap.add_argument("--truth", action="store_true",
                    help="with --ab: each UNet call's error against an fp32 copy of the UNet (off and on)")
    add_rows_args(ap)
    a = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    t0 = time.perf_counter()
    parts = build_vas_parts("tiny" if a.tiny else "real", seed=0, device=dev)
    unet, vae = parts["unet"].to(dtype), parts["vae"].to(dtype)
    cfg = replace(RunProfile().accel_config(), native_dtype=a.native)  # the run profile's amodal options
    base = dict(unet.attn_processors)  # the reference processors, before any option wraps them
    apply_accel(unet, cfg, base)
    apply_vae_accel(vae, cfg)
    n = compile_blocks(unet, a.compile)
    print(f"# {torch.cuda.get_device_name() if dev.type == 'cuda' else 'cpu'}, torch {torch.__version__}, "
          f"UNet {sum(p.numel() for p in unet.parameters()) / 1e6:.0f}M, build {time.perf_counter() - t0:.1f}s, "
          f"compile={a.compile or 'eager'} ({n} blocks), {'native bf16' if a.native else 'bf16 autocast'}", flush=True)
    shapes = {"512x1024, 1 video": (1, 64, 64, 128), "256x512, 4 videos": (4, 64, 32, 64)}
    if a.shapes == "hi":
        shapes = dict(list(shapes.items())[:1])
    if a.tiny:
        shapes = {"tiny 64x128, 1 video": (1, 8, 8, 16)}
    if a.frames:
        shapes = frame_sweep(shapes, a.frames)
    print("| shape (CFG x videos x frames) | first call s (incl. compile) | ms / call | ms / frame |\n"
          "|---|---:|---:|---:|")
    calls = {}
    out = RowWriter.from_args("bench_unet_compile", a, dev)
    for name, shape in shapes.items():
        run = calls[f"UNet {name}"] = unet_call(unet, shape, dev, dtype, a.native)
        first, ms = first_and_ms(run, a.reps)
        per_frame = ms / (2 * shape[0] * shape[1])  # CFG doubles the frames of a call
        print(f"| {name} | {first:.1f} | {ms:.0f} | {per_frame:.2f} |", flush=True)
        out.add(f"UNet {name}", "ms_per_call", ms, "ms", first_call_s=first, compile=a.compile or "eager",
                native=a.native, ms_per_frame=per_frame)
        if a.profile:
            timed_profile(run, f"UNet {name}, {a.compile or 'eager'}{', native' if a.native else ''}", top=15)
    if a.mixed:
        latents = {(h, w): name.split(",")[0] for name, (_, _, h, w) in shapes.items()}  # once per size (--frames)
        for (h, w), name in latents.items():
            mixed_rows(unet, name, [int(t) for t in a.mixed.split(",") if t.strip()], (h, w), dev, dtype, a, out)
    if a.vae:
        calls.update(vae_rows(vae, dev, dtype, a, out))
    options = [o for o in a.ab.split(",") if o] + (["fast_groupnorm"] if a.groupnorm_ab else [])
    truth = fp32_truth(unet, calls) if a.truth and options else None
    for option in options:
        option_ab(unet, vae, cfg, base, calls, a.reps, option, out, truth)
    if dev.type == "cuda":
        print(f"# peak {gpu_peak_gib(dev):.2f} GiB")
        out.add("whole run", "peak_vram", gpu_peak_gib(dev), "GiB")


if __name__ == "__main__":
    main()
