"""Torch z-buffer renderer and OpenPose drawing, checked pixel by pixel on tiny meshes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from body4d_core.data import Bodies, BodyFlag, Camera
from body4d_core.errors import InputError
from body4d_core.palette import object_color
from body4d_core.render import rasterize, render_bodies
from body4d_core.skeleton import MHR70_FOR_OPENPOSE18, draw_openpose, mhr70_to_openpose18


SQUARE = np.array([[-0.5, -0.5, 0], [0.5, -0.5, 0], [0.5, 0.5, 0], [-0.5, 0.5, 0]], np.float32)
FACES = np.array([[0, 1, 2], [0, 2, 3]], np.int32)


def _scene(t: int = 2) -> tuple[Bodies, Camera]:
    """Person 1: 1 m square at z = 2; person 2: 2 m square at z = 4 shifted right (partly behind)."""
    b = Bodies.empty([1, 2], t, (100, 100))
    p = {k: v.copy() for k, v in b.params.items()}
    p["cam_t"][0] = [0.0, 0.0, 2.0]
    p["cam_t"][1] = [0.5, 0.0, 4.0]
    verts = np.tile(SQUARE[None, None], (2, t, 1, 1))
    verts[1] *= 2
    flags = np.full((2, t), BodyFlag.VISIBLE, np.uint8)
    flags[1, 1] = BodyFlag.MISSING
    kp = np.zeros((2, t, 70, 2), np.float32)
    return b.replace(params=p, flags=flags, vertices=verts, faces=FACES, keypoints_2d=kp), \
        Camera.from_focal(100.0, (100, 100), t, "manual")


def test_rasterize_square_area_and_depth() -> None:
    v = torch.tensor(SQUARE + [0.013, 0.007, 2.0])
    r = rasterize(v, torch.tensor(FACES), (100.0, 100.0, 50.0, 50.0), (100, 100))
    assert int((r.face >= 0).sum()) == 2500  # 50 x 50 px, no double-counted diagonal
    assert torch.allclose(r.depth[r.face >= 0], torch.tensor(2.0))
    assert torch.isinf(r.depth[r.face < 0]).all()
    np.testing.assert_allclose(r.bary.sum(-1)[r.face >= 0].numpy(), 1.0, atol=1e-5)


def test_silhouettes_colours_and_depth_order() -> None:
    b, cam = _scene()
    img, mask, ids = render_bodies(None, b, cam, mode="silhouette", return_ids=True)
    assert img.shape == (2, 100, 100, 3) and img.dtype == np.uint8 and mask.shape == (2, 100, 100)
    assert (ids[0] == 1).sum() == 2500  # the near square is whole
    assert (ids[0] == 2).sum() == 13 * 50  # the far one only where it sticks out (x 75..87)
    assert tuple(img[0, 50, 50]) == object_color(1)
    assert tuple(img[0, 50, 80]) == object_color(2)
    assert tuple(img[0, 5, 5]) == (0, 0, 0)
    assert mask[0].sum() == 2500 + 650
    assert (ids[1] == 2).sum() == 0 and mask[1].sum() == 2500  # person 2 missing on frame 1


def test_overlay_blends_frames_and_shades() -> None:
    b, cam = _scene()
    frames = np.full((2, 100, 100, 3), 200, np.uint8)
    img, mask = render_bodies(frames, b, cam, mode="overlay", opacity=1.0)
    assert tuple(img[0, 50, 50]) == object_color(1)  # facing the camera: full lambert
    assert tuple(img[0, 5, 5]) == (200, 200, 200)
    half, _ = render_bodies(frames, b, cam, mode="overlay", opacity=0.5)
    np.testing.assert_allclose(half[0, 50, 50], (np.array(object_color(1)) + 200) / 2, atol=1)


def test_normals_and_depth_modes() -> None:
    b, cam = _scene()
    nrm, _ = render_bodies(None, b, cam, mode="normals")
    assert tuple(nrm[0, 50, 50]) == (128, 128, 255)  # facing the viewer
    dep, _ = render_bodies(None, b, cam, mode="depth")
    assert dep[0, 50, 50, 0] == 255 and dep[0, 50, 80, 0] < dep[0, 50, 50, 0]  # near brighter


def test_vertices_from_callable() -> None:
    b, cam = _scene()
    calls = []

    def fn(bodies: Bodies, frames: np.ndarray) -> np.ndarray:
        calls.append(frames.tolist())
        return np.tile(SQUARE[None, None], (2, len(frames), 1, 1))

    _, mask = render_bodies(None, b.replace(vertices=None), cam, mode="mesh", vertices_fn=fn, batch_size=1)
    assert calls == [[0], [1]]
    assert mask[0].sum() == 2500  # the unscaled far square hides entirely behind the near one


def test_bad_inputs() -> None:
    b, cam = _scene()
    with pytest.raises(InputError, match="render mode"):
        render_bodies(None, b, cam, mode="xray")
    with pytest.raises(InputError, match="frame counts"):
        render_bodies(np.zeros((3, 100, 100, 3), np.uint8), b, cam)
    with pytest.raises(InputError, match="Camera has 5 frames"):
        render_bodies(None, b, Camera.from_focal(100.0, (100, 100), 5, "manual"))
    with pytest.raises(InputError, match="no vertices"):
        render_bodies(None, b.replace(vertices=None), cam, mode="mesh")
    with pytest.raises(InputError, match="frame size"):
        render_bodies(np.zeros((2, 50, 100, 3), np.uint8), b, cam)


def test_openpose_mapping_and_drawing() -> None:
    kp = np.zeros((70, 2), np.float32)
    kp[:, 0] = np.arange(70)
    assert mhr70_to_openpose18(kp)[:, 0].tolist() == MHR70_FOR_OPENPOSE18.tolist()
    assert MHR70_FOR_OPENPOSE18[1] == 69 and MHR70_FOR_OPENPOSE18[4] == 41 and MHR70_FOR_OPENPOSE18[7] == 62
    pts = np.full((70, 2), np.nan, np.float32)
    pts[69] = (50, 20)  # neck
    pts[6] = (30, 20)  # right shoulder
    canvas = draw_openpose(np.zeros((100, 100, 3), np.uint8), pts)
    assert tuple(canvas[20, 50]) == (255, 85, 0)  # neck dot colour
    assert tuple(canvas[20, 30]) == (255, 170, 0)  # right shoulder dot colour
    assert canvas[20, 40].any()  # the limb between them
    assert not canvas[80:].any()


def test_openpose_mode_needs_only_keypoints() -> None:
    b, cam = _scene()
    kp = np.full((2, 2, 70, 2), np.nan, np.float32)
    kp[0, :, 69] = (50, 50)
    img, mask = render_bodies(None, b.replace(vertices=None, faces=None, keypoints_2d=kp), cam, mode="openpose")
    assert tuple(img[0, 50, 50]) == (255, 85, 0) and mask[0, 50, 50] == 1.0 and mask[0, 0, 0] == 0.0


def test_tiny_body_model_through_smooth_render_and_glb(pack) -> None:  # noqa: F811
    """Real SAM-3D-Body code path (tiny random weights) -> Kalman Smooth -> Render Mesh -> Save GLB nodes."""
    import importlib

    import folder_paths
    import pygltflib

    from body4d_core.sam3d_body import tiny_config
    from body4d_core.sam3d_body.synthetic import random_model, save_official_layout

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        importlib.import_module(f"{pack.__name__}.nodes.comfy_glue").register_model_folders()
        body = importlib.import_module(f"{pack.__name__}.nodes.body")
        data = importlib.import_module(f"{pack.__name__}.body4d_core.data")
        root = folder_paths.get_folder_paths("sam3d_body")[0]
        save_official_layout(random_model(tiny_config(), seed=5), f"{root}/tiny-render")
        handle = body.LoadSAM3DBody.execute(checkpoint="tiny-render", precision="auto").args[0]
        t, h, w = 4, 60, 80
        frames = torch.rand(t, h, w, 3)
        masks = np.zeros((2, t, h, w), bool)
        masks[0, :, 10:50, 20:40] = True
        masks[1, 1:, 5:30, 50:75] = True
        bodies = body.BodyBatch.execute(handle, frames, tracks=data.Tracks.from_masks([4, 9], masks), mode="body",
                                        batch_size=2).args[0]
        assert bodies.vertices is not None and bodies.faces is not None

        smooth = importlib.import_module(f"{pack.__name__}.nodes.smooth").KalmanSmooth
        sb, pose = smooth.execute(bodies=bodies).args
        assert sb.vertices.shape == bodies.vertices.shape and len(pose["frames"]) == t
        assert sb.flags[1, 0] == data.BodyFlag.MISSING  # never invented before a person appears
        exact, _ = smooth.execute(bodies=bodies, sam3d_body_model=handle).args  # rig rebuilds the meshes
        refresh = importlib.import_module(f"{pack.__name__}.body4d_core.sam3d_body.refresh")
        default_cam = data.Camera.default((h, w), t)
        again = refresh.refresh_geometry(handle.model, exact, default_cam)
        assert np.allclose(exact.vertices, again.vertices, atol=1e-6)
        assert not np.allclose(exact.vertices, sb.vertices, atol=1e-6)  # differs from filtering the vertices
        cam = data.Camera.from_focal(80.0, (h, w), t, "manual")
        rnd = importlib.import_module(f"{pack.__name__}.nodes.render").RenderMesh
        img, mask = rnd.execute(sb, cam, frames=frames, mode="overlay").args
        assert img.shape == (t, h, w, 3) and mask.shape == (t, h, w) and torch.isfinite(img).all()
        glb = importlib.import_module(f"{pack.__name__}.nodes.export").SaveGLB
        rel = glb.execute(sb, fps=10.0, filename_prefix="tiny/glb").args[0]
        g = pygltflib.GLTF2.load(f"{folder_paths.get_output_directory()}/{rel}/body4d_person_9.glb")
        assert len(g.meshes) == 3  # person 9 is absent on frame 0
        assert g.accessors[g.meshes[0].primitives[0].attributes.POSITION].count == bodies.vertices.shape[2]
    finally:
        torch.set_num_threads(threads)
