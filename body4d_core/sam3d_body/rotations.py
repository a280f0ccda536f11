"""Rotation maths and MHR parameter packing used by SAM-3D-Body's heads (pure torch)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

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


def rot6d_to_rotmat(x: torch.Tensor) -> torch.Tensor:
    """6D (two stacked 3-vectors) -> rotation matrix whose columns are Gram-Schmidt of them."""
    x = x.reshape(-1, 2, 3)
    b1 = F.normalize(x[:, 0], dim=-1)
    a2 = x[:, 1]
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.linalg.cross(b1, b2)
    return torch.stack((b1, b2, b3), dim=-1)


def _rx(a: torch.Tensor) -> torch.Tensor:
    c, s, o, z = a.cos(), a.sin(), torch.ones_like(a), torch.zeros_like(a)
    return torch.stack([o, z, z, z, c, -s, z, s, c], -1).unflatten(-1, (3, 3))


def _ry(a: torch.Tensor) -> torch.Tensor:
    c, s, o, z = a.cos(), a.sin(), torch.ones_like(a), torch.zeros_like(a)
    return torch.stack([c, z, s, z, o, z, -s, z, c], -1).unflatten(-1, (3, 3))


def _rz(a: torch.Tensor) -> torch.Tensor:
    c, s, o, z = a.cos(), a.sin(), torch.ones_like(a), torch.zeros_like(a)
    return torch.stack([c, -s, z, s, c, z, z, z, o], -1).unflatten(-1, (3, 3))


def _asin(x: torch.Tensor) -> torch.Tensor:
    return torch.asin(x.clamp(-1.0, 1.0))


def rotmat_to_euler_ZYX(m: torch.Tensor) -> torch.Tensor:
    """Intrinsic Z-Y-X angles (a, b, c) with m = Rz(a) Ry(b) Rx(c) (roma/scipy 'ZYX')."""
    a = torch.atan2(m[..., 1, 0], m[..., 0, 0])
    b = _asin(-m[..., 2, 0])
    c = torch.atan2(m[..., 2, 1], m[..., 2, 2])
    return torch.stack([a, b, c], -1)


def euler_xyz_to_rotmat(e: torch.Tensor) -> torch.Tensor:
    """Extrinsic x-y-z angles (a, b, c): m = Rz(c) Ry(b) Rx(a) (roma/scipy 'xyz')."""
    return _rz(e[..., 2]) @ _ry(e[..., 1]) @ _rx(e[..., 0])


def rotmat_to_euler_xyz(m: torch.Tensor) -> torch.Tensor:
    """Inverse of euler_xyz_to_rotmat."""
    return rotmat_to_euler_ZYX(m).flip(-1)


def euler_XZY_to_rotmat(e: torch.Tensor) -> torch.Tensor:
    """Intrinsic X-Z-Y angles (a, b, c): m = Rx(a) Rz(b) Ry(c) (roma/scipy 'XZY')."""
    return _rx(e[..., 0]) @ _rz(e[..., 1]) @ _ry(e[..., 2])


def rotmat_to_euler_XZY(m: torch.Tensor) -> torch.Tensor:
    """Inverse of euler_XZY_to_rotmat."""
    a = torch.atan2(m[..., 2, 1], m[..., 1, 1])
    b = _asin(-m[..., 0, 1])
    c = torch.atan2(m[..., 0, 2], m[..., 0, 0])
    return torch.stack([a, b, c], -1)


def quat_xyzw_to_rotmat(q: torch.Tensor) -> torch.Tensor:
    """Unit quaternion (x, y, z, w) -> rotation matrix (no renormalisation)."""
    x, y, z, w = q.unbind(-1)
    return torch.stack([
        x * x - y * y - z * z + w * w, 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), -x * x + y * y - z * z + w * w, 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), -x * x - y * y + z * z + w * w,
    ], -1).unflatten(-1, (3, 3))


def sixd_to_euler_xyz(p: torch.Tensor) -> torch.Tensor:
    """MHR's 6D -> XYZ Euler: columns x=norm(u), z=norm(x cross v), y=z cross x, then angles."""
    x = F.normalize(p[..., :3], dim=-1)
    z = F.normalize(torch.linalg.cross(x, p[..., 3:]), dim=-1)
    y = torch.linalg.cross(z, x)
    m = torch.stack([x, y, z], -1)
    sy = torch.sqrt(m[..., 0, 0] ** 2 + m[..., 1, 0] ** 2)
    singular = (sy < 1e-6).to(p.dtype)
    ex = torch.atan2(m[..., 2, 1], m[..., 2, 2]) * (1 - singular) + torch.atan2(-m[..., 1, 2], m[..., 1, 1]) * singular
    ey = torch.atan2(-m[..., 2, 0], sy)
    ez = torch.atan2(m[..., 1, 0], m[..., 0, 0]) * (1 - singular)
    return torch.stack([ex, ey, ez], -1)


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
    m = euler_xyz_to_rotmat(tri)
    six = torch.cat([m[..., :, 0], m[..., :, 1]], -1).flatten(-2)
    ang = params[..., list(BODY_1DOF)]
    sc = torch.stack([ang.sin(), ang.cos()], -1).flatten(-2)
    return torch.cat([six, sc, params[..., list(BODY_TRANS)]], -1)


def rotation_angle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Angle (radians) of the relative rotation a @ b^T."""
    r = a @ b.transpose(-1, -2)
    tr = r[..., 0, 0] + r[..., 1, 1] + r[..., 2, 2]
    return torch.acos(((tr - 1) / 2).clamp(-1.0, 1.0))


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
