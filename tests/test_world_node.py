"""World Ground node over the ComfyUI stand-in: types in and out, preview, options reach the stage, errors."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from body4d_core.testing.world import corrupt, make_scene, noisy_depth

T = 30


@pytest.fixture(scope="module")
def env(pack):
    node = importlib.import_module(f"{pack.__name__}.nodes.world").WorldGround
    data = importlib.import_module(f"{pack.__name__}.body4d_core.data")
    errors = importlib.import_module(f"{pack.__name__}.body4d_core.errors")
    sc = make_scene("walk", "dolly", 1, frames=T, seed=4, image_size=(120, 160), focal=150.0)
    b = corrupt(sc, seed=4)
    bodies = data.Bodies.from_arrays(b.to_arrays(), b.header())  # the pack's own Bodies class
    tracks = data.Tracks.from_masks([1], sc.people_masks[None])
    camera = data.Camera.from_focal(150.0, sc.image_size, T, "manual")
    return node, data, errors, sc, bodies, tracks, camera


def test_node_grounds_a_moving_camera_clip(env):
    node, data, _, sc, bodies, tracks, camera = env
    schema = node.GET_SCHEMA()
    assert schema.node_id == "SAMBody4D_WorldGround" and schema.display_name == "World Ground (Body4D)"
    frames = torch.from_numpy(sc.frames).float() / 255.0
    depth = torch.from_numpy(noisy_depth(sc, seed=4))
    geometry = {"depth": depth, "intrinsics": torch.eye(3)[None].repeat(T, 1, 1)}
    out = node.execute(bodies, camera=camera, frames=frames, tracks=tracks, moge_geometry=geometry)
    world_bodies, world, plot = out.args
    assert isinstance(world_bodies, data.Bodies) and world_bodies.num_frames == T
    assert not world.camera_static and world.camera_source == "flow_depth"
    assert world.floor.source == "depth"
    assert plot.shape == (1, 512, 512, 3) and float(plot.max()) <= 1.0 and float(plot.std()) > 0.01
    assert out.ui is not None
    keep = world_bodies.present
    assert np.allclose(world_bodies.params["cam_t"][keep], world.root[keep] * [1, -1, -1], atol=1e-5)
    travelled = np.linalg.norm(world.camera_positions[-1] - world.camera_positions[0])
    truth = np.linalg.norm(sc.cam_c[-1] - sc.cam_c[0])
    assert abs(travelled - truth) < 0.15 * truth


def test_node_options_reach_the_stage(env):
    node, _, _, sc, bodies, tracks, camera = env
    frames = torch.from_numpy(sc.frames).float() / 255.0
    fixed = node.execute(bodies, camera=camera, frames=frames, camera_motion="static").args[1]
    assert fixed.camera_static and fixed.camera_source == "assumed_static" and fixed.floor.source == "feet"
    loose = node.execute(bodies, camera=camera, camera_motion="static", pin_feet=False).args[1]
    assert not np.allclose(loose.joints, fixed.joints)


def test_node_errors(env):
    node, _, errors, sc, bodies, _, camera = env
    frames = torch.from_numpy(sc.frames[:5]).float() / 255.0
    with pytest.raises(errors.InputError, match="frames"):
        node.execute(bodies, camera=camera, frames=frames)
    with pytest.raises(errors.InputError, match="depth"):
        node.execute(bodies, camera=camera, moge_geometry={"intrinsics": torch.eye(3)[None]})
