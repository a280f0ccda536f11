"""Batch inputs, per-video overrides, resume rules and the summary table (plain Python, no Ray)."""

import csv
import io
import json

import pytest

from body4d_core.batch.jobs import collect_jobs, job_options
from body4d_core.batch.outputs import (FAILED, FRESH, KEEP, OK, OVERWRITE, RESUME, Row, plan_folder, record_row,
                                       summary_csv, write_summary)
from body4d_core.batch.shard import shard_ranges
from body4d_core.errors import InputError
from body4d_core.pipeline import PipelineOptions
from body4d_core.video import LoadOptions


def touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_folder_glob_and_single_video(tmp_path):
    touch(tmp_path / "v" / "b.mp4"), touch(tmp_path / "v" / "a.MOV"), touch(tmp_path / "v" / "notes.md")
    touch(tmp_path / "w" / "c.mkv")
    jobs = collect_jobs([str(tmp_path / "v"), str(tmp_path / "w" / "*.mkv"), str(tmp_path / "v" / "b.mp4")])
    assert [j.video.name for j in jobs] == ["a.MOV", "b.mp4", "c.mkv"]  # b.mp4 named twice, run once
    assert [j.name for j in jobs] == ["a", "b", "c"] and all(j.overrides == {} for j in jobs)


def test_same_stem_gets_distinct_folders_and_a_clash_is_an_error(tmp_path):
    touch(tmp_path / "a.mp4"), touch(tmp_path / "a.mov")
    assert sorted(j.name for j in collect_jobs([str(tmp_path)])) == ["a", "a_mp4"]
    touch(tmp_path / "x" / "a.mp4")
    with pytest.raises(InputError, match="share the output folder"):
        collect_jobs([str(tmp_path), str(tmp_path / "x" / "a.mp4")])


def test_text_list_file_with_overrides(tmp_path):
    touch(tmp_path / "clips" / "one.mp4"), touch(tmp_path / "clips" / "two.mp4")
    points = {"version": 1, "objects": [{"id": 4, "points": [{"frame": 0, "x": 5, "y": 5, "label": 1}]}]}
    (tmp_path / "p.json").write_text(json.dumps(points))
    lst = tmp_path / "videos.txt"
    lst.write_text("# comment\nclips/one.mp4 points=p.json frames=2:7 max_people=3\n\n'clips/two.mp4' name=second "
                   "manual_fov=55  # tail comment\n")
    one, two = collect_jobs([str(lst)])
    assert one.video == tmp_path / "clips" / "one.mp4" and one.name == "one"
    assert two.name == "second" and two.overrides == {"manual_fov": 55.0}
    base = PipelineOptions(video=LoadOptions(frame_load_cap=4, max_side=64), max_people=1)
    o1, o2 = job_options(base, one), job_options(base, two)
    assert (o1.video.skip_first_frames, o1.video.frame_load_cap, o1.video.max_side) == (2, 5, 64)
    assert json.loads(o1.points_json) == points and o1.max_people == 3
    assert o2.video == base.video and o2.points_json is None and o2.manual_fov == 55.0 and o2.max_people == 1
    assert job_options(base, collect_jobs([str(tmp_path / "clips" / "one.mp4")])[0]) == base


def test_json_list_file(tmp_path):
    touch(tmp_path / "one.mp4")
    lst = tmp_path / "videos.json"
    lst.write_text(json.dumps([{"video": "one.mp4", "frames": "3:"}]))
    (job,) = collect_jobs([str(lst)])
    opts = job_options(PipelineOptions(video=LoadOptions(frame_load_cap=9)), job)
    assert (opts.video.skip_first_frames, opts.video.frame_load_cap) == (3, 0)


@pytest.mark.parametrize("line, message", [
    ("one.mp4 colour=red", "line 1: unknown override 'colour'"),
    ("one.mp4 frames=5:2", "frames must be START:END"),
    ("one.mp4 frames=abc", "frames must be START:END"),
    ("one.mp4 points=nope.json", "points file .*nope.json does not exist"),
    ("one.mp4 max_people=many", "max_people must be a number"),
    ("one.mp4 name=a/b", "name must be a plain folder name"),
    ("one.mp4 frames", "expected key=value"),
])
def test_bad_list_lines_name_the_line(tmp_path, line, message):
    touch(tmp_path / "one.mp4")
    (tmp_path / "l.txt").write_text(line + "\n")
    with pytest.raises(InputError, match=message):
        collect_jobs([str(tmp_path / "l.txt")])


def test_nothing_found_is_one_clear_error(tmp_path):
    with pytest.raises(InputError, match="no video found"):
        collect_jobs([str(tmp_path)])
    with pytest.raises(InputError, match="not a folder, a video, a list file or a glob"):
        collect_jobs([str(tmp_path / "missing.mp4")])


def test_resume_rules(tmp_path):
    """Folders follow run.json: fresh, partial (resume), complete (keep), other options, foreign, overwrite."""
    from body4d_core.manifest import start_run

    video = touch(tmp_path / "v.mp4", b"not decoded here")
    opts = PipelineOptions(max_people=2)
    out = tmp_path / "v"
    assert plan_folder(out, video, opts, False) == (FRESH, None)  # new folder
    out.mkdir()
    manifest = start_run(out, video, opts, [], None)
    (out / "tracks.npz").write_bytes(b"partial")
    manifest.file_written("tracks", out / "tracks.npz")
    assert plan_folder(out, video, opts, False) == (RESUME, None)  # killed mid-run: resume its finished stages
    manifest.finish("failed", "boom")
    assert plan_folder(out, video, opts, False) == (RESUME, None)
    manifest.finish("complete")
    record_row(out, Row("v.mp4", "v", OK, str(out), frames=3, people=[1], seconds={"sam3": 1.5, "total": 2.0}))
    state, kept = plan_folder(out, video, opts, False)
    assert state == KEEP and kept.status == "done earlier" and kept.frames == 3 and kept.seconds["sam3"] == 1.5
    with pytest.raises(InputError, match="other options: pass --overwrite"):
        plan_folder(out, video, PipelineOptions(max_people=3), False)
    assert plan_folder(out, video, opts, True) == (OVERWRITE, None)
    foreign = tmp_path / "foreign"
    touch(foreign / "mine.txt")
    with pytest.raises(InputError, match="not written by a batch"):
        plan_folder(foreign, video, opts, True)


def test_resume_rules_other_video_results_without_manifest_and_a_live_lock(tmp_path):
    """A finished folder of other video contents, results without run.json, a live or stale lock."""
    import socket

    from body4d_core.manifest import LOCK_NAME, MANIFEST_NAME, RunLock, start_run

    video = touch(tmp_path / "v.mp4", b"first contents")
    opts = PipelineOptions()
    out = tmp_path / "v"
    out.mkdir()
    start_run(out, video, opts, [], None).finish("complete")
    assert plan_folder(out, video, opts, False)[0] == KEEP
    kept = plan_folder(out, video, opts, False)[1]  # no row stored by a batch: what run.json says
    assert kept.status == "done earlier" and kept.name == "v" and kept.error == ""
    touch(video, b"other contents, same name")
    with pytest.raises(InputError, match="another video or with other options"):
        plan_folder(out, video, opts, False)
    lock = RunLock(out)
    lock.acquire()  # a live writer (this process)
    try:
        with pytest.raises(InputError, match="another run .* is writing into"):
            plan_folder(out, video, opts, True)  # refused even with --overwrite
    finally:
        lock.release()
    (out / LOCK_NAME).write_text(json.dumps({"pid": 2 ** 22 + 12345, "host": socket.gethostname()}))
    assert plan_folder(out, video, opts, True) == (OVERWRITE, None)  # a dead process's lock does not count
    assert (out / LOCK_NAME).is_file()  # planning never removes a lock
    (out / MANIFEST_NAME).unlink()
    assert plan_folder(out, video, opts, False) == (FRESH, None)  # a lock alone is no result
    touch(out / "tracks.npz")
    with pytest.raises(InputError, match="results without a run.json: pass --overwrite"):
        plan_folder(out, video, opts, False)
    assert plan_folder(out, video, opts, True) == (OVERWRITE, None)


def test_summary_csv_and_json(tmp_path):
    rows = [Row("a.mp4", "a", OK, "o/a", frames=4, people=[1, 2], seconds={"sam3": 1.25, "render": 0.5, "total": 2},
                outputs={"tracks": "tracks.npz"}),
            Row("b.mp4", "b", FAILED, "o/b", error="b.mp4 is not a video", seconds={"total": 0.1})]
    csv_path, json_path = write_summary(tmp_path, rows)
    table = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    assert table[0]["status"] == "done" and table[0]["people"] == "1 2" and table[0]["sam3_s"] == "1.250"
    assert table[0]["amodal_s"] == "" and table[0]["outputs"] == "tracks"
    assert table[1]["error"] == "b.mp4 is not a video" and table[1]["total_s"] == "0.100"
    data = json.loads(json_path.read_text())
    assert data["counts"] == {"done": 1, "done earlier": 0, "failed": 1, "not run": 0}
    assert data["videos"][0]["seconds"]["render"] == 0.5
    assert summary_csv(rows) == csv_path.read_text()


@pytest.mark.parametrize("n, workers, bs, expected", [
    (10, 2, 2, [(0, 6), (6, 10)]),
    (4, 2, 2, [(0, 2), (2, 4)]),
    (3, 4, 2, [(0, 2), (2, 3)]),
    (64, 3, 8, [(0, 24), (24, 48), (48, 64)]),
    (0, 2, 4, []),
])
def test_shards_are_whole_batches_in_order(n, workers, bs, expected):
    ranges = shard_ranges(n, workers, bs)
    assert ranges == expected
    assert all(a % bs == 0 for a, _ in ranges)


def test_batch_parser_takes_every_run_option(tmp_path):
    from body4d_core.batch.cli import options_from_args
    from body4d_core.cli import parse_batch_args as parse_args

    args = parse_args([str(tmp_path), "-o", str(tmp_path / "out"), "--workers", "3", "--no_amodal", "--max_side", "96",
                       "--body_mode", "body", "--frame_load_cap", "7", "--max_people", "2", "--manual_fov", "50",
                       "--split", "--models_root", str(tmp_path / "m")])
    assert args.inputs == [str(tmp_path)] and args.workers == 3 and args.split and not args.overwrite
    opts = options_from_args(args)
    assert (opts.amodal, opts.body_mode, opts.max_people, opts.manual_fov) == (False, "body", 2, 50.0)
    assert (opts.video.max_side, opts.video.frame_load_cap) == (96, 7) and opts.models_root == tmp_path / "m"
    assert options_from_args(parse_args([str(tmp_path)])).amodal is True


def test_batch_command_stops_on_bad_input_before_starting_ray(tmp_path):
    from body4d_core.batch.cli import cmd_batch
    from body4d_core.cli import parse_batch_args as parse_args

    with pytest.raises(InputError, match="no video found"):
        cmd_batch(parse_args([str(tmp_path), "-o", str(tmp_path / "out")]))
    assert not (tmp_path / "out").exists()


class FakeRunner:
    """A sampler stand-in with the attributes the amodal split reads (VAE scale, skip_unkept)."""

    def __init__(self, skip=False):
        from types import SimpleNamespace

        self.vae_scale = 8
        self.accel = SimpleNamespace(skip_unkept=skip)

    def run_jobs(self, jobs, sampler, hooks=None, budget_px=0):
        return [f"local {job.obj_id}" for job in jobs]


def fake_job(n, key, size=(16, 24), keep=None):
    import numpy as np
    import torch

    from body4d_core.amodal.job import VideoJob

    return VideoJob(torch.zeros(n, 1, *size), torch.zeros(n, 1, *size), key, np.arange(n), key,
                    keep=None if keep is None else np.asarray(keep, bool))


def test_amodal_cuts_only_where_every_sampler_batch_ends():
    from body4d_core.amodal.config import SamplerConfig
    from body4d_core.batch.shard import batch_boundaries, job_ranges

    sampler = SamplerConfig(window=4, overlap=2, people_batch=2)
    jobs = [fake_job(4, 1), fake_job(4, 2), fake_job(6, 3), fake_job(4, 4)]  # windows: 1, 1, 2, 1 (all 4 long)
    assert batch_boundaries(jobs, sampler, FakeRunner(), 1 << 20) == [2, 3]
    assert job_ranges([1, 1, 2, 1], 2, [2, 3]) == [(0, 2), (2, 4)]
    assert job_ranges([1, 1, 2, 1], 2, []) == [(0, 4)]  # no clean cut: one worker
    # two sizes are two groups: a cut must end a batch in both
    mixed = [fake_job(4, 1), fake_job(4, 2, (32, 48)), fake_job(4, 3), fake_job(4, 4, (32, 48))]
    assert batch_boundaries(mixed, sampler, FakeRunner(), 1 << 20) == []
    # the pixel budget caps a batch at one window (2 x 4 frames x 2 x 3 latent pixels = 48 > 47)
    assert batch_boundaries(jobs, sampler, FakeRunner(), 47) == [1, 2, 3]
    # skip_unkept: a job without a kept frame adds no window, so it does not break a batch
    skipped = [fake_job(4, 1), fake_job(4, 2, keep=[False] * 4), fake_job(4, 3), fake_job(4, 4)]
    assert batch_boundaries(skipped, sampler, FakeRunner(skip=True), 1 << 20) == [3]
    assert batch_boundaries(skipped, sampler, FakeRunner(skip=False), 1 << 20) == [2]


def test_split_video_sees_amodal_samplers_that_split_and_the_worker_cache_underneath():
    import dataclasses

    from body4d_core.amodal.models import AmodalModels
    from body4d_core.batch.shard import SplitJobRunner
    from body4d_core.batch.worker import _SplitCache

    store = {("amodal", "m", None, "auto"): AmodalModels(FakeRunner(), None, depth=lambda f, h=None: f),
             ("moge", "m", None): "moge"}
    view = _SplitCache(store, ["w1", "w2"], PipelineOptions())
    seen = view[("amodal", "m", None, "auto")]
    assert isinstance(seen.mask, SplitJobRunner) and seen.content is None and seen.mask.workers == ["w1", "w2"]
    assert seen.mask.local is store[("amodal", "m", None, "auto")].mask and seen.mask.vae_scale == 8
    assert dataclasses.replace(seen, mask=None).depth is store[("amodal", "m", None, "auto")].depth
    assert view[("moge", "m", None)] == "moge" and ("sam3", 1) not in view
    view[("sam3", 1)] = "loaded"
    assert store[("sam3", 1)] == "loaded"  # loads land in the worker's own cache
    one = _SplitCache(store, ["w1"], PipelineOptions())
    assert one[("amodal", "m", None, "auto")] is store[("amodal", "m", None, "auto")]
    # one job or one range: the local sampler runs it (no Ray needed)
    solo = SplitJobRunner(["w1", "w2"], "mask", FakeRunner(), PipelineOptions())
    from body4d_core.amodal.config import SamplerConfig

    assert solo.run_jobs([fake_job(4, 5)], SamplerConfig(window=4, overlap=2)) == ["local 5"]
