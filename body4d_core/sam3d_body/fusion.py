"""'Full' mode: refine hands with the hand decoder and merge them into the body estimate.

Follows the official SAM-3D-Body procedure: hand boxes from the body decoder, left hand run on
the mirrored image, four validity tests per hand, a keypoint-prompted second body pass
(wrists from the hand decoder, elbows from the body), then hand pose / scale / shape spliced in
and the wrist rotation solved from the hand's global wrist orientation.
"""

from __future__ import annotations

import torch

from .. import rotations as rot
from .model import CropBatch, Sam3dBody
from .pose_packing import fix_wrist_euler

WRIST_BODY_PARAMS = [41, 43, 42, 31, 33, 32]  # left then right wrist X, Z, Y entries of body_pose
LOWARM_JOINTS, WRIST_JOINTS = [76, 40], [77, 41]  # (left, right) MHR joint indices
L_WRIST_JOINT, R_WRIST_JOINT = 78, 42
KP_R_WRIST, KP_L_WRIST, KP_R_ELBOW, KP_L_ELBOW = 41, 62, 8, 7
HAND_MIN_PX = 64.0
WRIST_ANGLE_MAX = 1.4


def hand_boxes(p: dict[str, torch.Tensor], batch: CropBatch, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left and right hand xyxy boxes in full-image pixels from the body decoder's hand tokens."""
    hb = p["hand_box"].float() * size  # [B, 2, 4] centre x, y, w, h in crop pixels
    a = batch.affine
    s = a[:, 0, 0][:, None]
    centre = (hb[..., :2] - a[:, None, :, 2]) / s[..., None]
    half = hb[..., 2:].amax(-1) / s / 2
    boxes = torch.cat([centre - half[..., None], centre + half[..., None]], -1)
    return boxes[:, 0], boxes[:, 1]


def mirror_boxes(boxes: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """xyxy boxes in the horizontally mirrored image (x -> W - 1 - x)."""
    return torch.stack([width - boxes[:, 2] - 1, boxes[:, 1], width - boxes[:, 0] - 1, boxes[:, 3]], -1)


def unmirror_left(model: Sam3dBody, pl: dict[str, torch.Tensor]) -> None:
    """Turn the mirrored left-hand run into left-hand values (in place), as upstream does."""
    hp = model.head_pose
    r_mean, l_mean = hp.scale_mean[8], hp.scale_mean[9]
    r_std, l_std = hp.scale_comps[8, 8], hp.scale_comps[9, 9]
    pl["scale"] = pl["scale"].clone()
    pl["scale"][:, 9] = ((r_mean + r_std * pl["scale"][:, 8]) - l_mean) / l_std
    jr = pl["joint_rots"].clone()
    jr[:, L_WRIST_JOINT] = jr[:, R_WRIST_JOINT]
    jr[:, L_WRIST_JOINT, 1:3, :] *= -1
    pl["joint_rots"] = jr
    pl["hand"] = pl["hand"].clone()
    pl["hand"][:, :54] = pl["hand"][:, 54:]


def _local_wrists(model: Sam3dBody, joint_rots: torch.Tensor, pl: dict, pr: dict) -> torch.Tensor:
    """Local wrist rotations [B, 2, 3, 3] that put the wrists at the hand decoder's orientation."""
    zero = joint_rots[:, LOWARM_JOINTS] @ model.head_pose.joint_rotation[WRIST_JOINTS].float()
    glob = torch.stack([pl["joint_rots"][:, L_WRIST_JOINT], pr["joint_rots"][:, R_WRIST_JOINT]], 1)
    return zero.transpose(-1, -2) @ glob


def hand_validity(model: Sam3dBody, body: dict, pl: dict, pr: dict, l_side: torch.Tensor, r_side: torch.Tensor,
                  width: torch.Tensor, ori_wrist: torch.Tensor) -> torch.Tensor:
    """[B, 2] (left, right): wrist angle, hand size, keypoints inside the crop, wrist agreement."""
    fused = _local_wrists(model, body["joint_rots"], pl, pr)
    angle_ok = rot.rotation_angle(ori_wrist, fused) < WRIST_ANGLE_MAX
    size_ok = torch.stack([l_side > HAND_MIN_PX, r_side > HAND_MIN_PX], 1)
    inside = torch.stack([pl["kp2d_crop"].abs().amax((1, 2)) < 0.5, pr["kp2d_crop"].abs().amax((1, 2)) < 0.5], 1)
    r_kp = pr["kp2d"][:, KP_R_WRIST]
    l_kp = pl["kp2d"][:, KP_R_WRIST].clone()
    l_kp[:, 0] = width - l_kp[:, 0] - 1
    # upstream divides the right-wrist distance by the left crop size and vice versa; kept as is
    r_dist = (r_kp - body["kp2d"][:, KP_R_WRIST]).norm(dim=-1) / l_side
    l_dist = (l_kp - body["kp2d"][:, KP_L_WRIST]).norm(dim=-1) / r_side
    wrist_ok = torch.stack([l_dist < 0.25, r_dist < 0.25], 1)
    return angle_ok & size_ok & inside & wrist_ok


def wrist_prompts(model: Sam3dBody, body: dict, pl: dict, pr: dict, batch: CropBatch, width: torch.Tensor,
                  valid: torch.Tensor) -> torch.Tensor:
    """[B, 4, 3] keypoint prompts (right/left wrist from the hands, right/left elbow from the body)."""
    l_kp = pl["kp2d"][:, KP_R_WRIST].clone()
    l_kp[:, 0] = width - l_kp[:, 0] - 1
    pts = torch.stack([pr["kp2d"][:, KP_R_WRIST], l_kp, body["kp2d"][:, KP_R_ELBOW], body["kp2d"][:, KP_L_ELBOW]], 1)
    crop = model.full_to_crop(pts, batch)
    labels = torch.tensor([KP_R_WRIST, KP_L_WRIST, KP_R_ELBOW, KP_L_ELBOW], dtype=crop.dtype, device=crop.device)
    bad = (crop.abs() > 0.5).any(-1) | ~valid[:, [1, 0, 1, 0]]
    prompt = torch.cat([(crop + 0.5).clamp(0, 1), labels[None, :, None].expand(crop.shape[0], -1, -1)], -1)
    dummy = torch.tensor([0.0, 0.0, -2.0], dtype=crop.dtype, device=crop.device)
    return torch.where(bad[..., None], dummy, prompt)


def merge_hands(model: Sam3dBody, body: dict, pl: dict, pr: dict, valid: torch.Tensor,
                ori_wrist: torch.Tensor) -> dict[str, torch.Tensor]:
    """Splice hand pose / scale / shape and the solved wrist rotations into ``body`` (a new dict)."""
    p = dict(body)
    new_hand = torch.cat([pl["hand"][:, :54], pr["hand"][:, 54:]], 1)
    new_scale = p["scale"].clone()
    new_scale[:, 9], new_scale[:, 8] = pl["scale"][:, 9], pr["scale"][:, 8]
    new_scale[:, 18:] = (pl["scale"][:, 18:] + pr["scale"][:, 18:]) / 2
    new_shape = p["shape"].clone()
    new_shape[:, 40:] = (pl["shape"][:, 40:] + pr["shape"][:, 40:]) / 2
    probe = dict(p, hand=new_hand, scale=new_scale, shape=new_shape)
    joint_rots = model.head_pose.run_rig(model.mhr, probe).joint_rots
    fused = _local_wrists(model, joint_rots, pl, pr)
    wrist = fix_wrist_euler(rot.rotmat_to_euler_XZY(fused))
    ok = ((rot.rotation_angle(ori_wrist, fused) < WRIST_ANGLE_MAX) & valid)[..., None]
    body_pose = p["body_pose"].clone()
    cur = body_pose[:, WRIST_BODY_PARAMS].unflatten(1, (2, 3))
    body_pose[:, WRIST_BODY_PARAMS] = torch.where(ok, wrist, cur).flatten(1)
    p["body_pose"] = body_pose
    p["hand"] = torch.where(ok, new_hand.unflatten(1, (2, 54)), p["hand"].unflatten(1, (2, 54))).flatten(1)
    scale = p["scale"].clone()
    scale[:, 9] = torch.where(ok[:, 0, 0], new_scale[:, 9], scale[:, 9])
    scale[:, 8] = torch.where(ok[:, 1, 0], new_scale[:, 8], scale[:, 8])
    k = ok[..., 0].float()
    any_ok = k.sum(1, keepdim=True) > 0
    denom = k.sum(1, keepdim=True) + 1e-8
    scale[:, 18:] = torch.where(any_ok, (pl["scale"][:, 18:] * k[:, :1] + pr["scale"][:, 18:] * k[:, 1:]) / denom,
                                scale[:, 18:])
    shape = p["shape"].clone()
    shape[:, 40:] = torch.where(any_ok, (pl["shape"][:, 40:] * k[:, :1] + pr["shape"][:, 40:] * k[:, 1:]) / denom,
                                shape[:, 40:])
    p["scale"], p["shape"] = scale, shape
    return p
