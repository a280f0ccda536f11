"""Kernel-level profiles for the benches: top CUDA kernels (CPU ops on the CPU) by self time, by category."""

from __future__ import annotations

import re

import torch

from bench.timers import Stopwatch, sync

CATEGORIES = (  # first match wins; kernel names (CUDA) or op names (CPU), lower case
    ("attention", ("flash", "fmha", "attention", "sdpa", "mem_eff")),
    ("copy", ("copy", "memcpy", "memset", "transpose", "nchwtonhwc", "nhwctonchw", "permute", "contiguous",
              "clone", "cat_", "catarray", "aten::cat", "reorder")),
    ("norm", ("norm", "welford", "moments", "computefusedparams", "var_mean")),
    ("conv", ("conv", "fprop", "dgrad", "implicit_gemm", "winograd", "cudnn")),
    ("gemm", ("gemm", "matmul", "cublas", "nvjet", "cutlass", "xmma", "aten::mm", "aten::addmm", "aten::bmm",
              "triton_tem")),
    ("elementwise", ("elementwise", "vectorized", "unrolled", "triton_poi", "silu", "gelu", "add", "mul", "div",
                     "sub", "clamp", "sigmoid", "exp", "where", "fill", "upsample", "interpolate")),
)


def kernel_category(name: str) -> str:
    """gemm / conv / attention / norm / elementwise / copy / other, from a kernel or op name."""
    low = name.lower()
    for cat, keys in CATEGORIES:
        if any(k in low for k in keys):
            return cat
    return "other"


def print_kernel_profile(prof, title: str, wall_ms: float, cuda: bool, top: int = 15) -> None:
    """Top kernels by self time (CUDA kernels; CPU ops on the CPU) with categories, and per-category totals."""
    from torch.autograd import DeviceType

    events = list(prof.key_averages())

    def dev_time(e) -> float:
        t = getattr(e, "self_device_time_total", None)
        return float(e.self_cuda_time_total if t is None else t)

    if cuda:
        rows = [(dev_time(e) / 1e3, e.count, e.key) for e in events
                if e.device_type == DeviceType.CUDA and dev_time(e) > 0]
        if not rows:  # other profiler builds attribute kernel time to the launching op
            rows = [(dev_time(e) / 1e3, e.count, e.key) for e in events if dev_time(e) > 0]
    else:
        rows = [(e.self_cpu_time_total / 1e3, e.count, e.key) for e in events if e.self_cpu_time_total > 0]
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows) or 1e-9
    what = "CUDA kernel" if cuda else "CPU op"
    print(f"\n{title}: wall {wall_ms:.1f} ms (unprofiled), {what} self time {total:.1f} ms "
          f"({100 * total / max(wall_ms, 1e-9):.0f}% of wall)")
    print(f"| # | category | calls | self ms | % | {what} |")
    print("|---|---|---:|---:|---:|---|")
    for i, (ms, n, key) in enumerate(rows[:top]):
        name = re.sub(r"\s+", " ", key)
        name = name if len(name) <= 110 else name[:107] + "..."
        print(f"| {i + 1} | {kernel_category(key)} | {n} | {ms:.2f} | {100 * ms / total:.1f} | {name} |")
    cats: dict[str, float] = {}
    for ms, _, key in rows:
        cats[kernel_category(key)] = cats.get(kernel_category(key), 0.0) + ms
    print("per category: " + ", ".join(f"{c} {ms:.1f} ms ({100 * ms / total:.0f}%)"
                                       for c, ms in sorted(cats.items(), key=lambda kv: -kv[1])), flush=True)


def timed_profile(fn, title: str, cuda: bool | None = None, top: int = 15) -> None:
    """fn once to warm up, once timed, once under torch.profiler; prints the kernel table (cuda None: if available)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available() if cuda is None else cuda
    with torch.no_grad():
        fn()
        with Stopwatch() as sw:
            fn()
        wall_ms = 1e3 * sw.seconds
        acts = [ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
        with profile(activities=acts) as prof:
            fn()
            sync()
    print_kernel_profile(prof, title, wall_ms, cuda, top)
