"""Views of an Amodal result: per-frame amodal masks and frames with completed people pasted in."""

from __future__ import annotations

import numpy as np

from ..data import Amodal, unpack_masks
from ..errors import InputError


def amodal_union(amodal: Amodal, frames: slice | None = None) -> np.ndarray:
    """bool [T', H, W]: every person's amodal mask together."""
    packed = amodal.packed_amodal if frames is None else amodal.packed_amodal[:, frames]
    if packed.shape[0] == 0:
        t = packed.shape[1]
        return np.zeros((t, *amodal.image_size), bool)
    return unpack_masks(np.bitwise_or.reduce(packed, axis=0), amodal.image_size[1])


def composite_completed(frames: np.ndarray, amodal: Amodal, start: int = 0) -> np.ndarray:
    """uint8 frames [n, H, W, 3] (clip frames start..start+n) with each completed person pasted
    inside its amodal mask, people in id order (later ids on top)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or tuple(frames.shape[1:3]) != tuple(amodal.image_size):
        raise InputError(f"preview: frames {tuple(frames.shape)} do not match the amodal size {amodal.image_size}")
    out = frames.copy()
    rows = amodal.completed_index
    w = amodal.image_size[1]
    order = np.lexsort((amodal.obj_ids[rows[:, 0]], rows[:, 1])) if len(rows) else []
    for r in order:
        k, t = int(rows[r, 0]), int(rows[r, 1])
        if not start <= t < start + len(frames):
            continue
        m = unpack_masks(amodal.packed_amodal[k, t], w)
        out[t - start][m] = amodal.completed_rgb[r][m]
    return out
