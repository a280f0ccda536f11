"""Small float64 numpy helpers for xyzw quaternions and similarity transforms (t, q, uniform s)."""

from __future__ import annotations

import numpy as np


def quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product of xyzw quaternions [..., 4]."""
    ax, ay, az, aw = np.moveaxis(a, -1, 0)
    bx, by, bz, bw = np.moveaxis(b, -1, 0)
    return np.stack([aw * bx + ax * bw + ay * bz - az * by, aw * by - ax * bz + ay * bw + az * bx,
                     aw * bz + ax * by - ay * bx + az * bw, aw * bw - ax * bx - ay * by - az * bz], -1)


def quat_rotate(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rotate vectors v [..., 3] by unit xyzw quaternions q [..., 4]."""
    u, w = q[..., :3], q[..., 3:]
    t = 2.0 * np.cross(u, v)
    return v + w * t + np.cross(u, t)


def normalize(q: np.ndarray) -> np.ndarray:
    """Unit quaternions with a non-negative w (the same rotation, one sign)."""
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    return np.where(q[..., 3:] < 0, -q, q)


def euler_xyz_quat(e: np.ndarray) -> np.ndarray:
    """XYZ Euler angles [..., 3] -> xyzw quaternion of Rz(e2) Ry(e1) Rx(e0) (MHR's convention)."""
    half = 0.5 * e
    c, s = np.cos(half), np.sin(half)
    z = np.zeros_like(half[..., 0])
    qx = np.stack([s[..., 0], z, z, c[..., 0]], -1)
    qy = np.stack([z, s[..., 1], z, c[..., 1]], -1)
    qz = np.stack([z, z, s[..., 2], c[..., 2]], -1)
    return quat_mul(quat_mul(qz, qy), qx)


def quat_matrix(q: np.ndarray) -> np.ndarray:
    """Rotation matrices [..., 3, 3] of unit xyzw quaternions."""
    x, y, z, w = np.moveaxis(q, -1, 0)
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1)], -2)


def matrix_quat(m: np.ndarray) -> np.ndarray:
    """xyzw quaternions [..., 4] of rotation matrices [..., 3, 3] (largest-component branch)."""
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
    return normalize(q)


def compose(pt: np.ndarray, pq: np.ndarray, ps: np.ndarray, ct: np.ndarray, cq: np.ndarray, cs: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parent * child of similarity transforms (t [...,3], q [...,4], s [...,1])."""
    return pt + ps * quat_rotate(pq, ct), quat_mul(pq, cq), ps * cs


def forward_kinematics(parents: np.ndarray, t: np.ndarray, q: np.ndarray, s: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Global (t, q, s) [..., J, *] from local ones along ``parents``, one skeleton depth at a time."""
    gt, gq, gs = t.copy(), q.copy(), s.copy()
    for level in depth_levels(parents):
        p = parents[level]
        gt[..., level, :], gq[..., level, :], gs[..., level, :] = compose(
            gt[..., p, :], gq[..., p, :], gs[..., p, :], t[..., level, :], q[..., level, :], s[..., level, :])
    return gt, gq, gs


def depth_levels(parents: np.ndarray) -> list[np.ndarray]:
    """Non-root joints grouped by depth (1, 2, ...): each group's parents are in earlier groups or roots."""
    depth = np.full(parents.size, -1)
    for j in topological_order(parents):
        depth[j] = 0 if parents[j] < 0 else depth[parents[j]] + 1
    if (depth < 0).any():
        raise ValueError("the skeleton's parents do not form a tree")
    return [np.flatnonzero(depth == d) for d in range(1, int(depth.max(initial=0)) + 1)]


def topological_order(parents: np.ndarray) -> list[int]:
    """Joint indices with every parent before its children."""
    children: dict[int, list[int]] = {}
    for j, p in enumerate(parents.tolist()):
        children.setdefault(int(p), []).append(j)
    order, stack = [], list(reversed(children.get(-1, [])))
    while stack:
        j = stack.pop()
        order.append(j)
        stack.extend(reversed(children.get(j, [])))
    return order


def similarity_matrix(t: np.ndarray, q: np.ndarray, s: np.ndarray) -> np.ndarray:
    """4x4 matrices [..., 4, 4] of T(t) R(q) S(s)."""
    m = np.zeros(t.shape[:-1] + (4, 4))
    m[..., :3, :3] = quat_matrix(q) * s[..., None]
    m[..., :3, 3] = t
    m[..., 3, 3] = 1.0
    return m
