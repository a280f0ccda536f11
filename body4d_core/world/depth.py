"""Metric depth of a clip's keyframes only: MoGe-2 runs on every n-th frame, so a whole-clip [T, H, W] array
would hold NaN on all the others (75 GB of store at 9000 frames of 1080p, issue #21); this keeps [K, H, W]."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..alloc import Alloc, zeros
from ..errors import InputError


class KeyframeDepth:
    """Depth maps ``maps`` [K, H, W] float32 of the frames ``frames`` (ascending) of a ``num_frames``-frame clip;
    every other frame reads as all NaN (unknown), as in the dense [T, H, W] array it replaces."""

    def __init__(self, frames: Any, maps: np.ndarray, num_frames: int) -> None:
        self.frames = np.asarray(frames, np.int64).reshape(-1)
        self.maps = maps
        self.num_frames = int(num_frames)
        if maps.ndim != 3 or len(maps) != len(self.frames):
            raise InputError(f"keyframe depth: maps {maps.shape} for {len(self.frames)} keyframes")
        if len(self.frames) and (self.frames[0] < 0 or self.frames[-1] >= self.num_frames
                                 or (np.diff(self.frames) <= 0).any()):
            raise InputError(f"keyframe depth: keyframes must ascend within 0..{self.num_frames - 1}")
        self._slot = {int(f): k for k, f in enumerate(self.frames)}

    @classmethod
    def from_dense(cls, depth: np.ndarray) -> "KeyframeDepth":
        """Every frame of a dense [T, H, W] depth as a keyframe (no copy; NaN frames stay NaN)."""
        depth = np.asarray(depth)
        if depth.ndim != 3:
            raise InputError(f"depth must be [T, H, W], got {depth.shape}")
        return cls(np.arange(len(depth)), depth, len(depth))

    @property
    def shape(self) -> tuple[int, int, int]:
        """(T, H, W) of the clip, as the dense array's."""
        return (self.num_frames, *self.maps.shape[1:])

    def __len__(self) -> int:
        return self.num_frames

    def get(self, i: int) -> np.ndarray | None:
        """Frame ``i``'s depth map, None when it is no keyframe."""
        k = self._slot.get(int(i))
        return None if k is None else self.maps[k]

    def has(self, i: int) -> bool:
        """Whether frame ``i`` has any finite depth."""
        d = self.get(i)
        return d is not None and bool(np.isfinite(d).any())

    def __getitem__(self, i: int) -> np.ndarray:
        """Frame ``i``'s map, or an all-NaN map (a fresh array) when it is no keyframe."""
        if not -self.num_frames <= int(i) < self.num_frames:
            raise IndexError(f"frame {i} of {self.num_frames}")
        d = self.get(int(i) % self.num_frames)
        return d if d is not None else np.full(self.maps.shape[1:], np.nan, np.float32)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """The dense [T, H, W] array (NaN off the keyframes): for small clips and tests only."""
        out = np.full(self.shape, np.nan, np.float32)
        out[self.frames] = self.maps
        return out if dtype is None else out.astype(dtype)

    def mapped(self, fn: Callable[[np.ndarray], np.ndarray], size: tuple[int, int],
               alloc: Alloc | None = None) -> "KeyframeDepth":
        """The same keyframes with ``fn`` applied to each map (giving ``size`` = (h, w) float32 maps), in an
        array from ``alloc`` (zero-filled; default RAM)."""
        out = zeros(alloc, (len(self.frames), *size), np.float32)
        for k, d in enumerate(self.maps):
            out[k] = fn(np.asarray(d, np.float32))
        return KeyframeDepth(self.frames, out, self.num_frames)


def as_keyframe_depth(depth: KeyframeDepth | np.ndarray | None) -> KeyframeDepth | None:
    """A ``KeyframeDepth`` for either form (a dense [T, H, W] array: every frame kept, no copy)."""
    if depth is None or isinstance(depth, KeyframeDepth):
        return depth
    return KeyframeDepth.from_dense(depth)
