"""One video's body and amodal stages over every worker: work split, results merged in order.

Body stage: items are sorted as ``estimate_bodies`` sorts them (frame, then object id) and cut
only at multiples of the batch size, so every worker runs exactly the batches a single worker
would have run: the merged results equal a one-worker run.

Amodal stage: its jobs (one per person, or per occluded segment) are cut into contiguous runs of
near-equal window counts, one per worker. Each window's noise comes from its own seed, so a
job's result does not depend on which worker runs it or on the jobs beside it; only the UNet
batch a window shares with other windows can differ, which changes GEMM rounding on some
devices, never the numbers drawn.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from ..errors import InputError


def shard_ranges(n_items: int, n_workers: int, batch_size: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) ranges, one per worker with work, cut at multiples of batch_size."""
    if n_workers < 1 or batch_size < 1:
        raise InputError(f"need at least one worker and a batch size >= 1, got {n_workers} and {batch_size}")
    batches = math.ceil(n_items / batch_size)
    base, extra = divmod(batches, n_workers)
    ranges, start = [], 0
    for w in range(n_workers):
        count = base + (1 if w < extra else 0)
        if count == 0:
            break
        stop = min(n_items, start + count * batch_size)
        ranges.append((start, stop))
        start = stop
    return ranges


def estimate_bodies_sharded(workers: Sequence[Any], frames: np.ndarray, items: Sequence[Any], intrinsics: Any = None,
                            *, models_root: str | None = None, device: str | None = None, batch_size: int = 64,
                            **kwargs: Any) -> list[dict[str, np.ndarray]]:
    """``estimate_bodies`` results for ``items`` (in their order), computed by the workers in parallel."""
    import ray

    if not items:
        return []
    order = sorted(range(len(items)), key=lambda i: (int(items[i].frame), int(items[i].obj_id)))
    ordered = [items[i] for i in order]
    frames_ref = ray.put(np.ascontiguousarray(frames))
    ranges = shard_ranges(len(ordered), len(workers), batch_size)
    root = None if models_root is None else str(models_root)
    futures = [w.estimate_bodies.remote(frames_ref, ordered[a:b], intrinsics, root, device, batch_size=batch_size,
                                        **kwargs) for w, (a, b) in zip(workers, ranges)]
    flat = [r for part in ray.get(futures) for r in part]
    out: list[dict[str, np.ndarray]] = [{} for _ in items]
    for pos, i in enumerate(order):
        out[i] = flat[pos]
    return out


def job_ranges(costs: Sequence[int], n_workers: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) job ranges, one per worker with work, of near-equal total cost."""
    if n_workers < 1:
        raise InputError(f"need at least one worker, got {n_workers}")
    n = len(costs)
    if n == 0:
        return []
    prefix = np.cumsum([max(1, int(c)) for c in costs])
    total, parts = float(prefix[-1]), min(n_workers, n)
    cuts = [0]
    for k in range(1, parts):
        cut = int(np.searchsorted(prefix, total * k / parts, side="left")) + 1  # first job past the k-th share
        cuts.append(min(max(cut, cuts[-1] + 1), n - (parts - k)))
    cuts.append(n)
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


def job_windows(job: Any, sampler: Any) -> int:
    """Windows the sampler runs for one job (its share of the work)."""
    from ..amodal.occlusion import plan_windows

    return len(plan_windows(0, job.length, sampler.window, sampler.overlap))


class SplitJobRunner:
    """A Diffusion-VAS job runner whose ``run_jobs`` splits the jobs over Ray workers (``VideoWorker.amodal_jobs``).

    ``local`` (this worker's own sampler) runs the jobs when there is only one range; results come back
    in job order, like the sampler's own.
    """

    def __init__(self, workers: Sequence[Any], part: str, local: Any, opts: Any) -> None:
        self.workers, self.part, self.local, self.opts = list(workers), part, local, opts

    def __getattr__(self, name: str) -> Any:  # the sampler's other attributes (device, models, ...)
        return getattr(self.local, name)

    def run_jobs(self, jobs: Sequence[Any], sampler: Any, hooks: Any = None, budget_px: int = 1 << 20) -> list[Any]:
        """Every job's frames, the jobs shared by the workers in contiguous ranges."""
        import ray

        from ..runtime import NULL_HOOKS

        hooks = hooks or NULL_HOOKS
        ranges = job_ranges([job_windows(j, sampler) for j in jobs], len(self.workers))
        if len(ranges) < 2:
            return self.local.run_jobs(list(jobs), sampler, hooks, budget_px)
        hooks.check_interrupt()
        futures = [w.amodal_jobs.remote(self.part, list(jobs[a:b]), sampler, budget_px, self.opts)
                   for w, (a, b) in zip(self.workers, ranges)]
        pending, done = list(futures), 0
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1, timeout=0.5)
                hooks.check_interrupt()
                done += sum(b - a for f, (a, b) in zip(futures, ranges) if f in ready)
                if ready:
                    hooks.progress(done, len(jobs))
        except BaseException:
            for f in pending:
                ray.cancel(f)
            raise
        parts = ray.get(futures)
        return [frames for part in parts for frames in part]
