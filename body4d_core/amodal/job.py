"""One video for a Diffusion-VAS sampler: two conditions, a seed key, bookkeeping."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class VideoJob:
    """One video to denoise: two conditions [T, C, h, w] in [-1, 1] (C = 1 or 3) and a seed key.

    ``keep`` (bool [T], None = every frame) names the frames the caller will read; a sampler
    may skip the work of the others (they come back as zeros), never changing a kept frame.
    """

    cond_a: torch.Tensor
    cond_b: torch.Tensor
    seed_key: int
    frames: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    obj_id: int = 0
    keep: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.cond_a.shape[0] != self.cond_b.shape[0] or self.cond_a.shape[-2:] != self.cond_b.shape[-2:]:
            raise ValueError(f"job conditions differ: {tuple(self.cond_a.shape)} vs {tuple(self.cond_b.shape)}")
        if self.keep is not None:
            keep = np.asarray(self.keep)
            if keep.dtype != bool or keep.shape != (self.length,):
                raise ValueError(f"job keep must be bool [{self.length}], got {keep.dtype} {keep.shape}")
            self.keep = keep

    @property
    def kept(self) -> np.ndarray:
        """bool [T]: the frames the caller reads (all when ``keep`` is None)."""
        return np.ones(self.length, bool) if self.keep is None else self.keep

    @property
    def length(self) -> int:
        return int(self.cond_a.shape[0])
