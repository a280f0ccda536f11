"""Fast model loading (body4d_core.fastload): each loader's fast path gives the previous path's exact tensors.

Tiny random checkpoints in the official layouts; every parameter and buffer (persistent or
not) must match bit for bit, with the same dtype, requires_grad and eval mode. Also the
SAM-3 / transformers paths in bf16 (what a GPU loads) and the fallback for layouts the fast
path does not read.
"""

from __future__ import annotations

import pytest
import torch

from body4d_core.fastload import load_transformers, params_on_meta
from body4d_core.testing.checkpoints import write_checkpoints


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    out = tmp_path_factory.mktemp("fast_load")
    write_checkpoints(out, ["sam3", "sam3d_body", "diffusion_vas_amodal", "depth_anything", "moge"], preset="tiny")
    return out


def _tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = dict(module.named_buffers())
    out.update(dict(module.named_parameters()))
    return out


def assert_same(a: torch.nn.Module, b: torch.nn.Module) -> int:
    """Equal names, dtypes, devices, requires_grad and values of every parameter and buffer; returns the count."""
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys(), sorted(set(ta) ^ set(tb))[:5]
    for k, va in ta.items():
        vb = tb[k]
        assert (va.dtype, va.device, va.requires_grad) == (vb.dtype, vb.device, vb.requires_grad), k
        assert torch.equal(va, vb), k
    assert a.training == b.training
    return len(ta)


def test_sam3_fast_equals_transformers(root):
    from body4d_core.sam3 import load_sam3

    old = load_sam3(search_dirs=[root], device="cpu", with_detector=True, fast=False)
    new = load_sam3(search_dirs=[root], device="cpu", with_detector=True, fast=True)
    assert assert_same(old.tracker, new.tracker) > 250
    assert assert_same(old.detector, new.detector) > 250
    assert new.detector.vision_encoder.backbone is new.tracker.vision_encoder.backbone
    assert new.tracker.config.to_dict() == old.tracker.config.to_dict()
    assert new.processor.video_processor.size == old.processor.video_processor.size


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sam3_fast_in_gpu_precision(root, dtype):
    from body4d_core.sam3.loading import _from_pretrained, _load_fast, _transformers

    folder = root / "sam3" / "sam3"
    for cls in (_transformers().Sam3TrackerVideoModel, _transformers().Sam3Model):
        old = _from_pretrained(cls, folder, dtype)
        new = _load_fast(cls, folder, dtype, torch.device("cpu"))
        assert assert_same(old, new) > 250
        assert next(new.parameters()).dtype == dtype
        assert new.config.to_dict() == old.config.to_dict()


def test_sam3_fast_falls_back_with_the_clear_errors(root, tmp_path):
    from body4d_core.errors import WeightsMismatchError
    from body4d_core.sam3 import load_sam3

    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "config.json").write_text('{"model_type": "bert"}')
    (wrong / "model.safetensors").write_bytes((root / "sam3" / "sam3" / "model.safetensors").read_bytes())
    with pytest.raises(WeightsMismatchError, match="transformers-format facebook/sam3"):
        load_sam3(wrong, device="cpu", with_detector=False, fast=True)


def test_sam3d_body_fast_equals_previous(root):
    from body4d_core.sam3d_body import load_sam3d_body

    old = load_sam3d_body(search_dirs=[root], device="cpu", fast=False)
    new = load_sam3d_body(search_dirs=[root], device="cpu", fast=True)
    assert assert_same(old, new) > 100
    assert all(p.dtype == torch.float32 for p in new.backbone.parameters())


def test_amodal_fast_equals_previous(root):
    from body4d_core.amodal.models import load_amodal_models

    old = load_amodal_models([root], device="cpu", with_completion=False, fast=False)
    new = load_amodal_models([root], device="cpu", with_completion=False, fast=True)
    mo, mn = old.module_dict(), new.module_dict()
    assert list(mo) == list(mn) == ["mask_unet", "mask_vae", "mask_clip", "depth"]
    for name in mo:
        assert assert_same(mo[name], mn[name]) > 10, name
    assert new.depth.prep == old.depth.prep
    assert torch.equal(new.mask.clip_mean, old.mask.clip_mean) and new.mask.accel == old.mask.accel


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_amodal_parts_fast_in_gpu_precision(root, dtype):
    from transformers import CLIPVisionModelWithProjection, DepthAnythingForDepthEstimation

    from body4d_core.amodal.sampler import _load_unet_fast
    from body4d_core.amodal.sampler import load_vas_unet

    vas = root / "diffusion_vas" / "diffusion-vas-amodal-segmentation"
    clip = load_transformers(CLIPVisionModelWithProjection, vas / "image_encoder", dtype, "cpu")
    assert clip is not None  # the fast path, not the fallback
    assert assert_same(CLIPVisionModelWithProjection.from_pretrained(vas / "image_encoder", dtype=dtype), clip) > 20
    unet = _load_unet_fast(vas / "unet", torch.device("cpu"), dtype)
    assert unet is not None
    assert assert_same(load_vas_unet(vas / "unet", dtype), unet) > 100
    # Depth Anything's file uses names transformers renames on load: the fast path declines it
    depth = root / "depth_anything" / "Depth-Anything-V2-Large-hf"
    assert load_transformers(DepthAnythingForDepthEstimation, depth, dtype, "cpu") is None


def test_moge_fast_equals_previous(root):
    from body4d_core.fov import load_moge

    old = load_moge([root], device="cpu", fast=False)
    new = load_moge([root], device="cpu", fast=True)
    assert assert_same(old, new) > 100


def test_moge_fast_keeps_the_clear_errors(tmp_path):
    from body4d_core.errors import WeightsMismatchError
    from body4d_core.fov import load_moge

    folder = tmp_path / "moge" / "moge-2-vitl-normal"
    folder.mkdir(parents=True)
    torch.save({"weights": torch.zeros(2)}, folder / "model.pt")
    with pytest.raises(WeightsMismatchError, match="not an official MoGe-2 model.pt"):
        load_moge([tmp_path], fast=True)
    (folder / "model.pt").write_bytes(b"garbage" * 10)
    with pytest.raises(WeightsMismatchError, match="could not be read as a MoGe-2 checkpoint"):
        load_moge([tmp_path], fast=True)


def test_params_on_meta_keeps_buffers_real():
    with params_on_meta():
        bn = torch.nn.BatchNorm1d(4)
    assert bn.weight.device.type == "meta" and bn.running_var.device.type == "cpu"
    assert torch.equal(bn.running_var, torch.ones(4))
    lin = torch.nn.Linear(2, 2)  # outside: ordinary parameters again
    assert lin.weight.device.type == "cpu"
