"""Bodies <-> ComfyUI core's ``MHR_POSE_DATA`` (so core's Render / BuildPoseGLB / SavePoseBVH
work downstream of our smoother, and core's SAM3DBody_Predict output can be smoothed by us).

Core's dict: ``{"frames": [[person, ...] per frame], "faces": int [F, 3], "image_size": (H, W),
"canonical_colors": dict | None, "hand_vert_mask": bool [V] | None}``. The last two feed core's
rainbow / face / hands shaders and depend on the mesh only (not on the frames): see
``mesh_render_fields`` (they need the SAM 3D Body model with its MHR rig; without it, or
without core input to pass them through from, they are None and core's shaders that need
them fall back or are unavailable). A person dict holds
numpy arrays under SAM3DBody_Predict's keys (``pred_vertices``, ``pred_cam_t``,
``focal_length``, ``global_rot``, ``body_pose_params`` ...). Core's consumers identify a
person by its position in each frame's list, so we emit every identity in object-id order on
every frame up to the last one present; an identity missing on a frame before a present one
gets a placeholder placed behind the camera (``body4d_missing`` = True) to keep the slots
stable; it holds the pose of that identity's nearest present frame, so core's pose-file builders
(BuildPoseFile: skinned GLB / BVH, which read every slot's ``pred_global_rots`` /
``pred_joint_coords`` / ``shape_params``) see a valid pose there. Each dict also carries
``obj_id`` and ``body4d_flags`` (our per-frame BodyFlag bits) so the round trip keeps ids and flags.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..data import PARAM_DIMS, BodyFlag, Bodies, Camera
from ..errors import InputError


def nearest_present(present: np.ndarray) -> np.ndarray:
    """For each frame, the nearest frame where the identity is present (the earlier one on ties)."""
    from ..anim.motion import fill_index

    return fill_index(present)

# our parameter block -> core person-dict key
PARAM_KEYS = {
    "global_rot": "global_rot", "body_pose": "body_pose_params", "hand_pose": "hand_pose_params",
    "shape": "shape_params", "scale": "scale_params", "expr": "expr_params", "cam_t": "pred_cam_t",
}
EXTRA_KEYS = {"model_params": "mhr_model_params", "joint_coords": "pred_joint_coords",
              "joint_global_rots": "pred_global_rots"}
BEHIND_CAMERA = np.array([0.0, 0.0, -1000.0], np.float32)
RENDER_FIELDS = ("canonical_colors", "hand_vert_mask")
# MHR70 keypoint ranges of the two hands (right 21..41, left 42..62)
RIGHT_HAND_KPS, LEFT_HAND_KPS = slice(21, 42), slice(42, 63)
HEAD_MIN_Y, HEAD_MAX_ABS_X = 1.43, 0.11  # rest-pose head region, metres (above the jaw, inside the ears)


def rig_skinning(rig: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The rig's sparse skinning triplets (vertex, joint, weight), or None if it does not expose them.

    Knows our native ``MhrRig`` (buffers skin_verts / skin_joints / skin_weights) and the
    official TorchScript asset (``character_torch.linear_blend_skinning.*_flattened``).
    """
    names = [(rig, ("skin_verts", "skin_joints", "skin_weights"))]
    lbs = getattr(getattr(rig, "character_torch", None), "linear_blend_skinning", None)
    if lbs is not None:
        names.append((lbs, ("vert_indices_flattened", "skin_indices_flattened", "skin_weights_flattened")))
    for owner, keys in names:
        vals = [getattr(owner, k, None) for k in keys]
        if all(v is not None for v in vals):
            v, j, w = (np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x) for x in vals)
            return v.astype(np.int64), j.astype(np.int64), w.astype(np.float32)
    return None


def hand_vertex_mask(skinning: tuple[np.ndarray, np.ndarray, np.ndarray], joints: np.ndarray, keypoints: np.ndarray,
                     num_verts: int, radius: float = 0.15, min_weight: float = 0.5) -> np.ndarray:
    """bool [V]: vertices skinned at least ``min_weight`` to hand joints (joints within ``radius``
    metres of either hand's MHR70 keypoint centroid, in the rest pose)."""
    verts, jidx, weights = skinning
    centres = np.stack([keypoints[RIGHT_HAND_KPS].mean(0), keypoints[LEFT_HAND_KPS].mean(0)])
    near = (np.linalg.norm(joints[:, None] - centres[None], axis=-1) < radius).any(1)
    mass = np.bincount(verts, weights=weights * near[jidx], minlength=num_verts)[:num_verts]
    return mass >= min_weight


def _painted_regions(head: Any, num_verts: int) -> np.ndarray:
    """The head's per-vertex face-region colours [V, 3] if it carries them, else zeros (none painted)."""
    painted = getattr(head, "face_region_rgb", None)
    if painted is not None and tuple(painted.shape) == (num_verts, 3):
        return painted.detach().float().cpu().numpy()
    return np.zeros((num_verts, 3), np.float32)


def mesh_render_fields(model: Any, face_motion: float = 1e-4) -> dict[str, Any]:
    """Core's ``canonical_colors`` and ``hand_vert_mask`` for a SAM 3D Body model with its MHR rig.

    From the rig at zero pose / shape / scale / expression (metres, MHR axes: y up):
    ``canonical_colors`` = {"positions": float32 [V, 3] rest vertices, "norm": float32 [V, 3]
    vertex normals mapped to [0, 1], "face_mask": bool [V] vertices that move more than
    ``face_motion`` metres under some unit expression coefficient, "head_mask": bool [V] rest
    head region, "face_region_rgb": float32 [V, 3] painted face regions (the head's
    ``face_region_rgb`` when the loaded weights carry it, as core's file does; else all zero,
    i.e. none: the official checkpoint ships no painting)}; ``hand_vert_mask`` = bool [V] (None
    when the rig exposes no skinning weights). Both None without a rig.
    """
    import torch

    from ..render import vertex_normals

    rig = getattr(model, "mhr", None)
    if rig is None:
        return {"canonical_colors": None, "hand_vert_mask": None}
    head = model.head_pose
    dev = head.faces.device
    n_expr = PARAM_DIMS["expr"]
    b = n_expr + 1  # the rest pose, then each expression axis at +1
    zeros = lambda name: torch.zeros(b, PARAM_DIMS[name], device=dev)  # noqa: E731
    face = zeros("expr")
    face[1:] = torch.eye(n_expr, device=dev)
    p = {"global_rot": zeros("global_rot"), "body_pose": zeros("body_pose"), "hand": zeros("hand_pose"),
         "scale": zeros("scale"), "shape": zeros("shape"), "face": face}
    with torch.inference_mode():
        out = head.run_rig(rig, p)
    verts = out.verts.float()
    normals = vertex_normals(verts[0], head.faces).cpu().numpy()
    verts = verts.cpu().numpy()
    rest = verts[0].copy()  # not a view: the 72 expression meshes are dropped
    moved = np.linalg.norm(verts[1:] - rest[None], axis=-1) > face_motion
    colors = {
        "positions": rest,
        "norm": (normals + 1.0) * 0.5,
        "face_mask": moved.any(0),
        "head_mask": (rest[:, 1] > HEAD_MIN_Y) & (np.abs(rest[:, 0]) < HEAD_MAX_ABS_X),
        "face_region_rgb": _painted_regions(head, rest.shape[0]),
    }
    skin = rig_skinning(rig)
    hand = None
    if skin is not None:
        hand = hand_vertex_mask(skin, out.joints[0].float().cpu().numpy(),
                                out.keypoints[0, :70].float().cpu().numpy(), rest.shape[0])
    return {"canonical_colors": colors, "hand_vert_mask": hand}


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


def to_mhr_pose(bodies: Bodies, camera: Camera, model: Any = None,
                render_fields: dict[str, Any] | None = None) -> dict[str, Any]:
    """Core ``MHR_POSE_DATA`` of our bodies (slots in object-id order, see the module doc).

    ``canonical_colors`` / ``hand_vert_mask`` come from ``render_fields`` (e.g. those of a core
    input, passed through), else from ``model`` (SAM 3D Body with its rig: ``mesh_render_fields``),
    else are None.
    """
    camera = camera.check_frames(bodies.num_frames)
    if render_fields is None or all(render_fields.get(k) is None for k in RENDER_FIELDS):
        render_fields = mesh_render_fields(model) if model is not None else {}
    order = np.argsort(bodies.obj_ids)
    frames: list[list[dict[str, Any]]] = []
    present = bodies.present
    nearest = {i: nearest_present(present[i]) for i in range(bodies.num_objects) if present[i].any()}
    for t in range(bodies.num_frames):
        here = [int(i) for i in order if present[i, t]]
        persons: list[dict[str, Any]] = []
        if here:
            last = max(order.tolist().index(i) for i in here)
            for i in order[: last + 1].tolist():
                if present[i, t]:
                    p = _person(bodies, camera, i, t)
                else:  # the nearest present pose (zeros for a person never seen), hidden behind the camera
                    p = _person(bodies, camera, i, int(nearest[i][t]) if i in nearest else t)
                    p["focal_length"] = np.float32(camera.intrinsics[t, 1])
                    p["pred_cam_t"] = BEHIND_CAMERA.copy()
                    p["body4d_missing"] = True
                p["body4d_flags"] = int(bodies.flags[i, t])
                persons.append(p)
        frames.append(persons)
    return {
        "frames": frames,
        "faces": None if bodies.faces is None else bodies.faces.astype(np.int64),
        "image_size": (int(bodies.image_size[0]), int(bodies.image_size[1])),
        "canonical_colors": render_fields.get("canonical_colors"),
        "hand_vert_mask": render_fields.get("hand_vert_mask"),
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
            flags[r, f] = int(p.get("body4d_flags") or BodyFlag.VISIBLE) & 0xFF
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
