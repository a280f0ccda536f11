"""Foot contact per identity and frame: heel and toe of each foot, from height and world speed with hysteresis."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from .keypoints import CONTACT_INDEX


@dataclass
class ContactSettings:
    """Thresholds of the contact detector (metres above the planted height, metres per second)."""

    height_on: float = 0.08  # a point lower than this (above its planted height) may touch
    height_off: float = 0.12  # higher than this: released
    speed_on: float = 0.9  # horizontal speed below which it may touch
    speed_off: float = 1.5  # faster than this: released
    stencil: int = 3  # speed from positions +- this many frames
    min_frames: int = 3  # shorter contacts are dropped

    def __post_init__(self) -> None:
        if not (0 < self.height_on <= self.height_off and 0 < self.speed_on <= self.speed_off):
            raise InputError("contact thresholds must satisfy 0 < on <= off for height and speed")
        if self.stencil < 1 or self.min_frames < 1:
            raise InputError("contact stencil and min_frames must be >= 1")


def planted_height(heights: np.ndarray, target: float, spread: float = 0.1) -> np.ndarray:
    """Per identity and point, the height a planted point sits at [N, P]: a low percentile,
    kept within ``spread`` of the expected sole height ``target``."""
    low = np.nanpercentile(heights, 10, axis=1)
    return np.clip(np.nan_to_num(low, nan=target), target - spread, target + spread)


def horizontal_speed(points: np.ndarray, fps: float, stencil: int) -> np.ndarray:
    """Horizontal (x, z) speed in m/s of world points [N, T, P, 3] from a centred difference."""
    t = points.shape[1]
    idx = np.arange(t)
    a = np.clip(idx - stencil, 0, t - 1)
    b = np.clip(idx + stencil, 0, t - 1)
    span = np.maximum(b - a, 1) / fps
    d = points[:, b][..., [0, 2]] - points[:, a][..., [0, 2]]
    return np.linalg.norm(d, axis=-1) / span[None, :, None]


def _hysteresis(on: np.ndarray, off: np.ndarray) -> np.ndarray:
    """Contact state of one series [T]: enters on ``on``, leaves on ``off`` (in between it keeps its state)."""
    out = np.zeros(on.shape, bool)
    state = False
    for i in range(on.shape[0]):
        state = (not off[i]) if state else bool(on[i])
        out[i] = state
    return out


def _drop_short(c: np.ndarray, min_frames: int) -> np.ndarray:
    out = c.copy()
    t = len(c)
    i = 0
    while i < t:
        if c[i]:
            j = i
            while j < t and c[j]:
                j += 1
            if j - i < min_frames:
                out[i:j] = False
            i = j
        else:
            i += 1
    return out


def detect_contacts(joints: np.ndarray, present: np.ndarray, fps: float, sole: float = 0.02,
                    settings: ContactSettings | None = None) -> np.ndarray:
    """bool [N, T, 4] contacts (left heel, left toe, right heel, right toe) from world keypoints [N, T, K, 3]."""
    s = settings or ContactSettings()
    pts = joints[:, :, CONTACT_INDEX]
    heights = np.where(present[..., None], pts[..., 1], np.nan)
    base = planted_height(heights, sole)
    rel = pts[..., 1] - base[:, None, :]
    speed = horizontal_speed(pts, fps, s.stencil)
    on = (rel < s.height_on) & (speed < s.speed_on) & present[..., None]
    off = (rel > s.height_off) | (speed > s.speed_off) | ~present[..., None]
    out = np.zeros(on.shape, bool)
    for n in range(on.shape[0]):
        for p in range(on.shape[2]):
            out[n, :, p] = _drop_short(_hysteresis(on[n, :, p], off[n, :, p]), s.min_frames)
    return out
