"""Torch z-buffer renderer and OpenPose drawing, checked pixel by pixel on tiny meshes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from body4d_core.data import Bodies, BodyFlag, Camera
from body4d_core.errors import InputError
from body4d_core.palette import object_color
from body4d_core.render import is_closed, rasterize, render_bodies, winding
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


def _reference_raster(verts: np.ndarray, faces: np.ndarray, intr: tuple, size: tuple) -> tuple[np.ndarray, ...]:
    """Brute force in float64: every pixel centre against every face; face id, depth and tie flag."""
    h, w = size
    fx, fy, cx, cy = intr
    p = np.stack([fx * verts[:, 0] / verts[:, 2] + cx - 0.5, fy * verts[:, 1] / verts[:, 2] + cy - 0.5], -1)
    qy, qx = np.mgrid[0:h, 0:w].reshape(2, -1, 1).astype(np.float64)
    a, b, c = (p[faces[:, k]] for k in range(3))  # [F, 2]
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    b1 = ((qx - a[:, 0]) * (c[:, 1] - a[:, 1]) - (qy - a[:, 1]) * (c[:, 0] - a[:, 0])) / area
    b2 = ((b[:, 0] - a[:, 0]) * (qy - a[:, 1]) - (b[:, 1] - a[:, 1]) * (qx - a[:, 0])) / area
    bary = np.stack([1 - b1 - b2, b1, b2], -1)  # [P, F, 3]
    inside = (bary >= -1e-6).all(-1)
    depth = 1.0 / (bary / verts[faces, 2]).sum(-1)
    depth = np.where(inside, depth, np.inf)
    order = np.sort(depth, 1)
    face = np.where(np.isfinite(order[:, 0]), depth.argmin(1), -1)
    with np.errstate(invalid="ignore"):  # inf - inf where nothing covers a pixel
        tie = np.isfinite(order[:, 1]) & (order[:, 1] - order[:, 0] <= 1e-5 * order[:, 0])
    return face.reshape(h, w), order[:, 0].reshape(h, w), tie.reshape(h, w)


def test_rasterize_matches_brute_force_reference() -> None:
    rng = np.random.default_rng(3)
    faces = np.arange(90).reshape(30, 3)
    centre = rng.uniform([-0.6, -0.5, 2.0], [0.6, 0.5, 4.0], (30, 1, 3))
    verts = (centre + rng.normal(0, 0.25, (30, 3, 3)) * [1, 1, 0.3]).reshape(-1, 3).astype(np.float32)
    intr, size = (60.0, 55.0, 28.3, 20.1), (40, 56)
    ref_face, ref_depth, tie = _reference_raster(verts.astype(np.float64), faces, intr, size)
    r = rasterize(torch.tensor(verts), torch.tensor(faces), intr, size)
    assert (ref_face >= 0).sum() > 400 and (tie & (ref_face >= 0)).sum() < 20  # a real, overlapping scene
    np.testing.assert_array_equal(r.face.numpy()[~tie], ref_face[~tie])
    hit = ref_face >= 0
    np.testing.assert_allclose(r.depth.numpy()[hit], ref_depth[hit], rtol=1e-5)
    assert torch.isinf(r.depth[~torch.tensor(hit)]).all()
    # a batch of frames, fragments in chunks of 7, gives each frame's single-frame answer
    shifted = verts + np.array([0.1, 0.0, 0.5], np.float32)
    rb = rasterize(torch.tensor(np.stack([verts, shifted])), torch.tensor(faces),
                   torch.tensor([intr, intr]), size, chunk=7)
    r2 = rasterize(torch.tensor(shifted), torch.tensor(faces), intr, size)
    assert torch.equal(rb.face[0], r.face) and torch.equal(rb.face[1], r2.face)
    assert torch.equal(rb.depth[1], r2.depth) and torch.allclose(rb.bary[1], r2.bary)


def _cube() -> tuple[np.ndarray, np.ndarray]:
    """Unit cube, 12 triangles wound with outward normals."""
    v = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], np.float32) - 0.5
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    return v, np.array([t for a, b, c, d in quads for t in ((a, b, c), (a, c, d))], np.int32)


def test_back_face_culling_of_closed_meshes_changes_nothing() -> None:
    v, f = _cube()
    assert is_closed(f) and winding(f, v) == 1 and winding(f[:, ::-1], v) == -1
    assert not is_closed(FACES) and not is_closed(f[1:])
    rot = torch.tensor([[0.8, 0.0, 0.6], [0.0, 1.0, 0.0], [-0.6, 0.0, 0.8]]) @ torch.tensor(
        [[1.0, 0.0, 0.0], [0.0, 0.8, -0.6], [0.0, 0.6, 0.8]])
    verts = torch.tensor(v) @ rot.T + torch.tensor([0.1, -0.05, 2.5])
    intr, size = (70.0, 70.0, 32.0, 30.0), (60, 64)
    full = rasterize(verts, torch.tensor(f), intr, size)
    culled = rasterize(verts, torch.tensor(f), intr, size, cull=1)
    assert int((full.face >= 0).sum()) > 500
    assert torch.equal(full.face >= 0, culled.face >= 0) and torch.allclose(full.depth, culled.depth)
    inward = rasterize(verts, torch.tensor(f), intr, size, cull=-1)  # wrong sign: only the far side
    hit = inward.face >= 0
    assert (inward.depth[hit] >= full.depth[hit] - 1e-6).all()
    assert (inward.depth[hit] > full.depth[hit] + 0.05).float().mean() > 0.8  # equal only near the outline
    # render_bodies finds the winding itself; output equals the unculled legacy meaning (closed mesh)
    b = Bodies.empty([1], 1, size)
    p = {k: x.copy() for k, x in b.params.items()}
    p["cam_t"][0, 0] = [0.1, -0.05, 2.5]
    b = b.replace(params=p, flags=np.full((1, 1), BodyFlag.VISIBLE, np.uint8),
                  vertices=(torch.tensor(v) @ rot.T).numpy()[None, None], faces=f)
    cam = Camera(np.array([intr], np.float32), size)
    _, mask, ids = render_bodies(None, b, cam, mode="silhouette", return_ids=True)
    assert np.array_equal(mask[0] > 0, (full.face >= 0).numpy()) and np.array_equal(ids[0] > 0, mask[0] > 0)


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


def test_float_frames_empty_frames_and_small_batches_agree() -> None:
    b, cam = _scene(3)
    flags = b.flags.copy()
    flags[:, 2] = BodyFlag.MISSING  # nobody on frame 2
    b = b.replace(flags=flags)
    frames = np.random.default_rng(0).integers(0, 256, (3, 100, 100, 3), dtype=np.uint8)
    img, mask, ids = render_bodies(frames, b, cam, mode="overlay", return_ids=True)
    imgf, maskf, idsf = render_bodies(frames.astype(np.float32) / 255.0, b, cam, mode="overlay", return_ids=True,
                                      batch_size=1, chunk=1000)
    assert np.abs(img.astype(int) - imgf).max() <= 1 and np.array_equal(mask, maskf) and np.array_equal(ids, idsf)
    assert np.array_equal(img[2], frames[2]) and mask[2].sum() == 0 and ids[2].sum() == 0
    assert np.array_equal(img[0][mask[0] == 0], frames[0][mask[0] == 0])  # background untouched off the bodies


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
    from body4d_core.testing.body import random_model, save_official_layout

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
