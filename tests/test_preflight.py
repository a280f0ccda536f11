"""Checks made before anything is decoded: models, output folder, option values, points file and coordinates."""

import errno
import json
import os
import subprocess
import sys

import pytest

from body4d_core import preflight, weights
from body4d_core.atomic import OutputWriteError
from body4d_core.errors import InputError, MissingWeightsError
from body4d_core.pipeline import PipelineOptions
from body4d_core.video import LoadOptions

from .media import REPO

SAMPLE = REPO / "samples" / "cartoon_dancer_81f.mp4"  # 350x350, 81 frames


def fake_models(root, names):
    """Folders whose files exist (content is not read by the checks)."""
    for name in names:
        spec = weights.get_spec(name)
        for rel in weights.expected_files(spec):
            p = root / spec.folder / spec.subdir / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"x")


def points(x, y, image_size=None):
    doc = {"version": 1, "objects": [{"id": 1, "points": [{"frame": 0, "x": x, "y": y, "label": 1}]}]}
    if image_size:
        doc["image_size"] = image_size
    return json.dumps(doc)


# --------------------------------------------------------------------------- models


def test_every_missing_model_is_listed_in_one_error(tmp_path):
    fake_models(tmp_path, ["sam3"])
    with pytest.raises(MissingWeightsError) as err:
        preflight.check_models(PipelineOptions(models_root=tmp_path))
    msg = str(err.value)
    assert msg.startswith("4 model(s) needed by this run are missing:")
    for name in ("diffusion_vas_amodal", "diffusion_vas_completion", "depth_anything", "sam3d_body"):
        spec = weights.get_spec(name)
        assert f"python -m body4d_core setup --models {name}" in msg
        assert str(tmp_path / spec.folder / spec.subdir) in msg
    assert "sam3 weights" not in msg.replace("sam3d_body", "")


def test_skipped_stages_need_no_weights_and_moge_is_a_warning(tmp_path):
    fake_models(tmp_path, ["sam3", "sam3d_body"])
    warnings = preflight.check_models(PipelineOptions(models_root=tmp_path, amodal=False))
    assert len(warnings) == 1 and "no MoGe-2 weights" in warnings[0] and "f = sqrt(H^2 + W^2)" in warnings[0]
    assert preflight.check_models(PipelineOptions(models_root=tmp_path, amodal=False, fov_mode="none")) == []
    assert preflight.check_models(PipelineOptions(models_root=tmp_path, amodal=False, manual_fov=50.0)) == []
    with pytest.raises(MissingWeightsError, match="a model needed by this run is missing:\n- diffusion_vas_amodal"):
        fake_models(tmp_path, ["diffusion_vas_completion", "depth_anything"])
        preflight.check_models(PipelineOptions(models_root=tmp_path))


# --------------------------------------------------------------------------- output folder


def test_output_folder_created_and_probe_removed(tmp_path):
    out = tmp_path / "a" / "b"
    preflight.check_output_dir(out)
    assert out.is_dir() and list(out.iterdir()) == []


def test_output_under_a_file_is_one_sentence(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputWriteError, match=r"cannot create the output folder .*file/out: a file stands in its path"):
        preflight.check_output_dir(tmp_path / "file" / "out")
    with pytest.raises(OutputWriteError, match="is an existing file"):
        preflight.check_output_dir(tmp_path / "file")


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_read_only_output_is_one_sentence(tmp_path, monkeypatch, code):
    real_open = os.open

    def refuse(path, *args, **kwargs):  # root ignores permission bits: simulate the read-only folder
        if ".body4d-probe" in str(path):
            raise OSError(code, os.strerror(code), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(OutputWriteError, match="the folder is not writable"):
        preflight.check_output_dir(tmp_path / "out")


def test_really_read_only_folder(tmp_path):
    if os.geteuid() == 0:  # root writes anyway; the monkeypatched test above covers the message
        return
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(OutputWriteError, match="not writable"):
            preflight.check_output_dir(ro / "out")
    finally:
        ro.chmod(0o700)


# --------------------------------------------------------------------------- option values


@pytest.mark.parametrize("change, text", [
    ({"batch_size": 0}, "--batch_size must be >= 1"),
    ({"max_people": 0}, "--max_people must be >= 1"),
    ({"detect_threshold": 1.5}, "--detect_threshold must be in 0..1"),
    ({"manual_fov": 200.0}, "--manual_fov must be in degrees"),
    ({"render_mode": "wireframe"}, "--render_mode must be one of overlay, mesh"),
    ({"video": LoadOptions(select_every_nth=0)}, "--select_every_nth must be >= 1"),
    ({"video": LoadOptions(max_side=4)}, "--max_side must be 0 (keep) or at least 16"),
    ({"amodal_settings": {"detection_resolution": (60, 64)}}, "--amodal_resolution H W must be multiples of 8"),
])
def test_bad_option_values(change, text):
    with pytest.raises(InputError, match=text.replace("(", r"\(").replace(")", r"\)")):
        preflight.check_options(PipelineOptions(**change))


# --------------------------------------------------------------------------- points


def test_points_file_not_found_folder_and_literal(tmp_path):
    with pytest.raises(InputError, match="--points file not found: nope.json"):
        preflight.read_points("nope.json")
    with pytest.raises(InputError, match="is a folder"):
        preflight.read_points(str(tmp_path))
    f = tmp_path / "clicks.txt"  # any suffix: the file's content is what counts
    f.write_text(points(5, 5))
    assert preflight.read_points(str(f)) == points(5, 5)
    assert preflight.read_points(" " + points(5, 5)) == " " + points(5, 5)
    assert preflight.read_points(None) is None


def test_points_outside_the_loaded_frames_explain_the_coordinate_space():
    with pytest.raises(InputError) as err:
        preflight.check_points(points(300, 100), (96, 96), (350, 350), 4)
    msg = str(err.value)
    assert "point (300, 100) is outside the 96x96 frame" in msg
    assert "pixel coordinates of the frames as loaded (96x96, the video is 350x350 before --max_side)" in msg
    assert '"image_size": [height, width]' in msg and "[350, 350]" in msg


def test_points_with_image_size_are_accepted_and_without_it_warned():
    assert preflight.check_points(points(300, 100, [350, 350]), (96, 96), (350, 350), 4) == []
    warn = preflight.check_points(points(30, 10), (96, 96), (350, 350), 4)
    assert len(warn) == 1 and "no image_size" in warn[0] and '"image_size": [350, 350]' in warn[0]
    assert preflight.check_points(points(30, 10), (350, 350), (350, 350), 4) == []  # no scaling, nothing to say


def test_points_other_errors_pass_unchanged():
    with pytest.raises(InputError, match="frame 9 is past the clip"):
        preflight.check_points(json.dumps({"objects": [{"id": 1, "points": [{"frame": 9, "x": 1, "y": 1,
                                                                             "label": 1}]}]}), (96, 96), (96, 96), 4)


def test_run_preflight_plans_without_decoding(tmp_path, monkeypatch):
    from body4d_core import video

    fake_models(tmp_path / "m", ["sam3", "sam3d_body", "moge"])
    monkeypatch.setattr(video, "decode_into", lambda *a, **k: pytest.fail("preflight decoded frames"))
    opts = PipelineOptions(video=LoadOptions(frame_load_cap=5, max_side=100), amodal=False,
                           models_root=tmp_path / "m", points_json=points(90, 90))
    pre = preflight.run_preflight(SAMPLE, tmp_path / "out", opts)
    assert (pre.num_frames, pre.image_size, pre.source_size) == (5, (100, 100), (350, 350))
    assert pre.warnings and "no image_size" in pre.warnings[0]
    with pytest.raises(InputError, match="select no frame|past|no frame"):
        preflight.run_preflight(SAMPLE, tmp_path / "out",
                                PipelineOptions(video=LoadOptions(skip_first_frames=500), amodal=False,
                                                models_root=tmp_path / "m"))


def test_cli_fails_early_and_leaves_nothing(tmp_path):
    fake_models(tmp_path / "m", list(weights.MODEL_SPECS))
    (tmp_path / "file").write_text("x")
    cases = [
        (["--points", "nope.json"], "error: --points file not found: nope.json"),
        (["--points", points(300, 100)], "outside the 64x64 frame; points are pixel coordinates"),
        (["-o", str(tmp_path / "file" / "out")], "a file stands in its path"),
    ]
    for extra, text in cases:
        res = subprocess.run([sys.executable, "-m", "body4d_core", "run", "-i", str(SAMPLE), "--max_side", "64",
                              "--models_root", str(tmp_path / "m"), "-o", str(tmp_path / "out"), *extra],
                             cwd=REPO, capture_output=True, text=True, timeout=120)
        assert res.returncode == 2 and text in res.stderr, res.stderr
        assert "Traceback" not in res.stderr and "stage decode" not in res.stderr
        assert not (tmp_path / "out").exists()
