"""ComfyUI core's SAM-3D-Body safetensors: detection, strict key mapping, native MHR rig, loading, errors.

Limitation: the real ``sam_3d_body_dinov3_bf16.safetensors`` was never available here. The files
below are synthetic, written from a tiny config in the core layout established from core's module
tree and loader; the full-size key set is checked against the published tensor counts instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from body4d_core.errors import MissingWeightsError, WeightsMismatchError
from body4d_core.sam3d_body import BodyItem, Sam3dBody, Sam3dBodyConfig, estimate_bodies, load_sam3d_body, tiny_config
from body4d_core import rotations as rot
from body4d_core.interop.sam3d_body_file import (LAYOUT_DINOV3, LAYOUT_HF, check_mapped, core_state_dict,
                                                 detect_layout, is_core_file, load_core_safetensors,
                                                 map_core_state_dict, save_core_layout)
from body4d_core.sam3d_body.loader import check_state_dict
from body4d_core.sam3d_body.mhr_rig import RIG_TENSORS, MhrRig
from body4d_core.testing.body import random_rig_tensors
from body4d_core.testing.body import random_model, save_official_layout


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> dict:
    """One tiny random model with a native rig, written both ways: official folder and core file."""
    cfg = tiny_config()
    model = random_model(cfg, seed=5)
    rig = random_rig_tensors(cfg.num_verts, cfg.num_joints, seed=5)
    model.attach_rig(MhrRig(rig))  # written to the official folder as a TorchScript-layout asset
    root = tmp_path_factory.mktemp("core")
    folder = save_official_layout(model, root / "sam-3d-body-dinov3")
    fp32 = save_core_layout(model, root / "core_fp32.safetensors", rig, backbone_dtype=torch.float32)
    bf16 = save_core_layout(model, root / "sam_3d_body_dinov3_bf16.safetensors", rig)
    return {"cfg": cfg, "model": model, "rig": rig, "folder": folder, "fp32": fp32, "bf16": bf16, "root": root}


def _frames() -> tuple[np.ndarray, list[BodyItem]]:
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 255, (2, 90, 120, 3), dtype=np.uint8)
    mask = np.zeros((90, 120), bool)
    mask[20:80, 40:70] = True
    return frames, [BodyItem(0, 1, [40, 20, 70, 80], mask), BodyItem(1, 2, [10, 5, 60, 85], None)]


def _write(sd: dict, path: Path) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


def _core_sd(source) -> dict:
    from safetensors.torch import load_file

    return load_file(str(source["fp32"]))


# ------------------------------------------------------------------ native rig

def _reference_rig(t: dict, shape, params, expr):
    """An independent MHR evaluation with rotation matrices and a per-joint recursion (test oracle)."""
    j = t["skel_joint_parents"].shape[0]
    jp = (params @ t["param_transform"][:, :params.shape[1]].T).view(-1, j, 7).double()
    pre = rot.quat_xyzw_to_rotmat(t["skel_joint_prerotations"].double())
    r_loc = pre @ rot.euler_xyz_to_rotmat(jp[..., 3:6])
    t_loc = jp[..., :3] + t["skel_joint_translation_offsets"].double()
    s_loc = torch.pow(2.0, jp[..., 6])
    parents = t["skel_joint_parents"].tolist()
    R, T, S = [None] * j, [None] * j, [None] * j

    def solve(i: int) -> None:
        if R[i] is not None:
            return
        p = parents[i]
        if p < 0:
            R[i], T[i], S[i] = r_loc[:, i], t_loc[:, i], s_loc[:, i]
            return
        solve(p)
        R[i] = R[p] @ r_loc[:, i]
        T[i] = T[p] + S[p][:, None] * (R[p] @ t_loc[:, i, :, None])[..., 0]
        S[i] = S[p] * s_loc[:, i]

    for i in range(j):
        solve(i)
    R, T, S = torch.stack(R, 1), torch.stack(T, 1), torch.stack(S, 1)
    ibp = t["lbs_inverse_bind_pose"].double()
    r_ibp = rot.quat_xyzw_to_rotmat(ibp[:, 3:7])
    rest = (t["base_shape"] + torch.einsum("bn,nvc->bvc", shape, t["identity_basis"])
            + torch.einsum("bn,nvc->bvc", expr, t["expr_basis"])).double()
    hidden, feats = t["pose_corr_sparse_shape"].tolist()
    w1 = torch.zeros(hidden, feats, dtype=torch.float64)
    idx = t["pose_corr_sparse_indices"]
    w1.index_put_((idx[0], idx[1]), t["pose_corr_sparse_weight"].double(), accumulate=True)
    m = rot.euler_xyz_to_rotmat(jp[:, 2:, 3:6])
    f = torch.cat([m[..., :, 0], m[..., :, 1]], -1) - torch.tensor([1.0, 0, 0, 0, 1, 0], dtype=torch.float64)
    rest = rest + (torch.relu(f.flatten(1) @ w1.T) @ t["pose_corr_weight"].double().T).view(rest.shape)
    verts = torch.zeros_like(rest)
    for k in range(t["lbs_skin_weights"].shape[0]):
        jj, vv, w = int(t["lbs_skin_indices"][k]), int(t["lbs_vert_indices"][k]), float(t["lbs_skin_weights"][k])
        p = ibp[jj, :3] + ibp[jj, 7] * (r_ibp[jj] @ rest[:, vv, :, None])[..., 0]  # bind-space point
        verts[:, vv] += w * (T[:, jj] + S[:, jj, None] * (R[:, jj] @ p[..., None])[..., 0])
    return verts, T, R, S


def test_native_rig_matches_an_independent_matrix_implementation() -> None:
    t = random_rig_tensors(30, 12, seed=2)
    g = torch.Generator().manual_seed(0)
    shape, expr = torch.randn(3, 45, generator=g), torch.randn(3, 72, generator=g)
    params = torch.randn(3, 204, generator=g) * 0.5
    verts, skel = MhrRig(t)(shape, params, expr)
    ref_v, ref_t, ref_r, ref_s = _reference_rig(t, shape, params, expr)
    assert verts.shape == (3, 30, 3) and skel.shape == (3, 12, 8) and verts.dtype == torch.float32
    scale = ref_v.abs().max().item()
    assert torch.allclose(verts.double(), ref_v, atol=2e-5 * scale, rtol=0)
    assert torch.allclose(skel[..., :3].double(), ref_t, atol=1e-4, rtol=1e-5)
    assert torch.allclose(rot.quat_xyzw_to_rotmat(skel[..., 3:7]).double(), ref_r, atol=1e-5)
    assert torch.allclose(skel[..., 7].double(), ref_s, rtol=1e-5)


def test_native_rig_zero_pose_is_the_rest_mesh_and_blend_shapes_are_linear() -> None:
    t = random_rig_tensors(25, 9, seed=4)
    rig = MhrRig(t)
    z = torch.zeros(1, 45), torch.zeros(1, 204), torch.zeros(1, 72)
    verts, _ = rig(*z)
    assert torch.allclose(verts[0], t["base_shape"], atol=1e-3)  # inverse bind poses undo the rest skeleton
    beta = torch.zeros(1, 45)
    beta[0, 3] = 2.0
    moved, _ = rig(beta, z[1], z[2])
    assert torch.allclose(moved[0] - verts[0], 2.0 * t["identity_basis"][3], atol=1e-3)


def test_native_rig_scripts_like_the_official_asset_and_validates_tensors() -> None:
    t = random_rig_tensors(20, 8, seed=1)
    rig = MhrRig(t)
    x = torch.randn(2, 45), torch.randn(2, 204) * 0.3, torch.randn(2, 72)
    a, b = rig(*x), torch.jit.script(rig)(*x)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    bad = dict(t, lbs_inverse_bind_pose=torch.zeros(8, 7))
    with pytest.raises(WeightsMismatchError, match=r"mhr\.lbs_inverse_bind_pose \(8, 7\) \(expected \(8, 8\)\)"):
        MhrRig(bad)
    with pytest.raises(WeightsMismatchError, match=r"missing mhr\.skel_pmi"):
        MhrRig({k: v for k, v in t.items() if k != "skel_pmi"})


def test_fk_uses_the_files_prefix_schedule_and_falls_back_when_it_is_wrong(caplog) -> None:
    t = random_rig_tensors(20, 40, seed=3)  # skel_pmi: a log-depth (pointer-jumping) schedule, as in the file
    fast = MhrRig(t)
    assert fast.level_sizes == t["skel_pmi_buffer_sizes"].tolist() and len(fast.level_sizes) <= 6
    slow = MhrRig(dict(t, skel_pmi=t["skel_pmi"].flip(0)))  # child/target swapped: not FK any more
    assert "does not reproduce the skeleton's forward kinematics" in caplog.text
    assert len(slow.level_sizes) > len(fast.level_sizes)  # one level per skeleton depth
    x = torch.randn(2, 45), torch.randn(2, 204) * 0.4, torch.randn(2, 72)
    (va, sa), (vb, sb) = fast(*x), slow(*x)
    assert torch.allclose(va, vb, atol=1e-4) and torch.allclose(sa, sb, atol=1e-5)


# ------------------------------------------------------------------ key mapping

def test_full_size_core_key_set_has_the_published_counts_and_maps_strictly() -> None:
    with torch.device("meta"):
        model = Sam3dBody(Sam3dBodyConfig())
    sd = core_state_dict(model, {k: torch.zeros(1, device="meta") for k in RIG_TENSORS})
    backbone = [k for k in sd if k.startswith("backbone.")]
    # the repack holds 1629 tensors: 614 backbone, 576 with model.ckpt's names, 17 mhr.*, face_region_rgb
    # and 421 face_landmarker.* (not reproduced here; ignored by prefix)
    assert (len(backbone), len(sd) - len(backbone) - 18, len([k for k in sd if k.startswith("mhr.")])) == (614, 576, 17)
    assert "backbone.layer.31.attention.k_proj.weight" in sd and "backbone.layer.31.attention.k_proj.bias" not in sd
    assert "head_pose.proj.layers.0.0.weight" in sd and "hand_cls_embed.weight" in sd
    assert not any(k.endswith(("hand_pose_comps_ori", "mask_token", "periods", "bias_mask")) for k in sd)
    sd["face_landmarker.blazeface.conv.weight"] = torch.zeros(1, device="meta")
    mapped = map_core_state_dict(sd, set(model.state_dict()))
    net = check_mapped(model, mapped, "meta")
    assert set(net) == {k for k in model.state_dict() if not k.startswith("mhr.")}
    assert len(mapped.rig) == 17 and sorted(mapped.ignored) == ["face_landmarker.blazeface.conv.weight",
                                                               "head_pose.face_region_rgb"]
    assert tuple(net["backbone.encoder.blocks.0.attn.qkv.weight"].shape) == (3840, 1280)


def test_layouts_are_detected(source) -> None:
    sd = _core_sd(source)
    assert detect_layout(sd) == LAYOUT_HF and is_core_file(source["bf16"])
    official = {k: v for k, v in source["model"].state_dict().items() if not k.startswith("mhr.")}
    assert detect_layout(official) is None  # the official checkpoint is not a core file
    assert not is_core_file(source["folder"] / "model.ckpt")
    assert detect_layout(dict(official, **{"mhr.base_shape": torch.zeros(1)})) == LAYOUT_DINOV3


# ------------------------------------------------------------------ loading

def _same_outputs(a: Sam3dBody, b: Sam3dBody, atol: float = 1e-5) -> None:
    frames, items = _frames()
    ra = estimate_bodies(a, frames, items, mode="full")
    rb = estimate_bodies(b, frames, items, mode="full")
    for x, y in zip(ra, rb):
        assert set(x) == set(y)
        for k in x:
            np.testing.assert_allclose(x[k], y[k], rtol=1e-5, atol=atol, err_msg=k)


def test_core_file_loads_like_the_official_folder(source) -> None:
    official = load_sam3d_body(source["folder"])  # rig tensors read from assets/mhr_model.pt
    core = load_sam3d_body(source["fp32"], config=source["cfg"])  # dispatches on .safetensors; native rig
    assert isinstance(core.mhr, MhrRig) and isinstance(official.mhr, MhrRig)
    a, b = official.state_dict(), core.state_dict()
    net = [k for k in a if not k.startswith("mhr.") and not k.endswith(("mask_token", "qkv.bias"))]
    assert all(torch.equal(a[k], b[k]) for k in net)
    for k in (k for k in a if k.endswith("qkv.bias")):  # the key third is masked out in both
        mask = a[k.replace("bias", "bias_mask")]
        assert torch.equal(a[k] * mask, b[k] * mask)
    _same_outputs(official, core)


def test_bf16_backbone_is_loaded_as_float32(source) -> None:
    core = load_core_safetensors(source["bf16"])  # architecture from our writer's metadata note
    assert core.cfg == source["cfg"]
    ref = source["model"].state_dict()
    w = "backbone.encoder.blocks.1.mlp.w1.weight"
    assert core.state_dict()[w].dtype == torch.float32
    assert torch.equal(core.state_dict()[w], ref[w].bfloat16().float())
    assert torch.equal(core.state_dict()["head_pose.proj.layers.1.weight"], ref["head_pose.proj.layers.1.weight"])
    frames, items = _frames()
    out = estimate_bodies(core, frames, items, mode="body", return_vertices=True)
    assert all(r["vertices"].shape == (40, 3) and np.isfinite(r["vertices"]).all() for r in out)


def test_in_memory_names_and_the_official_backbone_variant_load(source, tmp_path) -> None:
    sd = _core_sd(source)
    renamed = {k.replace(".layers.0.0.", ".layers.0."): v for k, v in sd.items()}  # core's names after its rename
    assert "decoder.layers.0.ffn.layers.0.weight" in renamed
    a = load_core_safetensors(_write(renamed, tmp_path / "a.safetensors"), config=source["cfg"])
    official_bb = {k: v for k, v in source["model"].state_dict().items()
                   if k.startswith("backbone.") and not k.endswith(("periods", "bias_mask", "mask_token"))}
    variant = dict({k: v for k, v in sd.items() if not k.startswith("backbone.")}, **official_bb)
    b = load_core_safetensors(_write(variant, tmp_path / "b.safetensors"), config=source["cfg"])
    _same_outputs(a, b)


def test_core_extras_are_ignored(source, tmp_path) -> None:
    sd = dict(_core_sd(source), **{"face_landmarker.mesh.conv0.weight": torch.zeros(4, 3, 3, 3)})
    model = load_core_safetensors(_write(sd, tmp_path / "x.safetensors"), config=source["cfg"])
    assert not any(k.startswith("face_landmarker") for k in model.state_dict())


def test_rig_comes_from_mhr_model_pt_when_the_file_has_none(source, tmp_path) -> None:
    sd = {k: v for k, v in _core_sd(source).items() if not k.startswith("mhr.")}
    path = _write(sd, tmp_path / "norig.safetensors")
    with pytest.raises(MissingWeightsError, match=r"carries no MHR rig tensors \(mhr\.\*\).*mhr_model\.pt"):
        load_core_safetensors(path, config=source["cfg"])
    (tmp_path / "mhr_model.pt").write_bytes((source["folder"] / "assets" / "mhr_model.pt").read_bytes())
    model = load_core_safetensors(path, config=source["cfg"])
    assert isinstance(model.mhr, MhrRig)
    x = torch.randn(2, 45), torch.randn(2, 204) * 0.3, torch.randn(2, 72)
    want = MhrRig(source["rig"])(*x)
    got = model.mhr(*x)
    assert torch.allclose(got[0], want[0], atol=1e-4) and torch.allclose(got[1], want[1], atol=1e-5)


# ------------------------------------------------------------------ errors

def test_unmapped_missing_and_misshaped_keys_are_named(source, tmp_path) -> None:
    sd = _core_sd(source)
    cfg = source["cfg"]
    extra = dict(sd, **{"decoder.extra.weight": torch.zeros(1)})
    with pytest.raises(WeightsMismatchError, match=r"1 keys with no counterpart in SAM-3D-Body: decoder\.extra\."):
        load_core_safetensors(_write(extra, tmp_path / "e.safetensors"), config=cfg)
    lacking = {k: v for k, v in sd.items() if k != "decoder.layers.0.ln1.weight"}
    with pytest.raises(WeightsMismatchError, match=r"1 tensors missing \(our names\): decoder\.layers\.0\.ln1\.weight"):
        load_core_safetensors(_write(lacking, tmp_path / "m.safetensors"), config=cfg)
    bad = dict(sd, **{"backbone.layer.0.attention.o_proj.weight": torch.zeros(5, 5)})
    with pytest.raises(WeightsMismatchError,
                       match=r"backbone\.layer\.0\.attention\.o_proj\.weight: file \(5, 5\) vs model \(32, 32\)"):
        load_core_safetensors(_write(bad, tmp_path / "s.safetensors"), config=cfg)
    no_v = {k: v for k, v in sd.items() if k != "backbone.layer.1.attention.v_proj.weight"}
    with pytest.raises(WeightsMismatchError, match=r"incomplete q/k/v projections: backbone\.layer\.1\.attention\.v_"):
        load_core_safetensors(_write(no_v, tmp_path / "v.safetensors"), config=cfg)
    half_rig = {k: v for k, v in sd.items() if k != "mhr.lbs_skin_weights"}
    with pytest.raises(WeightsMismatchError, match=r"MHR rig is incomplete, missing mhr\.lbs_skin_weights"):
        load_core_safetensors(_write(half_rig, tmp_path / "r.safetensors"), config=cfg)


def test_wrong_or_absent_files_are_rejected(source, tmp_path) -> None:
    with pytest.raises(MissingWeightsError, match="does not exist.*models/detection"):
        load_sam3d_body(tmp_path / "nope.safetensors")
    other = _write({"model.diffusion.weight": torch.zeros(2)}, tmp_path / "sd15.safetensors")
    with pytest.raises(WeightsMismatchError, match="sd15.safetensors is not ComfyUI core's SAM-3D-Body file"):
        load_core_safetensors(other)
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsMismatchError, match="cannot read .*broken.safetensors"):
        load_core_safetensors(tmp_path / "broken.safetensors")
    plain = _write(_core_sd(source), tmp_path / "plain.safetensors")  # no metadata: the released architecture
    with pytest.raises(WeightsMismatchError, match=r"shape mismatches: backbone\.embeddings\.cls_token: file "
                                                   r"\(1, 1, 32\) vs model \(1, 1, 1280\)"):
        load_core_safetensors(plain)


def test_official_checkpoint_without_mask_token_and_comps_ori_loads(source) -> None:
    model = source["model"]
    sd = {k: v for k, v in model.state_dict().items()
          if not k.startswith("mhr.") and not k.endswith(("encoder.mask_token", "hand_pose_comps_ori"))}
    clean = check_state_dict(model, sd)  # the released model.ckpt has 1127 tensors: these three are absent
    assert torch.equal(clean["backbone.encoder.mask_token"], torch.zeros_like(model.backbone.encoder.mask_token))
    assert torch.equal(clean["head_pose.hand_pose_comps_ori"], torch.eye(54))
