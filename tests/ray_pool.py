"""One embedded Ray with two CPU workers, shared by the batch test modules' ``pool`` fixtures."""

from __future__ import annotations

import shutil
import tempfile
from typing import Iterator


def two_worker_pool() -> Iterator[object]:
    """Start an embedded Ray and a pool of two CPU workers; yield the pool; stop both and clean up."""
    import ray

    from body4d_core.batch.engine import WorkerPool, WorkerSpec, init_ray

    temp = tempfile.mkdtemp(prefix="b4dray")  # short: Ray's socket paths must stay under ~100 characters
    init_ray(num_cpus=2, object_store_mb=200, temp_dir=temp)
    workers = WorkerPool(WorkerSpec(2, 0.0, 1.0))
    try:
        yield workers
    finally:
        workers.shutdown()
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
