"""The whole headless pipeline on the real sample clip with tiny random checkpoints.

Every stage's real loading and inference code runs (tiny configs, random weights), so the
outputs are meaningless numbers, but their structure is checked exactly: ids, frame counts,
files written and read back.
"""

import json
import subprocess
import sys

import av
import numpy as np
import pytest

from body4d_core.data import Amodal, Bodies, BodyFlag, Camera, Tracks
from body4d_core.pipeline import PipelineOptions, run_pipeline
from body4d_core.testing.checkpoints import write_tiny_checkpoints
from body4d_core.video import LoadOptions

from .media import REPO

DANCER = REPO / "samples" / "cartoon_dancer_81f.mp4"  # in the repository


FRAMES = 6
SIDE = 128


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    write_tiny_checkpoints(root)
    return root


def decoded_frames(path):
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def test_points_with_amodal(models, tmp_path):
    points = {"version": 1, "objects": [
        {"id": 3, "points": [{"frame": 2, "x": 64, "y": 60, "label": 1}, {"frame": 2, "x": 5, "y": 5, "label": 0}]}]}
    opts = PipelineOptions(video=LoadOptions(frame_load_cap=FRAMES, max_side=SIDE), points_json=json.dumps(points),
                           amodal_settings={"steps": 2, "detection_resolution": (64, 64),
                                            "completion_resolution": (64, 64)},
                           models_root=models, batch_size=4)
    summary = run_pipeline(DANCER, tmp_path, opts)
    assert summary.num_frames == FRAMES and summary.obj_ids == [3]
    tracks = Tracks.load_npz(tmp_path / "tracks.npz")
    assert tracks.obj_ids.tolist() == [3] and tracks.num_frames == FRAMES and tracks.image_size == (SIDE, SIDE)
    amodal = Amodal.load_npz(tmp_path / "amodal.npz")
    assert amodal.obj_ids.tolist() == [3] and amodal.occluded.shape == (1, FRAMES)
    camera = Camera.load_npz(tmp_path / "camera.npz")
    assert camera.num_frames == FRAMES and camera.source == "estimated"
    raw = Bodies.load_npz(tmp_path / "bodies_raw.npz")
    smooth = Bodies.load_npz(tmp_path / "bodies.npz")
    assert raw.obj_ids.tolist() == smooth.obj_ids.tolist() == [3]
    observed = (raw.flags & (BodyFlag.VISIBLE | BodyFlag.OCCLUDED)) > 0
    assert observed.sum() == (tracks.present | amodal.occluded).sum()
    assert np.all(smooth.params["shape"][0, observed[0]] == smooth.params["shape"][0, observed[0]][0])  # locked
    assert decoded_frames(tmp_path / "render_4d.mp4") == FRAMES
    assert decoded_frames(tmp_path / "mask_overlay.mp4") == FRAMES
    plys = sorted((tmp_path / "meshes").rglob("*.ply"))
    assert plys and all(p.parent.name in ("3", "person_3", "obj_3", "id_3") for p in plys)
    glbs = list((tmp_path / "glb").glob("*.glb"))
    assert len(glbs) == 1 and "3" in glbs[0].stem
    with np.load(tmp_path / "params.npz") as params:
        assert params.files


def test_cli_auto_detect_without_amodal(models, tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "body4d_core", "run", "-i", str(DANCER), "-o", str(tmp_path),
         "--frame_load_cap", str(FRAMES), "--max_side", str(SIDE), "--models_root", str(models),
         "--detect_threshold", "0", "--max_people", "2", "--no_amodal", "--fov", "none", "--body_mode", "body",
         "--no_glb"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"{FRAMES} frames, people [1" in res.stdout and "render_4d.mp4" in res.stdout
    assert not (tmp_path / "amodal.npz").exists() and not (tmp_path / "glb").exists()
    tracks = Tracks.load_npz(tmp_path / "tracks.npz")
    assert 1 <= tracks.num_objects <= 2 and tracks.obj_ids.tolist() == list(range(1, tracks.num_objects + 1))
    cam = Camera.load_npz(tmp_path / "camera.npz")
    assert cam.source == "default" and cam.intrinsics[0, 0] == pytest.approx(np.hypot(SIDE, SIDE))


def test_missing_weights_stop_with_the_setup_command(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "body4d_core", "run", "-i", str(DANCER), "-o", str(tmp_path / "out"),
         "--frame_load_cap", "2", "--models_root", str(tmp_path / "empty")],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2
    assert "sam3 weights were not found" in res.stderr and "python -m body4d_core setup --models sam3" in res.stderr


def test_camera_falls_back_without_moge_weights(tmp_path):
    from body4d_core.pipeline import stage_camera
    from body4d_core.data import Clip

    clip = Clip(fps=10.0, num_frames=3, image_size=(30, 40))
    notes = []
    cam = stage_camera(np.zeros((3, 30, 40, 3), np.uint8), clip, PipelineOptions(models_root=tmp_path), None, notes)
    assert cam.source == "default" and cam.intrinsics[0, 0] == pytest.approx(50.0)
    assert notes and "no MoGe-2 weights" in notes[0] and "python -m body4d_core setup --models moge" in notes[0]
