"""How far the exported rig animation is from our full MHR rig: vertices (LBS cannot carry pose
correctives) and joints (exact up to float rounding)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .motion import CM, PersonMotion
from .similarity import forward_kinematics, similarity_matrix


@dataclass
class Fidelity:
    """Errors in millimetres over the frames measured."""

    vertex_mean_mm: float
    vertex_max_mm: float
    joint_max_mm: float
    frames: int

    def line(self) -> str:
        return (f"skinned export vs full MHR rig over {self.frames} frames: vertices mean {self.vertex_mean_mm:.2f} mm, "
                f"max {self.vertex_max_mm:.2f} mm (pose correctives are not skinnable); joints max "
                f"{self.joint_max_mm:.4f} mm")


def skinned_vertices(m: PersonMotion, frames: np.ndarray) -> np.ndarray:
    """Linear blend skinning of the export's bind mesh (+ morph targets) in the rig frame, metres [F, V, 3]."""
    gt, gq, gs = forward_kinematics(m.rig.parents, m.local_t[frames], m.local_q[frames], m.local_s[frames])
    mats = similarity_matrix(gt, gq, gs) @ similarity_matrix(*m.inverse_bind())  # [F, J, 4, 4]
    verts, slot = np.nonzero(m.skin_weights > 0)  # only the influences that exist
    joints = m.skin_joints[verts, slot].astype(np.int64)
    weights = m.skin_weights[verts, slot].astype(np.float64)
    num_verts = m.bind_verts.shape[0]
    out = np.zeros((frames.size, num_verts, 3))
    for k, f in enumerate(frames):
        rest = m.bind_verts
        if m.expr_index.size:
            rest = rest + np.einsum("e,evc->vc", m.expr_weights[f], m.expr_targets())
        a = mats[k, joints]  # [P, 4, 4]
        moved = np.einsum("pij,pj->pi", a[:, :3, :3], rest[verts]) + a[:, :3, 3]
        for c in range(3):
            out[k, :, c] = np.bincount(verts, weights=weights * moved[:, c], minlength=num_verts)
    return out


def measure(rig: Any, m: PersonMotion, params: np.ndarray, expr: np.ndarray, frames: np.ndarray | None = None
            ) -> Fidelity:
    """Export vs ``rig`` (our MhrRig) on the person's present frames (or ``frames``); ``params`` [T, 204],
    ``expr`` [T, 72] are the person's own per-frame values."""
    import torch

    frames = np.flatnonzero(m.present) if frames is None else np.asarray(frames)
    dev = next(iter(rig.buffers())).device  # the rig may live on the GPU with its model
    as_t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32, device=dev)  # noqa: E731
    with torch.inference_mode():
        verts, skel = rig(as_t(np.tile(m.shape, (frames.size, 1))), as_t(params[frames]), as_t(expr[frames]))
        verts, skel = verts.cpu(), skel.cpu()
    ref_v = verts.double().numpy() * CM
    ref_j = skel[..., :3].double().numpy() * CM
    got_j = forward_kinematics(m.rig.parents, m.local_t[frames], m.local_q[frames], m.local_s[frames])[0]
    err = np.linalg.norm(skinned_vertices(m, frames) - ref_v, axis=-1) * 1000.0
    return Fidelity(float(err.mean()), float(err.max()),
                    float(np.linalg.norm(got_j - ref_j, axis=-1).max() * 1000.0), int(frames.size))
