"""Long videos in bounded memory: the disk-backed frame store, the streamed render and its MP4 encoder."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import av
import numpy as np
import pytest

from body4d_core import export, frame_store, pipeline, video
from body4d_core.errors import InputError, MemoryBudgetError
from body4d_core.frame_store import FrameStore, decode_to_store, remove_stale
from body4d_core.runtime import CallbackHooks
from body4d_core.video import LoadOptions, load_video

from .tiny_runs import SAMPLE, tiny_models

CLIP = LoadOptions(frame_load_cap=12, max_side=64)


def _read_mp4(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def _stores(folder: Path) -> list[Path]:
    return sorted(folder.glob(f"{frame_store.PREFIX}.*"))


def test_store_round_trip_pages_dropped_and_removed(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 255, (7, 5, 6, 3), dtype=np.uint8)
    store = FrameStore(tmp_path, 7, 5, 6, interval=0.01)
    for s in range(0, 7, 3):  # chunks of 3, 3, 1
        store.write(s, data[s:s + 3])
    frames = store.frames
    assert frames.shape == (7, 5, 6, 3) and frames.dtype == np.uint8
    np.testing.assert_array_equal(frames, data)
    store.drop_pages()  # the data stays in the file: read back unchanged
    np.testing.assert_array_equal(frames[4], data[4])
    assert store.path.stat().st_size == data.nbytes
    with pytest.raises(InputError, match="does not fit"):
        store.write(6, data[:2])
    with pytest.raises(InputError, match="does not fit"):
        store.write(0, data[:, :4])
    del frames
    folder = store.dir
    store.close()
    store.close()  # twice is harmless
    assert not folder.exists() and _stores(tmp_path) == []


def test_store_closed_while_a_view_is_held(tmp_path):
    store = FrameStore(tmp_path, 2, 4, 4)
    store.write(0, np.full((2, 4, 4, 3), 9, np.uint8))
    view = store.frames[1]
    store.close()  # the mapping lives on with the view; the folder is gone
    assert int(view.sum()) == 9 * 4 * 4 * 3
    assert _stores(tmp_path) == []


def test_remove_stale_deletes_only_frame_stores(tmp_path):
    left = FrameStore(tmp_path, 1, 2, 2)
    (tmp_path / "keep.npz").write_bytes(b"x")
    assert remove_stale(tmp_path) == [left.dir]
    assert (tmp_path / "keep.npz").is_file() and _stores(tmp_path) == []


def test_decode_to_store_equals_load_video_across_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(video, "CHUNK", 5)  # 12 frames: chunks of 5, 5, 2
    ram, clip = load_video(SAMPLE, CLIP)
    chunks = []
    orig = FrameStore.write
    monkeypatch.setattr(FrameStore, "write", lambda self, s, c: (chunks.append(len(c)), orig(self, s, c)))
    store, clip2 = decode_to_store(SAMPLE, CLIP, tmp_path)
    try:
        assert chunks == [5, 5, 2]
        np.testing.assert_array_equal(store.frames, ram)
        assert (clip2.num_frames, clip2.image_size, clip2.fps) == (clip.num_frames, clip.image_size, clip.fps)
        np.testing.assert_array_equal(clip2.frame_indices, clip.frame_indices)
    finally:
        store.close()
    assert _stores(tmp_path) == []


def test_decode_to_store_refuses_a_full_disk_before_decoding(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10, 10, 1000))
    with pytest.raises(MemoryBudgetError, match="disk has"):
        decode_to_store(SAMPLE, CLIP, tmp_path)
    assert _stores(tmp_path) == []


def test_mp4_stream_equals_write_mp4_and_aborts_cleanly(tmp_path):
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 255, (7, 16, 24, 3), dtype=np.uint8)
    export.write_mp4(tmp_path / "ref.mp4", iter(frames), 10.0, (16, 24))
    with export.Mp4Stream(tmp_path / "s.mp4", 10.0, (16, 24), depth=1) as s:
        s.put(frames[:3])
        s.put(frames[3])  # one frame
        s.put(frames[4:])
    ref, got = _read_mp4(tmp_path / "ref.mp4"), _read_mp4(tmp_path / "s.mp4")
    assert len(got) == 7 and all(np.array_equal(a, b) for a, b in zip(ref, got))

    with pytest.raises(RuntimeError):
        with export.Mp4Stream(tmp_path / "a.mp4", 10.0, (16, 24)) as s:
            s.put(frames[:3])
            raise RuntimeError("producer failed")
    assert not (tmp_path / "a.mp4").exists()
    s = export.Mp4Stream(tmp_path / "b.mp4", 10.0, (16, 24))
    with pytest.raises(InputError, match="expected 16x24"):
        for _ in range(20):  # the encoder's error reaches the producer (put or close), the queue never blocks
            s.put(frames[:, :8])
        s.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref.mp4", "s.mp4"]


def _options(models: Path, disk: bool, **kw) -> pipeline.PipelineOptions:
    points = {"version": 1, "image_size": [350, 350],
              "objects": [{"id": 1, "points": [{"frame": 0, "x": 175, "y": 160, "label": 1}]},
                          {"id": 2, "points": [{"frame": 6, "x": 120, "y": 250, "label": 1}]}]}
    base = dict(video=CLIP, points_json=json.dumps(points), amodal=False, fov_mode="none", models_root=models,
                batch_size=4, world=False, write_anim=False, write_meshes=False, write_glb=False,
                frames_on_disk=disk)
    base.update(kw)
    return pipeline.PipelineOptions(**base)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny_models(tmp_path_factory)


def test_disk_path_equals_ram_path(models, tmp_path, monkeypatch):
    monkeypatch.setattr(video, "CHUNK", 5)  # the store is written in 3 chunks, rendered in 3 batches
    used = []
    orig = pipeline.decode_to_store

    def spy(*a, **k):
        store, clip = orig(*a, **k)
        used.append(store.dir)
        assert store.dir.is_dir()
        return store, clip

    monkeypatch.setattr(pipeline, "decode_to_store", spy)
    plan = pipeline.memory_plan
    monkeypatch.setattr(pipeline, "memory_plan", lambda o, c: dataclasses.replace(plan(o, c), render_batch=5))
    every = dict(world=True, write_anim=True, write_meshes=True, write_glb=True)  # every output, both paths
    ram = pipeline.run_pipeline(SAMPLE, tmp_path / "ram", _options(models, False, **every))
    assert used == []
    disk = pipeline.run_pipeline(SAMPLE, tmp_path / "disk", _options(models, True, **every))
    assert len(used) == 1 and used[0].parent == tmp_path / "disk" and not used[0].exists()
    assert _stores(tmp_path / "disk") == []
    assert disk.obj_ids == ram.obj_ids == [1, 2]  # the same identities, whichever frame a chunk starts on
    npz = sorted(p.relative_to(tmp_path / "ram") for p in (tmp_path / "ram").rglob("*.npz"))
    assert {"tracks.npz", "bodies.npz", "bodies_raw.npz", "params.npz"} <= {str(p) for p in npz}
    for rel in npz:
        a, b = np.load(tmp_path / "ram" / rel), np.load(tmp_path / "disk" / rel)
        assert a.files == b.files, rel
        for k in a.files:
            if k != "__header__":
                np.testing.assert_array_equal(a[k], b[k], err_msg=f"{rel}:{k}")
    files = sorted(p.relative_to(tmp_path / "ram") for p in (tmp_path / "ram").rglob("*")
                   if p.is_file() and p.suffix in (".glb", ".ply", ".bvh", ".csv", ".json") and p.name != "run.json")
    assert any(p.suffix == ".glb" for p in files) and any(p.suffix == ".ply" for p in files)
    assert files == sorted(p.relative_to(tmp_path / "disk") for p in (tmp_path / "disk").rglob("*")
                           if p.is_file() and p.suffix in (".glb", ".ply", ".bvh", ".csv", ".json")
                           and p.name != "run.json")
    for rel in files:
        assert (tmp_path / "ram" / rel).read_bytes() == (tmp_path / "disk" / rel).read_bytes(), rel
    for name in ("render_4d.mp4", "mask_overlay.mp4"):
        ra, rb = _read_mp4(tmp_path / "ram" / name), _read_mp4(tmp_path / "disk" / name)
        assert len(ra) == len(rb) == 12
        assert all(np.array_equal(x, y) for x, y in zip(ra, rb)), name
    # the streamed render (batches of 5 through the background encoder) equals the whole clip rendered at
    # once in batches of 16 and encoded afterwards (the path before streaming)
    from body4d_core import render
    from body4d_core.data import Bodies, Camera

    frames, clip = load_video(SAMPLE, CLIP)
    bodies = Bodies.load_npz(tmp_path / "ram" / "bodies.npz")
    camera = Camera.load_npz(tmp_path / "ram" / "camera.npz")
    images = render.render_bodies(frames, bodies, camera, mode="overlay")[0]
    export.write_mp4(tmp_path / "whole.mp4", images, clip.fps, clip.image_size, preset=pipeline.VIDEO_PRESET)
    assert all(np.array_equal(x, y) for x, y in zip(_read_mp4(tmp_path / "whole.mp4"),
                                                     _read_mp4(tmp_path / "disk" / "render_4d.mp4")))


def test_store_removed_after_a_failed_stage(models, tmp_path, monkeypatch):
    seen = []
    orig = pipeline.decode_to_store

    def spy(*a, **k):
        store, clip = orig(*a, **k)
        seen.append(store.dir)
        return store, clip

    def broken(*a, **k):
        raise RuntimeError("tracker failed")

    monkeypatch.setattr(pipeline, "decode_to_store", spy)
    monkeypatch.setattr(pipeline, "stage_tracks", broken)
    with pytest.raises(RuntimeError, match="tracker failed"):
        pipeline.run_pipeline(SAMPLE, tmp_path / "out", _options(models, True))
    assert len(seen) == 1 and not seen[0].exists()
    assert _stores(tmp_path / "out") == []
    assert json.loads((tmp_path / "out" / "run.json").read_text())["status"] == "failed"


def test_image_batch_budget_says_what_to_do():
    sel = video.Selection(np.arange(9000), 30.0, 720, 1280)
    with pytest.raises(MemoryBudgetError) as err:
        video.check_budget(sel, 4, 2**30, image_batch=True)
    msg = str(err.value)
    assert "9000 frames of 1280x720 needs 92.7 GiB" in msg and "10.5 MiB a frame" in msg
    assert "python -m body4d_core run" in msg and "frame_load_cap between 1 and 97" in msg
    with pytest.raises(MemoryBudgetError) as plain:
        video.check_budget(sel, 1, 2**30)
    assert "IMAGE" not in str(plain.value) and "frame_load_cap between 1 and 388" in str(plain.value)


def test_glb_streamed_to_file_is_byte_identical(tmp_path, monkeypatch):
    import pygltflib

    from body4d_core.data import Bodies, BodyFlag

    rng = np.random.default_rng(3)
    t, v = 70, 40  # more frames than one normals batch
    bodies = Bodies.empty([4, 9], t, (64, 48))
    params = {k: a.copy() for k, a in bodies.params.items()}
    params["cam_t"][:] = [0.0, 0.1, 2.5]
    flags = np.full((2, t), BodyFlag.VISIBLE, np.uint8)
    flags[1, 10:20] = BodyFlag.MISSING
    faces = np.stack([np.arange(v - 2), np.arange(1, v - 1), np.arange(2, v)], 1).astype(np.int32)
    bodies = bodies.replace(params=params, flags=flags, faces=faces,
                            vertices=rng.normal(size=(2, t, v, 3)).astype(np.float32))
    monkeypatch.setattr(export, "GLB_COPY", 1000)  # the binary chunk is copied in many reads
    export.write_glb(bodies, tmp_path / "glb", fps=24.0)
    for i, oid in enumerate((4, 9)):
        path = tmp_path / "glb" / f"body4d_person_{oid}.glb"
        assert path.read_bytes() == export.glb_bytes(bodies, i, 24.0)
        doc = pygltflib.GLTF2().load_binary(str(path))
        assert len(doc.meshes) == int(bodies.present[i].sum())
    assert sorted(p.name for p in (tmp_path / "glb").iterdir()) == ["body4d_person_4.glb", "body4d_person_9.glb"]


def test_store_keep_and_empty_arrays_live_in_files(tmp_path):
    store = FrameStore(tmp_path, 1, 2, 2, interval=0.01)
    packed = np.random.default_rng(2).integers(0, 255, (2, 9, 4, 3), dtype=np.uint8)
    verts = np.random.default_rng(3).normal(size=(2, 9, 5, 3)).astype(np.float32)
    kept, kept_v = store.keep(packed), store.keep(verts)
    out = store.empty((3, 4), np.float32)
    np.testing.assert_array_equal(kept, packed)
    np.testing.assert_array_equal(kept_v, verts)
    assert kept_v.dtype == np.float32 and not np.shares_memory(kept_v, verts)
    assert out.shape == (3, 4) and out.dtype == np.float32 and not out.any()
    out[1] = 7.0
    store.drop_pages()  # written values survive the page drop (they are in the file)
    assert out.sum() == 28.0 and np.array_equal(kept[1], packed[1])
    files = sorted(p.stat().st_size for p in store.dir.iterdir())
    assert files == sorted([12, packed.nbytes, verts.nbytes, 48])
    store.close()
    assert _stores(tmp_path) == []
    with pytest.raises(InputError, match="closed"):
        store.empty((2,))


def test_render_batch_sink_streams_the_same_frames():
    from body4d_core import render
    from body4d_core.data import Bodies, BodyFlag, Camera

    t = 7
    bodies = Bodies.empty([1], t, (24, 32))
    params = {k: a.copy() for k, a in bodies.params.items()}
    params["cam_t"][:] = [0.0, 0.0, 3.0]
    square = np.array([[-0.5, -0.5, 0], [0.5, -0.5, 0], [0.5, 0.5, 0], [-0.5, 0.5, 0]], np.float32)
    grow = np.linspace(0.5, 1.5, t)[None, :, None, None]  # every frame differs
    bodies = bodies.replace(params=params, flags=np.full((1, t), BodyFlag.VISIBLE, np.uint8),
                            vertices=np.tile(square[None, None], (1, t, 1, 1)) * grow,
                            faces=np.array([[0, 1, 2], [0, 2, 3]], np.int32))
    camera = Camera.default((24, 32), t)
    frames = np.random.default_rng(4).integers(0, 255, (t, 24, 32, 3), dtype=np.uint8)
    whole, masks = render.render_bodies(frames, bodies, camera)
    batches, progress = [], []
    sink = render.BatchSink(CallbackHooks(lambda d, n: progress.append(d)), batches.append, batch_size=3)
    images, empty_masks = render.render_bodies(frames, bodies, camera, hooks=sink)
    assert images.shape == (0, 24, 32, 3) and empty_masks.shape == (0, 24, 32)
    assert [len(b) for b in batches] == [3, 3, 1] and progress == [3, 6, 7]
    np.testing.assert_array_equal(np.concatenate(batches), whole)
    assert masks.any() and not np.array_equal(whole, frames)  # something was drawn
