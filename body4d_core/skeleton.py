"""MHR70 keypoints -> OpenPose-18 (COCO order) and its 2D drawing (ControlNet style).

The index table follows the MHR70 keypoint names published with SAM-3D-Body
(sam_3d_body/metadata/mhr70.py): 0 nose, 1/2 left/right eye, 3/4 ears, 5/6 shoulders,
7/8 elbows, 9/10 hips, 11/12 knees, 13/14 ankles, 41 right wrist, 62 left wrist, 69 neck.
"""

from __future__ import annotations

import numpy as np

OPENPOSE18_NAMES = (
    "nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
    "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
    "right_eye", "left_eye", "right_ear", "left_ear",
)
# OpenPose-18 slot -> MHR70 index
MHR70_FOR_OPENPOSE18 = np.array([0, 69, 6, 8, 41, 5, 7, 62, 10, 12, 14, 9, 11, 13, 2, 1, 4, 3], np.int64)
# limbs of the OpenPose-18 body, as pairs of OpenPose slots
OPENPOSE18_LIMBS = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12),
    (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)
# the usual OpenPose rainbow, one colour per keypoint / limb (RGB)
OPENPOSE18_COLORS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
    (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
    (170, 0, 255), (255, 0, 255), (255, 0, 85), (255, 0, 170),
)


def mhr70_to_openpose18(keypoints: np.ndarray) -> np.ndarray:
    """Select OpenPose-18 keypoints [..., 18, C] from MHR70 keypoints [..., 70, C]."""
    keypoints = np.asarray(keypoints)
    if keypoints.shape[-2] < 70:
        raise ValueError(f"expected MHR70 keypoints [..., 70, C], got shape {keypoints.shape}")
    return keypoints[..., MHR70_FOR_OPENPOSE18, :]


def draw_openpose(canvas: np.ndarray, keypoints_mhr70: np.ndarray, stick_width: int = 4,
                  radius: int = 4) -> np.ndarray:
    """Draw one person's OpenPose-18 skeleton (from MHR70 pixel keypoints [70, 2]) in place on uint8 RGB."""
    import cv2

    pts = mhr70_to_openpose18(np.asarray(keypoints_mhr70, np.float64)[:, :2])
    h, w = canvas.shape[:2]
    ok = np.isfinite(pts).all(-1) & (pts[:, 0] >= 0) & (pts[:, 0] < w) & (pts[:, 1] >= 0) & (pts[:, 1] < h)
    for k, (a, b) in enumerate(OPENPOSE18_LIMBS):
        if ok[a] and ok[b]:
            cv2.line(canvas, _pt(pts[a]), _pt(pts[b]), tuple(int(c * 0.6) for c in OPENPOSE18_COLORS[k]),
                     thickness=stick_width, lineType=cv2.LINE_AA)
    for k in np.flatnonzero(ok):
        cv2.circle(canvas, _pt(pts[k]), radius, OPENPOSE18_COLORS[k], thickness=-1, lineType=cv2.LINE_AA)
    return canvas


def _pt(p: np.ndarray) -> tuple[int, int]:
    return int(round(float(p[0]))), int(round(float(p[1])))
