"""MHR70 keypoint indices the world stage needs (feet, hands, torso).

The layout follows the MHR70 keypoint names published with SAM-3D-Body: 5/6 shoulders,
9/10 hips, 13/14 ankles, 15/16/17 left big toe / small toe / heel, 18/19/20 right big toe /
small toe / heel, 21-41 right hand (41 wrist), 42-62 left hand (62 wrist), 69 neck.
"""

from __future__ import annotations

import numpy as np

NUM_KEYPOINTS = 70
LEFT_HIP, RIGHT_HIP = 9, 10
LEFT_ANKLE, RIGHT_ANKLE = 13, 14
LEFT_SHOULDER, RIGHT_SHOULDER = 5, 6
NECK = 69
RIGHT_WRIST, LEFT_WRIST = 41, 62
# contact points: (foot, part) -> keypoint index
CONTACT_POINTS: dict[tuple[str, str], int] = {
    ("left", "heel"): 17, ("left", "toe"): 15, ("right", "heel"): 20, ("right", "toe"): 18,
}
CONTACT_NAMES = tuple(f"{foot}_{part}" for foot, part in CONTACT_POINTS)
CONTACT_INDEX = np.array(list(CONTACT_POINTS.values()), np.int64)
# keypoints moved with each foot when its contact point is pinned (ankle, toes, heel)
FOOT_GROUPS = {"left": np.array([13, 15, 16, 17]), "right": np.array([14, 18, 19, 20])}
LEGS = {"left": (9, 11, 13), "right": (10, 12, 14)}  # hip, knee, ankle
HAND_KEYPOINTS = np.arange(21, 63)
ARM_KEYPOINTS = np.array([7, 8, 63, 64, 65, 66])
FOOT_KEYPOINTS = np.arange(13, 21)


def joint_windows(num_keypoints: int, body: float, limbs: float, hands: float) -> np.ndarray:
    """Per-keypoint smoothing spans in frames (per-joint process noise: hands and limbs follow fast moves)."""
    w = np.full(num_keypoints, body, np.float64)
    if num_keypoints >= NUM_KEYPOINTS:
        w[ARM_KEYPOINTS] = limbs
        w[FOOT_KEYPOINTS] = limbs
        w[HAND_KEYPOINTS] = hands
    return w
