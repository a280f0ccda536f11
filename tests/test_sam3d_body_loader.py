"""SAM-3D-Body loading: official folder layout round trip, strict key checks, safe unpickling, errors."""

from __future__ import annotations

import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from body4d_core.errors import MissingWeightsError, WeightsMismatchError
from body4d_core.sam3d_body import BodyItem, Sam3dBody, config_from_yaml, estimate_bodies, load_sam3d_body, tiny_config
from body4d_core.sam3d_body.loader import check_state_dict, read_checkpoint
from body4d_core.testing.body import OFFICIAL_YAML, random_model, save_official_layout


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Sam3dBody, Path]:
    model = random_model(tiny_config(), seed=3)
    folder = save_official_layout(model, tmp_path_factory.mktemp("sam3d_body") / "sam-3d-body-dinov3")
    return model, folder


def _frames() -> tuple[np.ndarray, list[BodyItem]]:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (2, 90, 120, 3), dtype=np.uint8)
    mask = np.zeros((90, 120), bool)
    mask[20:80, 40:70] = True
    return frames, [BodyItem(0, 1, [40, 20, 70, 80], mask), BodyItem(1, 2, [10, 5, 60, 85], None)]


def test_official_yaml_gives_the_released_architecture() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "model_config.yaml"
        p.write_text(OFFICIAL_YAML)
        cfg = config_from_yaml(p)
    assert (cfg.vit_dim, cfg.vit_depth, cfg.vit_heads, cfg.vit_ffn, cfg.vit_swiglu) == (1280, 32, 20, 5120, True)
    assert (cfg.dec_dim, cfg.dec_depth, cfg.dec_heads, cfg.dec_head_dim) == (1024, 6, 8, 64)
    assert cfg.image_size == 512 and cfg.grid == 32 and cfg.mask_embed_type == "v2"
    assert cfg.use_intrin_center and cfg.hand_cam_scale == 10.0 and cfg.mhr_mlp_depth == 2
    with torch.device("meta"):
        model = Sam3dBody(cfg)
    n_backbone = sum(p.numel() for p in model.backbone.parameters())
    assert 835e6 < n_backbone < 845e6  # "DINOv3-H+ (840M)"


def test_round_trip_loads_strictly_and_reproduces_outputs(saved) -> None:
    model, folder = saved
    loaded = load_sam3d_body(folder)  # sizes from the written model_config.yaml, mesh sizes from the checkpoint
    a, b = model.state_dict(), loaded.state_dict()
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a if not k.startswith("mhr."))
    frames, items = _frames()
    ra = estimate_bodies(model, frames, items, mode="full")
    rb = estimate_bodies(loaded, frames, items, mode="full")
    for x, y in zip(ra, rb):
        for k in x:
            np.testing.assert_allclose(x[k], y[k], rtol=1e-5, atol=1e-5, err_msg=k)


def test_lightning_extras_are_read_without_running_code(tmp_path, saved) -> None:
    model, _ = saved
    mod = types.ModuleType("fake_yacs_config")

    class CfgNode(dict):
        pass

    CfgNode.__module__ = "fake_yacs_config"
    CfgNode.__qualname__ = "CfgNode"
    mod.CfgNode = CfgNode
    sys.modules["fake_yacs_config"] = mod
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("mhr.")}
    sd["head_pose.mhr.base_shape"] = torch.zeros(3)  # rig state saved by training: ignored
    ckpt = {"state_dict": sd, "hyper_parameters": {"cfg": CfgNode(MODEL=CfgNode(X=1))},
            "loops": {"score": np.float64(0.5), "arr": np.arange(3)}, "callback": print}
    try:
        torch.save(ckpt, tmp_path / "model.ckpt")
    finally:
        del sys.modules["fake_yacs_config"]
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "model.ckpt", weights_only=True)
    got = read_checkpoint(tmp_path / "model.ckpt")
    assert torch.equal(got["decoder.norm_final.weight"], sd["decoder.norm_final.weight"])
    clean = check_state_dict(model, got)
    assert "head_pose.mhr.base_shape" not in clean


def test_mismatched_checkpoint_names_the_keys(saved) -> None:
    model, _ = saved
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("mhr.")}
    bad = dict(sd)
    bad.pop("decoder.layers.0.ln1.weight")
    bad["decoder.extra.weight"] = torch.zeros(1)
    bad["head_camera.proj.layers.1.weight"] = torch.zeros(5, 5)
    with pytest.raises(WeightsMismatchError) as err:
        check_state_dict(model, bad, source="x/model.ckpt")
    msg = str(err.value)
    assert "1 missing keys: decoder.layers.0.ln1.weight" in msg
    assert "1 unexpected keys: decoder.extra.weight" in msg
    assert "head_camera.proj.layers.1.weight: file (5, 5) vs model (3, 32)" in msg
    assert "facebook/sam-3d-body-dinov3" in msg


def test_wrapped_key_prefixes_are_undone(saved) -> None:
    model, _ = saved
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("mhr.")}
    wrapped = {"model." + k.replace("backbone.encoder.", "backbone._orig_mod.encoder."): v for k, v in sd.items()}
    clean = check_state_dict(model, wrapped)
    assert set(clean) == set(sd)


def test_unreadable_yaml_values_are_reported(tmp_path) -> None:
    p = tmp_path / "model_config.yaml"
    p.write_text("MODEL:\n  BACKBONE: {TYPE: dinov3_vith16plus}\n  DECODER: {DIM: '${oops}'}\n")
    with pytest.raises(WeightsMismatchError, match="unreadable SAM-3D-Body setting"):
        config_from_yaml(p)
    p.write_text("MODEL:\n  BACKBONE: {TYPE: resnet50}\n")
    with pytest.raises(WeightsMismatchError, match="backbone 'resnet50' is not supported"):
        config_from_yaml(p)


def test_optional_buffers_may_be_absent(saved) -> None:
    model, _ = saved
    sd = {k: v for k, v in model.state_dict().items()
          if not k.startswith("mhr.") and not k.endswith(("rope_embed.periods", "qkv.bias_mask"))}
    clean = check_state_dict(model, sd)
    key = "backbone.encoder.blocks.0.attn.qkv.bias_mask"
    assert torch.equal(clean[key], model.state_dict()[key])
    assert torch.allclose(clean["backbone.encoder.rope_embed.periods"],
                          model.state_dict()["backbone.encoder.rope_embed.periods"])


def test_wrong_model_weights_are_rejected(tmp_path, saved) -> None:
    model, folder = saved
    other = random_model(tiny_config().replace(vit_dim=48, vit_heads=3), seed=1)
    wrong = save_official_layout(other, tmp_path / "wrong")
    with pytest.raises(WeightsMismatchError, match="shape mismatches"):
        load_sam3d_body(wrong, config=tiny_config())
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    for rel in ("model.ckpt", "model_config.yaml", "assets/mhr_model.pt"):
        (garbage / rel).parent.mkdir(parents=True, exist_ok=True)
        (garbage / rel).write_bytes(b"not a checkpoint at all")
    with pytest.raises(WeightsMismatchError, match="cannot read"):
        load_sam3d_body(garbage, config=tiny_config())
    (tmp_path / "cfg.yaml").write_text("TRAIN: {}\n")
    with pytest.raises(WeightsMismatchError, match="no MODEL section"):
        config_from_yaml(tmp_path / "cfg.yaml")


def test_missing_files_name_folder_and_command(tmp_path, saved) -> None:
    _, folder = saved
    partial = tmp_path / "sam-3d-body-dinov3"
    partial.mkdir()
    (partial / "model_config.yaml").write_text(OFFICIAL_YAML)
    with pytest.raises(MissingWeightsError) as err:
        load_sam3d_body(partial)
    msg = str(err.value)
    assert "model.ckpt" in msg and "assets/mhr_model.pt" in msg and str(partial) in msg
    assert "python -m body4d_core setup --models sam3d_body" in msg
    with pytest.raises(MissingWeightsError):
        load_sam3d_body(search_dirs=[tmp_path / "nowhere"])


def test_half_precision_backbone_in_checkpoint_loads_as_fp32(tmp_path, saved) -> None:
    model, folder = saved
    sd = {k: (v.to(torch.bfloat16) if k.startswith("backbone.") and v.is_floating_point() else v)
          for k, v in model.state_dict().items() if not k.startswith("mhr.")}
    target = tmp_path / "bf16"
    (target / "assets").mkdir(parents=True)
    torch.save({"state_dict": sd}, target / "model.ckpt")
    for rel in ("model_config.yaml", "assets/mhr_model.pt"):
        (target / rel).write_bytes((folder / rel).read_bytes())
    loaded = load_sam3d_body(target)
    assert all(p.dtype == torch.float32 for p in loaded.parameters() if p.is_floating_point())
    frames, items = _frames()
    a = estimate_bodies(model, frames, items[:1])[0]
    b = estimate_bodies(loaded, frames, items[:1])[0]
    np.testing.assert_allclose(a["cam_t"], b["cam_t"], rtol=2e-2)
