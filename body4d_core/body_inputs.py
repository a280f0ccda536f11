"""What SAM-3D-Body sees for each person on each frame, from tracks (+ amodal results).

As upstream: visible frames use the original frame, the visible mask and its box; frames
flagged occluded use the completed RGB, the amodal mask and the amodal box. Frames where a
person has no mask are skipped (the body is MISSING there and the smoother bridges it).
Masks and completed images are loaded lazily so a long clip never holds every crop at once.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .data import MASK_CHUNK, Amodal, Tracks, check_same_frames, mask_boxes, unpack_masks
from .pages import drop_resident
from .errors import InputError
from .sam3d_body.infer import BodyItem


def _mask_loader(packed: np.ndarray, width: int) -> Callable[[], np.ndarray]:
    return lambda: unpack_masks(packed, width)


def _box(packed: np.ndarray, width: int, min_size: float) -> np.ndarray | None:
    box = mask_boxes(unpack_masks(packed, width))
    if np.isnan(box).any() or min(box[2] - box[0], box[3] - box[1]) < min_size:
        return None
    return box


def _drop_masks(tracks: Tracks, amodal: Amodal | None, i: int, a: int | None, stop: int) -> None:
    """Drop the resident pages of one person's masks on the MASK_CHUNK frames before ``stop`` (a whole-clip pass
    over masks in a frame store maps them faster than its pager drops them)."""
    start = max(0, (stop - 1) // MASK_CHUNK * MASK_CHUNK)
    drop_resident(tracks.packed[i, start:stop])
    if a is not None:
        drop_resident(amodal.packed_amodal[a, start:stop])


def body_items(tracks: Tracks, amodal: Amodal | None = None, min_box: float = 2.0) -> list[BodyItem]:
    """One BodyItem per (frame, object) with a usable mask, ordered by frame then object id."""
    if tracks.num_objects == 0:
        raise InputError("the tracks hold no object: prompt or detect at least one person first")
    width = tracks.image_size[1]
    if amodal is not None:
        check_same_frames(tracks=tracks.num_frames, amodal=amodal.num_frames)
        if tuple(amodal.image_size) != tuple(tracks.image_size):
            raise InputError(f"amodal results are {amodal.image_size} but the tracks are {tracks.image_size}")
    items: list[BodyItem] = []
    present = tracks.present
    for i, oid in enumerate(tracks.obj_ids.tolist()):
        a = amodal.index_of(oid) if amodal is not None and oid in amodal.obj_ids else None
        for t in range(tracks.num_frames):
            if t and t % MASK_CHUNK == 0:  # the chunk before t is done
                _drop_masks(tracks, amodal, i, a, t)
            occluded = a is not None and bool(amodal.occluded[a, t])
            if occluded:
                packed = amodal.packed_amodal[a, t]
                completed = amodal.completed(oid, t)
                image = None if completed is None else (lambda c=completed: c)
            elif present[i, t]:
                packed, image = tracks.packed[i, t], None
            else:
                continue
            box = _box(packed, width, min_box)
            if box is None:
                continue
            items.append(BodyItem(frame=t, obj_id=oid, box=box.tolist(), mask=_mask_loader(packed, width),
                                  image=image, occluded=occluded))
        _drop_masks(tracks, amodal, i, a, tracks.num_frames)
    items.sort(key=lambda it: (it.frame, it.obj_id))
    return items
