"""How far the exported rig animation is from our full MHR rig: vertices (LBS cannot carry pose
correctives) and joints (exact up to float rounding)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .motion import CM, PersonMotion
from .quat import forward_kinematics, similarity_matrix


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
    ibm = similarity_matrix(*m.inverse_bind())
    mats = similarity_matrix(gt, gq, gs) @ ibm  # [F, J, 4, 4]
    rest = np.broadcast_to(m.bind_verts, (frames.size,) + m.bind_verts.shape).copy()
    if m.expr_index.size:
        rest += np.einsum("fe,evc->fvc", m.expr_weights[frames], m.expr_targets())
    out = np.zeros_like(rest)
    w = m.skin_weights.astype(np.float64)
    for k in range(m.skin_joints.shape[1]):
        mk = mats[:, m.skin_joints[:, k].astype(np.int64)]  # [F, V, 4, 4]
        out += w[None, :, k, None] * (np.einsum("fvij,fvj->fvi", mk[..., :3, :3], rest) + mk[..., :3, 3])
    return out


def measure(rig: Any, m: PersonMotion, params: np.ndarray, expr: np.ndarray, frames: np.ndarray | None = None
            ) -> Fidelity:
    """Export vs ``rig`` (our MhrRig) on the person's present frames (or ``frames``); ``params`` [T, 204],
    ``expr`` [T, 72] are the person's own per-frame values."""
    import torch

    frames = np.flatnonzero(m.present) if frames is None else np.asarray(frames)
    shape = torch.as_tensor(np.tile(m.shape, (frames.size, 1)), dtype=torch.float32)
    with torch.inference_mode():
        verts, skel = rig(shape, torch.as_tensor(params[frames], dtype=torch.float32),
                          torch.as_tensor(expr[frames], dtype=torch.float32))
    ref_v = verts.double().numpy() * CM
    ref_j = skel[..., :3].double().numpy() * CM
    got_j = forward_kinematics(m.rig.parents, m.local_t[frames], m.local_q[frames], m.local_s[frames])[0]
    err = np.linalg.norm(skinned_vertices(m, frames) - ref_v, axis=-1) * 1000.0
    return Fidelity(float(err.mean()), float(err.max()),
                    float(np.linalg.norm(got_j - ref_j, axis=-1).max() * 1000.0), int(frames.size))
