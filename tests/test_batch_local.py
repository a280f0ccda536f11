"""The batch without Ray (``--engine local``) on tiny checkpoints: run.json per video, resume, lock, overwrite.

Two 4-frame clips cut from the bundled sample. Each video folder follows the run command's rules:
run.json and the folder lock, no batch markers; a finished video is kept, a stopped one resumes
from its finished stages with the same results, a folder locked by a live process is refused
(and left untouched) while the other videos run, a batch killed mid-video (SIGKILL) resumes from
its run.json, --overwrite runs everything again.
"""

import csv
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from body4d_core.batch.cli import cmd_batch, options_from_args
from body4d_core.batch.jobs import collect_jobs
from body4d_core.cli import parse_batch_args as parse_args
from body4d_core.batch.local import run_local
from body4d_core.batch.outputs import SUMMARY_CSV, SUMMARY_JSON
from body4d_core.batch.worker import VideoWorker
from body4d_core.export import write_mp4
from body4d_core.manifest import LOCK_NAME, read_manifest
from body4d_core.testing.checkpoints import write_tiny_checkpoints
from body4d_core.video import LoadOptions, load_video

from .media import REPO

SAMPLE = REPO / "samples" / "cartoon_dancer_81f.mp4"
STAGE_FILES = ("tracks", "bodies_raw", "bodies")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    write_tiny_checkpoints(root, ["sam3", "sam3d_body"])
    return root


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    for name, start in (("clip_a", 0), ("clip_b", 40)):
        frames, clip = load_video(SAMPLE, LoadOptions(skip_first_frames=start, frame_load_cap=4, max_side=64))
        write_mp4(folder / f"{name}.mp4", frames, clip.fps, clip.image_size)
    return folder


def batch_argv(models):
    return ["--engine", "local", "--models_root", str(models), "--no_amodal", "--fov", "none", "--body_mode", "body",
            "--detect_threshold", "0", "--max_people", "1", "--batch_size", "2", "--no_glb"]


def batch_args(inputs, out, models, *extra):
    return parse_args([*map(str, inputs), "-o", str(out), *batch_argv(models), *extra])


@pytest.fixture(scope="module")
def worker():
    """One in-process worker for the module: its models stay loaded across batches."""
    return VideoWorker("local")


@pytest.fixture(scope="module")
def reference(clips, models, tmp_path_factory):
    """Both clips through the command's own code path (--engine local)."""
    out = tmp_path_factory.mktemp("ref")
    rc = cmd_batch(batch_args([clips], out, models))
    return rc, out


def same_results(a, b):
    for stage in STAGE_FILES:
        x, y = np.load(a / f"{stage}.npz"), np.load(b / f"{stage}.npz")
        assert sorted(x.files) == sorted(y.files)
        for key in x.files:
            assert np.array_equal(x[key], y[key]), (a.name, stage, key)


def test_local_batch_writes_a_manifest_per_video_and_a_summary(reference):
    rc, out = reference
    assert rc == 0
    with open(out / SUMMARY_CSV, newline="") as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    assert [rows[n]["status"] for n in ("clip_a", "clip_b")] == ["done", "done"]
    assert rows["clip_a"]["frames"] == "4" and float(rows["clip_a"]["bodies_s"]) > 0
    data = json.loads((out / SUMMARY_JSON).read_text())
    assert data["counts"] == {"done": 2, "done earlier": 0, "failed": 0, "not run": 0}
    for name in ("clip_a", "clip_b"):
        folder = out / name
        manifest = read_manifest(folder)
        assert manifest["status"] == "complete" and manifest["options"]["amodal"] is False
        assert manifest["batch_row"]["frames"] == 4 and manifest["batch_row"]["status"] == "done"
        assert (folder / "render_4d.mp4").is_file() and not (folder / LOCK_NAME).exists()
        assert not list(folder.glob("batch_*.json"))  # no batch markers: run.json is the record


def test_second_batch_keeps_finished_videos(reference, clips, models, worker):
    _, out = reference
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.parent != out}
    args = batch_args([clips], out, models)
    rows = run_local(collect_jobs(args.inputs), options_from_args(args), out, worker=worker)
    assert [r.status for r in rows] == ["done earlier", "done earlier"]
    assert [r.frames for r in rows] == [4, 4] and all(r.seconds["bodies"] > 0 for r in rows)  # the stored rows
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing was run or rewritten
    other = options_from_args(batch_args([clips], out, models, "--max_side", "32"))
    changed = run_local(collect_jobs(args.inputs), other, out, worker=worker)
    assert all(r.status == "failed" and "--overwrite" in r.error for r in changed)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_killed_batch_resumes_from_its_manifest(reference, clips, models, worker, tmp_path):
    _, ref = reference
    out = tmp_path / "out"
    args = batch_args([clips / "clip_a.mp4"], out, models)
    killed = subprocess.Popen([sys.executable, "-m", "body4d_core", "batch", *args.inputs, "-o", str(out),
                               *batch_argv(models)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 240
        def sam3_on_disk() -> bool:  # the stage is done and its files are recorded as written
            m = read_manifest(out / "clip_a") or {}
            return "sam3" in (m.get("stages") or {}) and {"prompts", "tracks"} <= set(m.get("files") or {})

        while not sam3_on_disk():
            assert killed.poll() is None and time.monotonic() < deadline, "the batch ended before its sam3 stage"
            time.sleep(0.05)
    finally:
        killed.kill()  # SIGKILL: nothing is cleaned up
        killed.wait()
    stopped = read_manifest(out / "clip_a")
    assert stopped["status"] == "running" and (out / "clip_a" / LOCK_NAME).is_file()  # a dead process's lock
    tracks_mtime = (out / "clip_a" / "tracks.npz").stat().st_mtime_ns

    (row,) = run_local(collect_jobs(args.inputs), options_from_args(args), out, worker=worker)
    assert row.status == "done" and row.frames == 4
    resumed = read_manifest(out / "clip_a")
    assert resumed["status"] == "complete" and "sam3" in resumed["resumed_from"]
    assert "render" not in resumed["resumed_from"] and not (out / "clip_a" / LOCK_NAME).exists()
    assert (out / "clip_a" / "tracks.npz").stat().st_mtime_ns == tracks_mtime  # reused, not redone
    same_results(ref / "clip_a", out / "clip_a")


def test_folder_locked_by_another_process_is_refused(reference, clips, models, worker, tmp_path):
    args = batch_args([clips], tmp_path / "out", models)
    locked = tmp_path / "out" / "clip_a"
    locked.mkdir(parents=True)
    holder = subprocess.Popen(  # another batch writing clip_a: holds the folder's lock until told to stop
        [sys.executable, "-c", "import sys; from body4d_core.manifest import RunLock; l = RunLock(sys.argv[1]); "
         "l.acquire(); print('locked', flush=True); sys.stdin.read(); l.release()", str(locked)],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        rows = run_local(collect_jobs(args.inputs), options_from_args(args), tmp_path / "out", worker=worker)
        assert [r.status for r in rows] == ["failed", "done"]
        assert f"process {holder.pid}" in rows[0].error and "is writing into" in rows[0].error
        assert sorted(p.name for p in locked.iterdir()) == [LOCK_NAME]  # nothing written beside the other run
    finally:
        holder.communicate("", timeout=30)
    assert not (locked / LOCK_NAME).exists()
    rows = run_local(collect_jobs(args.inputs), options_from_args(args), tmp_path / "out", worker=worker)
    assert [r.status for r in rows] == ["done", "done earlier"]


def test_overwrite_runs_every_video_again(reference, clips, models, worker, tmp_path):
    _, ref = reference
    out = tmp_path / "out"
    shutil.copytree(ref, out)  # a finished batch
    args = batch_args([clips], out, models)
    jobs, opts = collect_jobs(args.inputs), options_from_args(args)
    (out / "clip_b" / "mine.txt").write_text("kept")  # not ours: never deleted
    first = {n: read_manifest(out / n)["started"] + str((out / n / "bodies.npz").stat().st_mtime_ns)
             for n in ("clip_a", "clip_b")}
    rows = run_local(jobs, opts, out, overwrite=True, worker=worker)
    assert [r.status for r in rows] == ["done", "done"]
    for name in ("clip_a", "clip_b"):
        again = read_manifest(out / name)["started"] + str((out / name / "bodies.npz").stat().st_mtime_ns)
        assert again != first[name] and read_manifest(out / name)["resumed_from"] is None
        same_results(ref / name, out / name)
    assert (out / "clip_b" / "mine.txt").read_text() == "kept"


def test_local_engine_refuses_ray_only_options(tmp_path, clips, models):
    from body4d_core.errors import InputError

    with pytest.raises(InputError, match="need the Ray engine"):
        cmd_batch(batch_args([clips], tmp_path / "out", models, "--split"))
    assert not (tmp_path / "out").exists()
