"""Peak memory for the benches: CUDA allocator peaks and the process's peak resident set (host).

torch is imported inside the CUDA helpers only, so a child process measuring its own peak RSS
(bench_decode) does not pay for it before its clock starts.
"""

from __future__ import annotations

import resource
from typing import Any


def _on_cuda(device: Any) -> bool:
    import torch

    return torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")


def reset_gpu_peak(device: Any = None, empty_cache: bool = False) -> None:
    """Start a new CUDA peak window (optionally giving cached blocks back first); no-op off CUDA."""
    if not _on_cuda(device):
        return
    import torch

    if empty_cache:
        torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def gpu_peak_gib(device: Any = None) -> float:
    """Peak CUDA memory allocated since the last reset, GiB; NaN off CUDA (so tables show 'nan')."""
    if not _on_cuda(device):
        return float("nan")
    import torch

    return torch.cuda.max_memory_allocated() / 2**30


def rss_peak_bytes() -> int:
    """This process's peak resident set size in bytes (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_peak_gib() -> float:
    """This process's peak resident set size, GiB."""
    return rss_peak_bytes() / 2**30
