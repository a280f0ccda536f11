"""Per-item SAM-3D-Body results written straight into ``Bodies`` arrays (row = person, column = frame).

The body stage hands each finished batch to a ``BodiesWriter``, so a run keeps one copy of every
result, in the final layout (with a file-backed allocator, in the run's store), instead of per-item
arrays copied into the bodies at the end.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..alloc import Alloc, zeros
from ..data import Bodies, BodyFlag

# Bodies.extras name -> per-item result key (names follow body4d_core.interop.mhr_pose_data)
EXTRA_KEYS = {"model_params": "model_params", "joint_coords": "joints", "joint_global_rots": "joint_rots"}


class BodiesWriter:
    """``Bodies`` arrays [n_people, T, ...] that per-item results are written into as they come.

    People are the items' object ids plus ``obj_ids`` (sorted); frames without an item stay MISSING.
    keypoints, extras and vertices come from ``alloc(shape, dtype)`` (zero-filled, e.g. ``FrameStore.empty``;
    default ``np.zeros``), each once, on the first result that has them; parameters and flags stay in RAM.
    """

    def __init__(self, items: Sequence[Any], num_frames: int, image_size: tuple[int, int],
                 obj_ids: Sequence[int] | None = None, alloc: Alloc | None = None) -> None:
        ids = sorted({int(it.obj_id) for it in items} | {int(i) for i in (obj_ids or [])})
        self.alloc, self.num_frames = alloc, int(num_frames)
        self.bodies = Bodies.empty(ids, num_frames, image_size)
        self.row = {oid: i for i, oid in enumerate(ids)}
        n = len(ids)
        self.kp3 = zeros(alloc, (n, num_frames, 70, 3), np.float32)
        self.kp2 = zeros(alloc, (n, num_frames, 70, 2), np.float32)
        self.extras: dict[str, np.ndarray] = {}
        self.verts: np.ndarray | None = None
        self.written = 0  # items written so far

    def _array(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """The [n, T, *shape] array of ``name`` ('vertices' or an extras name), allocated on first use."""
        arr = self.verts if name == "vertices" else self.extras.get(name)
        if arr is None:
            arr = zeros(self.alloc, (len(self.row), self.num_frames) + tuple(shape), np.float32)
            if name == "vertices":
                self.verts = arr
            else:
                self.extras[name] = arr
        return arr

    def put(self, items: Sequence[Any], results: Sequence[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """Write each item's results into its (person, frame) cell; returns per item views of that cell
        (the keys ``Bodies`` keeps: parameters, keypoints, extras' result keys, vertices)."""
        out = []
        for it, res in zip(items, results):
            r, f = self.row[int(it.obj_id)], int(it.frame)
            cell: dict[str, np.ndarray] = {}
            for name, arr in self.bodies.params.items():
                arr[r, f] = res[name]
                cell[name] = arr[r, f]
            self.kp3[r, f], self.kp2[r, f] = res["keypoints_3d"], res["keypoints_2d"]
            cell["keypoints_3d"], cell["keypoints_2d"] = self.kp3[r, f], self.kp2[r, f]
            for name, key in EXTRA_KEYS.items():
                if key in res:
                    arr = self._array(name, np.shape(res[key]))
                    arr[r, f] = res[key]
                    cell[key] = arr[r, f]
            if "vertices" in res:
                arr = self._array("vertices", np.shape(res["vertices"]))
                arr[r, f] = res["vertices"]
                cell["vertices"] = arr[r, f]
            self.bodies.flags[r, f] = BodyFlag.OCCLUDED if it.occluded else BodyFlag.VISIBLE
            self.written += 1
            out.append(cell)
        return out

    def result(self, faces: np.ndarray | None = None) -> Bodies:
        """The filled ``Bodies`` (its arrays are the writer's own, not copies)."""
        return self.bodies.replace(keypoints_3d=self.kp3, keypoints_2d=self.kp2, vertices=self.verts,
                                   faces=None if faces is None else np.asarray(faces, np.int32),
                                   extras=dict(self.extras))
