"""Loading SAM-3 from the official facebook/sam3 layout (tiny random checkpoint written here)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from body4d_core.errors import MissingWeightsError, WeightsMismatchError
from body4d_core.sam3 import load_sam3
from body4d_core.testing.sam3 import save_tiny_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("models") / "sam3")


def test_every_weight_comes_from_the_checkpoint(ckpt):
    sd = load_file(str(ckpt / "model.safetensors"))
    assert {k.split(".")[0] for k in sd} == {"detector_model", "tracker_model", "tracker_neck"}
    bundle = load_sam3(ckpt, device="cpu", dtype="auto")
    assert bundle.dtype == torch.float32 and bundle.device.type == "cpu"
    src = {}
    for k, v in bundle.tracker.state_dict().items():  # the documented key mapping, checked tensor by tensor
        if k.startswith("vision_encoder.backbone."):
            src[k] = sd["detector_model." + k]
        elif k.startswith("vision_encoder.neck."):
            src[k] = sd["tracker_neck." + k[len("vision_encoder.neck."):]]
        else:
            src[k] = sd["tracker_model." + k]
        assert torch.equal(v, src[k]), k
    for k, v in bundle.detector.state_dict().items():
        assert torch.equal(v, sd["detector_model." + k]), k
    assert bundle.detector.vision_encoder.backbone is bundle.tracker.vision_encoder.backbone
    assert bundle.processor.video_processor.size["height"] == 112  # defaults when no video processor file
    assert bundle.detector_processor.tokenizer("person")["input_ids"]


def test_tracker_only_and_cpu_precision(ckpt, caplog):
    bundle = load_sam3(ckpt, device="cpu", dtype="bf16", with_detector=False)
    assert bundle.detector is None and bundle.dtype == torch.float32
    assert next(bundle.tracker.parameters()).dtype == torch.float32
    assert "fp32 on the CPU" in caplog.text


def test_missing_and_broken_checkpoints(tmp_path, ckpt):
    with pytest.raises(MissingWeightsError, match=r"missing config\.json, model\.safetensors.*setup --models sam3"):
        load_sam3(tmp_path / "nowhere", device="cpu")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((ckpt / "config.json").read_text())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file" * 10)
    with pytest.raises(WeightsMismatchError, match="could not load SAM-3"):
        load_sam3(broken, device="cpu", with_detector=False)
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text((ckpt / "config.json").read_text())
    sd = load_file(str(ckpt / "model.safetensors"))
    save_file({k: v for k, v in sd.items() if "memory_attention" not in k}, str(partial / "model.safetensors"))
    with pytest.raises(WeightsMismatchError, match=r"not a complete facebook/sam3 checkpoint: \d+ "
                                                    r"Sam3TrackerVideoModel weights are missing"):
        load_sam3(partial, device="cpu", with_detector=False)
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "config.json").write_text('{"model_type": "bert"}')
    (wrong / "model.safetensors").write_bytes((ckpt / "model.safetensors").read_bytes())
    with pytest.raises(WeightsMismatchError, match="transformers-format facebook/sam3"):
        load_sam3(wrong, device="cpu", with_detector=False)
