"""One video's body and amodal stages over every worker: work split, results merged in order.

Body stage: items are sorted as ``estimate_bodies`` sorts them (frame, then object id) and cut
only at multiples of the batch size, so every worker runs exactly the batches a single worker
would have run: the merged results equal a one-worker run.

Amodal stage: its jobs (one per person, or per occluded segment) are cut into contiguous runs,
one per worker, of near-equal window counts. Each window's noise comes from its own seed, so a
job's numbers do not depend on the worker; the UNet batch a window shares with others would
still change GEMM rounding, so jobs are cut only where the sampler's own batches end (in
every batch group, as ``run_jobs`` forms them): every worker then runs exactly the batches a
single worker would have run, and the merged results equal a one-worker run. Where no such cut
exists the jobs stay on one worker.
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
                            into: Any = None, **kwargs: Any) -> list[dict[str, np.ndarray]]:
    """``estimate_bodies`` results for ``items`` (in their order), computed by the workers in parallel.

    into: a ``BodiesWriter`` each worker's results are written into as they arrive (then dropped), as
    ``estimate_bodies(into=...)`` does; the returned dicts are then views of its cells.
    """
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
    if into is None:
        flat = [r for part in ray.get(futures) for r in part]
    else:
        flat = _write_parts(futures, [ordered[a:b] for a, b in ranges], into)
    out: list[dict[str, np.ndarray]] = [{} for _ in items]
    for pos, i in enumerate(order):
        out[i] = flat[pos]
    return out


def _write_parts(futures: list, parts: list[Sequence[Any]], into: Any) -> list[dict[str, np.ndarray]]:
    """Each worker's results written into ``into`` as its future finishes (one part in RAM at a time);
    the cells' views, in the items' sorted order."""
    import ray

    cells: list[list[dict[str, np.ndarray]]] = [[] for _ in futures]
    pending = list(futures)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        for f in ready:
            k = futures.index(f)
            cells[k] = into.put(parts[k], ray.get(f))
    return [c for part in cells for c in part]


def job_ranges(costs: Sequence[int], n_workers: int, clean: Sequence[int] | None = None) -> list[tuple[int, int]]:
    """Contiguous [start, stop) job ranges, one per worker with work, of near-equal total cost.

    clean: the positions where a cut is allowed (default: any); fewer ranges when too few are.
    """
    if n_workers < 1:
        raise InputError(f"need at least one worker, got {n_workers}")
    n = len(costs)
    if n == 0:
        return []
    prefix = np.concatenate([[0], np.cumsum([max(1, int(c)) for c in costs])])
    allowed = sorted({int(c) for c in (range(1, n) if clean is None else clean) if 0 < int(c) < n})
    total, parts, cuts = float(prefix[-1]), min(n_workers, n), [0]
    for k in range(1, parts):
        later = [c for c in allowed if c > cuts[-1]]
        target = total * k / parts
        if not later:
            break
        best = min(later, key=lambda c: (abs(prefix[c] - target), c))
        if abs(prefix[best] - target) < abs(prefix[-1] - target):
            cuts.append(best)
    cuts.append(n)
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


def batch_boundaries(jobs: Sequence[Any], sampler: Any, runner: Any, budget_px: int) -> list[int]:
    """Job positions where every batch group of ``runner.run_jobs`` ends a whole batch (exact cut points).

    Mirrors the sampler's batching: windows grouped by (length, frame size) in job order, windows
    with no kept frame left out under ``skip_unkept``, ``per`` windows a batch within the pixel budget.
    """
    from ..amodal.occlusion import blend_weights, plan_windows

    scale = int(getattr(runner, "vae_scale", 8))
    skip = bool(getattr(getattr(runner, "accel", None), "skip_unkept", False))
    counts: dict[tuple, int] = {}
    per: dict[tuple, int] = {}
    clean = []
    for pos, job in enumerate(jobs):
        if pos and all(counts[g] % per[g] == 0 for g in counts):
            clean.append(pos)
        windows = plan_windows(0, job.length, sampler.window, sampler.overlap)
        for (a, b), weight in zip(windows, blend_weights(windows, 0, job.length)):
            if skip and not (job.kept[a:b] & (np.asarray(weight) > 0)).any():
                continue
            h, w = (int(x) for x in job.cond_a.shape[-2:])
            group = (b - a, (h, w))
            lat_px = (h // scale) * (w // scale)
            per[group] = max(1, min(int(sampler.people_batch), budget_px // max(1, 2 * (b - a) * lat_px)))
            counts[group] = counts.get(group, 0) + 1
    return clean


def job_windows(job: Any, sampler: Any) -> int:
    """Windows the sampler runs for one job (its share of the work)."""
    from ..amodal.occlusion import plan_windows

    return len(plan_windows(0, job.length, sampler.window, sampler.overlap))


class SplitJobRunner:
    """A Diffusion-VAS job runner whose ``run_jobs`` splits the jobs over Ray workers (``VideoWorker.amodal_jobs``).

    Cuts only at whole sampler batches (``batch_boundaries``); ``local`` (this worker's own sampler)
    runs the jobs when they make one range. Results come back in job order, like the sampler's own.
    """

    def __init__(self, workers: Sequence[Any], part: str, local: Any, opts: Any) -> None:
        self.workers, self.part, self.local, self.opts = list(workers), part, local, opts

    def __getattr__(self, name: str) -> Any:  # the sampler's other attributes (device, models, ...)
        return getattr(self.local, name)

    def run_jobs(self, jobs: Sequence[Any], sampler: Any, hooks: Any = None, budget_px: int = 1 << 20,
                 memory: Any = None, out_alloc: Any = None, **local: Any) -> list[Any]:
        """Every job's frames, the jobs shared by the workers in contiguous ranges.

        ``memory``: the plan's low-memory sampler mode, applied on every worker; ``local``: further
        keywords of the sampler's own ``run_jobs`` (e.g. its device), used only where the jobs stay here;
        ``out_alloc``: where the outputs are allocated, likewise only here (the workers' results arrive as
        their own arrays).
        """
        if out_alloc is not None:
            local["out_alloc"] = out_alloc
        import ray

        from ..runtime import NULL_HOOKS

        hooks = hooks or NULL_HOOKS
        jobs = list(jobs)
        clean = batch_boundaries(jobs, sampler, self.local, budget_px)
        ranges = job_ranges([job_windows(j, sampler) for j in jobs], len(self.workers), clean)
        if len(ranges) < 2:
            extra = dict(local, **({} if memory is None else {"memory": memory}))
            return self.local.run_jobs(list(jobs), sampler, hooks, budget_px, **extra)
        hooks.check_interrupt()
        futures = [w.amodal_jobs.remote(self.part, list(jobs[a:b]), sampler, budget_px, self.opts, memory)
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
