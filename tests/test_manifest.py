"""run.json, the folder lock, default output names, and --overwrite / --resume decisions."""

import json
import os
import socket
import subprocess
import sys

import pytest

from body4d_core import manifest as mf
from body4d_core.pipeline import PipelineOptions
from body4d_core.video import LoadOptions


@pytest.fixture
def video(tmp_path_factory):
    p = tmp_path_factory.mktemp("video") / "clip.mp4"
    p.write_bytes(os.urandom(4096))
    return p


def start(folder, video, opts=None, **kw):
    return mf.start_run(folder, video, opts or PipelineOptions(), [], None, **kw)


def finished_run(folder, video, opts=None, stages=("decode", "sam3")):
    """A run that wrote its stage files (real names, small contents) and completed."""
    m = start(folder, video, opts)
    names = {"decode": ["clip"], "sam3": ["prompts", "tracks"], "amodal": ["amodal"], "camera": ["camera"]}
    for stage in stages:
        for name in names[stage]:
            (folder / f"{name}.npz").write_bytes(b"npz")
            m.file_written(name, folder / f"{name}.npz")
        m.stage_done(stage, names[stage], 1.0)
    (folder / "meshes" / "person_1").mkdir(parents=True)
    (folder / "meshes" / "person_1" / "000000.ply").write_text("ply")
    m.file_written("meshes", folder / "meshes")
    m.finish("complete")
    return m


# --------------------------------------------------------------------------- default folder, lock


def test_default_output_dir_is_named_after_the_video_and_unique(tmp_path):
    base = tmp_path / "outputs"
    assert mf.default_output_dir("/x/dance.mp4", base) == base / "dance"
    (base / "dance").mkdir(parents=True)
    assert mf.default_output_dir("dance.mp4", base) == base / "dance"  # empty: usable
    (base / "dance" / "run.json").write_text("{}")
    assert mf.default_output_dir("dance.mp4", base) == base / "dance_2"
    (base / "dance_2").mkdir()
    (base / "dance_2" / "x").write_text("")
    assert mf.default_output_dir("dance.mp4", base) == base / "dance_3"


def test_lock_refuses_a_second_run_and_takes_over_a_dead_ones(tmp_path):
    first = mf.RunLock(tmp_path)
    first.acquire()
    owner = json.loads((tmp_path / mf.LOCK_NAME).read_text())
    assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
    with pytest.raises(mf.OutputFolderError, match=rf"another run \(process {os.getpid()} on .*\) is writing into"):
        mf.RunLock(tmp_path).acquire()
    first.release()
    assert not (tmp_path / mf.LOCK_NAME).exists()

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / mf.LOCK_NAME).write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    second = mf.RunLock(tmp_path)
    second.acquire()  # the stale lock of a finished process is replaced
    assert json.loads((tmp_path / mf.LOCK_NAME).read_text())["pid"] == os.getpid()
    second.release()

    (tmp_path / mf.LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "another-host"}))
    with pytest.raises(mf.OutputFolderError, match="another-host"):  # other hosts' locks are never guessed stale
        mf.RunLock(tmp_path).acquire()


# --------------------------------------------------------------------------- manifest content


def test_manifest_records_inputs_options_files_and_status(tmp_path, video):
    out = tmp_path / "out"
    out.mkdir()
    opts = PipelineOptions(video=LoadOptions(max_side=64), amodal=False, models_root=tmp_path)
    m = finished_run(out, video, opts)
    data = json.loads((out / "run.json").read_text())
    assert data["status"] == "complete" and data["ended"] and "stopped_at" not in data
    assert data["inputs"]["video"]["size"] == 4096 and data["inputs"]["video"]["path"] == str(video.resolve())
    assert data["options"]["video"]["max_side"] == 64 and data["options"]["amodal"] is False
    assert data["stages"]["sam3"]["files"] == ["prompts", "tracks"]
    assert data["files"]["meshes"] == {"path": "meshes", "paths": ["meshes/person_1/000000.ply"], "bytes": 3}
    assert "torch" in data["packages"]
    m.set_stage("bodies")
    m.finish("interrupted")
    data = json.loads((out / "run.json").read_text())
    assert data["status"] == "interrupted" and data["stopped_at"] == "bodies"


def test_stage_keys_change_from_the_changed_stage_on():
    video = {"size": 1, "sha256_ends": "a"}
    base = mf._plain(PipelineOptions())
    keys = mf.stage_keys(video, base)
    other = mf.stage_keys(video, {**base, "fov_mode": "all"})
    assert [keys[s] == other[s] for s in mf.STAGES] == [True, True, True, False, False, False, False, False]
    world = mf.stage_keys(video, {**base, "world_floor": "feet"})  # only the world stage and what follows
    assert [keys[s] == world[s] for s in mf.STAGES] == [True] * 6 + [False, False]
    assert mf.stage_keys({"size": 2, "sha256_ends": "a"}, base)["decode"] != keys["decode"]


def test_stage_keys_follow_the_run_profile():
    from body4d_core.profile import RunProfile

    video = {"size": 1, "sha256_ends": "a"}
    keys = mf.stage_keys(video, mf._plain(PipelineOptions()))

    def changed(**profile):
        other = mf.stage_keys(video, mf._plain(PipelineOptions(profile=RunProfile(**profile))))
        return [keys[s] != other[s] for s in mf.STAGES]

    assert changed(backbone_fp8=True) == [False] * 4 + [True] * 4  # bodies and what follows
    assert changed(precision="fp32") == [False] + [True] * 7  # SAM-3 on
    assert changed(amodal_accel="reference") == [False, False] + [True] * 6
    assert changed(load_threads=3) == [False] * 8  # how weights are read changes no result


# --------------------------------------------------------------------------- refuse / overwrite / resume


def test_a_folder_with_results_is_refused(tmp_path, video):
    finished_run(tmp_path, video)
    with pytest.raises(mf.OutputFolderError, match=r"already holds the results of another run of .*clip.mp4 "
                                                    r"\(status complete\): pass --overwrite .* --resume"):
        start(tmp_path, video)
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "amodal.npz").write_bytes(b"old")
    with pytest.raises(mf.OutputFolderError, match=r"results of an earlier run \(amodal.npz\)"):
        start(legacy, video)
    with pytest.raises(mf.OutputFolderError, match="without a run.json, so they cannot be resumed"):
        start(legacy, video, resume=True)


def test_overwrite_removes_exactly_the_old_runs_files(tmp_path, video):
    finished_run(tmp_path, video)
    (tmp_path / "notes.txt").write_text("mine")  # not ours: kept
    (tmp_path / "meshes" / "readme.txt").write_text("mine too")
    m = start(tmp_path, video, overwrite=True)
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == ["meshes/readme.txt", "notes.txt", "run.json"]
    assert m.data["status"] == "running" and m.data["files"] == {} and m.reuse == {}


def test_overwrite_of_a_legacy_folder_removes_our_names_only(tmp_path, video):
    for name in ("amodal.npz", "render_4d.mp4"):
        (tmp_path / name).write_bytes(b"old")
    (tmp_path / "glb").mkdir()
    (tmp_path / "glb" / "body4d_person_1.glb").write_bytes(b"old")
    (tmp_path / "keep.txt").write_text("x")
    start(tmp_path, video, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt", "run.json"]


def test_resume_reuses_matching_stages_and_removes_the_rest(tmp_path, video):
    opts = PipelineOptions(amodal=False)
    finished_run(tmp_path, video, opts, stages=("decode", "sam3", "amodal", "camera"))
    m = start(tmp_path, video, PipelineOptions(amodal=False), resume=True)
    assert sorted(m.reuse) == ["amodal", "camera", "decode", "sam3"]
    assert sorted(m.data["files"]) == ["amodal", "camera", "clip", "prompts", "tracks"]
    assert not (tmp_path / "meshes").exists()  # the render outputs always run again

    other = tmp_path / "other"
    other.mkdir()
    finished_run(other, video, opts, stages=("decode", "sam3", "amodal", "camera"))
    m = start(other, video, PipelineOptions(amodal=False, detect_threshold=0.3), resume=True)
    assert sorted(m.reuse) == ["decode"]  # sam3 options changed: it and everything after it run again
    assert sorted(p.name for p in other.iterdir()) == ["clip.npz", "run.json"]


def test_resume_stops_at_a_stage_whose_file_vanished(tmp_path, video):
    finished_run(tmp_path, video, stages=("decode", "sam3", "amodal", "camera"))
    (tmp_path / "tracks.npz").unlink()
    m = start(tmp_path, video, resume=True)
    assert sorted(m.reuse) == ["decode"]


def test_resume_of_another_video_reuses_nothing(tmp_path, video):
    finished_run(tmp_path, video)
    other = video.parent / "other.mp4"
    other.write_bytes(os.urandom(4096))
    m = start(tmp_path, other, resume=True)
    assert m.reuse == {} and not (tmp_path / "prompts.npz").exists() and not (tmp_path / "clip.npz").exists()
