"""One video's body stage over every worker: crop items split in whole batches, results merged in order.

Items are sorted as ``estimate_bodies`` sorts them (frame, then object id) and cut only at
multiples of the batch size, so every worker runs exactly the batches a single worker would
have run: the merged results equal a one-worker run.
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
