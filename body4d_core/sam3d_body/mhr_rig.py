"""A native MHR body rig built from plain tensors (no TorchScript), as ComfyUI core's safetensors carry it.

ComfyUI core's repack of SAM-3D-Body (``models/detection/sam_3d_body_dinov3_bf16.safetensors``)
stores the MHR rig as 17 ``mhr.*`` tensors instead of the TorchScript ``assets/mhr_model.pt``.
``MhrRig`` evaluates them with the same call signature as the TorchScript asset:
``verts [B,V,3], skel_state [B,J,8] = rig(shape[B,45], model_params[B,204], expr[B,72])`` in
centimetres, ``skel_state`` = joint position (3), quaternion xyzw (4), uniform scale (1).

Model (from the published MHR/momentum formulation): joint parameters are a linear map of the
model parameters (7 per joint: translation, XYZ Euler angles, log2 scale); local joint transforms
compose down the skeleton (parent before child, float64 like the reference); the rest mesh is the
identity blend shape plus expression blend shape plus pose correctives (a sparse linear layer, ReLU,
a dense linear layer, fed with the 6D rotation features of every joint but the first two); vertices
are linear-blend skinned with the joints' transforms times their inverse bind poses.
"""

from __future__ import annotations

import logging
from typing import Dict, List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import WeightsMismatchError
from ..rotations import euler_xyz_to_quat, euler_xyz_to_rot6d_delta, quat_conjugate, quat_mul, quat_rotate

log = logging.getLogger(__name__)

# name inside the file (after the ``mhr.`` prefix) -> (rank, integer?)
RIG_TENSORS: Dict[str, Tuple[int, bool]] = {
    "base_shape": (2, False),
    "identity_basis": (3, False),
    "expr_basis": (3, False),
    "param_transform": (2, False),
    "skel_joint_translation_offsets": (2, False),
    "skel_joint_prerotations": (2, False),
    "skel_joint_parents": (1, True),
    "skel_pmi": (2, True),
    "skel_pmi_buffer_sizes": (1, True),
    "lbs_inverse_bind_pose": (2, False),
    "lbs_skin_weights": (1, False),
    "lbs_skin_indices": (1, True),
    "lbs_vert_indices": (1, True),
    "pose_corr_sparse_indices": (2, True),
    "pose_corr_sparse_weight": (1, False),
    "pose_corr_sparse_shape": (1, True),
    "pose_corr_weight": (2, False),
}
CORRECTIVE_SKIP = 2  # pose correctives read every joint's rotation except the first two


def compose(parent: torch.Tensor, child: torch.Tensor) -> torch.Tensor:
    """Skeleton-state product parent * child of [..., 8] (t, q xyzw, s) transforms (quaternions renormalised)."""
    qp = parent[..., 3:7] / parent[..., 3:7].norm(p=2, dim=-1, keepdim=True).clamp_min(1e-12)
    qc = child[..., 3:7] / child[..., 3:7].norm(p=2, dim=-1, keepdim=True).clamp_min(1e-12)
    sp = parent[..., 7:8]
    t = parent[..., :3] + sp * quat_rotate(qp, child[..., :3])
    return torch.cat([t, quat_mul(qp, qc), sp * child[..., 7:8]], -1)


def fk_levels(parents: torch.Tensor) -> List[torch.Tensor]:
    """Joints grouped by depth (roots excluded), each group's parents already resolved by earlier groups."""
    par = [int(p) for p in parents.tolist()]
    n = len(par)
    depth = [-1] * n
    for j in range(n):
        chain, k = [], j
        while depth[k] < 0 and 0 <= par[k] < n and par[k] != k:
            chain.append(k)
            k = par[k]
            if len(chain) > n:
                raise WeightsMismatchError("mhr.skel_joint_parents has a cycle; the rig tensors are corrupt")
        base = depth[k] if depth[k] >= 0 else 0
        depth[k] = base
        for i, c in enumerate(reversed(chain)):
            depth[c] = base + i + 1
    return [torch.tensor([j for j in range(n) if depth[j] == d], dtype=torch.long)
            for d in range(1, max(depth, default=0) + 1)]


def _depth_schedule(parents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """(children, parents, level sizes): one level per skeleton depth."""
    levels = fk_levels(parents)
    order = torch.cat(levels) if levels else torch.zeros(0, dtype=torch.long)
    return order, parents[order], [int(x.numel()) for x in levels]


def _run_schedule(local: torch.Tensor, children: torch.Tensor, targets: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Apply g[child] = g[target] * g[child] level by level (all reads of a level before its writes)."""
    g = local  # index_copy is out of place: ``local`` is never written
    start = 0
    for size in sizes:
        c, t = children[start:start + size], targets[start:start + size]
        g = g.index_copy(1, c, compose(g.index_select(1, t), g.index_select(1, c)))
        start += size
    return g


def fk_schedule(parents: torch.Tensor, pmi: torch.Tensor, pmi_sizes: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """The file's prefix-multiplication schedule (few levels) if it reproduces parent-chain FK, else depth levels.

    ``skel_pmi`` [2, N] holds (child, target) pairs split into levels by ``skel_pmi_buffer_sizes``; it is
    checked here against forward kinematics along ``skel_joint_parents`` on random transforms.
    """
    depth = _depth_schedule(parents)
    sizes = [int(x) for x in pmi_sizes.tolist()]
    n = parents.numel()
    pmi = pmi.long()
    if (pmi.ndim != 2 or pmi.shape[0] != 2 or sum(sizes) != pmi.shape[1] or min(sizes, default=0) < 0
            or (pmi.numel() and (pmi.min() < 0 or pmi.max() >= n))):
        log.warning("mhr.skel_pmi is malformed; using per-depth forward kinematics")
        return depth
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, n, 4, generator=g, dtype=torch.float64)
    local = torch.cat([torch.randn(2, n, 3, generator=g, dtype=torch.float64), q / q.norm(p=2, dim=-1, keepdim=True),
                       torch.rand(2, n, 1, generator=g, dtype=torch.float64) + 0.5], -1)
    want = _run_schedule(local, *depth)
    got = _run_schedule(local, pmi[0], pmi[1], sizes)
    if not torch.allclose(got, want, rtol=1e-9, atol=1e-9):
        log.warning("mhr.skel_pmi does not reproduce the skeleton's forward kinematics; using per-depth levels")
        return depth
    return pmi[0].contiguous(), pmi[1].contiguous(), sizes


def _shape_errors(t: Dict[str, torch.Tensor]) -> List[str]:
    """Consistency problems between the rig tensors' shapes (empty list when consistent)."""
    v = t["base_shape"].shape[0]
    j = t["skel_joint_parents"].shape[0]
    n_trip = t["lbs_skin_weights"].shape[0]
    want = {
        "base_shape": (v, 3), "identity_basis": (t["identity_basis"].shape[0], v, 3),
        "expr_basis": (t["expr_basis"].shape[0], v, 3),
        "param_transform": (7 * j, t["param_transform"].shape[1]),
        "skel_joint_translation_offsets": (j, 3), "skel_joint_prerotations": (j, 4),
        "lbs_inverse_bind_pose": (j, 8), "lbs_skin_indices": (n_trip,), "lbs_vert_indices": (n_trip,),
        "pose_corr_sparse_indices": (2, t["pose_corr_sparse_weight"].shape[0]), "pose_corr_sparse_shape": (2,),
        "pose_corr_weight": (3 * v, t["pose_corr_weight"].shape[1]),
    }
    errs = [f"mhr.{k} {tuple(t[k].shape)} (expected {w})" for k, w in want.items() if tuple(t[k].shape) != w]
    if not errs:
        hidden, feats = (int(x) for x in t["pose_corr_sparse_shape"].tolist())
        if feats != 6 * (j - CORRECTIVE_SKIP) or hidden != t["pose_corr_weight"].shape[1]:
            errs.append(f"mhr.pose_corr_sparse_shape {(hidden, feats)} (expected ({t['pose_corr_weight'].shape[1]}, "
                        f"{6 * (j - CORRECTIVE_SKIP)}))")
    return errs


class MhrRig(nn.Module):
    """MHR rig from tensors; forward(shape, model_params, expr) -> (verts cm [B,V,3], skel_state [B,J,8])."""

    def __init__(self, tensors: Dict[str, torch.Tensor]) -> None:
        super().__init__()
        missing = [f"mhr.{k}" for k in RIG_TENSORS if k not in tensors]
        if missing:
            raise WeightsMismatchError(f"the MHR rig is incomplete: missing {', '.join(missing)}")
        bad_rank = [f"mhr.{k} {tuple(tensors[k].shape)}" for k, (rank, _) in RIG_TENSORS.items()
                    if tensors[k].ndim != rank]
        errs = bad_rank or _shape_errors(tensors)
        if errs:
            raise WeightsMismatchError(f"the MHR rig tensors do not fit together: {'; '.join(errs)}")
        f32 = {k: tensors[k].detach().float() for k, (_, integer) in RIG_TENSORS.items() if not integer}
        for name in ("base_shape", "identity_basis", "expr_basis", "param_transform"):
            self.register_buffer(name, f32[name])
        self.register_buffer("joint_offsets", f32["skel_joint_translation_offsets"])
        self.register_buffer("prerotations", f32["skel_joint_prerotations"])
        self.register_buffer("inverse_bind_pose", f32["lbs_inverse_bind_pose"])
        self.register_buffer("skin_weights", f32["lbs_skin_weights"])
        self.register_buffer("skin_joints", tensors["lbs_skin_indices"].long())
        self.register_buffer("skin_verts", tensors["lbs_vert_indices"].long())
        self.register_buffer("corr_in", self._dense_correctives(tensors))
        self.register_buffer("corr_out", f32["pose_corr_weight"])
        parents = tensors["skel_joint_parents"].long()
        children, targets, sizes = fk_schedule(parents, tensors["skel_pmi"], tensors["skel_pmi_buffer_sizes"])
        self.register_buffer("fk_joints", children)
        self.register_buffer("fk_parents", targets)
        self.level_sizes = sizes or [0]  # a list of ints (TorchScript-friendly)
        self.num_joints = int(parents.numel())
        self.num_verts = int(f32["base_shape"].shape[0])
        self.corrective_skip = CORRECTIVE_SKIP

    @staticmethod
    def _dense_correctives(t: Dict[str, torch.Tensor]) -> torch.Tensor:
        """The sparse first corrective layer as a dense [hidden, features] matrix (duplicates summed)."""
        hidden, feats = (int(x) for x in t["pose_corr_sparse_shape"].tolist())
        idx = t["pose_corr_sparse_indices"].long()
        if idx.numel() and (idx[0].min() < 0 or idx[0].max() >= hidden or idx[1].min() < 0 or idx[1].max() >= feats):
            raise WeightsMismatchError("mhr.pose_corr_sparse_indices point outside mhr.pose_corr_sparse_shape")
        dense = torch.zeros(hidden, feats)
        dense.index_put_((idx[0], idx[1]), t["pose_corr_sparse_weight"].detach().float(), accumulate=True)
        return dense

    def joint_parameters(self, model_params: torch.Tensor) -> torch.Tensor:
        """[B, P] model parameters -> [B, J, 7] joint parameters (identity columns of the transform see zeros)."""
        pt = self.param_transform[:, : model_params.shape[1]]
        return (model_params @ pt.t()).view(model_params.shape[0], self.num_joints, 7)

    def skeleton(self, jp: torch.Tensor) -> torch.Tensor:
        """Joint parameters -> global skeleton state [B, J, 8] (forward kinematics in float64)."""
        t = jp[..., :3] + self.joint_offsets
        q = quat_mul(self.prerotations.expand(jp.shape[0], -1, -1), euler_xyz_to_quat(jp[..., 3:6]))
        s = torch.exp2(jp[..., 6:7])
        g = torch.cat([t, q, s], -1).double()
        return _run_schedule(g, self.fk_joints, self.fk_parents, self.level_sizes).to(jp.dtype)

    def correctives(self, jp: torch.Tensor) -> torch.Tensor:
        """Pose-dependent vertex offsets [B, V, 3] from the joints' rotations."""
        feats = euler_xyz_to_rot6d_delta(jp[:, self.corrective_skip:, 3:6]).flatten(1)
        hidden = torch.relu(F.linear(feats, self.corr_in))
        return F.linear(hidden, self.corr_out).view(jp.shape[0], self.num_verts, 3)

    def skin(self, skel: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
        """Linear blend skinning of rest vertices [B, V, 3] by the skeleton state."""
        xf = compose(skel, self.inverse_bind_pose.expand(skel.shape[0], -1, -1))
        q = xf[..., 3:7] / xf[..., 3:7].norm(p=2, dim=-1, keepdim=True).clamp_min(1e-12)
        per = xf.index_select(1, self.skin_joints)
        qv = q.index_select(1, self.skin_joints)
        pts = rest.index_select(1, self.skin_verts)
        moved = per[..., :3] + quat_rotate(qv, per[..., 7:8] * pts)
        out = torch.zeros_like(rest)
        return out.index_add(1, self.skin_verts, moved * self.skin_weights[:, None])

    def forward(self, shape: torch.Tensor, model_params: torch.Tensor,
                expr: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        shape, model_params, expr = shape.float(), model_params.float(), expr.float()
        jp = self.joint_parameters(model_params)
        skel = self.skeleton(jp)
        rest = (self.base_shape + torch.einsum("bn,nvc->bvc", shape, self.identity_basis)
                + torch.einsum("bn,nvc->bvc", expr, self.expr_basis) + self.correctives(jp))
        return self.skin(skel, rest), skel


def rig_from_state_dict(sd: Dict[str, torch.Tensor], prefix: str = "mhr.") -> MhrRig:
    """Build the rig from the ``mhr.*`` tensors of a state dict (eval mode, no gradients)."""
    tensors = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    unknown = sorted(f"{prefix}{k}" for k in tensors if k not in RIG_TENSORS)
    if unknown:
        raise WeightsMismatchError(f"unknown MHR rig tensors: {', '.join(unknown)}")
    return MhrRig(tensors).eval().requires_grad_(False)


# our rig tensor name -> its module path inside the TorchScript ``assets/mhr_model.pt``
TORCHSCRIPT_NAMES: Dict[str, str] = {
    "base_shape": "character_torch.blend_shape.base_shape",
    "identity_basis": "character_torch.blend_shape.shape_vectors",
    "expr_basis": "face_expressions_model.shape_vectors",
    "param_transform": "character_torch.parameter_transform.parameter_transform",
    "skel_joint_translation_offsets": "character_torch.skeleton.joint_translation_offsets",
    "skel_joint_prerotations": "character_torch.skeleton.joint_prerotations",
    "skel_joint_parents": "character_torch.skeleton.joint_parents",
    "skel_pmi": "character_torch.skeleton.pmi",
    "lbs_inverse_bind_pose": "character_torch.linear_blend_skinning.inverse_bind_pose",
    "lbs_skin_weights": "character_torch.linear_blend_skinning.skin_weights_flattened",
    "lbs_skin_indices": "character_torch.linear_blend_skinning.skin_indices_flattened",
    "lbs_vert_indices": "character_torch.linear_blend_skinning.vert_indices_flattened",
    "pose_corr_sparse_indices": "pose_correctives_model.pose_dirs_predictor.0.sparse_indices",
    "pose_corr_sparse_weight": "pose_correctives_model.pose_dirs_predictor.0.sparse_weight",
    "pose_corr_weight": "pose_correctives_model.pose_dirs_predictor.2.weight",
}
TORCHSCRIPT_PMI_SIZES = "character_torch.skeleton._pmi_buffer_sizes"  # a list attribute, not a tensor


def rig_from_torchscript_tensors(tensors: Dict[str, torch.Tensor], attrs: Dict[str, object]) -> MhrRig:
    """Build the rig from the tensors (and the FK level sizes attribute) of the TorchScript MHR asset."""
    missing = [ts for ts in TORCHSCRIPT_NAMES.values() if ts not in tensors]
    if missing:
        head = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise WeightsMismatchError(f"it lacks the MHR tensors {head}")
    t = {ours: tensors[ts] for ours, ts in TORCHSCRIPT_NAMES.items()}
    sizes = attrs.get(TORCHSCRIPT_PMI_SIZES)
    if not (isinstance(sizes, (list, tuple)) and all(isinstance(x, int) and not isinstance(x, bool) for x in sizes)):
        sizes = [int(t["skel_pmi"].shape[-1])] if t["skel_pmi"].ndim == 2 else [0]
    t["skel_pmi_buffer_sizes"] = torch.tensor(list(sizes), dtype=torch.int64)
    hidden = int(t["pose_corr_weight"].shape[1]) if t["pose_corr_weight"].ndim == 2 else 0
    feats = 6 * (int(t["skel_joint_parents"].numel()) - CORRECTIVE_SKIP)
    t["pose_corr_sparse_shape"] = torch.tensor([hidden, feats], dtype=torch.int64)
    return MhrRig(t).eval().requires_grad_(False)


def invert(state: torch.Tensor) -> torch.Tensor:
    """Inverse of unit-quaternion skeleton states [..., 8]."""
    q = state[..., 3:7] / state[..., 3:7].norm(p=2, dim=-1, keepdim=True)
    qi = quat_conjugate(q)
    s = 1.0 / state[..., 7:8]
    return torch.cat([-s * quat_rotate(qi, state[..., :3]), qi, s], -1)
