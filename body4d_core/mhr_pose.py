"""Bodies <-> ComfyUI core's ``MHR_POSE_DATA`` (so core's Render / BuildPoseGLB / SavePoseBVH
work downstream of our smoother, and core's SAM3DBody_Predict output can be smoothed by us).

Core's dict: ``{"frames": [[person, ...] per frame], "faces": int [F, 3], "image_size": (H, W),
"canonical_colors": dict | None, "hand_vert_mask": bool [V] | None}``. A person dict holds
numpy arrays under SAM3DBody_Predict's keys (``pred_vertices``, ``pred_cam_t``,
``focal_length``, ``global_rot``, ``body_pose_params`` ...). Core's consumers identify a
person by its position in each frame's list, so we emit every identity in object-id order on
every frame up to the last one present; an identity missing on a frame before a present one
gets a placeholder placed behind the camera (``body4d_missing`` = True) to keep the slots
stable. Each dict also carries ``obj_id`` so the round trip keeps ids.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .data import PARAM_DIMS, BodyFlag, Bodies, Camera
from .errors import InputError

# our parameter block -> core person-dict key
PARAM_KEYS = {
    "global_rot": "global_rot", "body_pose": "body_pose_params", "hand_pose": "hand_pose_params",
    "shape": "shape_params", "scale": "scale_params", "expr": "expr_params", "cam_t": "pred_cam_t",
}
EXTRA_KEYS = {"model_params": "mhr_model_params", "joint_coords": "pred_joint_coords",
              "joint_global_rots": "pred_global_rots"}
BEHIND_CAMERA = np.array([0.0, 0.0, -1000.0], np.float32)


def _bbox(points: np.ndarray | None) -> np.ndarray:
    if points is None or not np.isfinite(points).all() or points.size == 0:
        return np.zeros(4, np.float32)
    return np.array([*points.min(0), *points.max(0)], np.float32)


def _person(bodies: Bodies, camera: Camera, i: int, t: int) -> dict[str, Any]:
    p: dict[str, Any] = {"obj_id": int(bodies.obj_ids[i])}
    for name, key in PARAM_KEYS.items():
        p[key] = bodies.params[name][i, t].copy()
    p["focal_length"] = np.float32(camera.intrinsics[t, 1])
    if bodies.keypoints_3d is not None:
        p["pred_keypoints_3d"] = bodies.keypoints_3d[i, t].copy()
    if bodies.keypoints_2d is not None:
        p["pred_keypoints_2d"] = bodies.keypoints_2d[i, t].copy()
    if bodies.vertices is not None:
        p["pred_vertices"] = bodies.vertices[i, t].copy()
    for name, key in EXTRA_KEYS.items():
        if name in bodies.extras:
            p[key] = np.asarray(bodies.extras[name][i, t]).copy()
    p["bbox"] = _bbox(p.get("pred_keypoints_2d"))
    p["mask"] = None
    return p


def to_mhr_pose(bodies: Bodies, camera: Camera) -> dict[str, Any]:
    """Core ``MHR_POSE_DATA`` of our bodies (slots in object-id order, see the module doc)."""
    camera = camera.check_frames(bodies.num_frames)
    order = np.argsort(bodies.obj_ids)
    frames: list[list[dict[str, Any]]] = []
    present = bodies.present
    for t in range(bodies.num_frames):
        here = [int(i) for i in order if present[i, t]]
        persons: list[dict[str, Any]] = []
        if here:
            last = max(order.tolist().index(i) for i in here)
            for i in order[: last + 1].tolist():
                p = _person(bodies, camera, i, t)
                if not present[i, t]:
                    p["pred_cam_t"] = BEHIND_CAMERA.copy()
                    p["body4d_missing"] = True
                persons.append(p)
        frames.append(persons)
    return {
        "frames": frames,
        "faces": None if bodies.faces is None else bodies.faces.astype(np.int64),
        "image_size": (int(bodies.image_size[0]), int(bodies.image_size[1])),
        "canonical_colors": None,
        "hand_vert_mask": None,
    }


def from_mhr_pose(data: dict[str, Any]) -> tuple[Bodies, Camera]:
    """Our Bodies + Camera from a core ``MHR_POSE_DATA`` dict (person ids by ``obj_id`` or slot)."""
    if not isinstance(data, dict) or "frames" not in data or "image_size" not in data:
        raise InputError("MHR_POSE_DATA must be a dict with 'frames' and 'image_size' (core's SAM3D Body output)")
    frames = data["frames"]
    if len(frames) == 0:
        raise InputError("MHR_POSE_DATA holds no frames")
    h, w = (int(v) for v in data["image_size"])
    ids: list[int] = []
    for persons in frames:
        for k, p in enumerate(persons):
            oid = int(p.get("obj_id", k + 1))
            if oid not in ids:
                ids.append(oid)
    if not ids:
        raise InputError("MHR_POSE_DATA holds no person on any frame")
    ids.sort()
    row = {oid: r for r, oid in enumerate(ids)}
    n, t = len(ids), len(frames)
    bodies = Bodies.empty(ids, t, (h, w))
    params = {k: v.copy() for k, v in bodies.params.items()}
    flags = np.zeros((n, t), np.uint8)
    focal = np.full(t, np.nan)
    geo: dict[str, np.ndarray] = {}
    extras: dict[str, np.ndarray] = {}
    for f, persons in enumerate(frames):
        for k, p in enumerate(persons):
            if p.get("body4d_missing"):
                continue
            r = row[int(p.get("obj_id", k + 1))]
            flags[r, f] = BodyFlag.VISIBLE
            for name, key in PARAM_KEYS.items():
                if p.get(key) is not None:
                    params[name][r, f] = np.asarray(p[key], np.float32).reshape(PARAM_DIMS[name])
            if p.get("focal_length") is not None and np.isnan(focal[f]):
                focal[f] = float(np.asarray(p["focal_length"]).reshape(-1)[0])
            for src, dst in (("pred_keypoints_3d", "keypoints_3d"), ("pred_keypoints_2d", "keypoints_2d"),
                             ("pred_vertices", "vertices")):
                if p.get(src) is not None:
                    arr = np.asarray(p[src], np.float32)
                    geo.setdefault(dst, np.zeros((n, t) + arr.shape, np.float32))[r, f] = arr
            for name, key in EXTRA_KEYS.items():
                if p.get(key) is not None:
                    arr = np.asarray(p[key], np.float32)
                    extras.setdefault(name, np.zeros((n, t) + arr.shape, np.float32))[r, f] = arr
    faces = data.get("faces")
    bodies = bodies.replace(flags=flags, params=params, extras=extras,
                            faces=None if faces is None else np.asarray(faces, np.int32), **geo)
    if np.isnan(focal).all():
        camera = Camera.default((h, w), t)
    else:
        idx = np.where(np.isfinite(focal), np.arange(t), -1)
        np.maximum.accumulate(idx, out=idx)
        idx[idx < 0] = int(np.argmax(np.isfinite(focal)))
        camera = Camera(np.stack([focal[idx], focal[idx], np.full(t, w / 2), np.full(t, h / 2)], -1), (h, w), "estimated")
    return bodies, camera
