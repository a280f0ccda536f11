"""The optional world frame a scene export can be placed in: camera poses, a floor, per-frame contacts.

Built by the world-frame stage; every animation export takes it optionally. Without it the world
is the camera's own frame (OpenGL axes: x right, y up, z towards the viewer) and the camera is
static at the origin.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InputError

CV_TO_GL = np.diag([1.0, -1.0, -1.0])  # OpenCV camera axes (y down, z forward) <-> OpenGL (y up, z back)


@dataclass
class Floor:
    """A floor plane in world coordinates (metres): a point on it, its up normal, the drawn square's size."""

    point: np.ndarray
    normal: np.ndarray
    size: float = 10.0

    def __post_init__(self) -> None:
        self.point = np.asarray(self.point, np.float64).reshape(3)
        n = np.asarray(self.normal, np.float64).reshape(3)
        if not (np.isfinite(self.point).all() and np.isfinite(n).all() and np.linalg.norm(n) > 0 and self.size > 0):
            raise InputError("Floor: point and normal must be finite, the normal non-zero and the size positive")
        self.normal = n / np.linalg.norm(n)


@dataclass
class SceneWorld:
    """World frame of a clip: ``world_from_camera`` [T, 4, 4] maps OpenCV camera coordinates (metres)
    to world coordinates (y up, metres); optional floor; ``contacts`` name -> bool [N, T] by Bodies row
    (e.g. ``left_foot`` / ``right_foot``)."""

    world_from_camera: np.ndarray
    floor: Floor | None = None
    contacts: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        w = np.asarray(self.world_from_camera, np.float64)
        if w.ndim != 3 or w.shape[1:] != (4, 4) or w.shape[0] < 1 or not np.isfinite(w).all():
            raise InputError(f"SceneWorld.world_from_camera must be finite [T, 4, 4], got shape {w.shape}")
        rot = w[:, :3, :3]
        ortho = np.abs(np.einsum("tij,tkj->tik", rot, rot) - np.eye(3)).max()
        if ortho > 1e-4 or (np.linalg.det(rot) < 0).any() or np.abs(w[:, 3] - [0, 0, 0, 1]).max() > 1e-9:
            raise InputError("SceneWorld.world_from_camera must be rigid transforms (rotation + translation)")
        self.world_from_camera = w
        self.contacts = {str(k): np.asarray(v, bool) for k, v in self.contacts.items()}

    def gl_camera_poses(self, num_frames: int) -> np.ndarray:
        """[T, 4, 4] world-from-OpenGL-camera poses for num_frames (a single pose is broadcast)."""
        w = self.world_from_camera
        if w.shape[0] == 1:
            w = np.repeat(w, num_frames, 0)
        if w.shape[0] != num_frames:
            raise InputError(f"the world frame has {w.shape[0]} camera poses but the clip has {num_frames} frames")
        out = w.copy()
        out[:, :3, :3] = w[:, :3, :3] @ CV_TO_GL
        return out

    def check_contacts(self, num_objects: int, num_frames: int) -> dict[str, np.ndarray]:
        """The contact flags, checked against the bodies' [N, T]."""
        for name, arr in self.contacts.items():
            if arr.shape != (num_objects, num_frames):
                raise InputError(f"contact flags {name!r} are {arr.shape}, expected {(num_objects, num_frames)}")
        return self.contacts


def scene_world_from(world: Any, bodies: Any = None, floor_size: float = 0.0) -> SceneWorld:
    """The world stage's result (``body4d_core.world.WorldResult``) as a scene export's world frame.

    Camera poses become ``world_from_camera``; the floor is the world's y = 0 plane (sized to cover the
    people and the camera when ``floor_size`` is 0); each contact point (heel / toe of each foot) becomes a
    flag per Bodies row. With ``bodies``, rows are matched by object id and a world of another clip (frame
    count, people) is refused; without, rows are the world result's identity order."""
    rot = np.asarray(world.camera_rotations, np.float64)
    pos = np.asarray(world.camera_positions, np.float64)
    c = np.asarray(world.contacts, bool)
    rows = list(range(c.shape[0]))
    if bodies is not None:
        if rot.shape[0] != bodies.num_frames:
            raise InputError(f"the world has {rot.shape[0]} frames but the bodies have {bodies.num_frames}; "
                             "ground the same clip")
        ids = np.asarray(world.obj_ids).tolist()
        missing = sorted(set(bodies.obj_ids.tolist()) - set(ids))
        if missing:
            raise InputError(f"people {missing} are not in the world (ids: {ids}); ground the same clip")
        rows = [ids.index(oid) for oid in bodies.obj_ids.tolist()]
    poses = np.tile(np.eye(4), (rot.shape[0], 1, 1))
    poses[:, :3, :3], poses[:, :3, 3] = rot, pos
    if floor_size <= 0:
        pts = np.concatenate([np.asarray(world.root, np.float64)[np.asarray(world.present, bool)], pos])
        extent = np.abs(pts[:, [0, 2]]).max() if pts.size else 0.0
        floor_size = float(max(4.0, 2.0 * extent + 2.0))
    names = tuple(getattr(world, "contact_names", ()) or _contact_names())
    contacts = {name: c[rows, :, k] for k, name in enumerate(names)}
    return SceneWorld(poses, Floor([0.0, 0.0, 0.0], [0.0, 1.0, 0.0], floor_size), contacts)


def _contact_names() -> tuple[str, ...]:
    from ..world.keypoints import CONTACT_NAMES

    return CONTACT_NAMES
