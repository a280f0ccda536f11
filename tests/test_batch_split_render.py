"""The split render of ``batch --split`` on an embedded local Ray with two CPU workers and tiny checkpoints.

One video's overlay render is cut into whole render batches dealt to both workers and streamed
to the one encoder in frame order: the frames equal a one-worker render exactly (directly, and
decoded from render_4d.mp4 of a whole batch run), both workers render a share, and a fault in
one worker's render fails the video with one line and leaves no half-written MP4.
"""

import json

import av
import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the batch engine needs Ray (pip install ray)")

from body4d_core.atomic import TMP_TAG  # noqa: E402
from body4d_core.batch.engine import run_batch  # noqa: E402
from body4d_core.batch.jobs import VideoJob  # noqa: E402
from body4d_core.batch.split_render import frame_ranges, render_split, slice_bodies  # noqa: E402
from body4d_core.data import Bodies, BodyFlag, Camera  # noqa: E402
from body4d_core.errors import InputError  # noqa: E402
from body4d_core.manifest import read_manifest  # noqa: E402
from body4d_core.render import BatchSink, render_bodies  # noqa: E402

from .ray_pool import two_worker_pool  # noqa: E402
from .tiny_runs import SAMPLE, small_options, tiny_models  # noqa: E402

FRAMES = 18  # two render batches of 16 frames: a range for each worker


@pytest.fixture(scope="module")
def pool():
    """One embedded Ray and two CPU workers for the whole module."""
    yield from two_worker_pool()


def render_shards(actors):
    return [s["render_shards"] for s in ray.get([a.stats.remote() for a in actors])]


def spheres(t=7, size=(40, 56)):
    """Two people as spheres moving across the frames (one missing on some), so every frame differs."""
    from body4d_core.testing.checkpoints import uv_sphere

    v, f = uv_sphere(rows=8, cols=10)
    b = Bodies.empty([3, 5], t, size)
    params = {k: val.copy() for k, val in b.params.items()}
    params["cam_t"][0] = np.stack([np.linspace(-0.6, 0.6, t), np.zeros(t), np.full(t, 3.0)], -1)
    params["cam_t"][1] = np.stack([np.zeros(t), np.linspace(0.4, -0.4, t), np.full(t, 2.5)], -1)
    flags = np.full((2, t), BodyFlag.VISIBLE, np.uint8)
    flags[1, 2:4] = BodyFlag.MISSING
    verts = np.broadcast_to(v.numpy()[None, None] * 0.4, (2, t, v.shape[0], 3)).astype(np.float32)
    return b.replace(params=params, flags=flags, vertices=verts, faces=f.numpy().astype(np.int32))


def streamed(render, frames, bodies, camera, batch, **kwargs):
    """The batches a renderer hands a BatchSink, in the order it hands them."""
    got = []
    rendered = render(frames, bodies, camera, mode="overlay", hooks=BatchSink(None, got.append, batch), **kwargs)
    assert len(rendered[0]) == 0  # streamed: nothing kept
    return got


def test_frame_ranges_are_whole_batches():
    assert frame_ranges(7, 2) == [(0, 2), (2, 4), (4, 6), (6, 7)]
    assert frame_ranges(7, 2, 2) == [(0, 4), (4, 7)]
    assert frame_ranges(16, 16) == [(0, 16)]


def test_split_render_equals_one_worker_in_frame_order(pool):
    bodies = spheres()
    camera = Camera.from_fov(60.0, bodies.image_size, 1)  # one row: broadcast to every frame
    frames = np.random.default_rng(1).integers(0, 256, (7, 40, 56, 3), np.uint8)
    one = render_bodies(frames, bodies, camera, mode="overlay", batch_size=2)[0]
    assert not np.array_equal(one, frames) and not np.array_equal(one[0], one[-1])  # bodies drawn, frames differ
    before = render_shards(pool.actors)
    for depth in (1, 2):  # one range in flight per worker, or two (one waiting behind the other)
        batches = streamed(lambda *a, **k: render_split(pool.actors, *a, depth=depth, **k), frames, bodies, camera, 2)
        assert [len(b) for b in batches] == [2, 2, 2, 1]  # frame order, whole batches
        assert np.array_equal(np.concatenate(batches), one)
    assert [b - a for a, b in zip(before, render_shards(pool.actors))] == [4, 4]  # 4 ranges dealt in turn, twice
    # the one-worker stream of the same batches (what the pipeline runs without --split) is the same too
    assert np.array_equal(np.concatenate(streamed(render_bodies, frames, bodies, camera, 2)), one)


def test_split_render_keeps_the_one_worker_path_when_nothing_to_split(pool):
    bodies, camera = spheres(t=3), Camera.from_fov(60.0, (40, 56), 3)
    before = render_shards(pool.actors)
    one = streamed(render_bodies, None, bodies, camera, 4)
    assert np.array_equal(np.concatenate(streamed(lambda *a, **k: render_split(pool.actors, *a, **k), None, bodies,
                                                  camera, 4)), np.concatenate(one))  # a single batch
    assert np.array_equal(np.concatenate(streamed(lambda *a, **k: render_split(pool.actors[:1], *a, **k), None,
                                                  bodies, camera, 1)), np.concatenate(one))  # a single worker
    assert render_shards(pool.actors) == before  # rendered here, no worker asked
    sliced = slice_bodies(bodies, 1, 3)
    assert sliced.num_frames == 2 and np.array_equal(sliced.params["cam_t"], bodies.params["cam_t"][:, 1:3])
    with pytest.raises(InputError, match="render mode must be one of"):  # checked here, before any range is sent
        render_split(pool.actors, None, bodies, camera, mode="bogus", hooks=BatchSink(None, list().append, 1))
    assert render_shards(pool.actors) == before


def decoded(path):
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def outputs(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def runs(pool, tmp_path_factory):
    """The same clip through the batch on one worker and split over both (each its own output root)."""
    models = tiny_models(tmp_path_factory)
    opts = small_options(models, frames=FRAMES, write_glb=False)
    job = [VideoJob(SAMPLE, "dancer")]
    roots = {}
    for name, split in (("one", False), ("split", True)):
        roots[name] = tmp_path_factory.mktemp(name)
        before = render_shards(pool.actors)
        (row,) = run_batch(job, opts, roots[name], pool=pool, split=split)
        assert row.status == "done", row.error
        roots[name + "_shards"] = [b - a for a, b in zip(before, render_shards(pool.actors))]
    return roots, models, opts


def test_split_batch_render_mp4_equals_one_worker(runs):
    roots, _, _ = runs
    one, two = roots["one"] / "dancer", roots["split"] / "dancer"
    assert roots["one_shards"] == [0, 0]  # without --split the render stays with the video's worker
    assert roots["split_shards"] == [1, 1]  # 18 frames in batches of 16: one range each
    a, b = decoded(one / "render_4d.mp4"), decoded(two / "render_4d.mp4")
    assert a.shape[0] == b.shape[0] == FRAMES
    assert np.array_equal(a, b)
    assert (one / "render_4d.mp4").read_bytes() == (two / "render_4d.mp4").read_bytes()  # one encoder, same frames
    assert outputs(one) == outputs(two)
    for name in ("params.npz", "bodies.npz"):
        x, y = np.load(one / name), np.load(two / name)
        assert all(np.array_equal(x[k], y[k]) for k in x.files), name
    assert read_manifest(two)["status"] == "complete"


def test_a_fault_in_one_workers_render_fails_the_video_with_nothing_half_written(runs, pool, tmp_path):
    from body4d_core.testing.batch import RENDER_FAULT, RenderFaultWorker

    _, _, opts = runs
    faulty = ray.remote(RenderFaultWorker).options(num_cpus=0, max_concurrency=4).remote("faulty")

    class Pair:  # the pool run_batch sees: the video's worker and the faulty one
        actors = [pool.actors[0], faulty]

    try:
        (row,) = run_batch([VideoJob(SAMPLE, "dancer")], opts, tmp_path, pool=Pair(), split=True)
        shards = render_shards([faulty])
    finally:
        ray.kill(faulty)
    assert row.status == "failed"
    assert row.error == f"RuntimeError: {RENDER_FAULT}"  # the worker's error, on one line
    assert shards == [1]
    folder = tmp_path / "dancer"
    assert not (folder / "render_4d.mp4").exists()
    assert not list(folder.rglob(f"*{TMP_TAG}*"))
    manifest = json.loads((folder / "run.json").read_text())
    assert manifest["status"] == "failed" and RENDER_FAULT in json.dumps(manifest)
    assert (folder / "bodies.npz").is_file()  # the stages before the render finished (a resume reuses them)
