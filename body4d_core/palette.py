"""Per-object colours shared by every view: mask overlays, the points editor, mesh renders.

Indexed by (obj_id - 1) modulo the list, so an id keeps its colour across stages and runs.
web/points_editor.js holds the same list.
"""

from __future__ import annotations

import numpy as np

OBJECT_COLORS: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128),
)


def object_color(obj_id: int) -> tuple[int, int, int]:
    """RGB colour (0..255) of an object id."""
    return OBJECT_COLORS[(int(obj_id) - 1) % len(OBJECT_COLORS)]


def object_color_float(obj_id: int) -> np.ndarray:
    """RGB colour of an object id as float32 0..1 (for renderers)."""
    return np.asarray(object_color(obj_id), np.float32) / 255.0
