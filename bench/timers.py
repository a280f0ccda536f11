"""Timing helpers for the benches: CUDA synchronisation and wall-clock stopwatches.

torch is imported when first needed, so a bench timing its own imports (bench_load) starts cold.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable


def sync(device: Any = None) -> None:
    """Wait for queued CUDA work (a no-op on the CPU or when ``device`` is not a CUDA device)."""
    import torch

    if device is not None and torch.device(device).type != "cuda":
        return
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Stopwatch:
    """``with Stopwatch(device) as sw: ...`` then ``sw.seconds``: wall time, synchronised at both ends."""

    def __init__(self, device: Any = None) -> None:
        self.device, self.seconds, self._t0 = device, 0.0, 0.0

    def __enter__(self) -> "Stopwatch":
        sync(self.device)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        sync(self.device)
        self.seconds = time.perf_counter() - self._t0


def timed(fn: Callable[[], Any], reps: int, device: Any = None) -> float:
    """Mean seconds per call of ``fn`` over ``reps`` calls after one warm call, synchronised on CUDA."""
    fn()
    with Stopwatch(device) as sw:
        for _ in range(reps):
            fn()
    return sw.seconds / reps


def first_then_mean(fn: Callable[[], Any], reps: int, device: Any = None) -> tuple[float, float]:
    """(seconds of the first call, compile included; mean seconds of the ``reps`` calls after it)."""
    with Stopwatch(device) as first:
        fn()
    with Stopwatch(device) as rest:
        for _ in range(reps):
            fn()
    return first.seconds, rest.seconds / max(reps, 1)


def median_time(fn: Callable[[], Any], reps: int, device: Any = None,
                warm: bool = True) -> tuple[float, Any]:
    """(median seconds of ``fn`` over ``reps`` synchronised calls, the last call's result); one warm call first."""
    if warm:
        fn()
    times, out = [], None
    for _ in range(max(reps, 1)):
        with Stopwatch(device) as sw:
            out = fn()
        times.append(sw.seconds)
    return float(statistics.median(times)), out
