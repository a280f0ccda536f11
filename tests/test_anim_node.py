"""Save Animation node over the ComfyUI stand-in: unique names, core pose input, World Ground's world."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
import torch

from body4d_core.data import Bodies, BodyFlag, Camera
from body4d_core.interop.mhr_pose_data import to_mhr_pose
from body4d_core.sam3d_body import tiny_config
from body4d_core.sam3d_body.mhr_rig import MhrRig
from body4d_core.testing.body import random_rig_tensors
from body4d_core.testing.body import random_model
from body4d_core.world import WorldResult
from body4d_core.world.floor import Floor as WorldFloor
from body4d_core.world.keypoints import CONTACT_NAMES

from .anim_readers import accessor, load_glb, node_world_matrices, parse_bvh

T = 5


class _Handle:
    """What Load SAM 3D Body (Body4D) hands over: the model under ``.model``."""

    def __init__(self, model) -> None:
        self.model = model


@pytest.fixture(scope="module")
def model():
    cfg = tiny_config()
    m = random_model(cfg, seed=2)
    m.attach_rig(MhrRig(random_rig_tensors(cfg.num_verts, 10, seed=2)).eval())
    return m


def _bodies(model) -> Bodies:
    g = np.random.default_rng(0)
    b = Bodies.empty([4, 9], T, (32, 48))
    p = {k: (g.standard_normal(v.shape) * 0.2).astype(np.float32) for k, v in b.params.items()}
    p["cam_t"][..., 2] += 3.0
    p["expr"][:] = 0.0
    flags = np.full((2, T), BodyFlag.VISIBLE, np.uint8)
    flags[1, 0] = BodyFlag.MISSING
    faces = model.head_pose.faces.numpy().astype(np.int32)
    return b.replace(params=p, flags=flags, faces=faces)


def _node(pack):
    return importlib.import_module(f"{pack.__name__}.nodes.anim")


def _ref_root(model, bodies, i, t):
    """Our rig's first joint in the OpenGL camera frame (metres), from the model's own parameter assembly."""
    head = model.head_pose
    pr = {k: torch.as_tensor(v[i, t:t + 1]) for k, v in bodies.params.items()}
    mp = head.model_params(pr["global_rot"], pr["body_pose"], pr["hand_pose"], pr["scale"])
    skel = model.mhr.skeleton(model.mhr.joint_parameters(mp))[0].double().numpy()
    flip = np.array([1.0, -1.0, -1.0])
    return (skel[:, :3] / 100 * flip + bodies.params["cam_t"][i, t]) * flip


def test_writes_unique_files_and_previews_the_scene(pack, model) -> None:
    import folder_paths

    mod = _node(pack)
    assert [n.GET_SCHEMA().node_id for n in mod.NODES] == ["SAMBody4D_SaveAnimation"]
    bodies = _bodies(model)
    first = mod.SaveAnimation.execute(_Handle(model), bodies=bodies, fps=10.0, filename_prefix="t/anim")
    second = mod.SaveAnimation.execute(_Handle(model), bodies=bodies, fps=10.0, filename_prefix="t/anim")
    out = Path(folder_paths.get_output_directory())
    files1, files2 = first.result[1].splitlines(), second.result[1].splitlines()
    assert not set(files1) & set(files2)  # never overwritten
    assert "t/anim_00001_scene.glb" in files1 and all((out / f).is_file() for f in files1 + files2)
    assert first.ui["3d"] == [{"filename": "anim_00001_scene.glb", "subfolder": "t", "type": "output"}]
    g, blob = load_glb(out / "t" / "anim_00001_scene.glb")
    assert len(g.skins) == 2 and all(len(s.joints) == 10 for s in g.skins)
    world = node_world_matrices(g, blob, 2 / 10.0)
    nodes = next(s for s in g.skins if s.name == "person_9").joints
    np.testing.assert_allclose(np.stack([world[n][:3, 3] for n in nodes]), _ref_root(model, bodies, 1, 2), atol=1e-4)
    joints, frames, ft = parse_bvh((out / "t" / "anim_00001_all.bvh").read_text())
    assert frames.shape[0] == T and ft == pytest.approx(0.1)
    only_bvh = mod.SaveAnimation.execute(_Handle(model), bodies=bodies, filename_prefix="t/b", formats="bvh")
    assert only_bvh.result[0] is None and not any(f.endswith(".glb") for f in only_bvh.result[1].splitlines())


def test_core_pose_data_input(pack, model) -> None:
    import folder_paths

    mod = _node(pack)
    bodies = _bodies(model)
    cam = Camera.from_focal(50.0, (32, 48), T, "manual")
    core = to_mhr_pose(bodies, cam)
    out = mod.SaveAnimation.execute(_Handle(model), mhr_pose_data=core, fps=10.0, filename_prefix="core/anim")
    path = Path(folder_paths.get_output_directory()) / out.result[1].splitlines()[0]
    g, blob = load_glb(path)
    assert [n.name for n in g.nodes if n.name in ("person_4", "person_9")] == ["person_4", "person_9"]
    assert g.cameras[0].perspective.yfov == pytest.approx(2 * np.arctan(16 / 50.0))
    world = node_world_matrices(g, blob, 3 / 10.0)
    nodes = next(s for s in g.skins if s.name == "person_4").joints
    np.testing.assert_allclose(np.stack([world[n][:3, 3] for n in nodes]), _ref_root(model, bodies, 0, 3), atol=1e-4)


def _world_result(bodies: Bodies, ids: list[int], frames: int = T) -> WorldResult:
    """What World Ground hands over: a panning, moving camera, contacts per id (in ``ids`` order), roots."""
    g = np.random.default_rng(5)
    rot = np.zeros((frames, 3, 3))
    for t in range(frames):
        c, s = np.cos(0.2 * t), np.sin(0.2 * t)
        rot[t] = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]) @ np.diag([1.0, -1.0, -1.0])  # y up, looking along -z
    pos = np.stack([0.3 * np.arange(frames), np.full(frames, 1.6), -0.1 * np.arange(frames)], 1)
    n = len(ids)
    root = np.zeros((n, frames, 3))
    root[0, :, 0] = 2.5  # the farthest point: the floor must cover it
    return WorldResult(np.array(ids), np.zeros((n, frames, 70, 3)), root, np.ones((n, frames), bool),
                       g.random((n, frames, 4)) > 0.5, rot, pos, False, "flow_depth",
                       WorldFloor(np.array([0.0, -1.0, 0.0]), 1.6, 0.9, "depth"), np.eye(4), bodies, 10.0)


def test_world_input_places_camera_floor_and_contacts(pack, model) -> None:
    import folder_paths

    mod = _node(pack)
    bodies = _bodies(model)
    world = _world_result(bodies, [9, 4])  # World Ground's own id order differs from the bodies'
    out = mod.SaveAnimation.execute(_Handle(model), bodies=bodies, world=world, fps=10.0, filename_prefix="w/anim")
    root = Path(folder_paths.get_output_directory())
    files = out.result[1].splitlines()
    g, blob = load_glb(root / next(f for f in files if f.endswith("_scene.glb")))
    cam = next(k for k, n in enumerate(g.nodes) if n.name == "camera")
    person9 = next(s for s in g.skins if s.name == "person_9").joints
    for t in (1, 2, 4):  # person 9 is missing on frame 0
        w = node_world_matrices(g, blob, t / 10.0)
        pose = np.eye(4)
        pose[:3, :3], pose[:3, 3] = world.camera_rotations[t], world.camera_positions[t]
        np.testing.assert_allclose(w[cam], pose @ np.diag([1.0, -1.0, -1.0, 1.0]), atol=1e-5)  # animated camera
        cv = _ref_root(model, bodies, 1, t) * np.array([1.0, -1.0, -1.0])  # OpenCV camera frame
        want = cv @ world.camera_rotations[t].T + world.camera_positions[t]
        np.testing.assert_allclose(np.stack([w[n][:3, 3] for n in person9]), want, atol=1e-4)
    floor = next(n for n in g.nodes if n.name == "floor")
    quad = accessor(g, blob, g.meshes[floor.mesh].primitives[0].attributes.POSITION)
    np.testing.assert_allclose(quad[:, 1], 0.0, atol=1e-7)
    assert np.abs(quad[:, [0, 2]]).max() >= 2.5  # reaches the farthest track
    flags = {n.name: n.extras["flags"] for n in g.nodes if n.name in ("person_4", "person_9")}
    for k, name in enumerate(CONTACT_NAMES):  # rows follow the ids, not World Ground's order
        assert flags["person_9"][f"contact_{name}"] == world.contacts[0, :, k].astype(int).tolist()
        assert flags["person_4"][f"contact_{name}"] == world.contacts[1, :, k].astype(int).tolist()
    z = np.load(root / next(f for f in files if f.endswith("_anim.npz")))
    np.testing.assert_array_equal(z["flag_contact_left_heel"], world.contacts[[1, 0], :, 0])
    plain = mod.SaveAnimation.execute(_Handle(model), bodies=bodies, fps=10.0, filename_prefix="w/plain")
    g2, _ = load_glb(root / next(f for f in plain.result[1].splitlines() if f.endswith("_scene.glb")))
    assert not any(n.name == "floor" for n in g2.nodes)  # the world input is not ignored


def test_world_input_from_another_clip_is_refused(pack, model) -> None:
    mod = _node(pack)
    err = importlib.import_module(f"{pack.__name__}.body4d_core.errors").InputError
    bodies = _bodies(model)
    with pytest.raises(err, match="world has 4 frames but the bodies have 5"):
        mod.SaveAnimation.execute(_Handle(model), bodies=bodies, world=_world_result(bodies, [4, 9], frames=T - 1),
                                  filename_prefix="w/bad")
    with pytest.raises(err, match=r"people \[9\] are not in the world"):
        mod.SaveAnimation.execute(_Handle(model), bodies=bodies, world=_world_result(bodies, [4]),
                                  filename_prefix="w/bad")
    out = Path(importlib.import_module("folder_paths").get_output_directory()) / "w"
    assert not list(out.glob("bad*"))  # nothing half-written


def test_rejects_bad_input(pack, model) -> None:
    mod = _node(pack)
    err = importlib.import_module(f"{pack.__name__}.body4d_core.errors").InputError
    with pytest.raises(err, match="inside ComfyUI's output"):
        mod.SaveAnimation.execute(_Handle(model), bodies=_bodies(model), filename_prefix="../escape")
    with pytest.raises(err, match="connect bodies"):
        mod.SaveAnimation.execute(_Handle(model))
    with pytest.raises(err, match="formats"):
        mod.SaveAnimation.execute(_Handle(model), bodies=_bodies(model), formats="fbx")
    rigless = random_model(tiny_config(), seed=1)
    rigless.mhr = torch.jit.script(torch.nn.Identity())  # a rig that exposes no skeleton (not MhrRig)
    with pytest.raises(err, match="native MHR rig"):
        mod.SaveAnimation.execute(_Handle(rigless), bodies=_bodies(model), filename_prefix="t/x")
