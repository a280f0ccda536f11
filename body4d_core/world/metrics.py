"""World-motion metrics against synthetic ground truth (millimetres unless noted)."""

from __future__ import annotations

import numpy as np

from ..rotations import rotation_angle
from .keypoints import CONTACT_INDEX, HAND_KEYPOINTS


def rigid_fit(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotation R and translation t minimising |R src + t - dst| over points [M, 3]."""
    ms, md = src.mean(0), dst.mean(0)
    u, _, vt = np.linalg.svd((dst - md).T @ (src - ms))
    d = np.sign(np.linalg.det(u @ vt))
    R = u @ np.diag([1.0, 1.0, d]) @ vt
    return R, md - R @ ms


def _apply(R: np.ndarray, t: np.ndarray, x: np.ndarray) -> np.ndarray:
    return x @ R.T + t


def world_metrics(est: np.ndarray, gt: np.ndarray, gt_contacts: np.ndarray, fps: float = 30.0,
                  hands: bool = False) -> dict[str, float]:
    """W-MPJPE (first two frames aligned), WA-MPJPE (whole clip aligned), root trajectory error
    (% of the distance travelled, at least 1 m), foot skate, jitter and optionally the hands' error.

    est / gt: [N, T, K, 3] world keypoints; gt_contacts bool [N, T, 4].
    """
    n, t, k, _ = gt.shape
    w, wa, rte, skate, jit, hand = [], [], [], [], [], []
    for i in range(n):
        e, g = est[i], gt[i]
        R, tr = rigid_fit(e[:2].reshape(-1, 3), g[:2].reshape(-1, 3))
        w.append(np.linalg.norm(_apply(R, tr, e) - g, axis=-1).mean())
        R, tr = rigid_fit(e.reshape(-1, 3), g.reshape(-1, 3))
        ea = _apply(R, tr, e)
        wa.append(np.linalg.norm(ea - g, axis=-1).mean())
        root_e, root_g = 0.5 * (ea[:, 9] + ea[:, 10]), 0.5 * (g[:, 9] + g[:, 10])
        dist = max(1.0, float(np.linalg.norm(np.diff(root_g[:, [0, 2]], axis=0), axis=1).sum()))
        rte.append(np.linalg.norm(root_e - root_g, axis=-1).mean() / dist * 100.0)
        pts = ea[:, CONTACT_INDEX]
        both = gt_contacts[i, 1:] & gt_contacts[i, :-1]
        mv = np.linalg.norm(np.diff(pts[..., [0, 2]], axis=0), axis=-1)
        if both.any():
            skate.append(mv[both].mean())
        jit.append(np.linalg.norm(e[2:] - 2 * e[1:-1] + e[:-2], axis=-1).mean())
        if hands:
            hand.append(np.linalg.norm(ea[:, HAND_KEYPOINTS] - g[:, HAND_KEYPOINTS], axis=-1).mean())
    out = {"W-MPJPE": 1000 * np.mean(w), "WA-MPJPE": 1000 * np.mean(wa), "RTE%": float(np.mean(rte)),
           "skate": 1000 * float(np.mean(skate)) if skate else float("nan"), "jitter": 1000 * float(np.mean(jit))}
    if hands:
        out["hands"] = 1000 * float(np.mean(hand))
    return out


def camera_metrics(est_R: np.ndarray, est_p: np.ndarray, gt_R: np.ndarray, gt_p: np.ndarray) -> dict[str, float]:
    """Mean rotation error (degrees) and translation error (% of the true path, at least 0.1 m) of
    camera poses relative to the first frame (world-from-camera rotations [T, 3, 3], centres [T, 3])."""
    rel_e = np.einsum("ji,tjk->tik", est_R[0], est_R)
    rel_g = np.einsum("ji,tjk->tik", gt_R[0], gt_R)
    ang = np.degrees(rotation_angle(np.swapaxes(rel_e, 1, 2), np.swapaxes(rel_g, 1, 2)))  # angle of rel_e^T rel_g
    pe = (est_p - est_p[0]) @ est_R[0]
    pg = (gt_p - gt_p[0]) @ gt_R[0]
    path = float(np.linalg.norm(np.diff(gt_p, axis=0), axis=1).sum())
    err = float(np.linalg.norm(pe - pg, axis=1).mean())
    return {"cam_rot_deg": float(ang.mean()), "cam_trans%": err / max(path, 0.1) * 100, "cam_trans_mm": 1000 * err,
            "cam_path_m": path}


def floor_metrics(normal_c0: np.ndarray, height_c0: float, gt_R0: np.ndarray, gt_c0: np.ndarray) -> dict[str, float]:
    """Floor normal angle error (degrees) and camera-height error (mm) in the first camera's axes."""
    up_c0 = gt_R0.T @ np.array([0.0, 1.0, 0.0])
    ang = float(np.degrees(np.arccos(np.clip(normal_c0 @ up_c0, -1, 1))))
    return {"floor_deg": ang, "floor_mm": 1000 * abs(float(height_c0) - float(gt_c0[1]))}
