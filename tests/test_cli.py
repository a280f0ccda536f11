"""The headless command line."""

import subprocess
import sys

from body4d_core.data import Clip

from .media import DANCER, REPO, need


def run(*args):
    return subprocess.run([sys.executable, "-m", "body4d_core", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_help_lists_commands():
    res = run("--help")
    assert res.returncode == 0
    for cmd in ("load", "setup", "models"):
        assert cmd in res.stdout


def test_load_writes_frames_and_clip(tmp_path):
    res = run("load", "-i", str(need(DANCER)), "-o", str(tmp_path), "--frame_load_cap", "6",
              "--select_every_nth", "2", "--max_side", "100", "--image_format", "png")
    assert res.returncode == 0, res.stderr
    pngs = sorted((tmp_path / "images").glob("*.png"))
    assert len(pngs) == 6
    clip = Clip.load_npz(tmp_path / "clip.npz")
    assert clip.image_size == (100, 100) and clip.frame_indices.tolist() == [0, 2, 4, 6, 8, 10]
    assert clip.fps == 8.0


def test_load_bad_video_exits_with_clear_error(tmp_path):
    res = run("load", "-i", str(tmp_path / "missing.mp4"), "-o", str(tmp_path))
    assert res.returncode == 2
    assert "error: video not found" in res.stderr


def test_models_reports_missing(tmp_path):
    res = run("models", "--root", str(tmp_path))
    assert res.returncode == 1
    assert "sam3d_body" in res.stdout and "missing" in res.stdout


def test_run_defaults_to_the_bundled_sample():
    from body4d_core.cli import SAMPLE_VIDEO, build_parser

    args = build_parser().parse_args(["run"])
    assert args.input_video == str(SAMPLE_VIDEO) and SAMPLE_VIDEO.is_file()
    assert args.out == "outputs/run"
