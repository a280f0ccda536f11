"""The world stage's host-side speed-ups give the same results as the straightforward code they replace."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from body4d_core.data import Camera, Tracks
from body4d_core.errors import InputError
from body4d_core.world import WorldOptions, ground_clip
from body4d_core.world.floor import floor_from_depth, near_feet
from body4d_core.world.prepare import WorldPrep
from body4d_core.testing.world import corrupt, make_scene, noisy_depth

T = 30


def _broadcast_near(pts, feet, up):
    """The one-broadcast formula near_feet replaced ([M, F, 3] temporaries)."""
    rel = pts[:, None, :] - feet[None]
    along = rel @ up
    lateral = np.linalg.norm(rel - along[..., None] * up, axis=-1)
    return ((lateral < 4.0) & (along < 0.5)).any(1)


@pytest.mark.parametrize("chunk", [1, 7, 1024, 100000])
def test_near_feet_is_the_broadcast_formula(chunk):
    rng = np.random.default_rng(3)
    up = np.array([0.1, -0.98, 0.17])
    up /= np.linalg.norm(up)
    feet = rng.normal(0, 1.5, (37, 3))
    pts = rng.normal(0, 4.0, (2503, 3))  # some near, some far, some above the feet
    got = near_feet(pts, feet, up, chunk=chunk)
    want = _broadcast_near(pts, feet, up)
    assert got.dtype == bool and got.shape == (2503,)
    assert 0 < want.sum() < len(pts)  # a mixed case, else the comparison says little
    assert np.array_equal(got, want)


def test_near_feet_thresholds_are_used():
    up = np.array([0.0, -1.0, 0.0])
    feet = np.zeros((1, 3))
    pts = np.array([[3.9, 0.0, 0.0], [4.1, 0.0, 0.0], [0.0, -0.4, 0.0], [0.0, -0.6, 0.0]])
    assert near_feet(pts, feet, up).tolist() == [True, False, True, False]
    assert near_feet(pts, feet, up, lateral_max=5.0, above_max=1.0).tolist() == [True, True, True, True]


def test_floor_from_depth_unchanged_on_a_floor():
    """A floor plane with clutter: the chunked filter keeps the same points, so the same plane comes out."""
    rng = np.random.default_rng(0)
    floor = np.c_[rng.uniform(-6, 6, 4000), np.full(4000, 1.5), rng.uniform(1, 12, 4000)]
    wall = np.c_[rng.uniform(-6, 6, 1500), rng.uniform(-1.5, 1.5, 1500), np.full(1500, 12.0)]
    pts = np.concatenate([floor, wall]) + rng.normal(0, 0.005, (5500, 3))
    up = np.array([0.0, -1.0, 0.0])
    feet = np.c_[np.linspace(-1, 1, 50), np.full(50, 1.48), np.linspace(4, 5, 50)]
    got = floor_from_depth(pts, up, feet)
    near = _broadcast_near(pts, feet, up)
    assert 200 <= near.sum() < len(pts)
    assert got is not None and got.source == "depth" and abs(got.offset - 1.5) < 0.02


class _DepthOracle(torch.nn.Module):
    """A MoGe stand-in returning the scene's depth of the frames it is given."""

    def __init__(self, frames: np.ndarray, depth: np.ndarray):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.frames = torch.from_numpy(frames).float().permute(0, 3, 1, 2) / 255
        self.depth = torch.from_numpy(depth)

    def infer(self, images, **_):
        idx = [int((self.frames - im[None]).abs().mean(dim=(1, 2, 3)).argmin()) for im in images]
        return {"depth": self.depth[idx], "mask": torch.ones(len(idx), *self.depth.shape[1:], dtype=torch.bool)}


def _scene():
    sc = make_scene("walk", "pan", 1, frames=T, seed=4, image_size=(120, 160), focal=150.0)
    bodies = corrupt(sc, seed=4)
    cam = Camera.from_focal(150.0, sc.image_size, T, "manual")
    tracks = Tracks.from_masks([1], sc.people_masks[None])
    return sc, bodies, cam, tracks, _DepthOracle(sc.frames, noisy_depth(sc, seed=4))


def _same(a, b):
    for name in ("joints", "root", "present", "contacts", "camera_rotations", "camera_positions",
                 "world_from_camera0", "plot"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.camera_source == b.camera_source and a.floor.source == b.floor.source
    assert np.array_equal(a.bodies.vertices, b.bodies.vertices) or a.bodies.vertices is None


@pytest.mark.parametrize("camera_motion", ["auto", "static"])
def test_prepared_world_is_the_same_as_in_one_call(camera_motion):
    sc, bodies, cam, tracks, oracle = _scene()
    opts = WorldOptions(camera_motion=camera_motion)
    direct = ground_clip(sc.frames, tracks, cam, bodies, moge_model=oracle, depth_every=5, options=opts)
    prep = WorldPrep(sc.frames, tracks, cam, oracle, 5, opts)
    early = ground_clip(sc.frames, tracks, cam, bodies, options=opts, prepared=prep)
    prep.close()
    _same(direct, early)
    if camera_motion == "auto":
        assert early.camera_source == "flow_depth"
        assert {"depth", "people_background", "camera_motion_background", "camera_motion", "floor", "smooth",
                "contacts", "bodies", "plot"} <= set(early.timings)
    else:
        assert early.camera_source == "assumed_static" and "camera_motion_background" not in early.timings


def test_prepared_world_raises_what_the_one_call_raises():
    sc, bodies, cam, _, oracle = _scene()
    short = Tracks.from_masks([1], sc.people_masks[None, :-1])  # one frame short
    with pytest.raises(InputError) as direct:
        ground_clip(sc.frames, short, cam, bodies, moge_model=oracle, depth_every=5)
    prep = WorldPrep(sc.frames, short, cam, oracle, 5, WorldOptions())
    prep.close()  # joins without raising
    with pytest.raises(InputError) as early:
        ground_clip(sc.frames, short, cam, bodies, prepared=prep)
    assert str(early.value) == str(direct.value)


def test_prepared_world_keeps_a_depth_failure_for_the_stage():
    sc, bodies, cam, tracks, _ = _scene()

    class Broken(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def infer(self, images, **_):
            raise RuntimeError("depth model failed")

    prep = WorldPrep(sc.frames, tracks, cam, Broken(), 5, WorldOptions())  # no raise here: the stage raises it
    with pytest.raises(RuntimeError, match="depth model failed"):
        ground_clip(sc.frames, tracks, cam, bodies, prepared=prep)
    prep.close()


# --------------------------------------------------------------------------- in the pipeline


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from .tiny_runs import tiny_models

    return tiny_models(tmp_path_factory)


def _files(out):
    return {p.relative_to(out): p for p in out.rglob("*") if p.is_file() and p.name != "run.json"}


def _same_outputs(a_dir, b_dir):
    """The two output folders hold the same files (world ones among them), value for value."""
    a, b = _files(a_dir), _files(b_dir)
    assert set(a) == set(b) and any(str(k).startswith("world") for k in a)
    for rel in a:
        if rel.suffix == ".npz":
            with np.load(a[rel]) as x, np.load(b[rel]) as y:
                assert sorted(x.files) == sorted(y.files), rel
                for k in x.files:
                    assert np.array_equal(x[k], y[k], equal_nan=x[k].dtype.kind == "f"), (rel, k)
        elif rel.name != "clip.npz":
            assert a[rel].read_bytes() == b[rel].read_bytes(), rel


def test_pipeline_world_early_or_late_writes_the_same_files(models, tmp_path, monkeypatch):
    """Depth before, camera motion during the bodies stage (WORLD_EARLY) or both inside the world stage:
    the same world files, value for value; the parts are reported."""
    from body4d_core import pipeline as pl

    from .tiny_runs import SAMPLE, small_options

    opts = dict(anim_fidelity=False, write_meshes=False, write_glb=False)
    early = pl.run_pipeline(SAMPLE, tmp_path / "early", small_options(models, **opts))
    monkeypatch.setattr(pl, "WORLD_EARLY", False)
    late = pl.run_pipeline(SAMPLE, tmp_path / "late", small_options(models, **opts))
    assert "world_start" in early.timings and "world_start" not in late.timings
    assert "world_camera_motion" in early.parts and "world_floor" in late.parts
    assert any(k.startswith("write_") for k in early.parts)
    _same_outputs(tmp_path / "early", tmp_path / "late")


def test_pipeline_failing_in_the_bodies_stage_joins_the_world_thread(models, tmp_path, monkeypatch):
    """A run that fails while the world thread still solves the camera waits for that thread (none is left)."""
    import threading
    import time

    import body4d_core.world.prepare as prepare
    from body4d_core import pipeline as pl

    from .tiny_runs import SAMPLE, small_options

    real = prepare.estimate_camera_motion
    done = []

    def slow(*args, **kwargs):
        time.sleep(1.0)
        done.append(True)
        return real(*args, **kwargs)

    seen = {}

    def failing(*args, **kwargs):
        seen["alive"] = [t for t in threading.enumerate() if t.name.startswith("body4d-world") and t.is_alive()]
        raise RuntimeError("bodies failed")

    monkeypatch.setattr(prepare, "estimate_camera_motion", slow)
    with pytest.raises(RuntimeError, match="bodies failed"):
        pl.run_pipeline(SAMPLE, tmp_path, small_options(models, anim_fidelity=False), estimate=failing)
    assert seen["alive"]  # the world thread was running when the bodies stage failed
    assert done and not [t for t in threading.enumerate() if t.name.startswith("body4d-world") and t.is_alive()]



def _world_threads():
    import threading

    return [t for t in threading.enumerate() if t.name.startswith("body4d-world") and t.is_alive()]


def _on_world_thread(pl, monkeypatch, before=None):
    """stage_world wrapped: records the thread it ran on (and its start / end), runs ``before`` first."""
    import threading
    import time

    real, seen = pl.stage_world, {}

    def wrapped(*args, **kwargs):
        seen["thread"], seen["free"], seen["start"] = threading.current_thread().name, kwargs.get("free"), \
            time.perf_counter()
        if before is not None:
            before()
        try:
            return real(*args, **kwargs)
        finally:
            seen["end"] = time.perf_counter()

    monkeypatch.setattr(pl, "stage_world", wrapped)
    return seen


def test_world_stage_beside_the_render_writes_the_same_files(models, tmp_path, monkeypatch):
    """On a thread while the render runs (the CUDA default) or before it: the same files, value for value
    (world, its exports, the animation); run.json records both stages, the world stage with its own seconds."""
    import json

    from body4d_core import pipeline as pl

    from .tiny_runs import SAMPLE, small_options

    import time

    opts = dict(anim_fidelity=False, write_meshes=True, write_glb=True)
    seen = _on_world_thread(pl, monkeypatch, before=lambda: time.sleep(0.5))  # a world stage the render overlaps
    before = pl.run_pipeline(SAMPLE, tmp_path / "before", small_options(models, **opts))
    assert seen["thread"] == "MainThread" and seen["free"] is True  # on a CPU: in place, as before
    monkeypatch.setattr(pl, "_world_beside_render", lambda plan: True)
    render_span = {}
    real_render = pl._render_and_export

    def render(*args, **kwargs):
        render_span["start"] = time.perf_counter()
        real_render(*args, **kwargs)
        render_span["end"] = time.perf_counter()

    monkeypatch.setattr(pl, "_render_and_export", render)
    beside = pl.run_pipeline(SAMPLE, tmp_path / "beside", small_options(models, **opts))
    assert seen["thread"].startswith("body4d-world") and seen["free"] is False
    assert seen["start"] < render_span["end"] and render_span["start"] < seen["end"], "the two ran at once"
    assert not _world_threads()
    _same_outputs(tmp_path / "before", tmp_path / "beside")
    assert any(p.name.endswith(".bvh") for p in (tmp_path / "beside" / "anim").iterdir())
    for summary, name in ((before, "before"), (beside, "beside")):
        run = json.loads((tmp_path / name / "run.json").read_text())
        assert run["status"] == "complete" and {"world", "render"} <= set(run["stages"])
        assert run["stages"]["world"]["files"] and run["stages"]["world"]["seconds"] == summary.timings["world"]
        assert "world_floor" in summary.parts
    assert set(before.files) == set(beside.files)


def test_world_stage_failing_beside_the_render_fails_the_run(models, tmp_path, monkeypatch):
    """Its error is the run's, run.json says it stopped in the world stage, no thread is left, and nothing is
    half-written (no temporary files, no world files)."""
    import json

    from body4d_core import pipeline as pl

    from .tiny_runs import SAMPLE, small_options

    monkeypatch.setattr(pl, "_world_beside_render", lambda plan: True)

    def broken():
        raise RuntimeError("floor solver crashed")

    _on_world_thread(pl, monkeypatch, before=broken)
    with pytest.raises(RuntimeError, match="floor solver crashed"):
        pl.run_pipeline(SAMPLE, tmp_path, small_options(models, anim_fidelity=False))
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["status"] == "failed" and run["stopped_at"] == "world" and "floor solver" in run["error"]
    assert "world" not in run["stages"]
    assert not (tmp_path / "world").exists() and not (tmp_path / "anim").exists()
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name or p.name.startswith(".")]
    assert not _world_threads()


def test_render_failing_beside_the_world_stage_waits_for_it(models, tmp_path, monkeypatch):
    """A render that fails while the world thread still runs: the run raises the render's error once that
    thread is done (none is left behind writing into the output folder)."""
    import time

    from body4d_core import pipeline as pl

    from .tiny_runs import SAMPLE, small_options

    monkeypatch.setattr(pl, "_world_beside_render", lambda plan: True)
    seen = _on_world_thread(pl, monkeypatch, before=lambda: time.sleep(1.0))

    def failing_render(*args, **kwargs):
        raise RuntimeError("renderer lost the GPU")

    with pytest.raises(RuntimeError, match="renderer lost the GPU"):
        pl.run_pipeline(SAMPLE, tmp_path, small_options(models, anim_fidelity=False), render=failing_render)
    assert "end" in seen and not _world_threads()


# --------------------------------------------------------------------------- PLY meshes


def _mesh_bodies(frames: int = 4):
    from body4d_core.data import Bodies, BodyFlag

    rng = np.random.default_rng(5)
    b = Bodies.empty([1, 4], frames, (64, 48))
    params = {k: v.copy() for k, v in b.params.items()}
    params["cam_t"][:] = rng.normal(0, 1, (2, frames, 3))
    flags = np.full((2, frames), BodyFlag.VISIBLE, np.uint8)
    flags[1, 1] = BodyFlag.MISSING  # a missing frame: no file
    faces = np.array([[0, 1, 2], [2, 3, 4], [5, 6, 7], [7, 8, 29]], np.int32)
    return b.replace(params=params, flags=flags, vertices=rng.normal(0, 1, (2, frames, 30, 3)).astype(np.float32),
                     faces=faces)


def test_meshes_are_trimesh_bytes(tmp_path):
    """Every PLY (the first frame by trimesh, the rest packed) has trimesh's exact bytes."""
    import trimesh

    from body4d_core.export import object_color_float, world_vertices, write_meshes

    bodies = _mesh_bodies()
    root = write_meshes(bodies, tmp_path / "m")
    files = sorted(root.rglob("*.ply"))
    assert len(files) == int(bodies.present.sum()) == 7
    for i, oid in enumerate(bodies.obj_ids.tolist()):
        color = (np.append(object_color_float(oid), 1.0) * 255).astype(np.uint8)
        for t in np.flatnonzero(bodies.present[i]):
            mesh = trimesh.Trimesh(world_vertices(bodies, i, int(t)), bodies.faces, process=False,
                                   vertex_colors=np.tile(color, (30, 1)))
            assert (root / f"person_{oid}" / f"{int(t):08d}.ply").read_bytes() == mesh.export(file_type="ply")


def test_ply_packer_refuses_a_layout_it_does_not_write():
    from body4d_core.export import _ply_packer

    verts = np.zeros((3, 3), np.float32)
    faces = np.array([[0, 1, 2]])
    color = np.array([1, 2, 3, 255], np.uint8)
    assert _ply_packer(b"ply\nformat ascii 1.0\nend_header\n0 0 0\n", verts, faces, color) is None
    assert _ply_packer(b"no header", verts, faces, color) is None
