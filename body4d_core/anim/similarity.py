"""Float64 numpy similarity transforms (t, xyzw q, uniform s) and the skeleton walks the animation uses."""

from __future__ import annotations

import numpy as np

from ..rotations import quat_mul_np, quat_rotate_np, quat_xyzw_to_rotmat


def compose(pt: np.ndarray, pq: np.ndarray, ps: np.ndarray, ct: np.ndarray, cq: np.ndarray, cs: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parent * child of similarity transforms (t [...,3], q [...,4], s [...,1])."""
    return pt + ps * quat_rotate_np(pq, ct), quat_mul_np(pq, cq), ps * cs


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
    m[..., :3, :3] = quat_xyzw_to_rotmat(q) * s[..., None]
    m[..., :3, 3] = t
    m[..., 3, 3] = 1.0
    return m
