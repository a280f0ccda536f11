"""Converters between our Tracks and ComfyUI core's ``SAM3_TRACK_DATA`` dict.

Core's layout (comfy_extras/nodes_sam3.py, comfy/ldm/sam3/tracker.py): ``packed_masks`` is a
uint8 torch tensor [frames, objects, Hm, Wm/8] with LSB-first bits (pixel 0 in bit 0) at a
mask resolution whose width is a multiple of 8, or None when nothing was tracked;
``orig_size`` is the video (H, W) that core resizes masks to; ``n_frames``; ``scores`` is
one float per object. Objects are positional there; we add ``obj_ids`` and ``frame_scores``
(extra keys core ignores) so a round trip keeps our ids and per-frame scores exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data import Tracks, pack_masks
from ..errors import InputError

# byte -> the same 8 bits in reverse order: converts MSB-first packing to LSB-first and back
_REVERSE = np.array([int(f"{b:08b}"[::-1], 2) for b in range(256)], np.uint8)


def _resize_nearest_width(masks: np.ndarray, width: int) -> np.ndarray:
    """bool [..., H, W] -> [..., H, width] by nearest sampling of columns."""
    src = masks.shape[-1]
    cols = np.minimum(((np.arange(width) + 0.5) * src / width).astype(np.int64), src - 1)
    return masks[..., cols]


def tracks_to_core(tracks: Tracks) -> dict[str, Any]:
    """Our Tracks as core's SAM3_TRACK_DATA (masks at full height; width padded to a multiple of 8)."""
    h, w = tracks.image_size
    n, t = tracks.num_objects, tracks.num_frames
    if n == 0:
        return {"packed_masks": None, "orig_size": (h, w), "n_frames": t, "scores": []}
    if w % 8 == 0:
        core = _REVERSE[tracks.packed]  # [N, T, H, W/8], same bits LSB-first
    else:  # core needs a width divisible by 8: resample columns, core resizes back to orig_size
        wm = (w + 7) // 8 * 8
        core = np.empty((n, t, h, wm // 8), np.uint8)
        for i in range(n):
            for s in range(t):
                mask = _resize_nearest_width(tracks.masks_of(int(tracks.obj_ids[i]), slice(s, s + 1)), wm)
                core[i, s] = np.packbits(mask[0], axis=-1, bitorder="little")
    present = tracks.present
    mean_scores = [float(tracks.scores[i][present[i]].mean()) if present[i].any() else 0.0 for i in range(n)]
    return {
        "packed_masks": torch.from_numpy(np.ascontiguousarray(core.transpose(1, 0, 2, 3))),
        "orig_size": (h, w),
        "n_frames": t,
        "scores": mean_scores,
        "obj_ids": [int(i) for i in tracks.obj_ids],
        "frame_scores": tracks.scores.copy(),
    }


def _core_ids(data: dict, n: int) -> np.ndarray:
    ids = data.get("obj_ids")
    if ids is not None and len(ids) == n and len(set(int(i) for i in ids)) == n and min(ids) >= 1:
        return np.asarray(ids, np.int64)
    return np.arange(1, n + 1, dtype=np.int64)  # core index i -> our id i + 1


def _core_scores(data: dict, present: np.ndarray) -> np.ndarray:
    n, t = present.shape
    fs = data.get("frame_scores")
    if fs is not None and np.shape(fs) == (n, t):
        return np.asarray(fs, np.float32)
    per_obj = np.asarray(list(data.get("scores") or [])[:n], np.float32)
    if per_obj.size != n:
        per_obj = np.ones(n, np.float32)
    return np.where(present, per_obj[:, None], 0.0).astype(np.float32)


def tracks_from_core(data: Any) -> Tracks:
    """Core's SAM3_TRACK_DATA as our Tracks; ids 1..N follow core's object order."""
    if not isinstance(data, dict) or "packed_masks" not in data or "orig_size" not in data:
        raise InputError("expected SAM3 track data (a dict with packed_masks and orig_size from SAM3 Video Track)")
    packed = data["packed_masks"]
    if packed is None:
        raise InputError("the SAM3 track data holds no objects: nothing was tracked")
    packed = packed.detach().cpu().numpy() if isinstance(packed, torch.Tensor) else np.asarray(packed)
    if packed.ndim != 4 or packed.dtype != np.uint8:
        raise InputError(f"SAM3 track data packed_masks must be uint8 [frames, objects, H, W/8], "
                         f"got {packed.dtype} {packed.shape}")
    h, w = (int(v) for v in data["orig_size"])
    t, n, hm, wm8 = packed.shape
    if n == 0 or t == 0:
        raise InputError("the SAM3 track data holds no objects or no frames")
    per_obj = packed.transpose(1, 0, 2, 3)  # [N, T, Hm, Wm/8]
    if (hm, wm8 * 8) == (h, w):
        ours = _REVERSE[per_obj]
    else:
        ours = np.empty((n, t, h, (w + 7) // 8), np.uint8)
        for s in range(t):  # one frame at a time: bounded memory for long clips
            m = np.unpackbits(per_obj[:, s], axis=-1, bitorder="little").astype(np.float32)
            up = F.interpolate(torch.from_numpy(m)[None], size=(h, w), mode="bilinear", align_corners=False)[0]
            ours[:, s] = pack_masks((up > 0.5).numpy())
    tracks = Tracks(_core_ids(data, n), np.ascontiguousarray(ours), (h, w))
    tracks.scores = _core_scores(data, tracks.present)
    return tracks
