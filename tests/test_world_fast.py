"""The world stage's host-side speed-ups give the same results as the straightforward code they replace."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from body4d_core.data import Camera, Tracks
from body4d_core.errors import InputError
from body4d_core.world import WorldOptions, ground_clip
from body4d_core.world.camera_motion import _as_uint8, _downscale
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


def test_as_uint8_views_bool_masks():
    m = np.random.default_rng(1).random((5, 6)) > 0.5
    u = _as_uint8(m)
    assert u.dtype == np.uint8 and np.shares_memory(u, m) and np.array_equal(u, m.astype(np.uint8))
    assert np.array_equal(_as_uint8(m.astype(np.int32) * 3), (m * 3).astype(np.uint8))


def test_downscale_same_as_resizing_every_frame():
    rng = np.random.default_rng(2)
    frames = rng.integers(0, 255, (4, 90, 160, 3), dtype=np.uint8)
    people = rng.random((4, 90, 160)) > 0.7
    depth = np.full((4, 90, 160), np.nan, np.float32)
    depth[0] = rng.uniform(1, 5, (90, 160))
    depth[2, 40:45, 10:20] = 2.0  # a frame with a little depth: resized, not taken for empty
    depth[3, 0, 0] = np.inf  # non-finite but not NaN: resized as before
    intr = np.tile([100.0, 100.0, 80.0, 45.0], (4, 1))
    grays, p, d, k, s = _downscale(frames, people, depth, intr, 80)
    size = (80, 45)
    for t in range(4):
        assert np.array_equal(p[t], cv2.resize(people[t].astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0)
        want = cv2.resize(depth[t], size, interpolation=cv2.INTER_NEAREST)
        assert np.array_equal(d[t], want, equal_nan=True) and d[t].dtype == np.float32
    assert np.isnan(d[1]).all() and np.isfinite(d[2]).any() and np.isinf(d[3]).any()
    assert np.allclose(k[0], [50.0, 50.0, 40.0, 22.5]) and s == pytest.approx(0.5)


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
    a, b = _files(tmp_path / "early"), _files(tmp_path / "late")
    assert set(a) == set(b) and any(str(k).startswith("world") for k in a)
    for rel in a:
        if rel.suffix == ".npz":
            with np.load(a[rel]) as x, np.load(b[rel]) as y:
                assert sorted(x.files) == sorted(y.files), rel
                for k in x.files:
                    assert np.array_equal(x[k], y[k], equal_nan=x[k].dtype.kind == "f"), (rel, k)
        elif rel.name != "clip.npz":
            assert a[rel].read_bytes() == b[rel].read_bytes(), rel


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
