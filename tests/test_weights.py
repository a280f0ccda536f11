"""Model folders: resolution, actionable missing-weights errors, verification."""

import pytest

from body4d_core import weights
from body4d_core.errors import MissingWeightsError


def make_files(root, spec, skip=()):
    d = root / spec.folder / spec.subdir
    for rel in spec.required:
        if rel in skip:
            continue
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(b"x")
    return d


def test_resolves_complete_folder(tmp_path):
    spec = weights.get_spec("sam3d_body")
    d = make_files(tmp_path, spec)
    assert weights.resolve_model_dir("sam3d_body", [tmp_path]) == d
    assert weights.resolve_model_dir("sam3d_body", [tmp_path / "sam3d_body"]) == d
    assert weights.resolve_model_dir("sam3d_body", explicit=d) == d


def test_missing_weights_message_names_files_folder_command(tmp_path):
    with pytest.raises(MissingWeightsError) as err:
        weights.resolve_model_dir("sam3d_body", [tmp_path])
    msg = str(err.value)
    assert "model.ckpt" in msg and "assets/mhr_model.pt" in msg
    assert str(tmp_path / "sam3d_body" / "sam-3d-body-dinov3") in msg
    assert "python -m body4d_core setup --models sam3d_body" in msg
    assert "gated" in msg and "HF_TOKEN" in msg


def test_partial_weights_are_reported(tmp_path):
    spec = weights.get_spec("sam3d_body")
    make_files(tmp_path, spec, skip=("assets/mhr_model.pt",))
    with pytest.raises(MissingWeightsError, match=r"are incomplete: missing assets/mhr_model.pt"):
        weights.resolve_model_dir("sam3d_body", [tmp_path])


def test_verify_rejects_corrupt_safetensors(tmp_path):
    spec = weights.get_spec("sam3")
    d = make_files(tmp_path, spec)
    with pytest.raises(MissingWeightsError, match="model.safetensors is corrupt"):
        weights.verify("sam3", d)


def test_unknown_model():
    with pytest.raises(Exception, match="unknown model 'nope'"):
        weights.get_spec("nope")
