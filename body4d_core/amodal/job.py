"""One video for a Diffusion-VAS sampler: two conditions, a seed key, bookkeeping."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class VideoJob:
    """One video to denoise: two conditions [T, C, h, w] in [-1, 1] (C = 1 or 3) and a seed key."""

    cond_a: torch.Tensor
    cond_b: torch.Tensor
    seed_key: int
    frames: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    obj_id: int = 0

    def __post_init__(self) -> None:
        if self.cond_a.shape[0] != self.cond_b.shape[0] or self.cond_a.shape[-2:] != self.cond_b.shape[-2:]:
            raise ValueError(f"job conditions differ: {tuple(self.cond_a.shape)} vs {tuple(self.cond_b.shape)}")

    @property
    def length(self) -> int:
        return int(self.cond_a.shape[0])
