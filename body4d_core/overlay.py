"""Mask overlays in the per-id palette (the Propagate preview and the headless mask video)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .palette import object_color


def overlay_masks(frame: np.ndarray, masks: np.ndarray, obj_ids: Sequence[int], alpha: float = 0.5,
                  outline: bool = True) -> np.ndarray:
    """uint8 frame [H, W, 3] with each bool mask [N, H, W] tinted in its id's colour (and outlined)."""
    out = frame.astype(np.float32)
    for mask, oid in zip(masks, obj_ids):
        if not mask.any():
            continue
        color = np.asarray(object_color(int(oid)), np.float32)
        out[mask] = out[mask] * (1.0 - alpha) + color * alpha
        if outline:
            edge = mask & ~_erode(mask)
            out[edge] = color
    return np.clip(out, 0, 255).astype(np.uint8)


def _erode(mask: np.ndarray) -> np.ndarray:
    """One-pixel binary erosion (4-neighbourhood), numpy only."""
    m = np.pad(mask, 1, constant_values=False)
    return m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
