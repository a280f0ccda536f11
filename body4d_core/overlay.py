"""Mask overlays in the per-id palette (the Propagate preview and the headless mask video)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .palette import object_color


def overlay_masks(frame: np.ndarray, masks: np.ndarray, obj_ids: Sequence[int], alpha: float = 0.5,
                  outline: bool = True) -> np.ndarray:
    """uint8 frame [H, W, 3] with each bool mask [N, H, W] tinted in its id's colour (and outlined).

    Masks are blended in order, in float32, on the pixels of the masks' common bounding box
    only (pixels outside every mask are copied unchanged): the same values as blending the
    whole frame, ~10x less work for people that fill a fraction of it.
    """
    masks = np.asarray(masks, dtype=bool)
    boxes = [_box(m) for m in masks]
    hit = [b for b in boxes if b is not None]
    src = np.asarray(frame)
    out = src.copy() if src.dtype == np.uint8 else np.clip(src.astype(np.float32), 0, 255).astype(np.uint8)
    if not hit:
        return out
    y0, x0 = min(b[0] for b in hit), min(b[1] for b in hit)
    y1, x1 = max(b[2] for b in hit), max(b[3] for b in hit)
    region = src[y0:y1, x0:x1].astype(np.float32)
    for mask, oid, box in zip(masks, obj_ids, boxes):
        if box is None:
            continue
        color = np.asarray(object_color(int(oid)), np.float32)
        sl = (slice(box[0] - y0, box[2] - y0), slice(box[1] - x0, box[3] - x0))
        sub, m = region[sl], mask[box[0]:box[2], box[1]:box[3]]
        np.copyto(sub, sub * (1.0 - alpha) + color * alpha, where=m[..., None])
        if outline:
            edge = m & ~_erode(m)  # the crop is the tight box: outside it the mask is False, as the pad
            np.copyto(sub, color, where=edge[..., None])
    out[y0:y1, x0:x1] = np.clip(region, 0, 255).astype(np.uint8)
    return out


def _box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Tight (y0, x0, y1, x1) bounds of a bool mask [H, W], None if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask[rows[0]:rows[-1] + 1].any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def _erode(mask: np.ndarray) -> np.ndarray:
    """One-pixel binary erosion (4-neighbourhood), numpy only."""
    m = np.pad(mask, 1, constant_values=False)
    return m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
