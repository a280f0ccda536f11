"""Weight files are loaded as tensors only; every broken or hostile file is refused in one clear sentence."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest
import torch

from body4d_core.amodal.models import load_amodal_models
from body4d_core.errors import Body4DError, MissingWeightsError, WeightsMismatchError
from body4d_core.fov import load_moge
from body4d_core.sam3d_body import load_sam3d_body
from body4d_core.testing.checkpoints import write_tiny_checkpoints

VAS = Path("diffusion_vas") / "diffusion-vas-amodal-segmentation"


class NotATensor:
    """A pickled object weights-only loading must refuse (its class is not on any allow-list)."""

    def __init__(self) -> None:
        self.payload = "anything"


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("weights")
    write_tiny_checkpoints(root, ["diffusion_vas_amodal", "depth_anything", "moge", "sam3d_body"])
    return root


@pytest.fixture()
def root(tiny_root, tmp_path) -> Path:
    copy = tmp_path / "models"
    shutil.copytree(tiny_root, copy)
    return copy


def _assert_one_sentence(err: BaseException, *must: str) -> str:
    msg = str(err)
    assert isinstance(err, Body4DError), type(err)
    assert "\n" not in msg and msg.endswith("."), msg
    assert msg[:-1].count(". ") == 0, msg
    for banned in ("weights_only", "will likely succeed", "arbitrary code", "Traceback"):
        assert banned not in msg, msg
    for text in must:
        assert text in msg, msg
    return msg


def _amodal(root: Path):
    return load_amodal_models([root], device="cpu", with_completion=False)


def test_tiny_amodal_folder_still_loads(root) -> None:
    models = _amodal(root)
    assert models.mask is not None and models.content is None


def test_unet_bin_pickling_an_object_is_refused_without_torch_advice(root) -> None:
    unet = root / VAS / "unet"
    (unet / "diffusion_pytorch_model.safetensors").unlink()
    torch.save({"conv_in2.weight": torch.zeros(1), "extra": NotATensor()}, unet / "diffusion_pytorch_model.bin")
    with pytest.raises(WeightsMismatchError) as err:
        _amodal(root)
    _assert_one_sentence(err.value, "diffusion_pytorch_model.bin", "pickles objects other than tensors",
                         "setup --models diffusion_vas_amodal")


def test_truncated_unet_safetensors_is_a_clear_error(root) -> None:
    p = root / VAS / "unet" / "diffusion_pytorch_model.safetensors"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(WeightsMismatchError) as err:
        _amodal(root)
    _assert_one_sentence(err.value, str(p), "truncated")


def test_missing_vae_weights_is_a_clear_error(root) -> None:
    (root / VAS / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(MissingWeightsError) as err:
        _amodal(root)
    _assert_one_sentence(err.value, str(root / VAS), "missing vae/diffusion_pytorch_model.safetensors")


def test_another_models_image_encoder_is_refused_not_half_loaded(root) -> None:
    enc = root / VAS / "image_encoder" / "model.safetensors"
    from safetensors.torch import save_file

    save_file({"some.other.weight": torch.zeros(2)}, str(enc))
    with pytest.raises(WeightsMismatchError) as err:
        _amodal(root)
    _assert_one_sentence(err.value, "visual_projection.weight", "not the expected model")


def test_truncated_depth_model_is_a_clear_error(root) -> None:
    p = next((root / "depth_anything").rglob("model.safetensors"))
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(WeightsMismatchError) as err:
        _amodal(root)
    _assert_one_sentence(err.value, str(p), "setup --models depth_anything")


def test_moge_checkpoint_pickling_an_object_is_refused(root) -> None:
    p = next((root / "moge").rglob("model.pt"))
    torch.save({"model_config": argparse.Namespace(a=1), "model": {}}, p)
    with pytest.raises(WeightsMismatchError) as err:
        load_moge(search_dirs=[root])
    _assert_one_sentence(err.value, str(p), "pickles objects other than tensors")


def test_truncated_moge_checkpoint_is_a_clear_error(root) -> None:
    p = next((root / "moge").rglob("model.pt"))
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(WeightsMismatchError) as err:
        load_moge(search_dirs=[root])
    _assert_one_sentence(err.value, str(p))


def test_truncated_body_checkpoint_is_a_clear_error(root) -> None:
    p = next((root / "sam3d_body").rglob("model.ckpt"))
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(WeightsMismatchError) as err:
        load_sam3d_body(search_dirs=[root])
    _assert_one_sentence(err.value, str(p), "setup --models sam3d_body")


def test_body_checkpoint_of_another_model_names_keys_in_one_sentence(root) -> None:
    p = next((root / "sam3d_body").rglob("model.ckpt"))
    torch.save({"state_dict": {"foo.weight": torch.zeros(2)}}, p)
    with pytest.raises(WeightsMismatchError) as err:
        load_sam3d_body(search_dirs=[root])
    _assert_one_sentence(err.value, "missing keys", "1 unexpected keys: foo.weight")


def test_body_rig_swapped_for_a_foreign_file_is_refused(root) -> None:
    rig = next((root / "sam3d_body").rglob("mhr_model.pt"))
    torch.save({"w": torch.zeros(3)}, rig)  # a plain torch file, not the rig asset
    with pytest.raises(WeightsMismatchError) as err:
        load_sam3d_body(search_dirs=[root])
    _assert_one_sentence(err.value, str(rig), "mhr_model.pt")
