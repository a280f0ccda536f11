"""Camera motion from background pixels with no extra model: static test, then per-frame pose.

Static test: corners on the first frame's background are tracked (pyramidal Lucas-Kanade)
into sampled frames; when the typical background displacement stays below a threshold the
camera is static and every pose is exactly the identity.

Moving camera: background corners of a keyframe are lifted to 3D with its metric depth
(MoGe-2 point map or any depth map), tracked frame to frame with a forward-backward check,
and each frame's pose against the keyframe is solved by RANSAC PnP refined with
Levenberg-Marquardt. A new keyframe starts when too few tracks survive or every
``keyframe_every`` frames; its pose is the chained one, so the trajectory is metric with
the depth's scale: each new keyframe's depth is rescaled to agree with the points tracked
from the previous one, and the whole path takes the mean scale of all keyframes' depths
(per-frame scale errors of a monocular depth model average out). Without depth, only the
rotation is solved (a rotating-camera model on bearing vectors, RANSAC + Kabsch) and
positions stay at zero.

Poses map camera-t points into the first camera's axes: X_c0 = R_t X_ct + p_t.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..alloc import Alloc, zeros
from ..errors import InputError
from .depth import KeyframeDepth, as_keyframe_depth

log = logging.getLogger(__name__)

# OpenCV puts pixel (i, j)'s centre at (j, i); our intrinsics put it at (j + 0.5, i + 0.5)
HALF = 0.5


@dataclass
class CameraTrajectory:
    """Per-frame camera poses in the first camera's axes (X_c0 = R_t X_ct + p_t)."""

    rotations: np.ndarray  # float64 [T, 3, 3]
    positions: np.ndarray  # float64 [T, 3], metres
    static: bool
    motion_px: float  # typical background displacement from the first frame (pixels)
    source: str  # static | assumed_static | flow_depth | flow_rotation
    inliers: np.ndarray  # int [T]: PnP / rotation inliers per frame (0 on the first and failed frames)

    @classmethod
    def identity(cls, num_frames: int, source: str = "assumed_static", motion_px: float = 0.0) -> "CameraTrajectory":
        """A camera that never moves."""
        return cls(np.repeat(np.eye(3)[None], num_frames, 0), np.zeros((num_frames, 3)), True, motion_px, source,
                   np.zeros(num_frames, np.int64))


def _gray(frame: np.ndarray) -> np.ndarray:
    import cv2

    f = np.asarray(frame)
    if f.dtype != np.uint8:
        f = np.clip(f * 255.0 + 0.5, 0, 255).astype(np.uint8) if f.max() <= 1.0 else f.astype(np.uint8)
    return cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) if f.ndim == 3 else f


def _background(people: np.ndarray | None, t: int, shape: tuple[int, int], margin: int) -> np.ndarray:
    """uint8 mask of usable background pixels of frame t (people dilated by ``margin`` px removed)."""
    import cv2

    if people is None:
        return np.full(shape, 255, np.uint8)
    m = np.asarray(people[t], bool).astype(np.uint8)
    if margin > 0:
        m = cv2.dilate(m, np.ones((2 * margin + 1, 2 * margin + 1), np.uint8))
    return np.where(m > 0, 0, 255).astype(np.uint8)


def _corners(gray: np.ndarray, mask: np.ndarray, count: int) -> np.ndarray:
    import cv2

    pts = cv2.goodFeaturesToTrack(gray, maxCorners=count, qualityLevel=0.005, minDistance=5, mask=mask, blockSize=5)
    return np.zeros((0, 2), np.float32) if pts is None else pts.reshape(-1, 2).astype(np.float32)


def _track(g0: np.ndarray, g1: np.ndarray, pts: np.ndarray, fb_max: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """LK-track points [M, 2] from g0 to g1 with a forward-backward check; returns (new points, ok)."""
    import cv2

    if len(pts) == 0:
        return pts, np.zeros(0, bool)
    lk = dict(winSize=(21, 21), maxLevel=4, criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01))
    p1, st1, _ = cv2.calcOpticalFlowPyrLK(g0, g1, pts.reshape(-1, 1, 2), None, **lk)
    p0, st0, _ = cv2.calcOpticalFlowPyrLK(g1, g0, p1, None, **lk)
    ok = (st1.reshape(-1) == 1) & (st0.reshape(-1) == 1) & (np.linalg.norm(p0.reshape(-1, 2) - pts, axis=1) < fb_max)
    return p1.reshape(-1, 2), ok


def _inside(pts: np.ndarray, mask: np.ndarray) -> np.ndarray:
    h, w = mask.shape
    xi = np.clip(pts[:, 0].round().astype(int), 0, w - 1)
    yi = np.clip(pts[:, 1].round().astype(int), 0, h - 1)
    inb = (pts[:, 0] >= 0) & (pts[:, 0] < w) & (pts[:, 1] >= 0) & (pts[:, 1] < h)
    return inb & (mask[yi, xi] > 0)


def background_motion(grays: list[np.ndarray], people: np.ndarray | None, samples: int = 12,
                      margin: int = 8) -> float:
    """90th percentile over sampled frames of the median background displacement from frame 0 (px)."""
    t = len(grays)
    mask0 = _background(people, 0, grays[0].shape, margin)
    pts = _corners(grays[0], mask0, 400)
    if len(pts) < 8:
        return 0.0
    moves = []
    for i in np.unique(np.linspace(1, t - 1, min(samples, t - 1)).round().astype(int)) if t > 1 else []:
        p1, ok = _track(grays[0], grays[i], pts)
        ok &= _inside(p1, _background(people, int(i), grays[0].shape, margin))
        if ok.sum() < 0.2 * len(pts):
            return float("inf")  # the background changed beyond tracking: moving
        moves.append(float(np.median(np.linalg.norm(p1[ok] - pts[ok], axis=1))))
    return float(np.percentile(moves, 90)) if moves else 0.0


def _lift(pts: np.ndarray, depth: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """3D camera points of pixels [M, 2] from a depth map; returns (points, valid).

    Depth is interpolated bilinearly at the sub-pixel position (on a floor seen at a grazing
    angle depth changes by decimetres per pixel); points whose four neighbours differ by more
    than 3% (depth edges) are dropped.
    """
    h, w = depth.shape
    x0 = np.clip(np.floor(pts[:, 0]).astype(int), 0, w - 2)
    y0 = np.clip(np.floor(pts[:, 1]).astype(int), 0, h - 2)
    fx = np.clip(pts[:, 0] - x0, 0.0, 1.0)
    fy = np.clip(pts[:, 1] - y0, 0.0, 1.0)
    q = np.stack([depth[y0, x0], depth[y0, x0 + 1], depth[y0 + 1, x0], depth[y0 + 1, x0 + 1]], 1).astype(np.float64)
    z = (q[:, 0] * (1 - fx) + q[:, 1] * fx) * (1 - fy) + (q[:, 2] * (1 - fx) + q[:, 3] * fx) * fy
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(q).all(1) & (q.min(1) > 0.05) & (q.max(1) <= 1.03 * q.min(1))
    x = (pts[:, 0] + HALF - K[0, 2]) / K[0, 0] * z
    y = (pts[:, 1] + HALF - K[1, 2]) / K[1, 1] * z
    return np.stack([x, y, z], 1), ok


def _kabsch(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rotation R minimising |R a - b| over unit vectors a, b [M, 3]."""
    u, _, vt = np.linalg.svd(b.T @ a)
    d = np.sign(np.linalg.det(u @ vt))
    return u @ np.diag([1.0, 1.0, d]) @ vt


def _rotation_ransac(b0: np.ndarray, b1: np.ndarray, thr: float, iters: int = 100, seed: int = 0
                     ) -> tuple[np.ndarray, int]:
    """Rotation R with b1 ~ R b0 (bearing vectors), RANSAC over pairs, refined on the inliers."""
    rng = np.random.default_rng(seed)
    best, best_in = np.eye(3), np.zeros(len(b0), bool)
    for _ in range(iters):
        idx = rng.choice(len(b0), 2, replace=False)
        R = _kabsch(b0[idx], b1[idx])
        inl = np.linalg.norm(b0 @ R.T - b1, axis=1) < thr
        if inl.sum() > best_in.sum():
            best, best_in = R, inl
    if best_in.sum() >= 3:
        best = _kabsch(b0[best_in], b1[best_in])
    return best, int(best_in.sum())


def _bearings(pts: np.ndarray, K: np.ndarray) -> np.ndarray:
    v = np.stack([(pts[:, 0] + HALF - K[0, 2]) / K[0, 0], (pts[:, 1] + HALF - K[1, 2]) / K[1, 1],
                  np.ones(len(pts))], 1)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _downscale(frames: np.ndarray, people: np.ndarray | None, depth: KeyframeDepth | None, intr: np.ndarray,
               max_side: int, alloc: Alloc | None = None
               ) -> tuple[np.ndarray, np.ndarray | None, KeyframeDepth | None, np.ndarray, float]:
    """Gray frames [T, h, w], masks, the keyframes' depth and intrinsics at most ``max_side`` pixels on the long
    side, and the scale; the whole-clip arrays from ``alloc`` (zero-filled; default RAM), filled frame by frame."""
    import cv2

    t, h, w = frames.shape[:3]
    s = min(1.0, max_side / max(h, w)) if max_side and max_side > 0 else 1.0
    if s >= 1.0:
        grays = zeros(alloc, (t, h, w), np.uint8)
        for i, f in enumerate(frames):
            grays[i] = _gray(f)
        return grays, people, depth, intr, 1.0
    size = (max(1, round(w * s)), max(1, round(h * s)))
    sx, sy = size[0] / w, size[1] / h
    grays = zeros(alloc, (t, size[1], size[0]), np.uint8)
    for i, f in enumerate(frames):
        grays[i] = cv2.resize(_gray(f), size, interpolation=cv2.INTER_AREA)
    if people is not None:
        small = zeros(alloc, (t, size[1], size[0]), bool)
        for i, m in enumerate(people):
            small[i] = cv2.resize(np.asarray(m, np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
        people = small
    if depth is not None:
        depth = depth.mapped(lambda d: cv2.resize(d, size, interpolation=cv2.INTER_NEAREST), (size[1], size[0]),
                             alloc)
    return grays, people, depth, intr * np.array([sx, sy, sx, sy]), float(np.sqrt(sx * sy))


def estimate_camera_motion(frames: np.ndarray, intrinsics: np.ndarray, people: np.ndarray | None = None,
                           depth: KeyframeDepth | np.ndarray | None = None, static_threshold: float = 0.75,
                           keyframe_every: int = 15, corners: int = 600, margin: int = 8,
                           max_side: int = 640, *, alloc: Alloc | None = None) -> CameraTrajectory:
    """Camera trajectory of a clip from its background (see module docstring).

    frames: [T, H, W, 3] uint8 (or float in [0, 1]); intrinsics: [T, 4] (fx, fy, cx, cy) or [4];
    people: bool [T, H, W] person pixels to ignore; depth: metric depth, the keyframes' (``KeyframeDepth``)
    or [T, H, W] (NaN where unknown), or None. Frames larger than ``max_side`` are tracked downscaled (0 = never);
    ``static_threshold`` is in pixels of the given frames. ``alloc``: where the downscaled whole-clip
    copies go (zero-filled arrays, e.g. ``FrameStore.empty``; default RAM).
    """
    import cv2

    frames = np.asarray(frames)
    if frames.ndim not in (3, 4) or frames.shape[0] < 1:
        raise InputError(f"camera motion: frames must be [T, H, W(, 3)], got shape {frames.shape}")
    t = frames.shape[0]
    intr = np.broadcast_to(np.asarray(intrinsics, np.float64).reshape(-1, 4), (t, 4)) \
        if np.size(intrinsics) in (4, 4 * t) else None
    if intr is None:
        raise InputError(f"camera motion: intrinsics must be [4] or [{t}, 4], got shape {np.shape(intrinsics)}")
    if people is not None and np.shape(people)[:3] != frames.shape[:3]:
        raise InputError(f"camera motion: people masks {np.shape(people)} do not match frames {frames.shape[:3]}")
    depth = as_keyframe_depth(depth)
    if depth is not None and depth.shape != frames.shape[:3]:
        raise InputError(f"camera motion: depth {depth.shape} does not match frames {frames.shape[:3]}")
    grays, people, depth, intr, scale = _downscale(frames, people, depth, intr, max_side, alloc)
    motion = background_motion(grays, people, margin=margin) / scale
    if motion < static_threshold:
        log.info("camera static (background moves %.2f px)", motion)
        return CameraTrajectory.identity(t, "static", motion)
    Ks = [np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]]) for fx, fy, cx, cy in intr]
    R = np.repeat(np.eye(3)[None], t, 0)
    p = np.zeros((t, 3))
    inliers = np.zeros(t, np.int64)
    use_depth = depth is not None and depth.has(0)
    if not use_depth:
        log.warning("camera moves (%.1f px) but no depth is given: solving rotation only", motion)
        for i in range(1, t):
            pts = _corners(grays[i - 1], _background(people, i - 1, grays[0].shape, margin), corners)
            p1, ok = _track(grays[i - 1], grays[i], pts)
            ok &= _inside(p1, _background(people, i, grays[0].shape, margin))
            if ok.sum() < 8:
                R[i] = R[i - 1]
                continue
            b0, b1 = _bearings(pts[ok], Ks[i - 1]), _bearings(p1[ok], Ks[i])
            Rr, n_in = _rotation_ransac(b0, b1, thr=1.5 / Ks[i][0, 0])
            R[i], inliers[i] = R[i - 1] @ Rr.T, n_in  # X_(i-1) = Rr^T X_i
        return CameraTrajectory(R, p, False, motion, "flow_rotation", inliers)
    kf = 0
    X_kf = np.zeros((0, 3))
    cur = np.zeros((0, 2), np.float32)
    n_start = 0
    log_scales = [0.0]  # per keyframe: log of (its depth's scale relative to the first keyframe's)

    def new_keyframe(i: int, Rt: np.ndarray | None = None, tvec: np.ndarray | None = None) -> None:
        nonlocal kf, X_kf, cur, n_start
        pts = _corners(grays[i], _background(people, i, grays[0].shape, margin), corners)
        X, ok = _lift(pts, depth[i], Ks[i])
        scale = 1.0
        if Rt is not None and len(cur) >= 8:  # keep one scale along the chain: compare with the old map
            pred = X_kf @ Rt.T + tvec.reshape(1, 3)
            z_new, ok_new = _lift(cur, depth[i], Ks[i])
            good = ok_new & (pred[:, 2] > 0.05)
            if good.sum() >= 8:
                scale = float(np.median(pred[good, 2] / z_new[good, 2]))
                log_scales.append(-np.log(scale))
        kf, X_kf, cur, n_start = i, X[ok] * scale, pts[ok], int(ok.sum())

    new_keyframe(0)
    for i in range(1, t):
        p1, ok = _track(grays[i - 1], grays[i], cur)
        ok &= _inside(p1, _background(people, i, grays[0].shape, margin))
        X_kf, cur = X_kf[ok], p1[ok]
        solved = False
        Rt = tvec = None
        if len(cur) >= 12:
            good, rvec, tvec, inl = cv2.solvePnPRansac(X_kf, cur.astype(np.float64) + HALF, Ks[i], None,
                                                       reprojectionError=2.0, iterationsCount=200,
                                                       flags=cv2.SOLVEPNP_EPNP)
            if good and inl is not None and len(inl) >= 8:
                inl = inl.reshape(-1)
                obs = cur[inl].astype(np.float64) + HALF
                rvec, tvec = cv2.solvePnPRefineLM(X_kf[inl], obs, Ks[i], None, rvec, tvec)
                Rt = cv2.Rodrigues(rvec)[0]  # X_i = Rt X_kf + tvec
                R[i] = R[kf] @ Rt.T
                p[i] = p[kf] - R[i] @ tvec.reshape(3)
                inliers[i] = len(inl)
                X_kf, cur = X_kf[inl], cur[inl]
                solved = True
        if not solved:
            log.warning("camera motion: frame %d could not be solved; holding the previous pose", i)
            R[i], p[i] = R[i - 1], p[i - 1]
        has_depth = depth.has(i)
        if has_depth and (not solved or len(cur) < 0.5 * n_start or i - kf >= keyframe_every):
            new_keyframe(i, Rt, tvec)
    # every keyframe's depth had its own scale error; the chain carries the first one's: use their mean
    p *= float(np.exp(np.mean(log_scales)))
    return CameraTrajectory(R, p, False, motion, "flow_depth", inliers)
