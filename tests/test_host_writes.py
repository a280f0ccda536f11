"""Host-side writes of the pipeline: npz member compression, exact overlay, batched GLB normals,
x264 preset, per-person exports and the background writer (errors reach the caller)."""

from __future__ import annotations

import json
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from body4d_core import export
from body4d_core import pipeline as pl
from body4d_core.data import Amodal, Bodies, BodyFlag, Camera, Tracks, pack_masks, write_npz
from body4d_core.errors import InputError
from body4d_core.overlay import overlay_masks
from body4d_core.palette import object_color
from body4d_core.render import vertex_normals
from body4d_core.testing.checkpoints import uv_sphere


def _members(path: Path) -> dict[str, int]:
    with zipfile.ZipFile(path) as zf:
        return {i.filename: i.compress_type for i in zf.infolist()}


def _mesh_bodies(n: int = 2, t: int = 5, rows: int = 12, cols: int = 16) -> Bodies:
    """Bodies with closed sphere meshes, random per-frame jitter, one missing frame."""
    rng = np.random.default_rng(0)
    v, f = uv_sphere(rows=rows, cols=cols)
    verts = v.numpy()[None, None] * 0.3 + rng.normal(0, 0.01, (n, t, v.shape[0], 3)).astype(np.float32)
    b = Bodies.empty(range(1, n + 1), t, (64, 80))
    params = {k: val.copy() for k, val in b.params.items()}
    params["cam_t"][:] = [0.1, -0.2, 3.0]
    flags = np.full((n, t), BodyFlag.VISIBLE, np.uint8)
    flags[0, 1] = BodyFlag.MISSING
    return b.replace(params=params, flags=flags, vertices=verts.astype(np.float32), faces=f.numpy().astype(np.int32))


# --------------------------------------------------------------------------- npz files


def test_npz_stores_incompressible_members_and_deflates_masks(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    masks = np.zeros((2, 3, 200, 640), bool)
    masks[:, :, 50:150, 100:300] = True
    tracks = Tracks.from_masks([1, 2], masks)  # packed: 1.5 MB of mostly zeros
    noise = rng.normal(size=(300_000,)).astype(np.float32)  # 1.2 MB of float noise
    path = write_npz(tmp_path / "a.npz", {"packed": tracks.packed, "noise": noise, "small": np.arange(5)})
    kinds = _members(path)
    assert kinds == {"packed.npy": zipfile.ZIP_DEFLATED, "noise.npy": zipfile.ZIP_STORED,
                     "small.npy": zipfile.ZIP_DEFLATED}
    with np.load(path, allow_pickle=False) as d:  # plain numpy reads it
        assert np.array_equal(d["packed"], tracks.packed) and d["packed"].dtype == np.uint8
        assert np.array_equal(d["noise"], noise) and d["noise"].dtype == np.float32
        assert d["small"].tolist() == [0, 1, 2, 3, 4]
    assert path.stat().st_size < noise.nbytes + 100_000  # the masks shrank


def test_npz_strided_member_round_trips(tmp_path: Path) -> None:
    base = np.random.default_rng(1).normal(size=(6, 200_000)).astype(np.float32)
    view = base[:, ::2]  # not contiguous, > 1 MB: sampled along the first axis
    path = write_npz(tmp_path / "s.npz", {"v": view})
    assert _members(path)["v.npy"] == zipfile.ZIP_STORED
    with np.load(path) as d:
        assert np.array_equal(d["v"], view)


def test_bodies_npz_round_trip_exact_with_stored_vertices(tmp_path: Path) -> None:
    b = _mesh_bodies(rows=40, cols=60)
    big = b.replace(vertices=np.tile(b.vertices, (1, 30, 1, 1)), flags=np.tile(b.flags, (1, 30)),
                    params={k: np.tile(v, (1, 30, 1)) for k, v in b.params.items()})
    path = big.save_npz(tmp_path / "bodies")  # suffix added as np.savez did
    assert path == tmp_path / "bodies.npz" and path.is_file()
    assert _members(path)["vertices.npy"] == zipfile.ZIP_STORED  # 3.5 MB of float noise
    back = Bodies.load_npz(path)
    assert back.vertices.dtype == np.float32 and np.array_equal(back.vertices, big.vertices)
    assert np.array_equal(back.faces, big.faces) and np.array_equal(back.flags, big.flags)
    assert all(np.array_equal(back.params[k], big.params[k]) for k in big.params)


def test_files_written_by_savez_compressed_still_load(tmp_path: Path) -> None:
    """The format before the fifth session: every member deflated by np.savez_compressed."""
    masks = np.random.default_rng(2).random((2, 4, 9, 13)) > 0.5
    occluded = np.array([[True, False, False, True], [False] * 4])
    amodal = Amodal([4, 7], occluded, pack_masks(masks), (9, 13), completed_index=np.array([[0, 3]]),
                    completed_rgb=np.full((1, 9, 13, 3), 17, np.uint8))
    head = {"kind": "amodal", "version": 1, **amodal.header()}
    old = tmp_path / "old.npz"
    np.savez_compressed(old, __header__=np.array(json.dumps(head)), **amodal.to_arrays())
    assert set(_members(old).values()) == {zipfile.ZIP_DEFLATED}
    back = Amodal.load_npz(old)
    assert back.obj_ids.tolist() == [4, 7] and np.array_equal(back.packed_amodal, amodal.packed_amodal)
    assert np.array_equal(back.occluded, occluded) and back.completed(4, 3)[0, 0].tolist() == [17, 17, 17]
    new = amodal.save_npz(tmp_path / "new.npz")
    with np.load(old) as a, np.load(new) as b:  # same members, same values
        assert sorted(a.files) == sorted(b.files)
        for k in set(a.files) - {"__header__"}:
            assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k], equal_nan=a[k].dtype.kind == "f")
        new_head = json.loads(str(b["__header__"]))  # the new header also lists its members
        assert new_head.pop("members") == sorted(amodal.to_arrays()) and new_head == head


# --------------------------------------------------------------------------- overlay


def _overlay_reference(frame: np.ndarray, masks: np.ndarray, ids: list[int], alpha: float, outline: bool) -> np.ndarray:
    """The whole-frame loop overlay_masks replaced (first four sessions)."""
    out = frame.astype(np.float32)
    for mask, oid in zip(masks, ids):
        if not mask.any():
            continue
        color = np.asarray(object_color(int(oid)), np.float32)
        out[mask] = out[mask] * (1.0 - alpha) + color * alpha
        if outline:
            m = np.pad(mask, 1, constant_values=False)
            inner = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
            out[mask & ~inner] = color
    return np.clip(out, 0, 255).astype(np.uint8)


def test_overlay_equals_whole_frame_blend() -> None:
    rng = np.random.default_rng(3)
    for trial in range(60):
        h, w = rng.integers(1, 30, 2)
        n = int(rng.integers(0, 4))
        masks = rng.random((n, h, w)) < rng.random()
        if n and trial % 3 == 0:
            masks[0] = False  # an absent person
        ids = [int(i) for i in rng.choice(np.arange(1, 40), n, replace=False)]
        frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        for alpha, outline in ((0.5, True), (0.3, False), (1.0, True)):
            got = overlay_masks(frame, masks, ids, alpha, outline)
            assert got.dtype == np.uint8 and np.array_equal(got, _overlay_reference(frame, masks, ids, alpha, outline))
        as_float = rng.uniform(-30, 290, (h, w, 3)).astype(np.float32)  # out-of-range floats are clipped as before
        assert np.array_equal(overlay_masks(as_float, masks, ids), _overlay_reference(as_float, masks, ids, 0.5, True))


def test_overlay_without_masks_copies_the_frame() -> None:
    frame = np.full((4, 5, 3), 9, np.uint8)
    out = overlay_masks(frame, np.zeros((2, 4, 5), bool), [1, 2])
    assert np.array_equal(out, frame) and out is not frame


# --------------------------------------------------------------------------- video, GLB, meshes


def test_mp4_preset_and_bad_preset(tmp_path: Path) -> None:
    import av

    frames = np.random.default_rng(4).integers(0, 255, (6, 32, 48, 3), dtype=np.uint8)
    path = export.write_mp4(tmp_path / "v.mp4", frames, 10.0, preset="veryfast")
    with av.open(str(path)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 6
    with pytest.raises(InputError, match="unknown x264 preset 'fastest'"):
        export.write_mp4(tmp_path / "w.mp4", frames, 10.0, preset="fastest")


def test_batched_cpu_normals_equal_per_frame() -> None:
    v, f = uv_sphere(rows=20, cols=24)
    noise = torch.randn(7, *v.shape, generator=torch.Generator().manual_seed(0))
    batch = v[None] * torch.tensor([0.3, 0.9, 0.2]) + 0.02 * noise
    per_frame = torch.stack([vertex_normals(batch[i], f) for i in range(7)])
    assert torch.equal(vertex_normals(batch, f), per_frame)
    assert torch.equal(vertex_normals(batch[None], f)[0], per_frame)  # two leading dims


def test_glb_normals_equal_per_frame_normals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pygltflib

    monkeypatch.setattr(export, "NORMALS_BATCH", 2)  # several chunks for 4 present frames
    b = _mesh_bodies()
    root = export.write_glb(b, tmp_path / "glb", fps=10.0, ids=[1])
    assert sorted(p.name for p in root.iterdir()) == ["body4d_person_1.glb"]
    g = pygltflib.GLTF2().load(str(root / "body4d_person_1.glb"))
    blob = g.binary_blob()
    frames = np.flatnonzero(b.present[0]).tolist()
    assert frames == [0, 2, 3, 4]
    faces = torch.from_numpy(b.faces.astype(np.int64))
    for mesh, t in zip(g.meshes, frames):
        acc = g.accessors[mesh.primitives[0].attributes.NORMAL]
        view = g.bufferViews[acc.bufferView]
        got = np.frombuffer(blob[view.byteOffset:view.byteOffset + view.byteLength], np.float32).reshape(-1, 3)
        want = vertex_normals(torch.from_numpy(export.world_vertices(b, 0, t)), faces).numpy()
        assert np.array_equal(got, want)


def test_exports_for_some_ids_only(tmp_path: Path) -> None:
    b = _mesh_bodies()
    export.write_meshes(b, tmp_path / "m", ids=[2])
    assert [p.name for p in (tmp_path / "m").iterdir()] == ["person_2"]
    assert len(list((tmp_path / "m" / "person_2").glob("*.ply"))) == 5
    with pytest.raises(InputError, match="object id 9 has no bodies"):
        export.write_glb(b, tmp_path / "g", ids=[9])


# --------------------------------------------------------------------------- background writes


def test_background_writes_run_off_the_calling_thread(tmp_path: Path) -> None:
    summary = pl.RunSummary(tmp_path)
    writes = pl.BackgroundWrites(summary)
    seen: list[str] = []
    writes.submit("x", tmp_path / "x.txt", lambda p: (seen.append(threading.current_thread().name),
                                                     p.write_text("ok")), tmp_path / "x.txt")
    writes.save("camera", Camera.default((8, 10), 3), tmp_path / "camera.npz")
    writes.join()
    assert (tmp_path / "x.txt").read_text() == "ok" and seen[0].startswith("body4d-write")
    assert Camera.load_npz(summary.files["camera"]).num_frames == 3
    assert summary.files["x"] == tmp_path / "x.txt"


def _fail(path: Path) -> None:
    raise OSError(28, "No space left on device", str(path))


def test_background_write_error_raised_by_join_and_check(tmp_path: Path) -> None:
    writes = pl.BackgroundWrites(pl.RunSummary(tmp_path))
    writes.submit("bad", tmp_path / "b", _fail, tmp_path / "b")
    writes.submit("good", tmp_path / "g", lambda: (tmp_path / "g").write_text("1"))
    with pytest.raises(OSError, match="No space left on device"):
        writes.join()
    assert (tmp_path / "g").read_text() == "1"  # the other writes still finished

    writes = pl.BackgroundWrites(pl.RunSummary(tmp_path))
    writes.submit("bad", tmp_path / "b", _fail, tmp_path / "b")
    writes._jobs[-1][1].exception()  # wait until it has failed
    with pytest.raises(OSError, match="No space left"):
        writes.check()  # at the next stage boundary
    writes.close()  # logs, does not raise


def test_run_pipeline_raises_a_failed_background_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def stages(video, out, opts, hooks_for, summary, writes, *cache):  # noqa: ANN001 - stands in for the GPU stages
        writes.submit("tracks", out / "tracks.npz", _fail, out / "tracks.npz")

    monkeypatch.setattr(pl, "_run_stages", stages)
    with pytest.raises(OSError, match="No space left on device"):
        pl.run_pipeline("clip.mp4", tmp_path / "out")


def test_run_pipeline_stage_error_wins_and_writes_finish(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = threading.Event()

    def slow_write(path: Path) -> None:
        gate.wait(5)
        path.write_text("done")

    def stages(video, out, opts, hooks_for, summary, writes, *cache):  # noqa: ANN001
        writes.submit("clip", out / "clip.txt", slow_write, out / "clip.txt")
        writes.submit("tracks", out / "tracks.npz", _fail, out / "tracks.npz")
        gate.set()
        raise InputError("the amodal stage failed")

    monkeypatch.setattr(pl, "_run_stages", stages)
    with pytest.raises(InputError, match="the amodal stage failed"):
        pl.run_pipeline("clip.mp4", tmp_path / "out")
    assert (tmp_path / "out" / "clip.txt").read_text() == "done"  # joined before the error left run_pipeline


@pytest.mark.parametrize("gpu", [True, False])
def test_render_stage_exports_overlap_a_gpu_render(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gpu: bool) -> None:
    from body4d_core import render

    b = _mesh_bodies(t=4)
    frames = np.zeros((4, 64, 80, 3), np.uint8)
    clip = pl.Clip(10.0, 4, (64, 80))
    summary = pl.RunSummary(tmp_path)
    seen: dict[str, bool] = {}

    def fake_render(frames_, bodies, camera, mode, hooks):  # noqa: ANN001 - stands in for the GPU render
        seen["submitted_before_render"] = "glb" in summary.files
        return frames_ + 1, np.zeros(frames_.shape[:3], np.float32)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    monkeypatch.setattr(render, "render_bodies", fake_render)
    pl._render_and_export(frames, clip, b, Camera.default((64, 80), 4), pl.PipelineOptions(), tmp_path, summary,
                          pl.NULL_HOOKS)
    assert seen["submitted_before_render"] is gpu  # on a CPU render the exports wait for the cores
    assert set(summary.files) == {"params", "meshes", "glb", "render"}
    assert Bodies.load_npz(summary.files["params"]).num_frames == 4
    assert len(list((tmp_path / "meshes" / "person_2").glob("*.ply"))) == 4
    assert sorted(p.name for p in (tmp_path / "glb").iterdir()) == ["body4d_person_1.glb", "body4d_person_2.glb"]
    assert summary.files["render"].stat().st_size > 0


def test_bench_host_writes_tiny_runs_and_prints_every_item(tmp_path: Path) -> None:
    import subprocess
    import sys

    from .media import REPO

    res = subprocess.run([sys.executable, "-m", "bench.bench_host_writes", "--tiny", "--render-s", "0.2",
                          "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in res.stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| ---")}
    for item in ("tracks", "mask_overlay", "amodal", "bodies_raw", "params", "meshes", "glb", "render_stage"):
        assert float(rows[item]) >= 0.0, item
    assert float(rows["render_stage"]) >= 0.2  # includes the stand-in render
    assert Tracks.load_npz(tmp_path / "tracks.npz").num_frames == 6
    assert (tmp_path / "stage" / "render_4d.mp4").stat().st_size > 0
