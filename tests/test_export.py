"""Exports read back (PyAV, trimesh, pygltflib, npz) and the core MHR_POSE_DATA round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from body4d_core import export
from body4d_core.atomic import OutputWriteError
from body4d_core.data import Bodies, BodyFlag, Camera
from body4d_core.errors import Body4DError, InputError
from body4d_core.interop.mhr_pose_data import from_mhr_pose, to_mhr_pose

SQUARE = np.array([[-0.5, -0.5, 0], [0.5, -0.5, 0], [0.5, 0.5, 0], [-0.5, 0.5, 0]], np.float32)
FACES = np.array([[0, 1, 2], [0, 2, 3]], np.int32)


def _bodies(t: int = 4) -> Bodies:
    b = Bodies.empty([3, 8], t, (64, 48))
    p = {k: v.copy() for k, v in b.params.items()}
    p["cam_t"][:] = [0.1, 0.2, 2.0]
    p["cam_t"][1, :, 0] = 0.1 * np.arange(t)
    p["body_pose"][:] = np.random.default_rng(0).normal(size=p["body_pose"].shape)
    flags = np.full((2, t), BodyFlag.VISIBLE, np.uint8)
    flags[0, 2] = BodyFlag.MISSING
    kp2 = np.random.default_rng(1).uniform(0, 40, size=(2, t, 70, 2)).astype(np.float32)
    return b.replace(params=p, flags=flags, vertices=np.tile(SQUARE[None, None], (2, t, 1, 1)), faces=FACES,
                     keypoints_2d=kp2, keypoints_3d=np.zeros((2, t, 70, 3), np.float32),
                     extras={"model_params": np.ones((2, t, 204), np.float32)})


def test_mp4_round_trip(tmp_path: Path) -> None:
    import av

    frames = np.zeros((5, 31, 45, 3), np.uint8)  # odd size: padded to even for yuv420p
    frames[:, :, :20] = (255, 0, 0)
    path = export.write_mp4(tmp_path / "sub" / "v.mp4", frames, fps=12.5)
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(s)]
        assert float(s.average_rate) == pytest.approx(12.5)
    assert len(decoded) == 5 and decoded[0].shape == (32, 46, 3)
    assert decoded[2][10, 5, 0] > 200 and decoded[2][10, 40, 0] < 40


def test_mp4_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no frames"):
        export.write_mp4(tmp_path / "e.mp4", [], fps=25)
    with pytest.raises(InputError, match="fps"):
        export.write_mp4(tmp_path / "e.mp4", np.zeros((1, 8, 8, 3), np.uint8), fps=0)
    with pytest.raises(InputError, match="expected 8x9"):
        export.write_mp4(tmp_path / "e.mp4", np.zeros((1, 8, 8, 3), np.uint8), fps=5, image_size=(8, 9))


def test_unwritable_folder(tmp_path: Path) -> None:
    """Write failures root cannot bypass: a person folder blocked by a file, a target that is a folder."""
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "person_8").write_text("a file where the folder goes")
    with pytest.raises(Body4DError, match=r"cannot create output folder .*person_8"):
        export.write_meshes(_bodies(), tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m" / "person_3").iterdir()) == ["00000000.ply", "00000001.ply",
                                                                              "00000003.ply"]
    (tmp_path / "params.npz").mkdir()  # the final name is taken by a folder: the rename fails
    with pytest.raises(OutputWriteError, match=r"params\.npz"):
        export.save_params(_bodies(), tmp_path / "params.npz")
    (tmp_path / "v.mp4").mkdir()
    with pytest.raises(OutputWriteError, match=r"v\.mp4"):
        export.write_mp4(tmp_path / "v.mp4", np.zeros((2, 8, 8, 3), np.uint8), fps=5)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_unwritable_path_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(export.ExportError, match="cannot create output folder"):
        export.write_glb(_bodies(), blocker / "glb")
    with pytest.raises(export.ExportError, match="cannot create output folder"):
        export.write_mp4(blocker / "v.mp4", np.zeros((1, 8, 8, 3), np.uint8), fps=5)


def test_meshes_keyed_by_obj_id(tmp_path: Path) -> None:
    import trimesh

    root = export.write_meshes(_bodies(), tmp_path / "meshes")
    got = sorted(str(p.relative_to(root)) for p in root.rglob("*.ply"))
    assert got == ["person_3/00000000.ply", "person_3/00000001.ply", "person_3/00000003.ply",
                   "person_8/00000000.ply", "person_8/00000001.ply", "person_8/00000002.ply",
                   "person_8/00000003.ply"]
    m = trimesh.load(root / "person_8" / "00000002.ply", process=False)
    assert m.vertices.shape == (4, 3) and m.faces.shape == (2, 3)
    # cam_t applied, OpenCV -> OpenGL (y, z flipped)
    np.testing.assert_allclose(m.vertices[0], [-0.5 + 0.2, -(-0.5 + 0.2), -2.0], atol=1e-6)
    export.write_meshes(_bodies(), tmp_path / "obj", fmt="obj")
    assert len(list((tmp_path / "obj" / "person_3").glob("*.obj"))) == 3


def test_glb_frames_and_animation(tmp_path: Path) -> None:
    import pygltflib

    root = export.write_glb(_bodies(), tmp_path / "glb", fps=10)
    g = pygltflib.GLTF2.load(str(root / "body4d_person_3.glb"))
    assert len(g.meshes) == 3  # frames 0, 1, 3 (missing on 2)
    acc = g.accessors[g.meshes[0].primitives[0].attributes.POSITION]
    assert acc.count == 4
    anim = g.animations[0]
    assert len(anim.channels) == 3 and all(c.target.path == "scale" for c in anim.channels)
    assert all(s.interpolation == "STEP" for s in anim.samplers)
    times = g.accessors[anim.samplers[2].input]
    assert times.max == [pytest.approx(0.3)]  # frame 3 shows at 3 / fps
    assert g.nodes[0].scale == [1.0, 1.0, 1.0] and g.nodes[1].scale == [0.0, 0.0, 0.0]
    g8 = pygltflib.GLTF2.load(str(root / "body4d_person_8.glb"))
    assert len(g8.meshes) == 4 and g8.materials[0].name == "person_8"
    nacc = g.accessors[g.meshes[0].primitives[0].attributes.NORMAL]
    view = g.bufferViews[nacc.bufferView]
    start = view.byteOffset + (nacc.byteOffset or 0)
    normals = np.frombuffer(g.binary_blob()[start:start + nacc.count * 12], np.float32).reshape(-1, 3)
    # the square faces +z in the OpenCV camera frame, so -z in the GLB's OpenGL frame (a 180-degree turn)
    np.testing.assert_allclose(normals, np.tile([0.0, 0.0, -1.0], (4, 1)), atol=1e-6)


def test_params_npz_round_trip(tmp_path: Path) -> None:
    b = _bodies()
    path = export.save_params(b, tmp_path / "params.npz", Camera.from_focal(50.0, (64, 48), 4, "manual"))
    back = Bodies.load_npz(path)
    np.testing.assert_array_equal(back.params["body_pose"], b.params["body_pose"])
    np.testing.assert_array_equal(back.flags, b.flags)
    assert (tmp_path / "params_camera.npz").is_file()


def test_exports_reject_empty_bodies(tmp_path: Path) -> None:
    empty = _bodies().replace(flags=np.zeros((2, 4), np.uint8))
    for fn in (lambda: export.write_meshes(empty, tmp_path / "m"), lambda: export.write_glb(empty, tmp_path / "g"),
               lambda: export.save_params(empty, tmp_path / "p.npz")):
        with pytest.raises(InputError, match="no frame with a person"):
            fn()
    with pytest.raises(InputError, match="no vertices"):
        export.write_glb(_bodies().replace(vertices=None), tmp_path / "g")


def test_mhr_pose_round_trip() -> None:
    b = _bodies()
    cam = Camera.from_focal(50.0, (64, 48), 4, "manual")
    data = to_mhr_pose(b, cam)
    assert len(data["frames"]) == 4 and data["image_size"] == (64, 48)
    p = data["frames"][0][1]
    assert p["obj_id"] == 8 and p["body_pose_params"].shape == (133,) and p["pred_vertices"].shape == (4, 3)
    assert p["focal_length"] == pytest.approx(50.0) and p["mhr_model_params"].shape == (204,)
    assert data["frames"][2][0]["body4d_missing"] and data["frames"][2][0]["pred_cam_t"][2] < 0
    back, cam2 = from_mhr_pose(data)
    assert back.obj_ids.tolist() == [3, 8]
    np.testing.assert_array_equal(back.flags, b.flags)
    np.testing.assert_array_equal(back.params["body_pose"][b.present], b.params["body_pose"][b.present])
    np.testing.assert_array_equal(back.vertices[b.present], b.vertices[b.present])
    np.testing.assert_allclose(cam2.intrinsics[:, :2], 50.0)


def test_from_core_predict_output_by_slot() -> None:
    person = {"pred_cam_t": np.array([0, 0, 3], np.float32), "focal_length": np.float32(40.0),
              "global_rot": np.zeros(3, np.float32), "pred_vertices": SQUARE}
    data = {"frames": [[person, person], [person]], "faces": FACES, "image_size": (20, 30)}
    b, cam = from_mhr_pose(data)
    assert b.obj_ids.tolist() == [1, 2] and b.flags.tolist() == [[1, 1], [1, 0]]
    assert cam.intrinsics[1].tolist() == [40.0, 40.0, 15.0, 10.0]
    with pytest.raises(InputError, match="no frames"):
        from_mhr_pose({"frames": [], "image_size": (2, 2)})
    with pytest.raises(InputError, match="dict"):
        from_mhr_pose([1, 2])


# --------------------------------------------------------------------------- nodes (over the ComfyUI stand-in)



def _nodes(pack, name):  # noqa: F811
    import importlib

    return importlib.import_module(f"{pack.__name__}.nodes.{name}")


def _pack_error(pack):  # noqa: F811
    """The pack's own InputError class (the pack is imported under another package name)."""
    import importlib

    return importlib.import_module(f"{pack.__name__}.body4d_core.errors").InputError


def test_smooth_node_bodies_and_core_input(pack) -> None:  # noqa: F811
    node = _nodes(pack, "smooth").KalmanSmooth
    ids = [n.GET_SCHEMA().node_id for n in _nodes(pack, "smooth").NODES]
    assert ids == ["SAMBody4D_KalmanSmooth"]
    b = _bodies()
    out = node.execute(bodies=b, mode="offline").result
    assert out[0].flags[0, 2] == BodyFlag.FILLED  # the one-frame gap is bridged
    assert len(out[1]["frames"]) == 4 and out[1]["frames"][2][0]["obj_id"] == 3
    again = node.execute(mhr_pose_data=out[1], mode="causal").result  # core MHR_POSE_DATA in
    assert again[0].obj_ids.tolist() == [3, 8]
    # core's render fields on the input pass through the smoother unchanged
    colors = {"positions": np.zeros((5, 3), np.float32)}
    hands = np.array([True, False, False, True, False])
    carried = node.execute(mhr_pose_data={**out[1], "canonical_colors": colors, "hand_vert_mask": hands}).result[1]
    assert carried["canonical_colors"] is colors and carried["hand_vert_mask"] is hands
    with pytest.raises(_pack_error(pack), match="connect bodies"):
        node.execute()


def test_render_node_outputs_image_and_mask(pack) -> None:  # noqa: F811
    import torch

    node = _nodes(pack, "render").RenderMesh
    b = _bodies()
    cam = Camera.from_focal(40.0, (64, 48), 4, "manual")
    frames = torch.full((4, 64, 48, 3), 0.5)
    img, mask = node.execute(b, cam, frames=frames, mode="overlay").result
    assert img.shape == (4, 64, 48, 3) and mask.shape == (4, 64, 48)
    assert float(mask[0].sum()) > 0 and float(mask[2].sum()) > 0
    _, m8 = node.execute(b, cam, mode="silhouette", mask_obj_id=8).result
    _, m3 = node.execute(b, cam, mode="silhouette", mask_obj_id=3).result
    assert float(m3[2].sum()) == 0 and float(m8[2].sum()) > 0  # person 3 is missing on frame 2
    with pytest.raises(_pack_error(pack), match="not among"):
        node.execute(b, cam, mask_obj_id=5)


def test_export_nodes_write_into_output(pack) -> None:  # noqa: F811
    import folder_paths
    import pygltflib

    mod = _nodes(pack, "export")
    rel = mod.ExportMeshes.execute(_bodies(), filename_prefix="t/meshes").result[0]
    root = Path(folder_paths.get_output_directory()) / rel
    assert (root / "params.npz").is_file() and len(list((root / "person_8").glob("*.ply"))) == 4
    out = mod.SaveGLB.execute(_bodies(), fps=25.0, filename_prefix="t/glb", obj_id=8)
    rel = out.result[0]
    assert out.ui["3d"] == [{"filename": "body4d_person_8.glb", "subfolder": rel, "type": "output"}]
    g = pygltflib.GLTF2.load(str(Path(folder_paths.get_output_directory()) / rel / "body4d_person_8.glb"))
    assert len(g.meshes) == 4
    with pytest.raises(_pack_error(pack), match="inside ComfyUI's output"):
        mod.SaveGLB.execute(_bodies(), filename_prefix="../escape")
