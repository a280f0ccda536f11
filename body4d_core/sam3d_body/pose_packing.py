"""MHR pose packing: the SAM-3D-Body heads' continuous outputs <-> MHR pose parameters.

Which body-pose entries are 3-DoF Euler triplets, 1-DoF angles or translations, and the hands' layout;
the rotation maths itself is in ``body4d_core.rotations``.
"""

from __future__ import annotations

import torch

from ..rotations import euler_xyz_to_rotmat, rotmat_to_rot6d, sixd_to_euler_xyz

# MHR body pose (133 values): which entries are 3-DoF rotations (XYZ Euler triplets), which are
# 1-DoF angles and which are translations. The network predicts 6D per triplet, (sin, cos) per
# angle and raw translations, in that order (23*6 + 58*2 + 6 = 260 values).
BODY_3DOF = (
    (0, 2, 4), (6, 8, 10), (12, 13, 14), (15, 16, 17), (18, 19, 20), (21, 22, 23), (24, 25, 26),
    (27, 28, 29), (34, 35, 36), (37, 38, 39), (44, 45, 46), (53, 54, 55), (64, 65, 66), (85, 69, 73),
    (86, 70, 79), (87, 71, 82), (88, 72, 76), (91, 92, 93), (112, 96, 100), (113, 97, 106),
    (114, 98, 109), (115, 99, 103), (130, 131, 132),
)
BODY_1DOF = (
    1, 3, 5, 7, 9, 11, 30, 31, 32, 33, 40, 41, 42, 43, 47, 48, 49, 50, 51, 52, 56, 57, 58, 59, 60, 61,
    62, 63, 67, 68, 74, 75, 77, 78, 80, 81, 83, 84, 89, 90, 94, 95, 101, 102, 104, 105, 107, 108, 110,
    111, 116, 117, 118, 119, 120, 121, 122, 123,
)
BODY_TRANS = (124, 125, 126, 127, 128, 129)
BODY_HAND_PARAMS = tuple(range(62, 116))  # body-pose entries owned by the hands (zeroed by the body head)
# Hand pose (27 values per hand) degrees of freedom per joint, in order; cont layout 2*dof each.
HAND_DOFS = (3, 1, 1, 3, 1, 1, 3, 1, 1, 3, 1, 1, 2, 3, 1, 1)


def body_cont_to_params(cont: torch.Tensor) -> torch.Tensor:
    """Network body output (260) -> MHR body pose parameters (133)."""
    n3 = len(BODY_3DOF) * 6
    n1 = len(BODY_1DOF) * 2
    tri = sixd_to_euler_xyz(cont[..., :n3].unflatten(-1, (-1, 6))).flatten(-2)
    sc = cont[..., n3:n3 + n1].unflatten(-1, (-1, 2))
    ang = torch.atan2(sc[..., 0], sc[..., 1])
    out = cont.new_zeros(*cont.shape[:-1], 133)
    out[..., torch.tensor(BODY_3DOF).flatten()] = tri
    out[..., list(BODY_1DOF)] = ang
    out[..., list(BODY_TRANS)] = cont[..., n3 + n1:]
    return out


def _hand_masks() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    c3 = torch.cat([torch.full((2 * k,), k == 3) for k in HAND_DOFS])
    c1 = torch.cat([torch.full((2 * k,), k in (1, 2)) for k in HAND_DOFS])
    p3 = torch.cat([torch.full((k,), k == 3) for k in HAND_DOFS])
    p1 = torch.cat([torch.full((k,), k in (1, 2)) for k in HAND_DOFS])
    return c3, c1, p3, p1


def hand_cont_to_params(cont: torch.Tensor) -> torch.Tensor:
    """One hand's continuous pose (54) -> its 27 MHR parameters."""
    c3, c1, p3, p1 = _hand_masks()
    tri = sixd_to_euler_xyz(cont[..., c3].unflatten(-1, (-1, 6))).flatten(-2)
    sc = cont[..., c1].unflatten(-1, (-1, 2))
    out = cont.new_zeros(*cont.shape[:-1], 27)
    out[..., p3] = tri
    out[..., p1] = torch.atan2(sc[..., 0], sc[..., 1])
    return out


def body_params_to_cont(params: torch.Tensor) -> torch.Tensor:
    """Inverse of body_cont_to_params on valid angles (used for the zero-pose init and tests)."""
    tri = params[..., torch.tensor(BODY_3DOF).flatten()].unflatten(-1, (-1, 3))
    six = rotmat_to_rot6d(euler_xyz_to_rotmat(tri)).flatten(-2)
    ang = params[..., list(BODY_1DOF)]
    sc = torch.stack([ang.sin(), ang.cos()], -1).flatten(-2)
    return torch.cat([six, sc, params[..., list(BODY_TRANS)]], -1)


def fix_wrist_euler(xzy: torch.Tensor) -> torch.Tensor:
    """Pick, per wrist, the equivalent XZY triplet that violates the joint limits least."""
    lo = torch.tensor([-2.2, -2.2, -1.2], dtype=xzy.dtype, device=xzy.device)
    hi = torch.tensor([1.0, 1.5, 1.5], dtype=xzy.dtype, device=xzy.device)
    x, z, y = xzy.unbind(-1)
    pi = torch.pi
    alt = torch.stack([
        torch.atan2(torch.sin(x + pi), torch.cos(x + pi)),
        torch.atan2(torch.sin(-(z + pi)), torch.cos(-(z + pi))),
        torch.atan2(torch.sin(y + pi), torch.cos(y + pi)),
    ], -1)

    def violation(v: torch.Tensor) -> torch.Tensor:
        return ((lo - v).clamp(min=0) ** 2 + (v - hi).clamp(min=0) ** 2).sum(-1)

    return torch.where((violation(alt) < violation(xzy)).unsqueeze(-1), alt, xzy)
