"""Faults during a run: a full disk at each output's write, an interrupt at each stage.

The model stages are replaced by quick stand-ins that return real data objects (one tracked
person, sphere meshes), so every write, export, the render and run.json run for real on a
small clip in seconds. After each fault: the error is one sentence naming the file, every file
left is complete and loadable (or absent), no temporary file is left, run.json says what
happened and where, and the folder lock is released.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import av
import numpy as np
import pytest

from body4d_core import pipeline as pl
from body4d_core.atomic import TMP_TAG, OutputWriteError
from body4d_core.data import Bodies, BodyFlag, Camera, Clip, Prompts, Tracks
from body4d_core.errors import InterruptedError_
from body4d_core.manifest import LOCK_NAME, STAGES
from body4d_core.runtime import CallbackHooks

from .tiny_runs import SAMPLE, small_options

LOADERS = {"clip.npz": Clip, "prompts.npz": Prompts, "tracks.npz": Tracks, "camera.npz": Camera,
           "bodies_raw.npz": Bodies, "bodies.npz": Bodies, "params.npz": Bodies, "params_camera.npz": Camera}
# every single-file output of a run, in the order the pipeline writes them
FAULT_TARGETS = ("clip.npz", "prompts.npz", "tracks.npz", "mask_overlay.mp4", "camera.npz", "bodies_raw.npz",
                 "bodies.npz", "render_4d.mp4")
# files inside the export folders and the parameter exports (written beside the render)
EXPORT_TARGETS = ("params.npz", "params_camera.npz", "meshes/person_1/00000000.ply",
                  "meshes/person_1/00000001.ply", "glb/body4d_person_1.glb")


def sphere_bodies(tracks: Tracks) -> Bodies:
    """One body per track on every frame: a small sphere mesh 3 m in front of the camera."""
    from body4d_core.testing.checkpoints import uv_sphere

    v, f = uv_sphere(rows=8, cols=10)
    n, t = tracks.num_objects, tracks.num_frames
    b = Bodies.empty(tracks.obj_ids.tolist(), t, tracks.image_size)
    params = {k: val.copy() for k, val in b.params.items()}
    params["cam_t"][:] = [0.0, 0.0, 3.0]
    verts = np.broadcast_to(v.numpy()[None, None] * 0.3, (n, t, v.shape[0], 3)).astype(np.float32)
    return b.replace(params=params, flags=np.full((n, t), BodyFlag.VISIBLE, np.uint8), vertices=verts,
                     faces=f.numpy().astype(np.int32))


@pytest.fixture
def quick_stages(monkeypatch):
    """SAM-3, SAM-3D-Body and the smoother replaced by stand-ins returning real data objects."""
    from body4d_core.prompts import parse_prompts

    def prompts(frames, clip, opts, hooks, *cache):
        return parse_prompts(opts.points_json, clip.image_size, clip.num_frames), object()

    def tracks(bundle, frames, prompts, opts, hooks):
        masks = np.zeros((1, frames.shape[0], *frames.shape[1:3]), bool)
        masks[:, :, 16:48, 20:44] = True
        for t in range(frames.shape[0]):
            hooks.check_interrupt()
            hooks.progress(t + 1, frames.shape[0])
        return Tracks.from_masks([1], masks)

    def bodies(frames, tracks, amodal, camera, opts, hooks, *cache):
        hooks.check_interrupt()
        return sphere_bodies(tracks), object()

    monkeypatch.setattr(pl, "stage_prompts", prompts)
    monkeypatch.setattr(pl, "stage_tracks", tracks)
    monkeypatch.setattr(pl, "stage_bodies", bodies)
    monkeypatch.setattr(pl, "_smooth", lambda b, opts, model, camera: b.replace(
        params={**b.params, "cam_t": b.params["cam_t"] + np.float32(0.01)}))


def opts(tmp_path):
    return small_options(tmp_path / "no-models", frames=3, side=64, write_glb=True)


def check_left_files(out: Path) -> dict:
    """Every file left is complete and loadable; no temporary, no lock; returns run.json."""
    assert not [p for p in out.rglob("*") if TMP_TAG in p.name], "a temporary file was left"
    assert not (out / LOCK_NAME).exists()
    for p in out.rglob("*"):
        if p.suffix == ".npz":
            LOADERS[p.name].load_npz(p)
        elif p.suffix == ".mp4":
            with av.open(str(p)) as c:
                assert sum(1 for _ in c.decode(video=0)) == 3
        elif p.suffix == ".ply":
            import trimesh

            assert len(trimesh.load(p, process=False).vertices) > 0
        elif p.suffix == ".glb":
            import trimesh

            assert trimesh.load(p).geometry
    data = json.loads((out / "run.json").read_text())
    for name, entry in data["files"].items():  # what run.json says was written is there, at that size
        sizes = sum((out / rel).stat().st_size for rel in entry["paths"])
        assert sizes == entry["bytes"], name
    return data


def test_a_complete_quick_run(tmp_path, quick_stages):
    out = tmp_path / "out"
    summary = pl.run_pipeline(SAMPLE, out, opts(tmp_path))
    data = check_left_files(out)
    assert data["status"] == "complete" and "stopped_at" not in data
    assert list(data["stages"]) == ["decode", "sam3", "amodal", "camera", "bodies", "smooth", "world", "render"]
    written = {Path(e["path"]).name for e in data["files"].values()}
    assert written == {*FAULT_TARGETS, "params.npz", "params_camera.npz", "meshes", "glb"}
    assert {t for t in EXPORT_TARGETS if (out / t).is_file()} == set(EXPORT_TARGETS)
    assert summary.files["render"] == out / "render_4d.mp4"


@pytest.mark.parametrize("target", FAULT_TARGETS + EXPORT_TARGETS)
def test_disk_full_at_each_write(tmp_path, quick_stages, monkeypatch, target):
    real_replace = os.replace

    def replace(src, dst, *a, **k):  # the rename that would publish the file: the disk filled before it
        if Path(dst).as_posix().endswith("/" + target):
            Path(src).write_bytes(b"partial")  # what a full disk leaves in the temporary file
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", replace)
    out = tmp_path / "out"
    with pytest.raises(OutputWriteError) as err:
        pl.run_pipeline(SAMPLE, out, opts(tmp_path))
    msg = str(err.value)
    assert msg == f"the disk is full while writing {out / target}: free space or choose another output folder"
    assert not (out / target).exists()
    data = check_left_files(out)
    assert data["status"] == "failed" and data["error"] == msg
    assert data["stopped_at"] in ("decode", "sam3", "camera", "bodies", "smooth", "world", "render")
    assert target not in {Path(e["path"]).name for e in data["files"].values()}
    if "/" in target:  # a folder export: run.json does not list the folder as written
        assert Path(target).parts[0] not in {Path(e["path"]).name for e in data["files"].values()}


@pytest.mark.parametrize("stage", ["sam3", "camera", "bodies", "render"])
def test_interrupt_at_each_stage(tmp_path, quick_stages, stage):
    seen = []

    def hooks_for(name):
        def check():
            current = json.loads((out / "run.json").read_text())["current_stage"]
            if current == stage:
                seen.append(name)
                raise InterruptedError_("interrupted (SIGINT)")
        return CallbackHooks(on_check=check)

    out = tmp_path / "out"
    with pytest.raises(InterruptedError_):
        pl.run_pipeline(SAMPLE, out, opts(tmp_path), hooks_for)
    assert seen
    data = check_left_files(out)
    assert data["status"] == "interrupted" and data["stopped_at"] == stage and "error" not in data
    done = list(data["stages"])
    assert stage not in done and done == [s for s in STAGES if s in done]


def test_resume_after_an_interrupt_reuses_the_finished_stages(tmp_path, quick_stages, monkeypatch):
    out = tmp_path / "out"

    def hooks_for(name):
        def check():
            if json.loads((out / "run.json").read_text())["current_stage"] == "bodies":
                raise KeyboardInterrupt
        return CallbackHooks(on_check=check)

    with pytest.raises(KeyboardInterrupt):
        pl.run_pipeline(SAMPLE, out, opts(tmp_path), hooks_for)
    first = json.loads((out / "run.json").read_text())
    assert first["status"] == "interrupted" and first["stopped_at"] == "bodies"
    tracks_before = (out / "tracks.npz").stat().st_mtime_ns

    with pytest.raises(Exception, match="pass --overwrite .* --resume"):
        pl.run_pipeline(SAMPLE, out, opts(tmp_path))
    monkeypatch.setattr(pl, "stage_tracks", lambda *a: pytest.fail("a finished stage ran again"))
    summary = pl.run_pipeline(SAMPLE, out, opts(tmp_path), resume=True)
    assert summary.reused == ["sam3", "camera"]
    assert (out / "tracks.npz").stat().st_mtime_ns == tracks_before
    data = check_left_files(out)
    assert data["status"] == "complete" and data["resumed_from"] == ["amodal", "camera", "decode", "sam3"]
    assert data["stages"]["sam3"]["reused"] is True and data["stages"]["bodies"]["reused"] is False


def test_overwrite_leaves_no_stale_file_from_a_longer_run(tmp_path, quick_stages):
    out = tmp_path / "out"
    pl.run_pipeline(SAMPLE, out, small_options(tmp_path, frames=4, side=64))
    assert len(list((out / "meshes").rglob("*.ply"))) == 4
    (out / "amodal.npz").write_bytes(b"stale amodal of another video")
    pl.run_pipeline(SAMPLE, out, opts(tmp_path), overwrite=True)  # 3 frames now
    assert len(list((out / "meshes").rglob("*.ply"))) == 3  # no mesh of frame 4 survives
    assert not (out / "amodal.npz").exists()
    check_left_files(out)


def test_amodal_statistics_are_logged_as_a_sentence():
    from body4d_core.amodal.stage import AmodalStats

    stats = AmodalStats(timings={"depth": 1.25, "detect": 3.5}, segments={1: [(0, 4), (9, 12)], 2: []},
                        detected={1: np.array([True, True, False, True]), 2: np.zeros(4, bool)}, completed_frames=7)
    text = pl.describe_amodal(stats)
    assert text == ("amodal: 3 occluded person-frame(s) found, 2 segment(s) completed (7 frames); "
                    "depth 1.2 s, detect 3.5 s")
    assert "AmodalStats(" not in text


def test_stages_collect_only_what_the_run_allocated(tmp_path, quick_stages, monkeypatch):
    import gc

    seen = []
    tracks = pl.stage_tracks

    def counting(*a):
        seen.append(gc.get_freeze_count())  # what lived before the run is frozen: _free() skips it
        return tracks(*a)

    monkeypatch.setattr(pl, "stage_tracks", counting)
    summary = pl.run_pipeline(SAMPLE, tmp_path / "out", opts(tmp_path))
    assert seen and seen[0] > 1000
    assert gc.get_freeze_count() == 0  # unfrozen after the run
    assert {"sam3_prompts", "sam3_propagate", "sam3_release"} <= set(summary.timings)
