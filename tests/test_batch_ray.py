"""The batch command on an embedded local Ray with two CPU workers and tiny checkpoints.

Three short clips cut from the bundled sample plus one corrupt file: three succeed, one is
reported; a batch stopped after its first video resumes from the folders' run.json without
running any video twice and with the same outputs; per-video overrides reach the pipeline; one
video's body stage and its amodal jobs split over both workers equal the single-worker result
exactly.
"""

import csv
import json
import shutil

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the batch engine needs Ray (pip install ray)")

from body4d_core.batch.cli import cmd_batch, options_from_args  # noqa: E402

from body4d_core.cli import parse_batch_args as parse_args
from body4d_core.batch.engine import run_batch  # noqa: E402
from body4d_core.batch.jobs import collect_jobs  # noqa: E402
from body4d_core.batch.outputs import SUMMARY_CSV, SUMMARY_JSON  # noqa: E402
from body4d_core.data import Bodies, Clip, Tracks  # noqa: E402
from body4d_core.export import write_mp4  # noqa: E402
from body4d_core.manifest import read_manifest  # noqa: E402
from body4d_core.testing.checkpoints import write_tiny_checkpoints  # noqa: E402
from body4d_core.video import LoadOptions, load_video  # noqa: E402

from .media import REPO  # noqa: E402
from .ray_pool import two_worker_pool  # noqa: E402

SAMPLE = REPO / "samples" / "cartoon_dancer_81f.mp4"
CAP = 4
POINTS = {"version": 1, "objects": [{"id": 7, "points": [{"frame": 0, "x": 32, "y": 30, "label": 1}]}]}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    write_tiny_checkpoints(root, ["sam3", "sam3d_body", "diffusion_vas_amodal", "diffusion_vas_completion",
                                  "depth_anything"])
    return root


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """clip_a, clip_b, clip_c (6 frames, 64 px, from three places of the sample) and broken.mp4 (random bytes)."""
    folder = tmp_path_factory.mktemp("clips")
    for name, start in (("clip_a", 0), ("clip_b", 30), ("clip_c", 60)):
        frames, clip = load_video(SAMPLE, LoadOptions(skip_first_frames=start, frame_load_cap=6, max_side=64))
        write_mp4(folder / f"{name}.mp4", frames, clip.fps, clip.image_size)
    (folder / "broken.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes())
    (folder / "points.json").write_text(json.dumps(POINTS))
    return folder


@pytest.fixture(scope="module")
def pool():
    """One embedded Ray and two CPU workers for the whole module."""
    yield from two_worker_pool()


def batch_args(inputs, out, models, *extra):
    return parse_args([*map(str, inputs), "-o", str(out), "--models_root", str(models), "--frame_load_cap", str(CAP),
                       "--no_amodal", "--fov", "none", "--body_mode", "body", "--detect_threshold", "0",
                       "--max_people", "1", "--batch_size", "2", "--no_glb", *extra])


@pytest.fixture(scope="module")
def first_batch(pool, clips, models, tmp_path_factory):
    """The list-file batch through the command's own code path: overrides on clip_a, broken.mp4 included."""
    out = tmp_path_factory.mktemp("batch1")
    lst = clips / "videos.txt"
    lst.write_text("clip_a.mp4 points=points.json frames=1:4\nclip_b.mp4\nbroken.mp4\nclip_c.mp4 name=third\n")
    rc = cmd_batch(batch_args([lst], out, models), pool=pool)
    return rc, out


def complete(folder):
    """True when the folder's run.json says its run finished (what a batch keeps)."""
    return (read_manifest(folder) or {}).get("status") == "complete"


def rows_of(out):
    with open(out / SUMMARY_CSV, newline="") as f:
        return {r["name"]: r for r in csv.DictReader(f)}


def test_three_succeed_and_the_corrupt_file_is_reported(first_batch, clips):
    rc, out = first_batch
    assert rc == 1  # one video failed
    rows = rows_of(out)
    assert [rows[n]["status"] for n in ("clip_a", "clip_b", "broken", "third")] == ["done", "done", "failed", "done"]
    assert "broken.mp4" in rows["broken"]["error"] and "\n" not in rows["broken"]["error"]
    assert not complete(out / "broken")
    for name in ("clip_a", "clip_b", "third"):
        assert complete(out / name) and (out / name / "render_4d.mp4").is_file()
        assert float(rows[name]["sam3_s"]) > 0 and float(rows[name]["bodies_s"]) > 0
        assert rows[name]["amodal_s"] == ""  # --no_amodal reached every worker
        assert not (out / name / "amodal.npz").exists() and not (out / name / "glb").exists()
    data = json.loads((out / SUMMARY_JSON).read_text())
    assert data["counts"]["done"] == 3 and data["counts"]["failed"] == 1
    assert {v["worker"] for v in data["videos"] if v["status"] == "done"} <= {"worker-1", "worker-2"}


def test_per_video_overrides_applied(first_batch):
    _, out = first_batch
    a_tracks, a_clip = Tracks.load_npz(out / "clip_a" / "tracks.npz"), Clip.load_npz(out / "clip_a" / "clip.npz")
    assert a_tracks.obj_ids.tolist() == [7]  # the points file, not detection
    assert a_clip.num_frames == 3 and a_clip.frame_indices.tolist() == [1, 2, 3]  # frames=1:4
    b_tracks, b_clip = Tracks.load_npz(out / "clip_b" / "tracks.npz"), Clip.load_npz(out / "clip_b" / "clip.npz")
    assert b_tracks.obj_ids.tolist() == [1] and b_clip.num_frames == CAP
    assert b_clip.frame_indices.tolist() == list(range(CAP))
    assert rows_of(out)["clip_a"]["frames"] == "3" and rows_of(out)["clip_a"]["people"] == "7"


def test_stopped_batch_resumes_without_running_a_video_twice(first_batch, pool, clips, models, tmp_path):
    _, out1 = first_batch
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("clip_a", "clip_b", "clip_c"):
        shutil.copy(clips / f"{name}.mp4", folder)
    args = batch_args([folder], tmp_path / "out", models)
    jobs, opts = collect_jobs(args.inputs), options_from_args(args)

    def stop_after_first(kind, data):
        if kind == "row" and data["row"].status == "done":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_batch(jobs, opts, args.out, pool=pool, on_event=stop_after_first)
    stopped = rows_of(tmp_path / "out")
    first = [n for n, r in stopped.items() if r["status"] == "done"]
    assert len(first) == 1 and sorted(r["status"] for r in stopped.values()) == ["done", "not run", "not run"]
    started = [p.parent for p in (tmp_path / "out").glob("*/run.json")]
    finished = sorted(f.name for f in started if complete(f))  # the video in flight was killed,
    assert first[0] in finished and len(finished) < 3  # unless it finished in the same instant
    killed = sorted(f.name for f in started if not complete(f))  # left half-written
    # two workers: the second video may be in flight (killed, left half-written) or, on a loaded machine, not
    # started yet when the first one finishes; either way no folder is both finished and half-written
    assert len(finished) + len(killed) in (1, 2) and not set(finished) & set(killed)
    kept = {p: p.stat().st_mtime_ns for name in finished for p in (tmp_path / "out" / name).rglob("*")}

    rows = run_batch(jobs, opts, args.out, pool=pool)
    assert {r.name for r in rows if r.status == "done earlier"} == set(finished)
    assert all(r.status == "done" for r in rows if r.name not in finished), [(r.name, r.error) for r in rows]
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # finished videos were not run again
    for name in ("clip_b", "clip_c"):  # identical to the uninterrupted batch (clip_c was named 'third' there)
        ref = out1 / ("third" if name == "clip_c" else name)
        got = tmp_path / "out" / name
        for stage in ("tracks", "bodies_raw", "bodies"):
            a, b = np.load(ref / f"{stage}.npz"), np.load(got / f"{stage}.npz")
            assert sorted(a.files) == sorted(b.files)
            for key in a.files:
                assert np.array_equal(a[key], b[key]), (name, stage, key)
    again = run_batch(jobs, opts, args.out, pool=pool)  # nothing left to do
    assert [r.status for r in again] == ["done earlier"] * 3
    other = options_from_args(batch_args([folder], tmp_path / "out", models, "--max_side", "32"))
    changed = run_batch(jobs, other, args.out, pool=pool)
    assert all(r.status == "failed" and "--overwrite" in r.error for r in changed)


def test_body_stage_split_over_two_workers_equals_one(first_batch, pool, models):
    from body4d_core.body_inputs import body_items
    from body4d_core.batch.shard import estimate_bodies_sharded
    from body4d_core.sam3d_body import estimate_bodies, load_sam3d_body

    _, out = first_batch
    tracks = Tracks.load_npz(out / "clip_b" / "tracks.npz")
    clip = Clip.load_npz(out / "clip_b" / "clip.npz")
    frames, _ = load_video(clip.source, LoadOptions(frame_load_cap=CAP))
    items = body_items(tracks)
    assert len(items) == CAP
    model = load_sam3d_body(search_dirs=[models], device="cpu")
    one = estimate_bodies(model, frames, items, None, mode="body", batch_size=2, return_vertices=True)
    two = estimate_bodies_sharded(pool.actors, frames, items, None, models_root=models, device="cpu", mode="body",
                                  batch_size=2, return_vertices=True)
    assert len(one) == len(two) == CAP
    for a, b in zip(one, two):
        assert sorted(a) == sorted(b)
        for key in a:
            assert np.array_equal(a[key], b[key]), key
    # the pipeline's own body stage wrote the same numbers
    raw = Bodies.load_npz(out / "clip_b" / "bodies_raw.npz")
    assert np.allclose(raw.params["body_pose"][0], np.stack([r["body_pose"] for r in one]))


def test_body_stage_split_writes_each_worker_part_into_the_bodies(first_batch, pool, models):
    """estimate_bodies_sharded(into=...) fills the bodies' arrays from each worker's part: the same bodies as
    bodies_from_results of a one-worker run, and the returned dicts are views of their cells."""
    from body4d_core.body_inputs import body_items
    from body4d_core.batch.shard import estimate_bodies_sharded
    from body4d_core.sam3d_body import bodies_from_results, estimate_bodies, load_sam3d_body
    from body4d_core.sam3d_body.writer import BodiesWriter

    _, out = first_batch
    tracks = Tracks.load_npz(out / "clip_b" / "tracks.npz")
    clip = Clip.load_npz(out / "clip_b" / "clip.npz")
    frames, _ = load_video(clip.source, LoadOptions(frame_load_cap=CAP))
    items = body_items(tracks)[::-1]  # out of order: each part must land on its own frames
    model = load_sam3d_body(search_dirs=[models], device="cpu")
    faces = model.faces.numpy()
    one = estimate_bodies(model, frames, items, None, mode="body", batch_size=2, return_vertices=True)
    want = bodies_from_results(items, one, CAP, clip.image_size, faces, obj_ids=tracks.obj_ids.tolist())
    writer = BodiesWriter(items, CAP, clip.image_size, tracks.obj_ids.tolist())
    two = estimate_bodies_sharded(pool.actors, frames, items, None, models_root=models, device="cpu", mode="body",
                                  batch_size=2, return_vertices=True, into=writer)
    got = writer.result(faces)
    for key, value in want.to_arrays().items():
        assert np.array_equal(value, got.to_arrays()[key]), key
    assert writer.written == len(items) == CAP
    for it, cell in zip(items, two):
        assert np.shares_memory(cell["vertices"], got.vertices[0, it.frame])


def test_split_mode_runs_one_video_over_both_workers(first_batch, pool, clips, models, tmp_path):
    from inspect import signature

    from body4d_core.pipeline import run_pipeline

    if "estimate" not in signature(run_pipeline).parameters:
        pytest.skip("run_pipeline has no estimate= argument yet (the body stage cannot be handed to the workers)")
    _, out1 = first_batch
    before = [s["shards"] for s in ray.get([a.stats.remote() for a in pool.actors])]
    args = batch_args([clips / "clip_b.mp4"], tmp_path / "out", models, "--split")
    (row,) = run_batch(collect_jobs(args.inputs), options_from_args(args), args.out, pool=pool, split=args.split)
    assert row.status == "done", row.error
    after = [s["shards"] for s in ray.get([a.stats.remote() for a in pool.actors])]
    assert [b - a for a, b in zip(before, after)] == [1, 1]  # 4 crops in batches of 2: one batch per worker
    for stage in ("tracks", "bodies_raw", "bodies"):
        a, b = np.load(out1 / "clip_b" / f"{stage}.npz"), np.load(tmp_path / "out" / "clip_b" / f"{stage}.npz")
        for key in a.files:
            assert np.array_equal(a[key], b[key]), (stage, key)


def test_workers_keep_their_models_across_videos(first_batch, pool):
    from inspect import signature

    from body4d_core.pipeline import run_pipeline

    if "models" not in signature(run_pipeline).parameters:
        pytest.skip("run_pipeline has no models= argument yet (each video loads its models)")
    held = [s["models"] for s in ray.get([a.stats.remote() for a in pool.actors])]
    assert any("sam3" in m and "sam3d_body" in m for m in held)


def amodal_split(pool, models):
    """Tiny amodal models here and the same models split over both workers (their own copies, same weights)."""
    import dataclasses

    from body4d_core.amodal.models import load_amodal_models
    from body4d_core.batch.shard import SplitJobRunner
    from body4d_core.pipeline import PipelineOptions

    opts = PipelineOptions(models_root=models, device="cpu")
    local = load_amodal_models([models], device="cpu")
    split = dataclasses.replace(local, mask=SplitJobRunner(pool.actors, "mask", local.mask, opts),
                                content=SplitJobRunner(pool.actors, "content", local.content, opts))
    return local, split


def amodal_shards(pool):
    return [s["amodal_shards"] for s in ray.get([a.stats.remote() for a in pool.actors])]


def test_amodal_jobs_split_at_whole_batches_equal_one_worker(pool, models):
    import torch

    from body4d_core.amodal.config import SamplerConfig
    from body4d_core.amodal.job import VideoJob

    local, split = amodal_split(pool, models)
    g = torch.Generator().manual_seed(0)
    # 4, 4, 6 (two windows) and 4 frames; windows of 4, batches of 2: the sampler's batches end after jobs 2 and 3
    jobs = [VideoJob(torch.rand(n, 1, 16, 24, generator=g) * 2 - 1, torch.rand(n, 1, 16, 24, generator=g) * 2 - 1,
                     key, np.arange(n), key) for key, n in enumerate((4, 4, 6, 4), 1)]
    sampler = SamplerConfig(steps=2, window=4, overlap=2, people_batch=2)
    before = amodal_shards(pool)
    one = local.mask.run_jobs(jobs, sampler)
    two = split.mask.run_jobs(jobs, sampler)
    assert [b - a for a, b in zip(before, amodal_shards(pool))] == [1, 1]  # both workers ran a share
    assert len(one) == len(two) == 4
    for a, b in zip(one, two):
        assert a.shape == b.shape and torch.equal(a, b)


def test_amodal_jobs_split_in_a_low_memory_mode_use_it_on_every_worker(pool, models):
    """The memory plan's low-memory mode reaches the workers' samplers (a capped split run), same frames."""
    import torch

    from body4d_core.amodal.config import SamplerConfig
    from body4d_core.amodal.job import VideoJob
    from body4d_core.amodal.lowmem import chunked_mode

    local, split = amodal_split(pool, models)
    g = torch.Generator().manual_seed(1)
    jobs = [VideoJob(torch.rand(4, 1, 16, 24, generator=g) * 2 - 1, torch.rand(4, 1, 16, 24, generator=g) * 2 - 1,
                     key, np.arange(4), key) for key in (1, 2, 3, 4)]
    sampler = SamplerConfig(steps=2, window=4, overlap=2, people_batch=2)
    mode = chunked_mode(2)
    before = amodal_shards(pool)
    one = local.mask.run_jobs(jobs, sampler, memory=mode)
    two = split.mask.run_jobs(jobs, sampler, memory=mode)
    assert [b - a for a, b in zip(before, amodal_shards(pool))] == [1, 1]
    for a, b in zip(one, two):
        assert a.shape == b.shape and torch.equal(a, b)


def test_amodal_stage_split_over_two_workers_equals_one(first_batch, pool, models):
    import dataclasses

    from body4d_core.amodal.config import OcclusionConfig, SamplerConfig
    from body4d_core.amodal.stage import run_amodal

    _, out = first_batch
    clip_tracks = Tracks.load_npz(out / "clip_b" / "tracks.npz")
    frames, _ = load_video(Clip.load_npz(out / "clip_b" / "clip.npz").source, LoadOptions(frame_load_cap=CAP))
    vis = clip_tracks.masks_of(int(clip_tracks.obj_ids[0]))
    masks = np.stack([vis, np.roll(vis, 9, axis=2), np.roll(vis, -7, axis=1)])  # three people
    tracks = Tracks.from_masks([1, 2, 3], masks)
    local, split = amodal_split(pool, models)
    occ = OcclusionConfig(detection_resolution=(16, 24), completion_resolution=(32, 48))
    sampler = SamplerConfig(steps=2, window=4, overlap=2, people_batch=1)
    before = amodal_shards(pool)
    one, _ = run_amodal(frames, tracks, local, occ, sampler)
    two, _ = run_amodal(frames, tracks, split, occ, sampler)
    assert all(b > a for a, b in zip(before, amodal_shards(pool)))  # the detection pass went to both workers
    for f in dataclasses.fields(one):
        a, b = getattr(one, f.name), getattr(two, f.name)
        if isinstance(a, np.ndarray):
            assert np.array_equal(a, b, equal_nan=True), f.name
        else:
            assert a == b, f.name
