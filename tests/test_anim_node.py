"""Save Animation node over the ComfyUI stand-in: unique names in the output folder, core pose input."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
import torch

from body4d_core.data import Bodies, BodyFlag, Camera
from body4d_core.mhr_pose import to_mhr_pose
from body4d_core.sam3d_body import tiny_config
from body4d_core.sam3d_body.mhr_rig import MhrRig, random_rig_tensors
from body4d_core.sam3d_body.synthetic import random_model

from .anim_readers import load_glb, node_world_matrices, parse_bvh

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


def test_rejects_bad_input(pack, model) -> None:
    mod = _node(pack)
    err = importlib.import_module(f"{pack.__name__}.body4d_core.errors").InputError
    with pytest.raises(err, match="inside ComfyUI's output"):
        mod.SaveAnimation.execute(_Handle(model), bodies=_bodies(model), filename_prefix="../escape")
    with pytest.raises(err, match="connect bodies"):
        mod.SaveAnimation.execute(_Handle(model))
    with pytest.raises(err, match="formats"):
        mod.SaveAnimation.execute(_Handle(model), bodies=_bodies(model), formats="fbx")
    rigless = random_model(tiny_config(), seed=1)  # the scripted stand-in rig exposes no skeleton
    with pytest.raises(err, match="native MHR rig"):
        mod.SaveAnimation.execute(_Handle(rigless), bodies=_bodies(model), filename_prefix="t/x")
