"""Random weights and a stand-in MHR rig with the official call signature, for tests and benchmarks.

No real weights can be downloaded where the tests run, so these build the same architecture
with random parameters and plausible MHR constants, and a scripted rig that is called exactly
like ``assets/mhr_model.pt``: ``verts [B,V,3], skel_state [B,J,8] = rig(shape[B,45], params[B,204], expr[B,72])``
(centimetres; skel_state = position, quaternion xyzw, scale).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from . import rotations as rot
from .config import Sam3dBodyConfig
from .heads import BODY_CONT
from .model import Sam3dBody

OFFICIAL_YAML = """MODEL:
  IMAGE_SIZE: [512, 512]
  IMAGE_MEAN: [0.485, 0.456, 0.406]
  IMAGE_STD: [0.229, 0.224, 0.225]
  BACKBONE: {TYPE: dinov3_vith16plus, DROP_PATH_RATE: 0.1}
  DECODER: {TYPE: sam, DIM: 1024, DEPTH: 6, HEADS: 8, MLP_DIM: 1024, DIM_HEAD: 64, LAYER_SCALE_INIT: 0.0,
            ENABLE_TWOWAY: false, REPEAT_PE: true, CONDITION_TYPE: cliff, USE_INTRIN_CENTER: true,
            DO_INTERM_PREDS: true, DO_KEYPOINT_TOKENS: true, DO_HAND_DETECT_TOKENS: true,
            KEYPOINT_TOKEN_UPDATE: v2, DO_KEYPOINT3D_TOKENS: true}
  PROMPT_ENCODER: {ENABLE: true, MAX_NUM_CLICKS: 2, PROMPT_KEYPOINTS: mhr70, MASK_EMBED_TYPE: v2, MASK_PROMPT: v1}
  PERSON_HEAD: {POSE_TYPE: mhr, CAMERA_TYPE: perspective}
  MHR_HEAD: {MLP_DEPTH: 2, MLP_CHANNEL_DIV_FACTOR: 1, MHR_MODEL_PATH: ''}
  CAMERA_HEAD: {MLP_DEPTH: 2, MLP_CHANNEL_DIV_FACTOR: 1, DEFAULT_SCALE_FACTOR_HAND: 10}
TRAIN: {USE_FP16: true, FP16_TYPE: bfloat16}
"""


def yaml_for(cfg: Sam3dBodyConfig) -> str:
    """A model_config.yaml describing ``cfg`` (custom backbone sizes), e.g. for the tiny test model."""
    return f"""MODEL:
  IMAGE_SIZE: [{cfg.image_size}, {cfg.image_size}]
  BACKBONE: {{TYPE: custom, EMBED_DIM: {cfg.vit_dim}, DEPTH: {cfg.vit_depth}, NUM_HEADS: {cfg.vit_heads},
             FFN_DIM: {cfg.vit_ffn}, SWIGLU: {str(cfg.vit_swiglu).lower()}}}
  DECODER: {{DIM: {cfg.dec_dim}, DEPTH: {cfg.dec_depth}, HEADS: {cfg.dec_heads}, DIM_HEAD: {cfg.dec_head_dim},
            MLP_DIM: {cfg.dec_mlp}, USE_INTRIN_CENTER: {str(cfg.use_intrin_center).lower()}}}
  PROMPT_ENCODER: {{MASK_EMBED_TYPE: {cfg.mask_embed_type}}}
  MHR_HEAD: {{MLP_DEPTH: {cfg.mhr_mlp_depth}, MLP_CHANNEL_DIV_FACTOR: {cfg.mhr_mlp_div}}}
  CAMERA_HEAD: {{MLP_DEPTH: {cfg.cam_mlp_depth}, MLP_CHANNEL_DIV_FACTOR: {cfg.cam_mlp_div},
                DEFAULT_SCALE_FACTOR_HAND: {cfg.hand_cam_scale}}}
"""


class SyntheticRig(nn.Module):
    """Linear-blend-skinning toy rig: params -> per-joint Euler + offset, pose correctives, rigid skinning."""

    def __init__(self, num_verts: int, num_joints: int, hidden: int = 16, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        v, j = num_verts, num_joints
        self.num_joints = j
        self.base = nn.Parameter(torch.randn(v, 3, generator=g) * 30, requires_grad=False)
        self.shape_basis = nn.Parameter(torch.randn(45, v * 3, generator=g), requires_grad=False)
        self.expr_basis = nn.Parameter(torch.randn(72, v * 3, generator=g) * 0.1, requires_grad=False)
        self.joint_map = nn.Parameter(torch.randn(204, j * 6, generator=g) * 0.05, requires_grad=False)
        self.joint_rest = nn.Parameter(torch.randn(j, 3, generator=g) * 40, requires_grad=False)
        self.corr_in = nn.Parameter(torch.randn(j * 6, hidden, generator=g) * 0.05, requires_grad=False)
        self.corr_out = nn.Parameter(torch.randn(hidden, v * 3, generator=g) * 0.05, requires_grad=False)
        self.register_buffer("vert_joint", torch.arange(v) % j)

    def forward(self, shape: torch.Tensor, params: torch.Tensor, expr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = shape.shape[0]
        jp = (params @ self.joint_map).view(b, self.num_joints, 6)
        e = jp[..., 3:]
        cx, sx = torch.cos(e[..., 0] / 2), torch.sin(e[..., 0] / 2)
        cy, sy = torch.cos(e[..., 1] / 2), torch.sin(e[..., 1] / 2)
        cz, sz = torch.cos(e[..., 2] / 2), torch.sin(e[..., 2] / 2)
        q = torch.stack([sx * cy * cz - cx * sy * sz, cx * sy * cz + sx * cy * sz,
                         cx * cy * sz - sx * sy * cz, cx * cy * cz + sx * sy * sz], -1)
        pos = self.joint_rest[None] + jp[..., :3] * 10
        rest = self.base[None] + (shape @ self.shape_basis + expr @ self.expr_basis).view(b, -1, 3)
        rest = rest + (torch.relu(jp.flatten(1) @ self.corr_in) @ self.corr_out).view(b, -1, 3)
        qv = q[:, self.vert_joint]
        xyz, w = qv[..., :3], qv[..., 3:]
        t = 2 * torch.cross(xyz, rest, dim=-1)
        verts = rest + w * t + torch.cross(xyz, t, dim=-1) + pos[:, self.vert_joint] * 0.1
        skel = torch.cat([pos, q, torch.ones_like(pos[..., :1])], -1)
        return verts, skel


def scripted_rig(cfg: Sam3dBodyConfig, hidden: int = 16, seed: int = 0) -> torch.jit.ScriptModule:
    """A TorchScript SyntheticRig sized like cfg's mesh."""
    return torch.jit.script(SyntheticRig(cfg.num_verts, cfg.num_joints, hidden, seed).eval())


@torch.no_grad()
def randomize(model: Sam3dBody, seed: int = 0) -> Sam3dBody:
    """Random network weights (small head outputs, zero-pose init) and plausible MHR constants."""
    g = torch.Generator().manual_seed(seed)
    gens: dict[torch.device, torch.Generator] = {}
    for name, p in model.named_parameters():
        if p.dtype.is_floating_point and not name.startswith("mhr."):
            dg = gens.setdefault(p.device, torch.Generator(device=p.device).manual_seed(seed))
            p.normal_(0.0, 0.02 if p.ndim > 1 else 0.01, generator=dg)  # on the model's device (fast on GPU)
    for m in model.modules():
        if isinstance(m, nn.LayerNorm) or type(m).__name__ == "LayerNorm2d":
            m.weight.fill_(1.0)
    for blk in model.backbone.encoder.blocks:
        blk.ls1.gamma.fill_(0.1)
        blk.ls2.gamma.fill_(0.1)
    for head in (model.head_pose, model.head_pose_hand):
        _mhr_constants(head, model.cfg, g)
    for init in (model.init_pose, model.init_pose_hand):
        init.weight.zero_()
        init.weight[0, :6] = torch.tensor([1.0, 0, 0, 0, 1, 0])
        init.weight[0, 6:6 + BODY_CONT] = rot.body_params_to_cont(torch.zeros(1, 133))[0]
    for cam in (model.init_camera, model.init_camera_hand):
        cam.weight.copy_(torch.tensor([[-1.0, 0.0, 0.0]]))  # s = 1 after the sign flip
    return model


def _mhr_constants(head: nn.Module, cfg: Sam3dBodyConfig, g: torch.Generator) -> None:
    v, j = cfg.num_verts, cfg.num_joints
    head.joint_rotation.copy_(torch.eye(3).expand(j, 3, 3))
    head.scale_mean.zero_()
    head.scale_comps.zero_()
    head.scale_comps[:, :28] = torch.eye(28) * 0.1
    head.faces.copy_(torch.randint(0, v, (cfg.num_faces, 3), generator=g))
    head.hand_pose_mean.zero_()
    head.hand_pose_comps.copy_(torch.eye(54))
    head.hand_pose_comps_ori.copy_(torch.eye(54))
    head.hand_joint_idxs_left.copy_(torch.arange(68, 95))
    head.hand_joint_idxs_right.copy_(torch.arange(95, 122))
    km = torch.zeros(308, v + j)
    km[torch.arange(308), (torch.arange(308) * 7) % (v + j)] = 1.0
    head.keypoint_mapping.copy_(km)
    head.right_wrist_coords.copy_(torch.randn(3, generator=g) * 0.1)
    head.root_coords.copy_(torch.randn(3, generator=g) * 0.1)
    head.local_to_world_wrist.copy_(torch.eye(3))
    keep = torch.tensor([i for i in range(204) if not 68 <= i < 122])[:145]
    head.nonhand_param_idxs.copy_(keep)


def random_model(cfg: Sam3dBodyConfig, seed: int = 0, rig_hidden: int = 16) -> Sam3dBody:
    """A ready-to-run Sam3dBody with random weights and a scripted synthetic rig."""
    torch.manual_seed(seed)
    model = randomize(Sam3dBody(cfg), seed)
    model.attach_rig(scripted_rig(cfg, rig_hidden, seed))
    return model.eval().requires_grad_(False)


def save_official_layout(model: Sam3dBody, folder: str | Path, yaml_text: str | None = None) -> Path:
    """Write model.ckpt (Lightning-style dict), model_config.yaml (default: describing the model) and
    assets/mhr_model.pt into folder."""
    folder = Path(folder)
    yaml_text = yaml_for(model.cfg) if yaml_text is None else yaml_text
    (folder / "assets").mkdir(parents=True, exist_ok=True)
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("mhr.")}
    torch.save({"state_dict": sd, "epoch": 0, "global_step": 0}, folder / "model.ckpt")
    (folder / "model_config.yaml").write_text(yaml_text)
    if model.mhr is None:
        raise ValueError("model has no rig to save")
    torch.jit.save(model.mhr, str(folder / "assets" / "mhr_model.pt"))
    return folder
