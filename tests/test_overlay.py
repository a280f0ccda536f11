"""Per-id palette and mask overlays."""

import numpy as np

from body4d_core.overlay import overlay_masks
from body4d_core.palette import OBJECT_COLORS, object_color, object_color_float


def test_palette_is_stable_per_id():
    assert object_color(1) == OBJECT_COLORS[0]
    assert object_color(1 + len(OBJECT_COLORS)) == object_color(1)
    assert np.allclose(object_color_float(2) * 255, OBJECT_COLORS[1])


def test_overlay_tints_inside_outlines_edge_and_keeps_outside():
    frame = np.full((12, 12, 3), 100, np.uint8)
    masks = np.zeros((2, 12, 12), bool)
    masks[0, 2:8, 2:8] = True
    masks[1, 9:11, 9:11] = True
    out = overlay_masks(frame, masks, [1, 3], alpha=0.5)
    c1 = np.array(object_color(1))
    assert np.array_equal(out[5, 5], np.clip(((100 + c1) / 2).astype(int), 0, 255))  # interior tinted
    assert np.array_equal(out[2, 2], c1)  # edge outlined
    assert np.array_equal(out[0, 0], [100, 100, 100])  # outside untouched
    assert np.array_equal(out[9, 9], object_color(3))
