"""The world stage's MoGe-2 depth keeps only its keyframes (issue #21): [K, H, W] instead of a NaN-padded
[T, H, W], read by camera motion and the floor exactly as the dense array was."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from body4d_core import disk_plan as D
from body4d_core.data import Camera
from body4d_core.errors import InputError
from body4d_core.frame_store import FrameStore
from body4d_core.testing.world import corrupt, make_scene, noisy_depth
from body4d_core.world import world_stage
from body4d_core.world.camera_motion import estimate_camera_motion
from body4d_core.world.depth import KeyframeDepth, as_keyframe_depth
from body4d_core.world.inputs import moge_depth

from .test_disk_plan import _opts


class _Spy:
    """An allocator over a FrameStore recording each (shape, dtype) asked for."""

    def __init__(self, store: FrameStore) -> None:
        self.store, self.calls = store, []

    def __call__(self, shape, dtype):
        self.calls.append((tuple(shape), np.dtype(dtype)))
        return self.store.empty(shape, dtype)


@pytest.fixture
def store(tmp_path):
    s = FrameStore(tmp_path, 1, 2, 2, interval=0.01)
    yield s
    s.close()


class _Moge(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def infer(self, images, **_):
        d = images.mean(1) + 1.0
        return {"depth": d, "mask": d > 1.3}


def test_moge_depth_stores_only_the_keyframes(store):
    frames = np.random.default_rng(2).integers(0, 255, (10, 8, 12, 3), np.uint8)
    spy = _Spy(store)
    got = moge_depth(_Moge(), frames, every_n=4, batch_size=2, alloc=spy)
    assert spy.calls == [((3, 8, 12), np.dtype(np.float32))] and store.holds(got)  # frames 0, 4, 8 only
    assert got.frames.tolist() == [0, 4, 8] and got.shape == (10, 8, 12) and len(got) == 10
    one = moge_depth(_Moge(), frames, every_n=1)  # every frame: the same maps where both have one
    for i in range(10):
        if i % 4:
            assert got.get(i) is None and not got.has(i) and np.isnan(got[i]).all()
        else:
            np.testing.assert_array_equal(got.get(i), one.get(i))
            assert got.has(i) and np.isnan(got[i]).any()  # MoGe's mask is off somewhere
    dense = np.asarray(got)
    assert dense.shape == (10, 8, 12) and np.isnan(dense[[1, 2, 3, 5, 9]]).all()
    np.testing.assert_array_equal(dense[[0, 4, 8]], got.maps)


def test_keyframe_depth_checks_and_reads():
    maps = np.ones((2, 3, 4), np.float32)
    kd = KeyframeDepth([1, 3], maps, 5)
    assert np.shares_memory(kd.get(3), maps[1]) and np.shares_memory(kd[-2], maps[1]) and kd.get(0) is None
    assert not np.shares_memory(kd[3], maps[0])
    with pytest.raises(IndexError):
        kd[5]
    assert [i for i in range(5) if kd.has(i)] == [1, 3]
    maps[1] = np.nan  # a keyframe where MoGe saw nothing reads as no depth, as in the dense array
    assert not kd.has(3)
    for frames, t in (([3, 1], 5), ([1, 5], 5), ([-1, 2], 5), ([1], 5)):
        with pytest.raises(InputError, match="keyframe"):
            KeyframeDepth(frames, maps, t)
    dense = np.random.default_rng(0).random((4, 3, 2)).astype(np.float32)
    wrapped = as_keyframe_depth(dense)
    assert wrapped.maps is dense and wrapped.frames.tolist() == [0, 1, 2, 3]  # no copy
    assert as_keyframe_depth(wrapped) is wrapped and as_keyframe_depth(None) is None
    with pytest.raises(InputError, match="depth"):
        as_keyframe_depth(np.zeros((3, 4)))


def _sparse(depth: np.ndarray, every: int) -> tuple[KeyframeDepth, np.ndarray]:
    """Keyframe depth of every ``every``-th frame and the dense NaN-padded array the stage used to hold."""
    idx = np.arange(0, len(depth), every)
    kd = KeyframeDepth(idx, depth[idx].copy(), len(depth))
    dense = np.full_like(depth, np.nan)
    dense[idx] = depth[idx]
    return kd, dense


@pytest.mark.parametrize("max_side", [100, 0])
def test_camera_motion_is_the_same_as_with_the_dense_array(store, max_side):
    sc = make_scene("walk", "dolly", 1, frames=14, seed=3, image_size=(120, 160), focal=150.0)
    intr = np.array([150.0, 150.0, 80.0, 60.0])
    kd, dense = _sparse(noisy_depth(sc), 5)
    spy = _Spy(store)
    got = estimate_camera_motion(sc.frames, intr, sc.people_masks, kd, keyframe_every=4, max_side=max_side,
                                 alloc=spy)
    ref = estimate_camera_motion(sc.frames, intr, sc.people_masks, dense, keyframe_every=4, max_side=max_side)
    assert got.source == ref.source == "flow_depth" and not ref.static
    for k in ("rotations", "positions", "inliers"):
        np.testing.assert_array_equal(getattr(got, k), getattr(ref, k))
    if max_side:  # the downscaled depth too holds the 3 keyframes only
        assert ((3, 75, 100), np.dtype(np.float32)) in spy.calls
        assert ((14, 75, 100), np.dtype(np.float32)) not in spy.calls
    with pytest.raises(InputError, match="depth"):
        estimate_camera_motion(sc.frames, intr, None, KeyframeDepth([0], kd.maps[:1], 13))


def test_world_stage_is_the_same_as_with_the_dense_array():
    sc = make_scene("walk", "dolly", 2, frames=20, seed=4, image_size=(120, 160), focal=150.0)
    bodies = corrupt(sc, seed=4)
    cam = Camera.from_focal(150.0, sc.image_size, 20, "manual")
    kd, dense = _sparse(noisy_depth(sc, seed=4), 6)
    got = world_stage(bodies, cam, sc.frames, sc.people_masks, kd)
    ref = world_stage(bodies, cam, sc.frames, sc.people_masks, dense)
    assert got.floor.source == "depth" and got.camera_source == "flow_depth"
    for k in ("joints", "root", "camera_rotations", "camera_positions", "world_from_camera0", "contacts"):
        np.testing.assert_array_equal(getattr(got, k), getattr(ref, k))
    np.testing.assert_array_equal(got.floor.normal, ref.floor.normal)


def test_disk_plan_counts_the_keyframes_depth():
    world = "world stage (masks, depth, vertices)"
    for size in ((360, 640), (1080, 1920)):  # full size; downscaled for camera motion (640 px) too
        h, w = size
        none = D.plan_disk(100, size, 2, _opts(world_depth_every=0)).get(world)
        got = D.plan_disk(100, size, 2, _opts(world_depth_every=7)).get(world)
        s = min(1.0, 640 / max(h, w))
        small = [] if s >= 1.0 else [15 * round(w * s) * round(h * s) * 4]
        assert got - none == D.files(15 * h * w * 4, *small)  # frames 0, 7, ..., 98: 15 keyframes


def test_one_moge_geometry_keeps_one_map_and_reads_as_the_dense_depth():
    """World Ground's depth from one MoGe geometry: one [H, W] map kept (not T), equal to the dense form."""
    import torch

    from body4d_core.world.inputs import depth_from_geometry, keyframe_depth_from_geometry

    pts = torch.zeros(1, 4, 6, 3)
    pts[..., 2] = torch.arange(24, dtype=torch.float32).reshape(4, 6) + 1.0
    mask = torch.ones(1, 4, 6, dtype=torch.bool)
    mask[0, 1, 2] = False
    geo = {"points": pts, "mask": mask}
    kd = keyframe_depth_from_geometry(geo, 7, (8, 12))
    assert kd.maps.shape == (1, 8, 12) and kd.shape == (7, 8, 12) and kd.frames.tolist() == [0]
    dense = depth_from_geometry(geo, 7, (8, 12))
    np.testing.assert_array_equal(np.asarray(kd), dense)
    assert kd.has(0) and not kd.has(3) and np.isnan(kd[3]).all()
    every = keyframe_depth_from_geometry({"depth": torch.rand(7, 8, 12) + 0.5}, 7, (8, 12))
    assert every.maps.shape == (7, 8, 12) and every.frames.tolist() == list(range(7))
    assert keyframe_depth_from_geometry(None, 7, (8, 12)) is None


def test_world_stage_with_frame_0_depth_only_is_the_same_as_with_the_dense_array():
    """World Ground's one-geometry case: a single keyframe at frame 0 gives the dense array's results."""
    sc = make_scene("walk", "dolly", 2, frames=16, seed=5, image_size=(120, 160), focal=150.0)
    bodies = corrupt(sc, seed=5)
    cam = Camera.from_focal(150.0, sc.image_size, 16, "manual")
    kd, dense = _sparse(noisy_depth(sc, seed=5), 16)
    assert kd.frames.tolist() == [0]
    got = world_stage(bodies, cam, sc.frames, sc.people_masks, kd)
    ref = world_stage(bodies, cam, sc.frames, sc.people_masks, dense)
    assert got.floor.source == ref.floor.source and got.camera_source == ref.camera_source
    for k in ("joints", "root", "camera_rotations", "camera_positions", "world_from_camera0", "contacts"):
        np.testing.assert_array_equal(getattr(got, k), getattr(ref, k))
