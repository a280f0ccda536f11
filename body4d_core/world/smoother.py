"""Contact-aware smoothing in the world frame.

1. Depth along the ray: the estimator's largest error moves a whole body along its camera
   ray. On frames with a foot on the floor, the floor says how far along the ray the body
   is (the lowest foot point sits at sole height); that estimate is fused with the raw one
   by their variances (flight frames, found from the smoothed lowest-foot height, keep the
   raw depth).
2. Root and pose: the root (body origin) is smoothed on its own with a longer span
   horizontally than vertically (smooth walking, sharp jumps), outlier frames down-weighted;
   root-relative keypoints are smoothed with per-joint spans (per-joint process noise:
   hands and feet follow fast motion, the torso is smoothed more).
3. Contacts: heel and toe of each foot from height and world speed with hysteresis.
4. Planted feet: each contact point is pinned to one horizontal position per contact span;
   the root translation is corrected by the mean pin offset (smoothed over time), and the
   rest of the offset moves the foot keypoints (ankle, heel, toes) so planted feet do not
   slide, the knee following by a two-bone IK that keeps thigh and shin lengths. Heights
   stay free (take-off and landing are not glued to the floor).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import median_filter

from ..errors import InputError
from ..smoothing import kalman_smooth
from .clock import timed
from .contacts import ContactSettings, detect_contacts
from .keypoints import CONTACT_INDEX, FOOT_GROUPS, LEGS, joint_windows


@dataclass
class WorldSmoothSettings:
    """Knobs of the world smoother (spans in frames, lengths in metres)."""

    root_window: float = 4.0  # horizontal root span
    root_vertical_window: float = 2.0  # vertical root span (jumps stay sharp)
    body_window: float = 2.5  # torso / head keypoints
    limb_window: float = 2.0  # elbows, feet
    hand_window: float = 1.2  # hands and wrists: fast motion kept
    outlier_threshold: float = 4.0  # robust z-score of the root residual that down-weights a frame
    ray_correction: bool = True
    depth_sigma: float = 0.02  # relative depth error of the estimates (for fusing with the floor)
    foot_sigma: float = 0.03  # error of the lowest foot point's height (metres)
    sole: float = 0.02  # height of heel / toe keypoints above the floor when planted
    flight_height: float = 0.1  # smoothed lowest foot higher than this: airborne
    pin_feet: bool = True
    contacts: ContactSettings = field(default_factory=ContactSettings)

    def __post_init__(self) -> None:
        for name in ("root_window", "root_vertical_window", "body_window", "limb_window", "hand_window"):
            if not getattr(self, name) > 0:
                raise InputError(f"world smoothing: {name} must be > 0 frames, got {getattr(self, name)}")
        if self.depth_sigma <= 0 or self.foot_sigma <= 0:
            raise InputError("world smoothing: depth_sigma and foot_sigma must be > 0")


def _robust_weights(y: np.ndarray, observed: np.ndarray, thr: float) -> np.ndarray:
    """Observation variance factors [N, T] from the robust z-score of each frame against a running median."""
    n, t, _ = y.shape
    out = np.ones((n, t))
    if thr <= 0 or t < 5:
        return out
    for i in range(n):
        idx = np.flatnonzero(observed[i])
        if idx.size < 5:
            continue
        v = y[i, idx]
        med = median_filter(v, size=(7, 1), mode="nearest")
        r = np.linalg.norm(v - med, axis=1)
        mad = np.median(r) * 1.4826 + 1e-6
        z = r / mad
        out[i, idx] = np.where(z > thr, (z / thr) ** 2, 1.0)
    return out


def flight_frames(lowest: np.ndarray, observed: np.ndarray, sole: float, height: float) -> np.ndarray:
    """bool [N, T]: frames where the person is airborne (median-filtered lowest foot above ``height``)."""
    out = np.zeros(lowest.shape, bool)
    for i in range(lowest.shape[0]):
        idx = np.flatnonzero(observed[i])
        if idx.size == 0:
            continue
        med = median_filter(lowest[i, idx], size=5, mode="nearest")
        sm = kalman_smooth(med[None, :, None].astype(np.float32), np.ones((1, idx.size)), 2.0)[0, :, 0]
        out[i, idx] = sm - sole > height
    return out


def correct_along_rays(joints: np.ndarray, root: np.ndarray, ray: np.ndarray, observed: np.ndarray,
                       s: WorldSmoothSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Move each body along its camera ray by the variance-weighted fusion of raw depth and floor contact.

    joints [N, T, K, 3] world; root [N, T, 3] world; ray [N, T, 3]: world vector from the camera
    centre to the root (moving the body by ``(f - 1) * ray`` scales its depth by f). Returns
    corrected joints, root and the flight mask [N, T].
    """
    lowest = joints[:, :, CONTACT_INDEX, 1].min(-1)
    flight = flight_frames(lowest, observed, s.sole, s.flight_height)
    g = ray[..., 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        f_floor = 1.0 + (s.sole - lowest) / g
        var_floor = (s.foot_sigma / g) ** 2
    var_raw = s.depth_sigma ** 2
    usable = observed & ~flight & np.isfinite(f_floor) & (np.abs(g) > 1e-3)
    f_floor = np.where(usable, f_floor, 1.0)
    var_floor = np.where(usable, var_floor, 1.0)
    f = np.where(usable, (f_floor * var_raw + var_floor) / (var_raw + var_floor), 1.0)
    f = np.clip(f, 0.5, 1.5)
    shift = (f - 1.0)[..., None] * ray
    return joints + shift[:, :, None], root + shift, flight


def smooth_world(joints: np.ndarray, root: np.ndarray, observed: np.ndarray, s: WorldSmoothSettings
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Kalman/RTS root (horizontal / vertical spans) and root-relative keypoints (per-joint spans)."""
    n, t, k, _ = joints.shape
    var = np.where(observed, 1.0, np.inf) * _robust_weights(root, observed, s.outlier_threshold)
    root_f = root.astype(np.float32)
    out_root = np.empty_like(root_f)
    out_root[..., [0, 2]] = kalman_smooth(root_f[..., [0, 2]], var, s.root_window)
    out_root[..., [1]] = kalman_smooth(root_f[..., [1]], var, s.root_vertical_window)
    rel = (joints - root[:, :, None]).astype(np.float32)
    windows = joint_windows(k, s.body_window, s.limb_window, s.hand_window)
    out_rel = np.empty_like(rel)
    for w in np.unique(windows):
        sel = np.flatnonzero(windows == w)
        block = rel[:, :, sel].reshape(n, t, -1)
        out_rel[:, :, sel] = kalman_smooth(block, var, float(w)).reshape(n, t, len(sel), 3)
    return out_rel + out_root[:, :, None], out_root


def _segments(c: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) runs of True in a bool series."""
    d = np.diff(np.concatenate([[0], c.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()))


def pin_feet(joints: np.ndarray, root: np.ndarray, contacts: np.ndarray, observed: np.ndarray,
             root_window: float = 1.5, ease: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Pin planted contact points to one horizontal position per contact span; correct root, then feet.

    Returns (joints, root) with the root translation corrected by the smoothed mean pin
    offset and each foot's keypoints moved by its remaining offset (eased out over ``ease``
    frames after a contact ends and before one starts).
    """
    n, t, k, _ = joints.shape
    joints = joints.copy()
    root = root.copy()
    pts = joints[:, :, CONTACT_INDEX]
    target = np.full(pts.shape, np.nan)
    for i in range(n):
        for p in range(len(CONTACT_INDEX)):
            for a, b in _segments(contacts[i, :, p]):
                w = np.where(observed[i, a:b], 1.0, 0.3)
                target[i, a:b, p] = (pts[i, a:b, p] * w[:, None]).sum(0) / w.sum()
    target[..., 1] = pts[..., 1]  # pins act horizontally: heights stay free (take-off, landing)
    delta = np.where(contacts[..., None], target - pts, 0.0)
    has = contacts.any(-1)
    mean_delta = delta.sum(2) / np.maximum(contacts.sum(-1), 1)[..., None]
    var = np.where(has, 1.0, np.inf)
    corr = np.zeros((n, t, 3), np.float32)
    for i in range(n):
        if has[i].any():
            corr[i] = kalman_smooth(mean_delta[i:i + 1].astype(np.float32), var[i:i + 1], root_window)[0]
    joints += corr[:, :, None]
    root += corr
    pts = joints[:, :, CONTACT_INDEX]
    target[..., 1] = pts[..., 1]
    resid = np.nan_to_num(np.where(contacts[..., None], target - pts, np.nan))
    for foot, group in FOOT_GROUPS.items():
        cols = [0, 1] if foot == "left" else [2, 3]
        c = contacts[:, :, cols]
        num = c.sum(-1)
        off = np.where(num[..., None] > 0, resid[:, :, cols].sum(2) / np.maximum(num, 1)[..., None], 0.0)
        active = num > 0
        weight = active.astype(np.float64)
        for i in range(n):  # ease the offset in and out around each contact span
            for a, b in _segments(active[i]):
                for e in range(1, ease + 1):
                    fade = 1.0 - e / (ease + 1)
                    if b - 1 + e < t and not active[i, b - 1 + e]:
                        off[i, b - 1 + e] = np.where(weight[i, b - 1 + e] < fade, off[i, b - 1], off[i, b - 1 + e])
                        weight[i, b - 1 + e] = max(weight[i, b - 1 + e], fade)
                    if a - e >= 0 and not active[i, a - e]:
                        off[i, a - e] = np.where(weight[i, a - e] < fade, off[i, a], off[i, a - e])
                        weight[i, a - e] = max(weight[i, a - e], fade)
        before = joints.copy()
        joints[:, :, group] += (off * weight[..., None])[:, :, None]
        moved = weight > 0
        if moved.any():
            hip, knee, ankle = LEGS[foot]
            joints[:, :, knee] = np.where(moved[..., None], knee_ik(joints[:, :, hip], before[:, :, knee],
                                                                    before[:, :, ankle], joints[:, :, ankle]),
                                          joints[:, :, knee])
    return joints, root


def knee_ik(hip: np.ndarray, knee: np.ndarray, ankle: np.ndarray, new_ankle: np.ndarray) -> np.ndarray:
    """Knee positions [..., 3] that keep the thigh and shin lengths when the ankle moves to ``new_ankle``
    (two-bone IK in the plane of the old bend; the hip stays)."""
    l1 = np.linalg.norm(knee - hip, axis=-1, keepdims=True)
    l2 = np.linalg.norm(ankle - knee, axis=-1, keepdims=True)
    d_vec = new_ankle - hip
    d = np.linalg.norm(d_vec, axis=-1, keepdims=True)
    u = d_vec / np.maximum(d, 1e-9)
    d = np.clip(d, np.abs(l1 - l2) + 1e-6, l1 + l2 - 1e-6)
    a = (l1 ** 2 - l2 ** 2 + d ** 2) / (2 * d)
    h = np.sqrt(np.maximum(l1 ** 2 - a ** 2, 0.0))
    bend = (knee - hip) - ((knee - hip) * u).sum(-1, keepdims=True) * u
    bend /= np.maximum(np.linalg.norm(bend, axis=-1, keepdims=True), 1e-9)
    return hip + a * u + h * bend


def world_smooth(joints: np.ndarray, root: np.ndarray, ray: np.ndarray, observed: np.ndarray, fps: float,
                 settings: WorldSmoothSettings | None = None, timings: dict[str, float] | None = None
                 ) -> dict[str, np.ndarray]:
    """The whole contact-aware world smoother (see module docstring).

    Returns joints [N, T, K, 3], root [N, T, 3], contacts bool [N, T, 4] and flight [N, T];
    ``timings`` (optional) receives the wall seconds of smoothing and of contacts + pinning.
    """
    s = settings or WorldSmoothSettings()
    if joints.ndim != 4 or joints.shape[-1] != 3 or root.shape != joints.shape[:2] + (3,):
        raise InputError(f"world smoothing needs joints [N, T, K, 3] and root [N, T, 3], got "
                         f"{joints.shape} and {root.shape}")
    with timed(timings, "smooth"):
        joints = np.nan_to_num(np.asarray(joints, np.float64))
        root = np.nan_to_num(np.asarray(root, np.float64))
        flight = np.zeros(observed.shape, bool)
        if s.ray_correction and joints.shape[2] > CONTACT_INDEX.max():
            joints, root, flight = correct_along_rays(joints, root, ray, observed, s)
        joints, root = smooth_world(joints, root, observed, s)
    present = np.ones(observed.shape, bool)
    for i in range(observed.shape[0]):
        idx = np.flatnonzero(observed[i])
        present[i] = False
        if idx.size:
            present[i, idx[0]:idx[-1] + 1] = True
    contacts = np.zeros(observed.shape + (len(CONTACT_INDEX),), bool)
    with timed(timings, "contacts"):
        if joints.shape[2] > CONTACT_INDEX.max():
            contacts = detect_contacts(joints, present, fps, s.sole, s.contacts)
            if s.pin_feet:
                joints, root = pin_feet(joints, root, contacts, observed)
    return {"joints": joints, "root": root, "contacts": contacts, "flight": flight, "present": present}
