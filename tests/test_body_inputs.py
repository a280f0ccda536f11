"""Tracks (+ amodal) -> SAM-3D-Body items: which image, mask and box each person gets."""

import numpy as np
import pytest

from body4d_core.body_inputs import body_items
from body4d_core.data import Amodal, Tracks, pack_masks
from body4d_core.errors import InputError


@pytest.fixture()
def tracks():
    m = np.zeros((2, 4, 20, 30), bool)
    m[0, :, 2:10, 3:12] = True
    m[1, 1:3, 5:15, 5:25] = True
    return Tracks.from_masks([1, 5], m)


def test_visible_frames_use_visible_mask_and_box(tracks):
    items = body_items(tracks)
    assert [(i.frame, i.obj_id) for i in items] == [(0, 1), (1, 1), (1, 5), (2, 1), (2, 5), (3, 1)]
    first = items[0]
    assert first.box == [3.0, 2.0, 12.0, 10.0] and not first.occluded and first.get_image() is None
    assert first.get_mask().sum() == 8 * 9


def test_occluded_frames_use_amodal_mask_box_and_completed_rgb(tracks):
    amodal_masks = np.zeros((2, 4, 20, 30), bool)
    amodal_masks[1, 2, 0:20, 4:26] = True
    occ = np.zeros((2, 4), bool)
    occ[1, 2] = True
    rgb = np.full((1, 20, 30, 3), 9, np.uint8)
    am = Amodal(np.array([1, 5]), occ, pack_masks(amodal_masks), (20, 30), completed_index=np.array([[1, 2]]),
                completed_rgb=rgb)
    item = [i for i in body_items(tracks, am) if (i.frame, i.obj_id) == (2, 5)][0]
    assert item.occluded and item.box == [4.0, 0.0, 26.0, 20.0]
    assert item.get_mask().sum() == 20 * 22 and item.get_image()[0, 0, 0] == 9


def test_mismatched_inputs(tracks):
    with pytest.raises(InputError, match="frame counts do not match"):
        body_items(tracks, Amodal(np.array([1]), np.zeros((1, 3), bool), pack_masks(np.zeros((1, 3, 20, 30), bool)),
                                  (20, 30)))
    with pytest.raises(InputError, match="no object"):
        body_items(Tracks(np.zeros(0, np.int64), np.zeros((0, 2, 4, 1), np.uint8), (4, 8)))
