"""Every rotation conversion the stages use, for torch tensors and numpy arrays alike.

Conventions (MHR / SAM-3D-Body, kept bit-compatible with the network and rig they come from):

- quaternions are (x, y, z, w), roma's order, Hamilton product;
- MHR Euler "xyz" angles (a, b, c) are extrinsic x, then y, then z: R = Rz(c) Ry(b) Rx(a)
  (roma / scipy "xyz"); "ZYX" is the same matrix read as intrinsic (c, b, a); "XZY" is intrinsic
  R = Rx(a) Rz(b) Ry(c);
- 6D is the first two columns of a rotation matrix, orthonormalised by Gram-Schmidt; MHR's own
  6D (``sixd_to_euler_xyz``) keeps x, takes z from x cross v, then y = z cross x;
- rotation vectors are axis * angle (radians).

Functions marked "either" take torch tensors or numpy arrays and return the same kind, computing
with that library: numpy and torch differ in the last bit of sin / atan2 / cross, so numpy inputs
never detour through torch. The quaternion helpers the MHR rig calls are torch-only (the rig is
TorchScript-compiled, which rules out dispatch), with ``*_np`` twins of the same formula for the
numpy animation code. roma backs the torch path wherever its result is bit-identical to the
formula the stages were built with; elsewhere our formula stays, with a one-line reason.
The MHR pose packing (network 6D / sin-cos outputs <-> 133 + 2x27 Euler parameters) is at the end.
"""

from __future__ import annotations

from types import ModuleType
from typing import Union

import numpy as np
import roma
import torch
import torch.nn.functional as F

Array = Union[np.ndarray, torch.Tensor]


def _xp(x: Array) -> ModuleType:
    """The array library of x: torch for tensors, numpy otherwise."""
    return torch if isinstance(x, torch.Tensor) else np


def _norm(x: Array) -> Array:
    """Euclidean norm along the last axis, kept as a size-1 axis."""
    if isinstance(x, torch.Tensor):
        return torch.linalg.norm(x, dim=-1, keepdim=True)
    return np.linalg.norm(x, axis=-1, keepdims=True)


def _mat3(entries: list, like: Array) -> Array:
    """Nine row-major entries [...] -> matrices [..., 3, 3]."""
    m = _xp(like).stack(entries, -1)
    return m.reshape(tuple(m.shape[:-1]) + (3, 3))


def _asin(x: Array) -> Array:
    """arcsin clipped to its domain (rounding can push |x| just past 1)."""
    xp = _xp(x)
    return xp.arcsin(xp.clip(x, -1.0, 1.0))


# --------------------------------------------------------------------------- quaternions (x, y, z, w)


def quat_mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product of xyzw quaternions [..., 4] (torch, TorchScript-able: the rig uses it).

    Not roma.quat_product: it sums the terms in another order (different last bits)."""
    ax, ay, az, aw = a.unbind(-1)
    bx, by, bz, bw = b.unbind(-1)
    return torch.stack([aw * bx + ax * bw + ay * bz - az * by, aw * by - ax * bz + ay * bw + az * bx,
                        aw * bz + ax * by - ay * bx + az * bw, aw * bw - ax * bx - ay * by - az * bz], -1)


def quat_mul_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """quat_mul for numpy arrays (the same formula in numpy)."""
    ax, ay, az, aw = np.moveaxis(a, -1, 0)
    bx, by, bz, bw = np.moveaxis(b, -1, 0)
    return np.stack([aw * bx + ax * bw + ay * bz - az * by, aw * by - ax * bz + ay * bw + az * bx,
                     aw * bz + ax * by - ay * bx + az * bw, aw * bw - ax * bx - ay * by - az * bz], -1)


def quat_rotate(q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Rotate vectors v [..., 3] by unit xyzw quaternions q [..., 4] (torch, TorchScript-able).

    Not roma.quat_action (two full products q v q^-1, other rounding): v + w t + u x t, t = 2 u x v."""
    u, w = q[..., :3], q[..., 3:]
    t = 2.0 * torch.cross(u, v, dim=-1)
    return v + w * t + torch.cross(u, t, dim=-1)


def quat_rotate_np(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """quat_rotate for numpy arrays (the same formula in numpy)."""
    u, w = q[..., :3], q[..., 3:]
    t = 2.0 * np.cross(u, v)
    return v + w * t + np.cross(u, t)


def quat_conjugate(q: torch.Tensor) -> torch.Tensor:
    """Conjugate (the inverse of a unit quaternion) [..., 4] (torch, TorchScript-able).

    The same as roma.quat_conjugation, written out because roma does not script."""
    return torch.cat([-q[..., :3], q[..., 3:]], -1)


def axis_quat(angle: torch.Tensor, axis: int) -> torch.Tensor:
    """xyzw quaternions of rotations by ``angle`` [...] about coordinate axis 0, 1 or 2 (torch)."""
    half = angle * 0.5
    zero = torch.zeros_like(half)
    parts = [zero, zero, zero, half.cos()]
    parts[axis] = half.sin()
    return torch.stack(parts, -1)


def axis_quat_np(angle: np.ndarray, axis: int) -> np.ndarray:
    """axis_quat for numpy arrays."""
    half = 0.5 * angle
    zero = np.zeros_like(half)
    parts = [zero, zero, zero, np.cos(half)]
    parts[axis] = np.sin(half)
    return np.stack(parts, -1)


def euler_xyz_to_quat(e: torch.Tensor) -> torch.Tensor:
    """MHR Euler "xyz" angles [..., 3] -> xyzw quaternions of Rz(e2) Ry(e1) Rx(e0) (torch, TorchScript-able).

    Not roma.euler_to_unitquat: same product, other rounding."""
    return quat_mul(quat_mul(axis_quat(e[..., 2], 2), axis_quat(e[..., 1], 1)), axis_quat(e[..., 0], 0))


def euler_xyz_to_quat_np(e: np.ndarray) -> np.ndarray:
    """euler_xyz_to_quat for numpy arrays."""
    return quat_mul_np(quat_mul_np(axis_quat_np(e[..., 2], 2), axis_quat_np(e[..., 1], 1)), axis_quat_np(e[..., 0], 0))


def quat_canonical(q: Array) -> Array:
    """Unit quaternions with a non-negative w (the same rotation, one sign) (either)."""
    q = q / _norm(q)
    return _xp(q).where(q[..., 3:] < 0, -q, q)


def quat_continuous(q: np.ndarray) -> np.ndarray:
    """Unit quaternions [T, ..., 4] with signs flipped along time so consecutive keys share a hemisphere
    (the short way for slerp between keys) (numpy)."""
    q = quat_canonical(q)
    for t in range(1, q.shape[0]):
        q[t] = np.where((q[t] * q[t - 1]).sum(-1, keepdims=True) < 0, -q[t], q[t])
    return q


def quat_xyzw_to_rotmat(q: Array) -> Array:
    """Unit xyzw quaternions [..., 4] -> rotation matrices [..., 3, 3], no renormalisation (either).

    torch: roma.unitquat_to_rotmat. numpy keeps the 1 - 2(..) diagonal the animation exports were
    built with (the same matrix for unit quaternions, other last bits)."""
    if isinstance(q, torch.Tensor):
        return roma.unitquat_to_rotmat(q)
    x, y, z, w = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    return _mat3([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
                  2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
                  2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], q)


def rotmat_to_quat(m: Array) -> Array:
    """Rotation matrices [..., 3, 3] -> unit xyzw quaternions with w >= 0 (either).

    torch: roma.rotmat_to_unitquat (Markley). numpy keeps its float64 largest-component branch
    (the animation exports' bits; roma sums the trace in another order)."""
    if isinstance(m, torch.Tensor):
        return quat_canonical(roma.rotmat_to_unitquat(m))
    m = np.asarray(m, np.float64)
    tr = np.trace(m, axis1=-2, axis2=-1)
    cand = np.stack([
        np.stack([m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1], 1 + tr], -1),
        np.stack([1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2], m[..., 0, 1] + m[..., 1, 0],
                  m[..., 0, 2] + m[..., 2, 0], m[..., 2, 1] - m[..., 1, 2]], -1),
        np.stack([m[..., 0, 1] + m[..., 1, 0], 1 + m[..., 1, 1] - m[..., 0, 0] - m[..., 2, 2],
                  m[..., 1, 2] + m[..., 2, 1], m[..., 0, 2] - m[..., 2, 0]], -1),
        np.stack([m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1],
                  1 + m[..., 2, 2] - m[..., 0, 0] - m[..., 1, 1], m[..., 1, 0] - m[..., 0, 1]], -1)], -2)
    best = np.argmax(np.stack([tr, m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]], -1), -1)
    q = np.take_along_axis(cand, best[..., None, None], -2)[..., 0, :]
    return quat_canonical(q)


def quat_to_rotvec(q: Array) -> Array:
    """Unit xyzw quaternions [..., 4] -> rotation vectors [..., 3] with angle in [0, pi] (either).

    Not roma.unitquat_to_rotvec: its small-angle series rounds differently."""
    xp = _xp(q)
    q = xp.where(q[..., 3:] < 0, -q, q)  # w >= 0: angle in [0, pi]
    vec = q[..., :3]
    norm = _norm(vec)
    angle = 2.0 * xp.arctan2(norm, q[..., 3:])
    safe = xp.clip(norm, 1e-300, None) if xp is np else norm.clamp_min(1e-300)
    scale = xp.where(norm > 1e-12, angle / safe, 2.0)  # small angles: 2 / w ~ 2
    return vec * scale


# --------------------------------------------------------------------------- Euler angles


def _rx(a: Array) -> Array:
    xp = _xp(a)
    c, s, o, z = xp.cos(a), xp.sin(a), xp.ones_like(a), xp.zeros_like(a)
    return _mat3([o, z, z, z, c, -s, z, s, c], a)


def _ry(a: Array) -> Array:
    xp = _xp(a)
    c, s, o, z = xp.cos(a), xp.sin(a), xp.ones_like(a), xp.zeros_like(a)
    return _mat3([c, z, s, z, o, z, -s, z, c], a)


def _rz(a: Array) -> Array:
    xp = _xp(a)
    c, s, o, z = xp.cos(a), xp.sin(a), xp.ones_like(a), xp.zeros_like(a)
    return _mat3([c, -s, z, s, c, z, z, z, o], a)


def euler_xyz_to_rotmat(e: Array) -> Array:
    """MHR Euler "xyz" angles (a, b, c) [..., 3] -> Rz(c) Ry(b) Rx(a) (either).

    Not roma.euler_to_rotmat (goes through quaternions: other last bits)."""
    return _rz(e[..., 2]) @ _ry(e[..., 1]) @ _rx(e[..., 0])


def rotmat_to_euler_ZYX(m: Array) -> Array:
    """Intrinsic Z-Y-X angles (a, b, c) with m = Rz(a) Ry(b) Rx(c) (roma / scipy "ZYX") (either).

    Not roma.rotmat_to_euler: its general algorithm rounds differently from these three atan2/asin."""
    xp = _xp(m)
    a = xp.arctan2(m[..., 1, 0], m[..., 0, 0])
    b = _asin(-m[..., 2, 0])
    c = xp.arctan2(m[..., 2, 1], m[..., 2, 2])
    return xp.stack([a, b, c], -1)


def rotmat_to_euler_xyz(m: Array) -> Array:
    """Inverse of euler_xyz_to_rotmat (either)."""
    a, b, c = (rotmat_to_euler_ZYX(m)[..., k] for k in range(3))
    return _xp(m).stack([c, b, a], -1)


def euler_XZY_to_rotmat(e: Array) -> Array:
    """Intrinsic X-Z-Y angles (a, b, c) [..., 3] -> Rx(a) Rz(b) Ry(c) (roma / scipy "XZY") (either)."""
    return _rx(e[..., 0]) @ _rz(e[..., 1]) @ _ry(e[..., 2])


def rotmat_to_euler_XZY(m: Array) -> Array:
    """Inverse of euler_XZY_to_rotmat (either)."""
    xp = _xp(m)
    a = xp.arctan2(m[..., 2, 1], m[..., 1, 1])
    b = _asin(-m[..., 0, 1])
    c = xp.arctan2(m[..., 0, 2], m[..., 0, 0])
    return xp.stack([a, b, c], -1)


def euler_xyz_to_rotvec(euler: Array) -> Array:
    """MHR Euler "xyz" angles [..., 3] -> rotation vectors (either; numpy computes in float64)."""
    if not isinstance(euler, torch.Tensor):
        euler = np.asarray(euler, dtype=np.float64)
    mul, ax = (quat_mul, axis_quat) if isinstance(euler, torch.Tensor) else (quat_mul_np, axis_quat_np)
    # qz (qy qx), not euler_xyz_to_quat's (qz qy) qx: the smoother's original float64 rounding
    q = mul(ax(euler[..., 2], 2), mul(ax(euler[..., 1], 1), ax(euler[..., 0], 0)))
    return quat_to_rotvec(q)


def rotvec_to_euler_xyz(rotvec: Array) -> Array:
    """Rotation vectors [..., 3] -> MHR Euler "xyz" angles (either; numpy computes in float64).

    At gimbal lock (|pitch| = pi/2) the whole yaw goes into the first angle."""
    rv = rotvec if isinstance(rotvec, torch.Tensor) else np.asarray(rotvec, dtype=np.float64)
    xp = _xp(rv)
    theta = _norm(rv)[..., 0]
    # Rodrigues: R = I + sin(t) K + (1 - cos t) K^2 with K the cross matrix of the unit axis;
    # only the five entries the angles need are formed
    small = theta < 1e-8
    tt = xp.where(small, 1.0, theta)
    a = xp.where(small, 1.0, xp.sin(tt) / tt)  # sin(t) / t
    b = xp.where(small, 0.5, (1.0 - xp.cos(tt)) / tt ** 2)  # (1 - cos t) / t^2
    x, y, z = rv[..., 0], rv[..., 1], rv[..., 2]
    r00 = 1.0 - b * (y * y + z * z)
    r10 = a * z + b * x * y
    r20 = -a * y + b * x * z
    r21 = a * x + b * y * z
    r22 = 1.0 - b * (x * x + y * y)
    beta = -_asin(r20)
    alpha = xp.arctan2(r21, r22)
    gamma = xp.arctan2(r10, r00)
    lock = xp.abs(r20) > 1.0 - 1e-10  # gimbal lock: put the whole yaw into alpha
    if lock.any():
        r12 = -a * x + b * y * z
        r11 = 1.0 - b * (x * x + z * z)
        alpha = xp.where(lock, xp.arctan2(-r12, r11), alpha)  # R = Ry(+-pi/2) Rx(alpha)
        gamma = xp.where(lock, 0.0, gamma)
    return xp.stack([alpha, beta, gamma], -1)


def premultiply_euler_xyz(m: np.ndarray, euler: np.ndarray) -> np.ndarray:
    """MHR Euler "xyz" angles [N, 3] of the rotations M @ R(euler) for matrices M [N, 3, 3] (numpy, float64).

    Goes through rotation vectors and scipy's matrix conversions (the world stage's original rounding)."""
    from scipy.spatial.transform import Rotation

    r = Rotation.from_rotvec(euler_xyz_to_rotvec(euler)).as_matrix()
    return rotvec_to_euler_xyz(Rotation.from_matrix(m @ r).as_rotvec())


def unwrap_rotvecs(rv: np.ndarray) -> np.ndarray:
    """Make a sequence of rotation vectors [T, 3] continuous in time (numpy, float64).

    A rotation has the vectors (theta + 2*pi*k) * u and (-theta + 2*pi*k) * (-u); we flip
    the axis to agree with the previous frame and unwrap the signed angle, so constant-rate
    spins become straight lines through the +-pi seam.
    """
    rv = np.asarray(rv, dtype=np.float64)
    if rv.shape[0] < 2:
        return rv.copy()
    theta = np.linalg.norm(rv, axis=-1)
    axis = rv / np.maximum(theta, 1e-12)[:, None]
    # near-zero angles have no reliable axis: borrow the previous reliable one
    reliable = theta > 1e-6
    idx = np.where(reliable, np.arange(len(theta)), 0)
    np.maximum.accumulate(idx, out=idx)
    axis = np.where(reliable[:, None], axis, axis[idx])
    dots = np.einsum("ti,ti->t", axis[1:], axis[:-1])
    sign = np.concatenate([[1.0], np.cumprod(np.where(dots < 0, -1.0, 1.0))])
    axis = axis * sign[:, None]
    angle = np.unwrap(theta * sign)
    return angle[:, None] * axis


# --------------------------------------------------------------------------- 6D and orthonormalisation


def rot6d_to_rotmat(x: torch.Tensor) -> torch.Tensor:
    """6D [..., 6] (two stacked 3-vectors) -> [N, 3, 3] whose columns are their Gram-Schmidt (torch).

    roma.special_gramschmidt (bit-identical to normalise / project / cross)."""
    return roma.special_gramschmidt(x.reshape(-1, 2, 3).transpose(-1, -2))


def rotmat_to_rot6d(m: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [..., 3, 3] -> 6D [..., 6]: first column, then second (torch)."""
    return torch.cat([m[..., :, 0], m[..., :, 1]], -1)


def sixd_to_euler_xyz(p: torch.Tensor) -> torch.Tensor:
    """MHR's 6D [..., 6] -> Euler "xyz": columns x=norm(u), z=norm(x cross v), y=z cross x (torch)."""
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


def euler_xyz_to_rot6d_delta(e: torch.Tensor) -> torch.Tensor:
    """MHR Euler "xyz" [..., 3] -> first two columns of Rz Ry Rx minus the identity's (6; MHR's
    pose-corrective input) (torch, closed form)."""
    cx, cy, cz = e[..., 0].cos(), e[..., 1].cos(), e[..., 2].cos()
    sx, sy, sz = e[..., 0].sin(), e[..., 1].sin(), e[..., 2].sin()
    col0 = torch.stack([cy * cz - 1.0, cy * sz, -sy], -1)
    col1 = torch.stack([sx * sy * cz - cx * sz, cx * cz + sx * sy * sz - 1.0, sx * cy], -1)
    return torch.cat([col0, col1], -1)


def rotation_angle(a: Array, b: Array) -> Array:
    """Angle (radians) of the relative rotation a @ b^T (either; torch: roma.rotmat_cosine_angle)."""
    if isinstance(a, torch.Tensor):
        return torch.acos(roma.rotmat_cosine_angle(a @ b.transpose(-1, -2)).clamp(-1.0, 1.0))
    r = a @ np.swapaxes(b, -1, -2)
    return np.arccos(np.clip(0.5 * (r[..., 0, 0] + r[..., 1, 1] + r[..., 2, 2] - 1.0), -1.0, 1.0))
