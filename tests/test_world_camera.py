"""Camera motion on rendered synthetic rooms: static stays exactly static, moving cameras are solved."""

from __future__ import annotations

import numpy as np
import pytest

from body4d_core.errors import InputError
from body4d_core.world.camera_motion import estimate_camera_motion
from body4d_core.world.metrics import camera_metrics
from body4d_core.testing.world import make_scene, noisy_depth


def _scene(camera: str):
    return make_scene("walk", camera, 1, frames=24, seed=3, image_size=(120, 160), focal=150.0)


def _c0_poses(scene):
    """Ground truth as first-camera-from-camera-t poses (what the solver returns)."""
    R = np.einsum("ji,tjk->tik", scene.cam_R[0], scene.cam_R)
    p = (scene.cam_c - scene.cam_c[0]) @ scene.cam_R[0]
    return R, p


def test_static_camera_is_exactly_static():
    sc = _scene("static")
    intr = np.array([150.0, 150.0, 80.0, 60.0])
    traj = estimate_camera_motion(sc.frames, intr, sc.people_masks, noisy_depth(sc))
    assert traj.static and traj.source == "static"
    assert np.array_equal(traj.rotations, np.repeat(np.eye(3)[None], 24, 0))
    assert np.array_equal(traj.positions, np.zeros((24, 3)))


@pytest.mark.parametrize("kind", ["dolly", "handheld"])
def test_moving_camera_with_depth(kind):
    sc = _scene(kind)
    intr = np.array([150.0, 150.0, 80.0, 60.0])
    traj = estimate_camera_motion(sc.frames, intr, sc.people_masks, noisy_depth(sc), keyframe_every=8)
    assert not traj.static and traj.source == "flow_depth"
    R, p = _c0_poses(sc)
    m = camera_metrics(traj.rotations, traj.positions, R, p)
    assert m["cam_rot_deg"] < 1.0
    assert m["cam_trans%"] < 10.0
    assert (traj.inliers[1:] > 8).all()


def test_pan_without_depth_solves_rotation_only():
    sc = _scene("pan")
    traj = estimate_camera_motion(sc.frames, np.array([150.0, 150.0, 80.0, 60.0]), sc.people_masks, None)
    assert traj.source == "flow_rotation" and not traj.static
    R, _ = _c0_poses(sc)
    rel = np.einsum("tji,tjk->tik", traj.rotations, R)
    ang = np.degrees(np.arccos(np.clip((np.trace(rel, axis1=1, axis2=2) - 1) / 2, -1, 1)))
    assert ang.max() < 1.0
    total = np.degrees(np.arccos(np.clip((np.trace(R[-1]) - 1) / 2, -1, 1)))
    assert total > 5.0  # the pan really turned the camera
    assert np.array_equal(traj.positions, np.zeros_like(traj.positions))


def test_bad_inputs_raise_one_line_errors():
    sc = _scene("static")
    with pytest.raises(InputError, match="depth"):
        estimate_camera_motion(sc.frames, np.array([150.0, 150, 80, 60]), None, np.zeros((3, 4, 4)))
    with pytest.raises(InputError, match="intrinsics"):
        estimate_camera_motion(sc.frames, np.ones(5), None, None)
    with pytest.raises(InputError, match="people masks"):
        estimate_camera_motion(sc.frames, np.array([150.0, 150, 80, 60]), np.zeros((2, 3, 3), bool), None)


def test_large_frames_are_tracked_downscaled():
    sc = _scene("dolly")
    intr = np.array([150.0, 150.0, 80.0, 60.0])
    traj = estimate_camera_motion(sc.frames, intr, sc.people_masks, noisy_depth(sc), keyframe_every=8, max_side=120)
    R, p = _c0_poses(sc)
    m = camera_metrics(traj.rotations, traj.positions, R, p)
    assert traj.source == "flow_depth" and m["cam_rot_deg"] < 1.5 and m["cam_trans%"] < 15.0
    still = estimate_camera_motion(_scene("static").frames, intr, max_side=120)
    assert still.static
