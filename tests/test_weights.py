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


def test_download_passes_repo_token_patterns_then_verifies(tmp_path, monkeypatch):
    """download() asks huggingface_hub for the right repo/folder/files with HF_TOKEN, then verifies."""
    import huggingface_hub

    calls = []

    def fake_snapshot_download(repo_id, local_dir, allow_patterns=None, token=None):
        calls.append((repo_id, local_dir, allow_patterns, token))
        spec = weights.get_spec("sam3d_body")
        for rel in spec.required:
            p = tmp_path / "models" / spec.folder / spec.subdir / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"x")
        return local_dir

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    folder = weights.download("sam3d_body", tmp_path / "models")
    assert folder == tmp_path / "models" / "sam3d_body" / "sam-3d-body-dinov3"
    assert calls == [("facebook/sam-3d-body-dinov3", str(folder), None, "hf_test")]


def test_download_incomplete_or_gated(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError

    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: None)
    with pytest.raises(MissingWeightsError, match="are incomplete"):
        weights.download("moge", tmp_path)

    class GatedForTest(GatedRepoError):
        def __init__(self):  # the real one wants an HTTP response object
            Exception.__init__(self, "403 gated")

    def gated(*a, **k):
        raise GatedForTest()

    monkeypatch.setattr(huggingface_hub, "snapshot_download", gated)
    with pytest.raises(Exception, match="is gated: open https://huggingface.co/facebook/sam3, request access"):
        weights.download("sam3", tmp_path)
