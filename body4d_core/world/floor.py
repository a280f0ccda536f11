"""Ground plane and gravity: RANSAC + least-squares plane from depth points, or from planted feet.

Planes live in the first camera's axes (OpenCV: x right, y down, z forward) as
``normal . X + offset = 0`` with the unit normal pointing up (against gravity), so
``offset`` is the first camera's height above the floor.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np


@dataclass
class Floor:
    """Floor plane in first-camera axes, how sure we are, and where it came from."""

    normal: np.ndarray  # float64 [3], unit, pointing up
    offset: float  # normal . X + offset = 0 on the floor
    confidence: float  # 0..1
    source: str  # depth | feet | prior

    def height(self, points: np.ndarray) -> np.ndarray:
        """Signed height above the floor of points [..., 3] in first-camera axes."""
        return np.asarray(points, np.float64) @ self.normal + self.offset


def fit_plane(points: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Least-squares plane (unit normal, offset) through points [M, 3] (SVD of the centred cloud)."""
    w = np.ones(len(points)) if weights is None else np.asarray(weights, np.float64)
    c = (points * w[:, None]).sum(0) / w.sum()
    _, _, vt = np.linalg.svd((points - c) * np.sqrt(w)[:, None], full_matrices=False)
    n = vt[-1]
    return n, float(-n @ c)


def ransac_plane(points: np.ndarray, up: np.ndarray, max_tilt_deg: float = 30.0, threshold: float = 0.03,
                 iterations: int = 300, seed: int = 0) -> tuple[np.ndarray, float, np.ndarray] | None:
    """Robust plane among points [M, 3] whose normal is within ``max_tilt_deg`` of ``up``.

    Returns (normal pointing along ``up``, offset, inlier mask), refined by least squares on
    the inliers twice, or None when no such plane has enough support. Among candidate planes
    the lowest well-supported one wins (a floor, not a table top), scored by inlier count.
    """
    pts = np.asarray(points, np.float64)
    if len(pts) < 30:
        return None
    rng = np.random.default_rng(seed)
    cos_tilt = np.cos(np.radians(max_tilt_deg))
    best, best_score = None, 0
    tri = rng.integers(0, len(pts), size=(iterations, 3))
    a, b, c = pts[tri[:, 0]], pts[tri[:, 1]], pts[tri[:, 2]]
    normals = np.cross(b - a, c - a)
    norms = np.linalg.norm(normals, axis=1)
    ok = norms > 1e-9
    normals[ok] /= norms[ok, None]
    normals *= np.sign(normals @ up)[:, None]
    ok &= normals @ up >= cos_tilt
    for i in np.flatnonzero(ok):
        n = normals[i]
        d = -n @ a[i]
        inl = np.abs(pts @ n + d) < threshold
        score = int(inl.sum())
        if score > best_score:
            best, best_score = (n, d, inl), score
    if best is None or best_score < max(30, 0.05 * len(pts)):
        return None
    n, d, inl = best
    for _ in range(2):
        n, d = fit_plane(pts[inl])
        if n @ up < 0:
            n, d = -n, -d
        inl = np.abs(pts @ n + d) < threshold
    return n, float(d), inl


def near_feet(pts: np.ndarray, feet: np.ndarray, up: np.ndarray, lateral_max: float = 4.0,
              above_max: float = 0.5, chunk: int = 1024, workers: int | None = None) -> np.ndarray:
    """bool [M]: points [M, 3] within ``lateral_max`` (across ``up``) of some foot [F, 3] and less than
    ``above_max`` above it.

    Computed in blocks of ``chunk`` points, on up to ``workers`` threads (default: up to 4 cores;
    numpy releases the GIL): per point-foot pair the same arithmetic as one [M, F, 3] broadcast, so
    the same result, without its hundreds of MB of temporaries.
    """
    near = np.empty(len(pts), bool)

    def block(s: int) -> None:
        rel = pts[s:s + chunk, None, :] - feet[None]
        along = rel @ up
        lateral = np.linalg.norm(rel - along[..., None] * up, axis=-1)
        near[s:s + chunk] = ((lateral < lateral_max) & (along < above_max)).any(1)

    starts = range(0, len(pts), chunk)
    workers = min(4, os.cpu_count() or 1) if workers is None else workers
    if workers <= 1 or len(starts) < 2 * workers:
        for s in starts:
            block(s)
        return near
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="body4d-floor") as pool:
        list(pool.map(block, starts))  # list: re-raises a block's error
    return near


def floor_from_depth(points: np.ndarray, up: np.ndarray, feet: np.ndarray | None = None,
                     threshold: float = 0.03) -> Floor | None:
    """Floor from background depth points [M, 3] (first-camera axes) near the people's feet.

    Points farther than 4 m (horizontally) from every foot, or higher than 0.5 m above the
    lowest foot, are left out first when ``feet`` [F, 3] is given (walls and furniture).
    """
    pts = np.asarray(points, np.float64)
    pts = pts[np.isfinite(pts).all(1)]
    if feet is not None and len(feet):
        near = near_feet(pts, feet[::max(1, len(feet) // 64)], up)
        if near.sum() >= 200:
            pts = pts[near]
    if len(pts) > 20000:
        pts = pts[np.random.default_rng(0).choice(len(pts), 20000, replace=False)]
    fit = ransac_plane(pts, up, threshold=threshold)
    if fit is None:
        return None
    n, d, inl = fit
    conf = float(min(1.0, inl.mean() * 2.0))
    return Floor(n, d, conf, "depth")


def floor_from_feet(feet: np.ndarray, up: np.ndarray, sole: float = 0.0) -> Floor:
    """Floor under the lowest foot points over time [F, 3] (first-camera axes).

    The plane is fitted to the lower envelope of the foot points; when they do not span two
    directions (one person walking a line, or standing), the tilt comes from ``up`` (the
    people's own mean up direction) and only the height is fitted.
    """
    f = np.asarray(feet, np.float64)
    f = f[np.isfinite(f).all(1)]
    up = up / np.linalg.norm(up)
    if len(f) == 0:
        return Floor(up, 1.6, 0.0, "prior")
    h = f @ up
    low = f[h <= np.percentile(h, 40)] if len(f) >= 10 else f
    n = up
    spread = np.linalg.svd(low - low.mean(0), compute_uv=False) if len(low) >= 3 else np.zeros(3)
    if len(low) >= 20 and spread[1] > 0.15 * np.sqrt(len(low)):
        fit = ransac_plane(low, up, max_tilt_deg=15.0, threshold=0.04)
        if fit is not None:
            n = fit[0]
    d = float(-np.median(low @ n)) + sole
    resid = np.abs(low @ n + d - sole)
    conf = float(np.clip(1.0 - np.median(resid) / 0.1, 0.0, 1.0)) * min(1.0, len(f) / 30.0)
    return Floor(n, d, conf, "feet")


def agree(a: Floor, b: Floor, max_angle_deg: float = 10.0, max_height: float = 0.15) -> bool:
    """Whether two floor estimates describe the same plane (normal angle and height at the camera)."""
    ang = np.degrees(np.arccos(np.clip(a.normal @ b.normal, -1.0, 1.0)))
    return bool(ang <= max_angle_deg and abs(a.offset - b.offset) <= max_height)


def feet_on(floor: Floor, feet: np.ndarray, sole: float = 0.0, tolerance: float = 0.15) -> bool:
    """Whether the people's lower foot points [F, 3] stand on ``floor`` (median height of the lowest
    40% within ``tolerance`` of the sole height); True when there are too few feet to tell."""
    f = np.asarray(feet, np.float64)
    f = f[np.isfinite(f).all(1)]
    if len(f) < 10:
        return True
    h = floor.height(f)
    return bool(abs(np.median(h[h <= np.percentile(h, 40)]) - sole) <= tolerance)


def world_axes(floor: Floor, origin_c0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World-from-first-camera map X_w = A X_c0 + b: y up along the floor normal, floor at y = 0,
    x along the first camera's right axis projected on the floor, origin on the floor under
    ``origin_c0`` (first-camera axes)."""
    y = floor.normal / np.linalg.norm(floor.normal)
    x = np.array([1.0, 0.0, 0.0]) - y[0] * y
    if np.linalg.norm(x) < 1e-6:
        x = np.array([0.0, 0.0, 1.0]) - y[2] * y
    x /= np.linalg.norm(x)
    z = np.cross(x, y)
    A = np.stack([x, y, z])
    foot = origin_c0 - floor.height(origin_c0) * y
    b = -A @ foot
    return A, b
