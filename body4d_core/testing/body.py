"""Random SAM-3D-Body weights, random MHR rig tensors and a stand-in rig with the official call signature, for tests and benchmarks.

No real weights can be downloaded where the tests run, so these build the same architecture
with random parameters and plausible MHR constants, and a native MHR rig (random tensors in the
real rig's layout, saved as a TorchScript file laid out like ``assets/mhr_model.pt``), called
``verts [B,V,3], skel_state [B,J,8] = rig(shape[B,45], params[B,204], expr[B,72])``
(centimetres; skel_state = position, quaternion xyzw, scale).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from ..sam3d_body.config import Sam3dBodyConfig
from ..sam3d_body.heads import BODY_CONT
from ..sam3d_body.pose_packing import body_params_to_cont
from ..rotations import euler_xyz_to_quat as euler_xyz_quat
from ..rotations import euler_xyz_to_rot6d_delta as rotation_6d_features
from ..rotations import quat_mul as _quat_mul
from ..rotations import quat_rotate as _quat_rotate
from ..sam3d_body.mhr_rig import CORRECTIVE_SKIP, MhrRig, _depth_schedule, _run_schedule, compose, invert
from ..sam3d_body.model import Sam3dBody

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


class _Buffers(nn.Module):
    """One node of the MHR asset's module tree: the given tensors as buffers."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        super().__init__()
        for name, value in tensors.items():
            self.register_buffer(name, value.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x  # holds tensors only (TorchScript needs a forward on every submodule)


class MhrAssetLayout(nn.Module):
    """Rig tensors in the module tree of the TorchScript ``mhr_model.pt``, with a forward of the same call.

    The forward (MHR math written against that layout: sparse correctives, the file's FK prefix
    schedule) exists so a saved file can be run the old way, by ``torch.jit.load``, as a reference.
    """

    def __init__(self, t: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.character_torch = _Buffers({})
        self.character_torch.blend_shape = _Buffers({"base_shape": t["base_shape"],
                                                     "shape_vectors": t["identity_basis"]})
        self.character_torch.parameter_transform = _Buffers({"parameter_transform": t["param_transform"]})
        skeleton = _Buffers({"joint_translation_offsets": t["skel_joint_translation_offsets"],
                             "joint_prerotations": t["skel_joint_prerotations"],
                             "joint_parents": t["skel_joint_parents"].int(), "pmi": t["skel_pmi"].long()})
        skeleton._pmi_buffer_sizes = [int(x) for x in t["skel_pmi_buffer_sizes"].tolist()]
        self.character_torch.skeleton = skeleton
        self.character_torch.linear_blend_skinning = _Buffers({
            "inverse_bind_pose": t["lbs_inverse_bind_pose"], "skin_weights_flattened": t["lbs_skin_weights"],
            "skin_indices_flattened": t["lbs_skin_indices"].int(), "vert_indices_flattened": t["lbs_vert_indices"].long()})
        self.face_expressions_model = _Buffers({"shape_vectors": t["expr_basis"]})
        self.pose_correctives_model = _Buffers({})
        self.pose_correctives_model.pose_dirs_predictor = nn.Sequential(
            _Buffers({"sparse_indices": t["pose_corr_sparse_indices"].long(),
                      "sparse_weight": t["pose_corr_sparse_weight"]}),
            nn.ReLU(), _Buffers({"weight": t["pose_corr_weight"]}))
        self.hidden = int(t["pose_corr_weight"].shape[1])

    def forward(self, shape: torch.Tensor, model_params: torch.Tensor,
                expr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ct = self.character_torch
        b = shape.shape[0]
        pt = ct.parameter_transform.parameter_transform
        padded = torch.cat([model_params, torch.zeros(b, pt.shape[1] - model_params.shape[1])], 1)
        j = ct.skeleton.joint_translation_offsets.shape[0]
        jp = (padded @ pt.t()).view(b, j, 7)
        q = _quat_mul(ct.skeleton.joint_prerotations.expand(b, -1, -1), euler_xyz_quat(jp[..., 3:6]))
        g = torch.cat([jp[..., :3] + ct.skeleton.joint_translation_offsets, q, torch.exp2(jp[..., 6:7])], -1).double()
        start = 0
        for size in ct.skeleton._pmi_buffer_sizes:
            c = ct.skeleton.pmi[0, start:start + size]
            p = ct.skeleton.pmi[1, start:start + size]
            g = g.index_copy(1, c, compose(g.index_select(1, p), g.index_select(1, c)))
            start += size
        skel = g.float()
        sparse = self.pose_correctives_model.pose_dirs_predictor[0]
        dense = self.pose_correctives_model.pose_dirs_predictor[2]
        feats = rotation_6d_features(jp[:, 2:, 3:6]).flatten(1)
        idx = sparse.sparse_indices
        hidden = torch.zeros(b, self.hidden).index_add(1, idx[0], feats[:, idx[1]] * sparse.sparse_weight)
        corr = (torch.relu(hidden) @ dense.weight.t()).view(b, -1, 3)
        rest = (ct.blend_shape.base_shape + torch.einsum("bn,nvc->bvc", shape, ct.blend_shape.shape_vectors)
                + torch.einsum("bn,nvc->bvc", expr, self.face_expressions_model.shape_vectors) + corr)
        lbs = ct.linear_blend_skinning
        xf = compose(skel, lbs.inverse_bind_pose.expand(b, -1, -1))
        joints = lbs.skin_indices_flattened.long()
        verts = lbs.vert_indices_flattened
        per = xf.index_select(1, joints)
        qn = per[..., 3:7] / per[..., 3:7].norm(p=2, dim=-1, keepdim=True)
        moved = per[..., :3] + _quat_rotate(qn, per[..., 7:8] * rest.index_select(1, verts))
        out = torch.zeros_like(rest).index_add(1, verts, moved * lbs.skin_weights_flattened[:, None])
        return out, skel


def save_mhr_asset(tensors: dict[str, torch.Tensor], path: str | Path) -> Path:
    """Write rig tensors as a TorchScript file laid out like ``assets/mhr_model.pt`` (tests, benchmarks)."""
    import warnings

    with warnings.catch_warnings():  # torch.jit.script's deprecation notice: writing test assets only
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.jit")
        scripted = torch.jit.script(MhrAssetLayout(tensors).eval())
        torch.jit.save(scripted, str(path))
    return Path(path)


def rig_file_tensors(rig: MhrRig) -> dict[str, torch.Tensor]:
    """The file-layout tensors of a native rig (for writing it back; duplicate sparse entries are merged)."""
    first_parent: dict[int, int] = {}
    for c, p in zip(rig.fk_joints.tolist(), rig.fk_parents.tolist()):
        first_parent.setdefault(int(c), int(p))
    parents = torch.tensor([first_parent.get(j, -1) for j in range(rig.num_joints)], dtype=torch.int32)
    nz = rig.corr_in.nonzero().t().contiguous()
    return {
        "base_shape": rig.base_shape, "identity_basis": rig.identity_basis, "expr_basis": rig.expr_basis,
        "param_transform": rig.param_transform, "skel_joint_translation_offsets": rig.joint_offsets,
        "skel_joint_prerotations": rig.prerotations, "skel_joint_parents": parents,
        "skel_pmi": torch.stack([rig.fk_joints, rig.fk_parents]),
        "skel_pmi_buffer_sizes": torch.tensor(rig.level_sizes, dtype=torch.int64),
        "lbs_inverse_bind_pose": rig.inverse_bind_pose, "lbs_skin_weights": rig.skin_weights,
        "lbs_skin_indices": rig.skin_joints.int(), "lbs_vert_indices": rig.skin_verts,
        "pose_corr_sparse_indices": nz, "pose_corr_sparse_weight": rig.corr_in[nz[0], nz[1]],
        "pose_corr_sparse_shape": torch.tensor(list(rig.corr_in.shape), dtype=torch.int64),
        "pose_corr_weight": rig.corr_out,
    }


def synthetic_rig(cfg: Sam3dBodyConfig, hidden: int = 16, seed: int = 0) -> MhrRig:
    """A native MHR rig with random plausible tensors sized like cfg's mesh."""
    return MhrRig(random_rig_tensors(cfg.num_verts, cfg.num_joints, hidden=hidden, seed=seed)).eval().requires_grad_(False)


def scripted_rig(cfg: Sam3dBodyConfig, hidden: int = 16, seed: int = 0) -> torch.jit.ScriptModule:
    """synthetic_rig scripted (for benchmarks that hand a TorchScript rig to the upstream code)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        return torch.jit.script(synthetic_rig(cfg, hidden, seed))


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
        init.weight[0, 6:6 + BODY_CONT] = body_params_to_cont(torch.zeros(1, 133))[0]
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
    model.attach_rig(synthetic_rig(cfg, rig_hidden, seed))
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
    if not isinstance(model.mhr, MhrRig):
        raise ValueError("model has no native MHR rig to save")
    save_mhr_asset(rig_file_tensors(model.mhr), folder / "assets" / "mhr_model.pt")
    return folder


def _jump_schedule(parents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A log-depth prefix schedule (pointer jumping): level k pairs each joint with its 2^k-th ancestor."""
    par = [int(p) for p in parents.tolist()]
    n = len(par)
    anc = [p if 0 <= p < n and p != j else -1 for j, p in enumerate(par)]  # ancestor at distance 2^k
    pairs, sizes = [], []
    while any(a >= 0 for a in anc):
        level = [(j, a) for j, a in enumerate(anc) if a >= 0]
        pairs += level
        sizes.append(len(level))
        anc = [anc[a] if a >= 0 else -1 for a in anc]
    pmi = torch.tensor(pairs, dtype=torch.int64).t() if pairs else torch.zeros(2, 0, dtype=torch.int64)
    return pmi.contiguous(), torch.tensor(sizes, dtype=torch.int64)


def random_rig_tensors(num_verts: int, num_joints: int, num_params: int = 204, num_shape: int = 45,
                       num_expr: int = 72, hidden: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    """Plausible random MHR rig tensors in the file layout (for tests and benchmarks; no real data).

    A random tree skeleton, unit prerotations, a small parameter transform, inverse bind poses that
    make the zero pose reproduce the rest mesh, two skinning influences per vertex and sparse
    correctives; ``skel_pmi`` lists (child, parent) pairs level by level, as the file does.
    """
    g = torch.Generator().manual_seed(seed)
    v, j = num_verts, num_joints
    parents = torch.tensor([-1] + [int(torch.randint(0, i, (1,), generator=g)) for i in range(1, j)], dtype=torch.int32)
    pre = torch.randn(j, 4, generator=g)
    pre = pre / pre.norm(p=2, dim=-1, keepdim=True)
    offsets = torch.randn(j, 3, generator=g) * 10
    rest_local = torch.cat([offsets, pre, torch.ones(j, 1)], -1)
    rest_global = _run_schedule(rest_local[None].double(), *_depth_schedule(parents.long()))[0]
    pmi, pmi_sizes = _jump_schedule(parents.long())
    trip_v = torch.arange(v).repeat_interleave(2)
    trip_j = torch.randint(0, j, (2 * v,), generator=g, dtype=torch.int32)
    w = torch.rand(v, 2, generator=g) + 0.1
    feats = 6 * (j - CORRECTIVE_SKIP)
    nnz = max(1, feats * hidden // 4)
    return {
        "base_shape": torch.randn(v, 3, generator=g) * 30,
        "identity_basis": torch.randn(num_shape, v, 3, generator=g),
        "expr_basis": torch.randn(num_expr, v, 3, generator=g) * 0.1,
        "param_transform": torch.randn(7 * j, num_params + num_shape, generator=g) * 0.05,
        "skel_joint_translation_offsets": offsets,
        "skel_joint_prerotations": pre,
        "skel_joint_parents": parents,
        "skel_pmi": pmi.long(),
        "skel_pmi_buffer_sizes": pmi_sizes,
        "lbs_inverse_bind_pose": invert(rest_global).float(),
        "lbs_skin_weights": (w / w.sum(1, keepdim=True)).flatten(),
        "lbs_skin_indices": trip_j,
        "lbs_vert_indices": trip_v,
        "pose_corr_sparse_indices": torch.stack([torch.randint(0, hidden, (nnz,), generator=g),
                                                 torch.randint(0, feats, (nnz,), generator=g)]),
        "pose_corr_sparse_weight": torch.randn(nnz, generator=g) * 0.5,
        "pose_corr_sparse_shape": torch.tensor([hidden, feats], dtype=torch.int64),
        "pose_corr_weight": torch.randn(3 * v, hidden, generator=g) * 0.5,
    }
