"""Model folders: resolution, actionable missing-weights errors, verification."""

import pytest

from body4d_core import weights
from body4d_core.errors import MissingWeightsError


def make_files(root, spec, skip=()):
    d = root / spec.folder / spec.subdir
    for rel in weights.expected_files(spec):
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
        for rel in weights.expected_files(spec):
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


# --------------------------------------------------------------------------- weight files, setup without network


def test_diffusion_vas_configs_without_weights_are_missing(tmp_path):
    spec = weights.get_spec("diffusion_vas_amodal")
    d = tmp_path / spec.folder / spec.subdir
    for rel in spec.required:  # every config, no weight file
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text("{}")
    with pytest.raises(MissingWeightsError, match=r"incomplete: missing unet/diffusion_pytorch_model.safetensors "
                                                  r"\(or .*unet/diffusion_pytorch_model.bin"):
        weights.resolve_model_dir("diffusion_vas_amodal", [tmp_path])
    for rel in ("unet/diffusion_pytorch_model.fp16.safetensors", "vae/diffusion_pytorch_model.bin",
                "image_encoder/model.safetensors"):  # any accepted name per part
        (d / rel).write_bytes(b"x")
    assert weights.resolve_model_dir("diffusion_vas_amodal", [tmp_path]) == d


def test_models_command_reports_config_only_folders_missing(tmp_path, capsys):
    from body4d_core import cli

    spec = weights.get_spec("diffusion_vas_completion")
    for rel in spec.required:
        p = tmp_path / spec.folder / spec.subdir / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("{}")
    make_files(tmp_path, weights.get_spec("moge"))
    assert cli.main(["models", "--root", str(tmp_path)]) == 1
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:] if line[:1] != " "}
    assert lines["moge"].split()[1] == "ok"
    assert lines["diffusion_vas_completion"].split()[1] == "missing"
    assert "vae/diffusion_pytorch_model.safetensors" in lines["diffusion_vas_completion"]


def _offline(repo_id, **kwargs):
    from huggingface_hub.errors import LocalEntryNotFoundError

    raise LocalEntryNotFoundError("An error happened while trying to locate the files on the Hub and we cannot find "
                                  "the requested files in the local cache.\n" + "traceback line\n" * 100)


def test_setup_offline_tries_every_model_and_ends_with_a_table(tmp_path, monkeypatch, capsys):
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError

    from body4d_core import cli

    tried = []

    def fake(repo_id, local_dir, allow_patterns=None, token=None):
        tried.append(repo_id)
        if repo_id == "facebook/sam3":
            err = GatedRepoError.__new__(GatedRepoError)  # the real class; its __init__ wants an HTTP response
            Exception.__init__(err, "403 Client Error. Cannot access gated repo")
            raise err
        if repo_id == "Ruicheng/moge-2-vitl-normal":  # this one arrives
            (tmp_path / "models" / "moge" / "moge-2-vitl-normal" / "model.pt").write_bytes(b"weights")
            return local_dir
        _offline(repo_id)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    code = cli.main(["setup", "--root", str(tmp_path / "models")])
    out = capsys.readouterr().out
    assert code == 1
    assert tried == [s.repo_id for s in weights.MODEL_SPECS.values()]  # nobody stopped at the first failure
    assert "Traceback" not in out and "traceback line" not in out
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines()[1:len(weights.MODEL_SPECS) + 1]}
    assert rows == {**{n: "failed" for n in weights.MODEL_SPECS}, "moge": "ok"}
    assert "sam3: facebook/sam3 is gated: open https://huggingface.co/facebook/sam3, request access" in out
    assert "cannot reach huggingface.co (offline or blocked) to download facebook/sam-3d-body-dinov3" in out
    spec = weights.get_spec("diffusion_vas_amodal")
    target = tmp_path / "models" / spec.folder / spec.subdir
    assert f"python -m body4d_core setup --models diffusion_vas_amodal" in out
    assert f"from https://huggingface.co/{spec.repo_id}/tree/main into {target}" in out
    assert "unet/diffusion_pytorch_model.safetensors" in out
    # folders created for the failed models are gone; the model that arrived stays
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["moge"]


def test_setup_keeps_folders_that_already_held_files(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", _offline)
    spec = weights.get_spec("sam3d_body")
    d = make_files(tmp_path, spec, skip=("model.ckpt",))  # a partial earlier download
    rows = weights.setup_models(["sam3d_body", "moge"], tmp_path)
    assert [r.status for r in rows] == ["failed", "failed"]
    assert (d / "model_config.yaml").is_file() and not (tmp_path / "moge").exists()
    make_files(tmp_path, weights.get_spec("moge"))
    assert weights.setup_models(["moge"], tmp_path)[0].status == "present"  # no download attempted


def test_connection_errors_found_along_the_cause_chain():
    spec = weights.get_spec("moge")
    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except OSError as inner:
            raise RuntimeError("request failed") from inner
    except RuntimeError as err:
        assert "cannot reach huggingface.co" in str(weights._download_error(spec, err))
