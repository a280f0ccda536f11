"""Turn tracks (and amodal completions) into per-person SAM-3D-Body inputs, loading masks lazily."""

from __future__ import annotations

import numpy as np

from ..data import Amodal, Tracks, mask_boxes, unpack_masks
from ..errors import InputError
from .infer import BodyItem


def _packed_loader(packed: np.ndarray, width: int):
    return lambda: unpack_masks(packed, width)


def items_from_tracks(tracks: Tracks, amodal: Amodal | None = None, min_pixels: int = 1) -> list[BodyItem]:
    """One item per (object, frame) with a mask of at least ``min_pixels``.

    Visible frames use the frame, the visible mask and its box; frames the amodal stage flagged
    occluded use the completed frame (when one exists), the amodal mask and its box (upstream's rule).
    Masks are unpacked only when a batch crops them.
    """
    if amodal is not None:
        if amodal.image_size != tracks.image_size or amodal.num_frames != tracks.num_frames:
            raise InputError(f"amodal results ({amodal.num_frames} frames, {amodal.image_size}) do not match the "
                             f"tracks ({tracks.num_frames} frames, {tracks.image_size})")
    w = tracks.image_size[1]
    items: list[BodyItem] = []
    for i, oid in enumerate(tracks.obj_ids.tolist()):
        ai = None
        if amodal is not None and int(oid) in amodal.obj_ids.tolist():
            ai = amodal.index_of(oid)
        for t in range(tracks.num_frames):
            if ai is not None and amodal.occluded[ai, t]:
                packed = amodal.packed_amodal[ai, t]
                image = amodal.completed(oid, t)
                occluded = True
            else:
                packed, image, occluded = tracks.packed[i, t], None, False
            pixels = int(np.unpackbits(packed).sum()) if packed.any() else 0
            if pixels < max(1, min_pixels):
                continue
            box = mask_boxes(unpack_masks(packed, w))
            items.append(BodyItem(t, int(oid), box.tolist(), _packed_loader(packed, w), image, occluded))
    return items
