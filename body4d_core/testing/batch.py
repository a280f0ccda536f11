"""Batch workers with faults built in, for the batch engine's fault tests (never used by the library)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..batch.worker import VideoWorker

RENDER_FAULT = "CUDA error: an illegal memory access was encountered (a render fault injected by the tests)"


class RenderFaultWorker(VideoWorker):
    """A worker whose every render range fails, as a device fault in the middle of a split render would."""

    def render_frames(self, frames: np.ndarray | None, bodies: Any, camera: Any, mode: str, batch_size: int,
                      **kwargs: Any) -> np.ndarray:
        self._render_shards += 1
        raise RuntimeError(RENDER_FAULT)
