"""Skinned scene GLB, BVH, flags: read back with independent readers and compared with our MHR rig."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from body4d_core.anim import (Floor, SceneWorld, animation_files, rig_data, scene_motions, supports_skinned_export,
                              write_animation)
from body4d_core.anim.fidelity import measure
from body4d_core.atomic import TMP_TAG, OutputWriteError
from body4d_core.data import Bodies, BodyFlag, Camera
from body4d_core.errors import InputError
from body4d_core.sam3d_body.mhr_rig import MhrRig
from body4d_core.testing.body import random_rig_tensors

from .anim_readers import accessor, bvh_world_positions, load_glb, node_world_matrices, parse_bvh

V, J, T, FPS = 90, 12, 8, 24.0
IDS = [7, 2, 5]
FLIP = np.array([1.0, -1.0, -1.0])
TOL_M = 1e-4  # 0.1 mm
ROOT = Path(__file__).resolve().parents[1]


def _rig(correctives: bool = True) -> MhrRig:
    t = random_rig_tensors(V, J, seed=4)
    t["expr_basis"][:, V // 3:] = 0.0  # expressions move a third of the mesh (a face): sparse morph targets
    if not correctives:
        t["pose_corr_weight"] = torch.zeros_like(t["pose_corr_weight"])
    return MhrRig(t).eval()


def _faces(seed: int = 0) -> np.ndarray:
    g = np.random.default_rng(seed)
    return np.stack([g.choice(V, 3, replace=False) for _ in range(60)]).astype(np.int32)


def _bodies(expr_person: int | None = None) -> Bodies:
    g = np.random.default_rng(1)
    n = len(IDS)
    b = Bodies.empty(IDS, T, (60, 80))
    p = {k: (g.standard_normal(v.shape) * 0.3).astype(np.float32) for k, v in b.params.items()}
    p["shape"][:] = g.standard_normal((n, 1, 45)).astype(np.float32) * 0.5  # one shape per identity
    p["expr"][:] = 0.0
    if expr_person is not None:
        p["expr"][expr_person, :, [3, 10]] = g.standard_normal((2, T)).astype(np.float32)
    p["cam_t"][..., 2] += 4.0
    flags = np.full((n, T), BodyFlag.VISIBLE, np.uint8)
    flags[0, 3] = BodyFlag.OCCLUDED
    flags[1, :2] = BodyFlag.MISSING
    flags[1, 5] = BodyFlag.FILLED
    flags[2, 6:] = BodyFlag.MISSING
    mp = (g.standard_normal((n, T, 204)) * 0.4).astype(np.float32)
    return b.replace(params=p, flags=flags, faces=_faces(), extras={"model_params": mp})


def _camera() -> Camera:
    return Camera.from_focal(70.0, (60, 80), T, "manual")


def _reference_joints(rig: MhrRig, bodies: Bodies, i: int, world: SceneWorld | None = None) -> np.ndarray:
    """Our rig's joint world positions [T, J, 3] (metres): camera frame, then the scene's world."""
    with torch.inference_mode():
        mp = torch.as_tensor(bodies.extras["model_params"][i])
        skel = rig.skeleton(rig.joint_parameters(mp)).double().numpy()
    cv = skel[..., :3] / 100.0 * FLIP + bodies.params["cam_t"][i][:, None].astype(np.float64)
    if world is None:
        return cv * FLIP
    w = world.world_from_camera
    return np.einsum("tij,tkj->tki", w[:, :3, :3], cv) + w[:, None, :3, 3]


def _world() -> SceneWorld:
    poses = np.tile(np.eye(4), (T, 1, 1))
    for t in range(T):
        a = 0.1 * t
        c, s = np.cos(a), np.sin(a)
        poses[t, :3, :3] = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]) @ np.diag([1.0, -1.0, -1.0])
        poses[t, :3, 3] = [0.2 * t, 1.5, -0.1 * t]
    contacts = {"left_foot": np.arange(len(IDS) * T).reshape(len(IDS), T) % 2 == 0,
                "right_foot": np.zeros((len(IDS), T), bool)}
    return SceneWorld(poses, Floor([0.0, 0.0, 0.0], [0.0, 1.0, 0.0], 6.0), contacts)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Every export of the sample bodies, with and without a world frame."""
    rig = _rig()
    bodies = _bodies(expr_person=0)
    out = tmp_path_factory.mktemp("anim")
    paths = write_animation(bodies, rig, _camera(), out / "plain", FPS)
    world = _world()
    wpaths = write_animation(bodies, rig, _camera(), out / "world", FPS, world=world, prefix="w")
    return rig, bodies, world, {p.name: p for p in paths}, {p.name: p for p in wpaths}


def _joint_nodes(g, obj_id: int) -> list[int]:
    skin = next(s for s in g.skins if s.name == f"person_{obj_id}")
    return list(skin.joints)


# --------------------------------------------------------------------------- glTF


def test_files_written(written) -> None:
    _, _, _, files, wfiles = written
    assert sorted(files) == sorted(["body4d_scene.glb", "body4d_all.bvh", "body4d_all_flags.csv", "body4d_anim.npz"]
                                   + [f"body4d_person_{i}{s}" for i in IDS for s in (".bvh", "_flags.csv")])
    assert "w_scene.glb" in wfiles
    assert not list(files["body4d_scene.glb"].parent.glob(f"*{TMP_TAG}*"))


def test_scene_joint_world_positions_match_rig(written) -> None:
    rig, bodies, _, files, _ = written
    g, blob = load_glb(files["body4d_scene.glb"])
    assert [n.name for n in g.nodes if n.name and n.name.startswith("person_") and not n.name.endswith("_mesh")] == \
        [f"person_{i}" for i in sorted(IDS)]
    for i, oid in enumerate(IDS):
        ref = _reference_joints(rig, bodies, i)
        nodes = _joint_nodes(g, oid)
        assert len(nodes) == J and [g.nodes[n].name for n in nodes] == [f"joint_{k:03d}" for k in range(J)]
        for t in np.flatnonzero(bodies.present[i]):
            world = node_world_matrices(g, blob, t / FPS)
            got = np.stack([world[n][:3, 3] for n in nodes])
            np.testing.assert_allclose(got, ref[t], atol=TOL_M, err_msg=f"person {oid} frame {t}")


def test_scene_hierarchy_and_channels(written) -> None:
    rig, _, _, files, _ = written
    g, blob = load_glb(files["body4d_scene.glb"])
    parents = rig_data(rig).parents
    nodes = _joint_nodes(g, 7)
    child_of = {c: p for p, n in enumerate(g.nodes) for c in (n.children or [])}
    for j, p in enumerate(parents.tolist()):
        want = g.nodes.index(next(n for n in g.nodes if n.name == "person_7")) if p < 0 else nodes[p]
        assert child_of[nodes[j]] == want
    paths = {(c.target.node, c.target.path) for c in g.animations[0].channels}
    assert all((n, "rotation") in paths for n in nodes)
    assert any((n, "scale") in paths for n in nodes)  # the random rig scales its joints
    mesh_node = next(n for n in g.nodes if n.name == "person_7_mesh")
    prim = g.meshes[mesh_node.mesh].primitives[0]
    w = np.concatenate([accessor(g, blob, prim.attributes.WEIGHTS_0), accessor(g, blob, prim.attributes.WEIGHTS_1)], 1)
    np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-6)
    assert prim.attributes.JOINTS_1 is not None and len(prim.targets) == 2  # expression morphs of person 7 only
    morph = g.accessors[prim.targets[0]["POSITION"]]
    assert morph.sparse is not None and morph.sparse.count == V // 3 and morph.bufferView is None
    other = next(n for n in g.nodes if n.name == "person_2_mesh")
    assert not g.meshes[other.mesh].primitives[0].targets


def _skinned_from_file(g, blob, mesh_name: str, time: float) -> np.ndarray:
    """glTF skinning (spec formula) of a mesh node at ``time``, from the file's data only."""
    node_i = next(k for k, n in enumerate(g.nodes) if n.name == mesh_name)
    node = g.nodes[node_i]
    prim = g.meshes[node.mesh].primitives[0]
    skin = g.skins[node.skin]
    world = node_world_matrices(g, blob, time)
    ibm = accessor(g, blob, skin.inverseBindMatrices).reshape(-1, 4, 4).transpose(0, 2, 1).astype(np.float64)
    mats = np.stack([np.linalg.inv(world[node_i]) @ world[j] @ ibm[k] for k, j in enumerate(skin.joints)])
    pos = accessor(g, blob, prim.attributes.POSITION).astype(np.float64)
    from .anim_readers import sample_channels

    weights_now = sample_channels(g, blob, time).get((node_i, "weights"))
    for k, target in enumerate(prim.targets or []):
        pos = pos + weights_now[k] * accessor(g, blob, target["POSITION"])
    joints = np.concatenate([accessor(g, blob, prim.attributes.JOINTS_0), accessor(g, blob, prim.attributes.JOINTS_1)], 1)
    w = np.concatenate([accessor(g, blob, prim.attributes.WEIGHTS_0), accessor(g, blob, prim.attributes.WEIGHTS_1)], 1)
    hom = np.concatenate([pos, np.ones((pos.shape[0], 1))], 1)
    out = np.zeros_like(pos)
    for k in range(joints.shape[1]):
        out += w[:, k:k + 1] * np.einsum("vij,vj->vi", mats[joints[:, k].astype(int)], hom)[:, :3]
    return out


def test_skinned_mesh_equals_rig_without_correctives(tmp_path) -> None:
    """With the correctives zeroed, glTF skinning of the file reproduces our rig's vertices (incl. expressions)."""
    rig = _rig(correctives=False)
    bodies = _bodies(expr_person=0)
    data = animation_files(bodies, rig, _camera(), FPS, formats=("glb",))["body4d_scene.glb"]
    (tmp_path / "s.glb").write_bytes(data)
    g, blob = load_glb(tmp_path / "s.glb")
    i, oid = 0, IDS[0]
    for t in (0, 3, 6):
        with torch.inference_mode():
            verts, _ = rig(torch.as_tensor(bodies.params["shape"][i, t:t + 1]),
                           torch.as_tensor(bodies.extras["model_params"][i, t:t + 1]),
                           torch.as_tensor(bodies.params["expr"][i, t:t + 1]))
        ref = (verts[0].double().numpy() / 100.0 * FLIP + bodies.params["cam_t"][i, t]) * FLIP
        np.testing.assert_allclose(_skinned_from_file(g, blob, f"person_{oid}_mesh", t / FPS), ref, atol=TOL_M)


def test_fidelity_report() -> None:
    bodies = _bodies()
    for correctives in (True, False):
        rig = _rig(correctives)
        m = scene_motions(rig, bodies, bodies.extras["model_params"].astype(np.float64))[0]
        i = bodies.index_of(m.obj_id)
        fid = measure(rig, m, bodies.extras["model_params"][i], bodies.params["expr"][i])
        assert fid.joint_max_mm < 0.1 and fid.frames == int(bodies.present[i].sum())
        if correctives:
            assert fid.vertex_mean_mm > 1.0 and fid.vertex_max_mm >= fid.vertex_mean_mm
        else:
            assert fid.vertex_max_mm < 0.05
        assert "vertices mean" in fid.line()


def test_missing_frames_hidden_and_flags_in_extras(written) -> None:
    _, bodies, _, files, _ = written
    g, blob = load_glb(files["body4d_scene.glb"])
    root = next(k for k, n in enumerate(g.nodes) if n.name == "person_2")
    for t in range(T):
        world = node_world_matrices(g, blob, t / FPS)
        scale = np.linalg.norm(world[root][:3, 0])
        assert scale == pytest.approx(1.0 if bodies.present[1, t] else 0.0, abs=1e-6)
    flags = g.nodes[root].extras["flags"]
    assert flags["missing"] == [1, 1, 0, 0, 0, 0, 0, 0]
    assert flags["interpolated"] == [0, 0, 0, 0, 0, 1, 0, 0]
    assert flags["visible"] == [0, 0, 1, 1, 1, 0, 1, 1]
    seven = next(n for n in g.nodes if n.name == "person_7").extras["flags"]
    assert seven["amodal_completed"] == [0, 0, 0, 1, 0, 0, 0, 0]
    scene = g.scenes[0].extras
    assert scene["fps"] == FPS and scene["num_frames"] == T and scene["obj_ids"] == sorted(IDS)
    fid = scene["fidelity"]  # the fidelity report of every identity rides in the scene
    assert sorted(fid) == sorted(str(i) for i in IDS) and fid["2"]["frames"] == 4
    assert all(f["joint_max_mm"] < 0.1 and f["vertex_max_mm"] >= f["vertex_mean_mm"] > 0.0 for f in fid.values())
    cam = g.cameras[0].perspective
    assert cam.yfov == pytest.approx(2 * np.arctan(30.0 / 70.0)) and cam.aspectRatio == pytest.approx(80 / 60)


def test_world_frame_camera_floor_contacts(written) -> None:
    rig, bodies, world, _, wfiles = written
    g, blob = load_glb(wfiles["w_scene.glb"])
    cam = next(k for k, n in enumerate(g.nodes) if n.name == "camera")
    for t in (0, 4, 7):
        w = node_world_matrices(g, blob, t / FPS)
        want = world.world_from_camera[t] @ np.diag([1.0, -1.0, -1.0, 1.0])
        np.testing.assert_allclose(w[cam], want, atol=1e-5)
        for i, oid in enumerate(IDS):
            if bodies.present[i, t]:
                got = np.stack([w[n][:3, 3] for n in _joint_nodes(g, oid)])
                np.testing.assert_allclose(got, _reference_joints(rig, bodies, i, world)[t], atol=TOL_M)
    floor = next(n for n in g.nodes if n.name == "floor")
    quad = accessor(g, blob, g.meshes[floor.mesh].primitives[0].attributes.POSITION)
    np.testing.assert_allclose(quad[:, 1], 0.0, atol=1e-7)
    assert np.ptp(quad[:, 0]) == pytest.approx(6.0)
    five = next(n for n in g.nodes if n.name == "person_5").extras["flags"]
    assert five["contact_left_foot"] == world.contacts["left_foot"][2].astype(int).tolist()


def _validator() -> tuple[list[str], dict] | None:
    node = shutil.which("node")
    if node is None:
        return None
    npm = shutil.which("npm")
    root = subprocess.run([npm, "root", "-g"], capture_output=True, text=True).stdout.strip() if npm else ""
    if not (Path(root) / "gltf-validator").is_dir():
        return None
    import os

    return [node, str(ROOT / "tests" / "anim_gltf_validate.cjs")], dict(os.environ, NODE_PATH=root)


def test_khronos_validator_reports_nothing(written) -> None:
    v = _validator()
    if v is None:
        pytest.skip("node or the gltf-validator npm package is not installed (npm i -g gltf-validator)")
    cmd, env = v
    _, _, _, files, wfiles = written
    out = subprocess.run(cmd + [str(files["body4d_scene.glb"]), str(wfiles["w_scene.glb"])], capture_output=True,
                         text=True, env=env, timeout=60)
    reports = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(reports) == 2, out.stdout + out.stderr
    for r in reports:
        assert (r["errors"], r["warnings"]) == (0, 0), r["messages"]


# --------------------------------------------------------------------------- BVH, CSV, NPZ


def test_bvh_joint_positions_match_rig(written) -> None:
    rig, bodies, world, files, wfiles = written
    for name, w in (("body4d_all.bvh", None), ("w_all.bvh", world)):
        joints, frames, ft = parse_bvh(Path((files if w is None else wfiles)[name]).read_text())
        assert frames.shape[0] == T and ft == pytest.approx(1.0 / FPS)
        assert sum(j["name"] is not None for j in joints) == len(IDS) * (J + 1)
        for i, oid in enumerate(IDS):
            ref = _reference_joints(rig, bodies, i, w)
            for t in np.flatnonzero(bodies.present[i]):
                pos = bvh_world_positions(joints, frames, t)
                got = np.stack([pos[f"p{oid}_joint_{k:03d}"] for k in range(J)]) / 100.0
                np.testing.assert_allclose(got, ref[t], atol=TOL_M, err_msg=f"{name} person {oid} frame {t}")
    joints, frames, _ = parse_bvh(files["body4d_person_2.bvh"].read_text())
    assert [j["name"] for j in joints if j["parent"] == -1] == ["person_2"]
    pos = bvh_world_positions(joints, frames, 4)
    np.testing.assert_allclose(np.stack([pos[f"p2_joint_{k:03d}"] for k in range(J)]) / 100.0,
                               _reference_joints(rig, bodies, 1)[4], atol=TOL_M)


def test_flag_csv_and_npz(written) -> None:
    rig, bodies, world, files, wfiles = written
    rows = list(csv.DictReader(io.StringIO(files["body4d_all_flags.csv"].read_text())))
    assert len(rows) == len(IDS) * T
    two = [r for r in rows if r["obj_id"] == "2"]
    assert [r["missing"] for r in two] == ["1", "1", "0", "0", "0", "0", "0", "0"]
    assert float(two[3]["time_s"]) == pytest.approx(3 / FPS)
    wrows = list(csv.DictReader(io.StringIO(wfiles["w_person_5_flags.csv"].read_text())))
    assert [r["contact_left_foot"] == "1" for r in wrows] == world.contacts["left_foot"][2].tolist()
    with np.load(files["body4d_anim.npz"]) as z:
        assert z["obj_ids"].tolist() == sorted(IDS)
        order = [IDS.index(o) for o in sorted(IDS)]
        np.testing.assert_array_equal(z["flag_missing"], bodies.flags[order] == BodyFlag.MISSING)
        np.testing.assert_array_equal(z["flag_amodal_completed"], (bodies.flags[order] & BodyFlag.OCCLUDED) > 0)
        for k, i in enumerate(order):
            pres = bodies.present[i]
            np.testing.assert_allclose(z["joint_world"][k][pres], _reference_joints(rig, bodies, i)[pres], atol=TOL_M)


# --------------------------------------------------------------------------- bad input and faults


def test_rejects_bad_input(tmp_path) -> None:
    rig, bodies = _rig(), _bodies()
    assert supports_skinned_export(rig) and not supports_skinned_export(torch.nn.Linear(2, 2))
    with pytest.raises(InputError, match="native MHR rig"):
        write_animation(bodies, torch.nn.Linear(2, 2), _camera(), tmp_path, FPS)
    with pytest.raises(InputError, match="formats"):
        write_animation(bodies, rig, _camera(), tmp_path, FPS, formats=("fbx",))
    with pytest.raises(InputError, match="fps"):
        write_animation(bodies, rig, _camera(), tmp_path, 0.0)
    with pytest.raises(InputError, match="model parameters"):
        write_animation(bodies.replace(extras={}), rig, _camera(), tmp_path, FPS)
    with pytest.raises(InputError, match="frames"):
        write_animation(bodies, rig, Camera.from_focal(70.0, (60, 80), T + 1, "manual"), tmp_path, FPS)
    with pytest.raises(InputError, match="no frame"):
        write_animation(bodies.replace(flags=np.zeros_like(bodies.flags)), rig, _camera(), tmp_path, FPS)
    with pytest.raises(InputError, match="camera poses"):
        write_animation(bodies, rig, _camera(), tmp_path, FPS, world=SceneWorld(np.tile(np.eye(4), (T - 1, 1, 1))))
    with pytest.raises(InputError, match="rigid"):
        SceneWorld(np.tile(np.diag([2.0, 1, 1, 1]), (T, 1, 1)))
    assert not list(tmp_path.iterdir())


def test_failed_write_leaves_no_partial_file(tmp_path) -> None:
    (tmp_path / "body4d_all.bvh").mkdir()  # a later file cannot replace a folder
    with pytest.raises(OutputWriteError):
        write_animation(_bodies(), _rig(), _camera(), tmp_path, FPS)
    assert not list(tmp_path.glob(f"*{TMP_TAG}*"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["body4d_all.bvh", "body4d_scene.glb"]
    assert (tmp_path / "body4d_scene.glb").read_bytes()[:4] == b"glTF"


def test_joint_names_and_parents_from_the_rig(tmp_path) -> None:
    rig = _rig()
    names = [f"bone{k}" for k in range(J)]
    data = animation_files(_bodies(), rig, _camera(), FPS, formats=("bvh",), joint_names=names)
    assert "JOINT p7_bone3" in data["body4d_person_7.bvh"].decode()
    with pytest.raises(InputError, match="unique"):
        animation_files(_bodies(), rig, _camera(), FPS, joint_names=["a"] * J)
    np.testing.assert_array_equal(rig_data(torch.jit.script(rig)).parents,
                                  random_rig_tensors(V, J, seed=4)["skel_joint_parents"].numpy())
