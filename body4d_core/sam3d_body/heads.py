"""Regression heads: MHR parameters (+ the rig call that turns them into a mesh) and the camera."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .. import rotations as rot
from .layers import FFN
from .pose_packing import BODY_HAND_PARAMS, body_cont_to_params, hand_cont_to_params

NUM_SHAPE, NUM_SCALE, NUM_HAND, NUM_FACE, BODY_CONT = 45, 28, 54, 72, 260
NPOSE = 6 + BODY_CONT + NUM_SHAPE + NUM_SCALE + 2 * NUM_HAND + NUM_FACE  # 519


@dataclass
class RigOutput:
    """One MHR evaluation (metres, MHR axes: y up, z towards the viewer)."""

    verts: torch.Tensor  # [B, V, 3]
    keypoints: torch.Tensor  # [B, 308, 3]
    joints: torch.Tensor  # [B, J, 3]
    joint_rots: torch.Tensor  # [B, J, 3, 3] global
    model_params: torch.Tensor  # [B, 204]


class MHRHead(nn.Module):
    """Pose token -> MHR parameters; owns the MHR constants stored in the checkpoint."""

    def __init__(self, dim: int, mlp_depth: int, mlp_div: int, num_verts: int, num_faces: int,
                 num_joints: int, hand_model: bool = False) -> None:
        super().__init__()
        self.hand_model = hand_model
        self.proj = FFN(dim, dim // mlp_div, NPOSE, mlp_depth)
        f = dict(requires_grad=False)
        self.joint_rotation = nn.Parameter(torch.zeros(num_joints, 3, 3), **f)
        self.scale_mean = nn.Parameter(torch.zeros(68), **f)
        self.scale_comps = nn.Parameter(torch.zeros(28, 68), **f)
        self.faces = nn.Parameter(torch.zeros(num_faces, 3, dtype=torch.long), **f)
        self.hand_pose_mean = nn.Parameter(torch.zeros(54), **f)
        self.hand_pose_comps = nn.Parameter(torch.eye(54), **f)
        self.hand_pose_comps_ori = nn.Parameter(torch.eye(54), **f)
        self.hand_joint_idxs_left = nn.Parameter(torch.zeros(27, dtype=torch.long), **f)
        self.hand_joint_idxs_right = nn.Parameter(torch.zeros(27, dtype=torch.long), **f)
        self.keypoint_mapping = nn.Parameter(torch.zeros(308, num_verts + num_joints), **f)
        self.right_wrist_coords = nn.Parameter(torch.zeros(3), **f)
        self.root_coords = nn.Parameter(torch.zeros(3), **f)
        self.local_to_world_wrist = nn.Parameter(torch.zeros(3, 3), **f)
        self.nonhand_param_idxs = nn.Parameter(torch.zeros(145, dtype=torch.long), **f)

    def decode(self, token: torch.Tensor, init: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw regression -> named parameter blocks (Euler global rotation, 133 body params, ...)."""
        pred = self.proj(token).float() + init.float()
        rot6d, cont = pred[:, :6], pred[:, 6:6 + BODY_CONT]
        i = 6 + BODY_CONT
        shape, scale = pred[:, i:i + NUM_SHAPE], pred[:, i + NUM_SHAPE:i + NUM_SHAPE + NUM_SCALE]
        i += NUM_SHAPE + NUM_SCALE
        hand = pred[:, i:i + 2 * NUM_HAND]
        body = body_cont_to_params(cont)
        body[:, list(BODY_HAND_PARAMS)] = 0
        body[:, -3:] = 0
        return {
            "pose_raw": torch.cat([rot6d, cont], 1),
            "global_rot": rot.rotmat_to_euler_ZYX(rot.rot6d_to_rotmat(rot6d)),
            "body_pose": body, "shape": shape, "scale": scale, "hand": hand,
            "face": torch.zeros_like(pred[:, i + 2 * NUM_HAND:]),  # the face output is disabled upstream
        }

    def _hand_params(self, hand: torch.Tensor) -> torch.Tensor:
        full = self.hand_pose_mean + hand @ self.hand_pose_comps
        return hand_cont_to_params(full)

    def model_params(self, global_rot: torch.Tensor, body: torch.Tensor, hand: torch.Tensor,
                     scale: torch.Tensor) -> torch.Tensor:
        """Assemble MHR's 204 model parameters: 10x translation, rotation, body, hands spliced, scales."""
        trans = torch.zeros_like(global_rot)
        if self.hand_model:
            r = rot.euler_xyz_to_rotmat(global_rot) @ self.local_to_world_wrist
            global_rot = rot.rotmat_to_euler_xyz(r)
            r2 = rot.euler_xyz_to_rotmat(global_rot)
            trans = -((r2 @ (self.right_wrist_coords - self.root_coords)[:, None])[..., 0] + self.root_coords)
        pose = torch.cat([trans * 10, global_rot, body[:, :130]], 1)
        left, right = hand.split(NUM_HAND, 1)
        pose[:, self.hand_joint_idxs_left] = self._hand_params(left)
        pose[:, self.hand_joint_idxs_right] = self._hand_params(right)
        params = torch.cat([pose, self.scale_mean + scale @ self.scale_comps], 1)
        if self.hand_model:
            params[:, self.nonhand_param_idxs] = 0
        return params

    def run_rig(self, rig: torch.nn.Module, p: dict[str, torch.Tensor]) -> RigOutput:
        """Evaluate the MHR rig (fp32, autocast off) for parameter blocks ``p``."""
        with torch.autocast(p["shape"].device.type, enabled=False):
            params = self.model_params(p["global_rot"].float(), p["body_pose"].float(), p["hand"].float(),
                                       p["scale"].float())
            verts, skel = rig(p["shape"].float(), params, p["face"].float())
            verts = verts.float() / 100
            joints = skel[..., :3].float() / 100
            quats = skel[..., 3:7].float()
            kps = torch.einsum("kn,bnc->bkc", self.keypoint_mapping.float(), torch.cat([verts, joints], 1))
            if self.hand_model:
                kps = kps.clone()
                kps[:, :21] = 0
                kps[:, 42:] = 0
        return RigOutput(verts, kps, joints, rot.quat_xyzw_to_rotmat(quats), params)


class CameraHead(nn.Module):
    """Pose token -> weak-perspective (s, tx, ty), turned into a full-perspective translation."""

    def __init__(self, dim: int, mlp_depth: int, mlp_div: int, scale_factor: float = 1.0) -> None:
        super().__init__()
        self.scale_factor = scale_factor
        self.proj = FFN(dim, dim // mlp_div, 3, mlp_depth)

    def forward(self, token: torch.Tensor, init: torch.Tensor) -> torch.Tensor:
        return self.proj(token).float() + init.float()

    def cam_t(self, cam: torch.Tensor, box_center: torch.Tensor, box_size: torch.Tensor, K: torch.Tensor,
              img_wh: torch.Tensor, intrin_center: bool) -> torch.Tensor:
        """CLIFF-style translation: tz = 2 f / (box_size * s), (tx, ty) shifted by the box offset."""
        s, tx, ty = -cam[:, 0], cam[:, 1], -cam[:, 2]
        bs = box_size * s * self.scale_factor + 1e-8
        f = K[:, 0, 0]
        centre = K[:, :2, 2] if intrin_center else img_wh / 2
        off = 2 * (box_center - centre) / bs[:, None]
        return torch.stack([tx + off[:, 0], ty + off[:, 1], 2 * f / bs], -1)


CAMERA_FLIP = (1.0, -1.0, -1.0)  # MHR axes (y up, z to the viewer) -> camera axes (y down, z forward)


def camera_geometry(head: MHRHead, rig: torch.nn.Module, p: dict[str, torch.Tensor], num_keypoints: int,
                    with_verts: bool) -> dict[str, torch.Tensor]:
    """Run the rig on parameter blocks p; keypoints, joints (and vertices) in camera axes, metres."""
    out = head.run_rig(rig, p)
    flip = torch.tensor(CAMERA_FLIP, device=out.verts.device)
    geo = {"kp3d": out.keypoints[:, :num_keypoints] * flip, "joints": out.joints * flip,
           "joint_rots": out.joint_rots, "model_params": out.model_params}
    if with_verts:
        geo["verts"] = out.verts * flip
    return geo


def project(points: torch.Tensor, cam_t: torch.Tensor, K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pinhole projection of camera-frame points (+cam_t) -> (pixels [B,N,2], depth [B,N])."""
    p = points + cam_t[:, None]
    y = p / p[..., 2:3]
    uv = torch.einsum("bij,bnj->bni", K, y)[..., :2]
    return uv, p[..., 2]
