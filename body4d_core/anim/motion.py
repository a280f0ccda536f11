"""Per-identity animation from the MHR rig: skeleton, bind mesh, skin, per-frame local joint transforms.

MHR's forward kinematics is a chain of similarity transforms (translation, rotation, one uniform
scale per joint), so every rig joint becomes one glTF node / BVH joint whose local TRS is exactly
MHR's local joint transform; the mesh is the identity's rest shape, skinned with the rig's own
inverse bind poses. Everything here is in metres and float64; the rig works in centimetres.
Pose correctives (and per-frame shape changes) cannot ride on linear blend skinning: see
``fidelity``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..data import PARAM_DIMS, Bodies, BodyFlag
from ..errors import InputError
from ..rotations import (euler_xyz_to_quat_np, quat_canonical, quat_continuous, quat_mul_np, quat_rotate_np,
                         rotmat_to_quat)
from .similarity import forward_kinematics
from .world_input import CV_TO_GL, SceneWorld

CM = 0.01  # rig units -> metres
MAX_INFLUENCES = 8  # JOINTS_0/1 + WEIGHTS_0/1
NUM_MODEL_PARAMS = 204
RIG_BUFFERS = ("param_transform", "joint_offsets", "prerotations", "inverse_bind_pose", "skin_weights",
               "skin_joints", "skin_verts", "base_shape", "identity_basis", "expr_basis")


@dataclass
class RigData:
    """What an export needs from the rig, as float64 numpy (centimetres, as the rig stores it)."""

    parents: np.ndarray  # int [J], -1 for roots
    names: list[str]
    param_transform: np.ndarray  # [7J, P]
    joint_offsets: np.ndarray  # [J, 3]
    prerotations: np.ndarray  # [J, 4] xyzw
    inverse_bind: np.ndarray  # [J, 8] (t, q, s)
    skin: tuple[np.ndarray, np.ndarray, np.ndarray]  # vertex, joint, weight triplets
    base_shape: np.ndarray  # [V, 3]
    identity_basis: np.ndarray  # [S, V, 3]
    expr_basis: np.ndarray  # [E, V, 3]

    @property
    def num_joints(self) -> int:
        return int(self.parents.size)


def _np(x: Any) -> np.ndarray:
    return np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x)


def parents_from_schedule(children: np.ndarray, targets: np.ndarray, sizes: Sequence[int], num_joints: int) -> np.ndarray:
    """Direct parents from a prefix-product schedule (g[c] = g[t] * g[c], level by level).

    Tracks which joints each product chains: after the schedule joint j holds [root, ..., parent, j].
    """
    chains = [[j] for j in range(num_joints)]
    start = 0
    for size in sizes:
        pairs = list(zip(children[start:start + size].tolist(), targets[start:start + size].tolist()))
        new = {c: chains[t] + chains[c] for c, t in pairs}  # every read of a level before its writes
        for c, chain in new.items():
            chains[c] = chain
        start += size
    parents = np.array([c[-2] if len(c) > 1 else -1 for c in chains], np.int64)
    for j, c in enumerate(chains):
        if len(set(c)) != len(c) or (parents[j] >= 0 and chains[parents[j]] != c[:-1]):
            raise InputError("the rig's forward-kinematics schedule is not a tree; cannot export a skeleton")
    return parents


def supports_skinned_export(rig: Any) -> bool:
    """Whether ``rig`` exposes what a skinned export needs (our native ``MhrRig``; not the scripted stand-in)."""
    return rig is not None and all(getattr(rig, b, None) is not None for b in RIG_BUFFERS)


def rig_data(rig: Any, names: Sequence[str] | None = None) -> RigData:
    """Read our native MHR rig (``MhrRig``, plain or TorchScript) into numpy; clear error for other rigs."""
    missing = [b for b in RIG_BUFFERS if getattr(rig, b, None) is None]
    if missing:
        raise InputError("a skinned export needs the native MHR rig (ComfyUI core's SAM 3D Body file or a rig "
                         f"loaded as MhrRig); this rig lacks {', '.join(missing)}. Use the flipbook GLB instead.")
    j = int(_np(rig.joint_offsets).shape[0])
    explicit = getattr(rig, "joint_parents", None)
    if explicit is not None:
        parents = _np(explicit).astype(np.int64)
    else:
        parents = parents_from_schedule(_np(rig.fk_joints), _np(rig.fk_parents), [int(s) for s in rig.level_sizes], j)
    rig_names = getattr(rig, "joint_names", None)
    names = list(names if names is not None else rig_names if rig_names is not None else
                 [f"joint_{k:03d}" for k in range(j)])
    if len(names) != j or len(set(names)) != j:
        raise InputError(f"joint names must be {j} unique strings, got {len(names)} ({len(set(names))} unique)")
    f64 = {b: _np(getattr(rig, b)).astype(np.float64) for b in RIG_BUFFERS if not b.startswith("skin_")}
    skin = (_np(rig.skin_verts).astype(np.int64), _np(rig.skin_joints).astype(np.int64),
            _np(rig.skin_weights).astype(np.float64))
    return RigData(parents, [str(n) for n in names], f64["param_transform"], f64["joint_offsets"], f64["prerotations"],
                   f64["inverse_bind_pose"], skin, f64["base_shape"], f64["identity_basis"], f64["expr_basis"])


def model_params(bodies: Bodies, model: Any = None) -> np.ndarray:
    """MHR model parameters [N, T, 204]: from the model's head on the bodies' own parameters when a
    model is given (always consistent with them), else the ``model_params`` extra the rig stage stored."""
    if model is not None and hasattr(model, "head_pose"):
        import torch

        head = model.head_pose
        dev = head.scale_comps.device
        flat = {k: torch.as_tensor(v.reshape(-1, v.shape[-1]), device=dev, dtype=torch.float32)
                for k, v in bodies.params.items()}
        with torch.inference_mode():
            mp = head.model_params(flat["global_rot"], flat["body_pose"], flat["hand_pose"], flat["scale"])
        return mp.double().cpu().numpy().reshape(bodies.num_objects, bodies.num_frames, -1)
    mp = bodies.extras.get("model_params")
    if mp is None:
        raise InputError("the bodies carry no MHR model parameters (extra 'model_params'); pass the SAM 3D Body "
                         "model or run SAM 3D Body / the smoother with the rig")
    return np.asarray(mp, np.float64)


def fill_index(present: np.ndarray) -> np.ndarray:
    """For each frame, the nearest present frame (earlier one on ties); frames hold that pose when missing."""
    t = np.arange(present.size)
    idx = np.flatnonzero(present)
    if idx.size == 0:
        raise InputError("a person on no frame cannot be animated")
    pos = np.clip(np.searchsorted(idx, t), 1, max(idx.size - 1, 1)) if idx.size > 1 else np.zeros_like(t)
    if idx.size == 1:
        return np.full_like(t, idx[0])
    left, right = idx[pos - 1], idx[pos]
    return np.where(np.abs(t - left) <= np.abs(right - t), left, right)


def local_transforms(rig: RigData, params: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[T, 204] model parameters -> local joint (t metres [T,J,3], q xyzw [T,J,4], s [T,J,1])."""
    jp = (params @ rig.param_transform[:, :params.shape[1]].T).reshape(params.shape[0], rig.num_joints, 7)
    t = (jp[..., :3] + rig.joint_offsets) * CM
    q = quat_mul_np(np.broadcast_to(rig.prerotations, jp.shape[:-1] + (4,)), euler_xyz_to_quat_np(jp[..., 3:6]))
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    return t, q, np.exp2(jp[..., 6:7])


def skin_influences(rig: RigData, num_verts: int, k: int = MAX_INFLUENCES) -> tuple[np.ndarray, np.ndarray]:
    """Per vertex the k heaviest joints (uint16 [V, k]) and their weights renormalised (float32 [V, k])."""
    v, j, w = rig.skin
    pair, inv = np.unique(v * (rig.num_joints + 1) + j, return_inverse=True)  # one entry per (vertex, joint)
    v, j, w = pair // (rig.num_joints + 1), pair % (rig.num_joints + 1), np.bincount(inv.ravel(), weights=w)
    order = np.lexsort((-w, v))
    v, j, w = v[order], j[order], w[order]
    first = np.searchsorted(v, v, side="left")
    rank = np.arange(v.size) - first
    keep = (rank < k) & (w > 0)
    joints = np.zeros((num_verts, k), np.uint16)
    weights = np.zeros((num_verts, k), np.float64)
    joints[v[keep], rank[keep]] = j[keep]
    weights[v[keep], rank[keep]] = w[keep]
    total = weights.sum(1, keepdims=True)
    if (total <= 0).any():
        raise InputError(f"{int((total <= 0).sum())} rig vertices have no skinning weight")
    weights = (weights / total).astype(np.float32)
    weights[:, 0] += 1.0 - weights.sum(1, dtype=np.float32)  # float32 sums to 1 within rounding
    return joints, weights


def camera_roots(cam_t: np.ndarray, poses: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame person root (t [T,3], q [T,4]) in the world: the OpenGL camera frame, or ``poses``
    (world-from-OpenGL-camera [T,4,4]) applied to it."""
    t_gl = cam_t @ CV_TO_GL
    if poses is None:
        return t_gl, np.tile([0.0, 0.0, 0.0, 1.0], (cam_t.shape[0], 1))
    rot = poses[:, :3, :3]
    return np.einsum("tij,tj->ti", rot, t_gl) + poses[:, :3, 3], rotmat_to_quat(rot)


@dataclass
class PersonMotion:
    """One identity's animation: bind mesh, skin and per-frame transforms (metres, all T frames)."""

    obj_id: int
    rig: RigData
    present: np.ndarray  # bool [T]
    flags: np.ndarray  # uint8 [T] BodyFlag bits
    local_t: np.ndarray  # [T, J, 3]
    local_q: np.ndarray  # [T, J, 4]
    local_s: np.ndarray  # [T, J, 1]
    root_t: np.ndarray  # [T, 3] person root in the world
    root_q: np.ndarray  # [T, 4]
    bind_verts: np.ndarray  # [V, 3]
    skin_joints: np.ndarray  # uint16 [V, 8]
    skin_weights: np.ndarray  # float32 [V, 8]
    expr_index: np.ndarray  # int [E'] expression components used on some present frame
    expr_weights: np.ndarray  # [T, E']
    shape: np.ndarray  # [45] identity shape baked into the bind mesh
    _globals: tuple | None = field(default=None, repr=False)

    @property
    def num_frames(self) -> int:
        return int(self.present.size)

    def inverse_bind(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Inverse bind poses (t metres [J,3], q [J,4], s [J,1])."""
        ib = self.rig.inverse_bind
        return ib[:, :3] * CM, quat_canonical(ib[:, 3:7]), ib[:, 7:8]

    def expr_targets(self) -> np.ndarray:
        """Morph-target displacements [E', V, 3] (metres) of the used expression components."""
        return self.rig.expr_basis[self.expr_index] * CM

    def rig_globals(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Joint transforms in the rig's own frame (t [T,J,3], q, s), computed once."""
        if self._globals is None:
            self._globals = forward_kinematics(self.rig.parents, self.local_t, self.local_q, self.local_s)
        return self._globals

    def global_joints(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World joint transforms (t [T,J,3], q, s) including the person root."""
        gt, gq, gs = self.rig_globals()
        rq = np.broadcast_to(self.root_q[:, None], gq.shape)
        return self.root_t[:, None] + quat_rotate_np(rq, gt), quat_mul_np(rq, gq), gs


def person_motion(rig: RigData, bodies: Bodies, i: int, params: np.ndarray, poses: np.ndarray | None = None,
                  expressions: bool = True, expr_eps: float = 1e-6) -> PersonMotion:
    """The animation of Bodies row i from its model parameters [T, 204] (missing frames hold the nearest pose)."""
    present = bodies.present[i]
    src = fill_index(present)
    lt, lq, ls = local_transforms(rig, params[src])
    root_t, root_q = camera_roots(bodies.params["cam_t"][i, src].astype(np.float64), poses)
    shape = bodies.params["shape"][i, present].astype(np.float64).mean(0)
    bind = (rig.base_shape + np.einsum("s,svc->vc", shape, rig.identity_basis)) * CM
    joints, weights = skin_influences(rig, bind.shape[0])
    expr = bodies.params["expr"][i, src].astype(np.float64)
    used = np.flatnonzero(np.abs(expr[present[src]]).max(0) > expr_eps) if expressions else np.zeros(0, np.int64)
    used = used[used < rig.expr_basis.shape[0]]
    return PersonMotion(int(bodies.obj_ids[i]), rig, present.copy(), bodies.flags[i].copy(), lt, quat_continuous(lq),
                        ls, root_t, quat_continuous(root_q), bind, joints, weights, used, expr[:, used], shape)


def scene_motions(rig: Any, bodies: Bodies, params: np.ndarray, world: SceneWorld | None = None,
                  expressions: bool = True, names: Sequence[str] | None = None) -> list[PersonMotion]:
    """Every identity present on some frame, in object-id order."""
    data = rig if isinstance(rig, RigData) else rig_data(rig, names)
    if params.shape[:2] != (bodies.num_objects, bodies.num_frames) or params.shape[2] < 1:
        raise InputError(f"model parameters are {params.shape}, expected ({bodies.num_objects}, {bodies.num_frames}, 204)")
    if data.base_shape.shape[0] != (bodies.vertices.shape[2] if bodies.vertices is not None else data.base_shape.shape[0]):
        raise InputError("the rig's mesh does not match the bodies' vertices (another model's rig?)")
    if bodies.params["shape"].shape[2] != data.identity_basis.shape[0]:
        raise InputError("the rig's identity basis does not match the bodies' shape parameters")
    poses = world.gl_camera_poses(bodies.num_frames) if world is not None else None
    rows = [int(i) for i in np.argsort(bodies.obj_ids) if bodies.present[i].any()]
    if not rows:
        raise InputError("the bodies hold no frame with a person; nothing to animate")
    return [person_motion(data, bodies, i, params[i], poses, expressions) for i in rows]


FLAG_NAMES = ("visible", "amodal_completed", "interpolated", "missing")


def frame_flags(flags: np.ndarray) -> dict[str, np.ndarray]:
    """Named bool per-frame flags from BodyFlag bits (any shape)."""
    flags = np.asarray(flags, np.uint8)
    return {"visible": (flags & BodyFlag.VISIBLE) > 0, "amodal_completed": (flags & BodyFlag.OCCLUDED) > 0,
            "interpolated": (flags & BodyFlag.FILLED) > 0, "missing": flags == BodyFlag.MISSING}


__all__ = ["PARAM_DIMS", "RigData", "PersonMotion", "rig_data", "model_params", "scene_motions", "frame_flags",
           "FLAG_NAMES", "NUM_MODEL_PARAMS"]
