"""Core MHR_POSE_DATA render fields: canonical_colors and hand_vert_mask from our model and rig."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from body4d_core.data import Bodies, BodyFlag, Camera
from body4d_core.interop.mhr_pose_data import (HEAD_MAX_ABS_X, HEAD_MIN_Y, from_mhr_pose, hand_vertex_mask, mesh_render_fields,
                                   rig_skinning, to_mhr_pose)
from body4d_core.render import vertex_normals
from body4d_core.sam3d_body import tiny_config
from body4d_core.sam3d_body.mhr_rig import MhrRig
from body4d_core.testing.body import random_rig_tensors
from body4d_core.testing.body import random_model


@pytest.fixture(scope="module")
def rigged():
    """A tiny random model with our native rig (TorchScript, like the official asset)."""
    cfg = tiny_config()
    model = random_model(cfg, seed=3)
    tensors = random_rig_tensors(cfg.num_verts, cfg.num_joints, seed=3)
    model.attach_rig(torch.jit.script(MhrRig(tensors)))
    return model, tensors


def test_vertex_normals_of_a_box_corner_and_a_square() -> None:
    square = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [5, 5, 5]], np.float32)
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    n = vertex_normals(torch.from_numpy(square), torch.from_numpy(faces)).numpy()
    assert n.dtype == np.float32 and n.shape == (5, 3)
    np.testing.assert_allclose(n[:4], [[0, 0, 1]] * 4, atol=1e-7)
    np.testing.assert_array_equal(n[4], [0, 0, 0])  # in no face
    # a corner shared by three perpendicular unit triangles: the mean direction
    corner = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    n = vertex_normals(torch.from_numpy(corner), torch.tensor([[0, 1, 2], [0, 2, 3], [0, 3, 1]])).numpy()
    np.testing.assert_allclose(n[0], [1 / np.sqrt(3)] * 3, atol=1e-6)


def test_hand_mask_sums_hand_joint_weights() -> None:
    kps = np.zeros((70, 3))
    kps[21:42] = [0.5, 1.0, 0.0]  # right hand centroid
    kps[42:63] = [-0.5, 1.0, 0.0]
    joints = np.array([[0.5, 1.05, 0], [-0.45, 1.0, 0], [0.0, 1.0, 0], [0.5, 1.3, 0]])  # hand, hand, chest, too far
    verts = np.array([0, 0, 1, 1, 2, 3, 3])
    jidx = np.array([0, 2, 1, 3, 2, 0, 1])
    w = np.array([0.6, 0.4, 0.5, 0.5, 1.0, 0.2, 0.3], np.float32)
    mask = hand_vertex_mask((verts, jidx, w), joints, kps, num_verts=5)
    assert mask.dtype == bool and mask.tolist() == [True, True, False, True, False]


def test_rig_skinning_native_and_official_names(rigged) -> None:
    model, tensors = rigged
    v, j, w = rig_skinning(model.mhr)
    np.testing.assert_array_equal(v, tensors["lbs_vert_indices"].numpy())
    np.testing.assert_array_equal(j, tensors["lbs_skin_indices"].numpy())
    np.testing.assert_allclose(w, tensors["lbs_skin_weights"].numpy())

    class Lbs(torch.nn.Module):  # the official TorchScript asset's attribute layout
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("vert_indices_flattened", torch.tensor([0, 1]))
            self.register_buffer("skin_indices_flattened", torch.tensor([2, 3], dtype=torch.int32))
            self.register_buffer("skin_weights_flattened", torch.tensor([1.0, 0.5]))

    official = torch.nn.Module()
    official.character_torch = torch.nn.Module()
    official.character_torch.linear_blend_skinning = Lbs()
    v, j, w = rig_skinning(official)
    assert v.tolist() == [0, 1] and j.tolist() == [2, 3] and w.tolist() == [1.0, 0.5]
    assert rig_skinning(torch.nn.Linear(2, 2)) is None


def test_mesh_render_fields_from_the_rig(rigged) -> None:
    model, tensors = rigged
    cfg = model.cfg
    v = cfg.num_verts
    fields = mesh_render_fields(model)
    cc, hand = fields["canonical_colors"], fields["hand_vert_mask"]
    assert set(cc) == {"positions", "norm", "face_mask", "head_mask", "face_region_rgb"}
    for key, dtype, shape in (("positions", np.float32, (v, 3)), ("norm", np.float32, (v, 3)),
                              ("face_mask", bool, (v,)), ("head_mask", bool, (v,)),
                              ("face_region_rgb", np.float32, (v, 3))):
        assert cc[key].dtype == dtype and cc[key].shape == shape, key
    assert hand.dtype == bool and hand.shape == (v,)
    # rest pose = the rig at zero parameters, metres, MHR axes
    zeros = {"global_rot": torch.zeros(1, 3), "body_pose": torch.zeros(1, 133), "hand": torch.zeros(1, 108),
             "scale": torch.zeros(1, 28), "shape": torch.zeros(1, 45), "face": torch.zeros(1, 72)}
    rest = model.head_pose.run_rig(model.mhr, zeros)
    np.testing.assert_allclose(cc["positions"], rest.verts[0].numpy(), atol=1e-6)
    want = vertex_normals(torch.from_numpy(cc["positions"]), model.faces).numpy()
    np.testing.assert_allclose(cc["norm"], (want + 1) / 2, atol=1e-7)
    assert (cc["norm"] >= 0).all() and (cc["norm"] <= 1).all()
    pos = cc["positions"]
    np.testing.assert_array_equal(cc["head_mask"], (pos[:, 1] > HEAD_MIN_Y) & (np.abs(pos[:, 0]) < HEAD_MAX_ABS_X))
    assert not cc["face_region_rgb"].any()
    # face mask: vertices moved by some single expression coefficient
    one = dict(zeros, face=torch.eye(72)[[5]])
    moved = np.linalg.norm(model.head_pose.run_rig(model.mhr, one).verts[0].numpy() - pos, axis=1) > 1e-4
    assert moved.any() and cc["face_mask"][moved].all()
    # hand mask: the same rule applied by hand on the rig's own triplets
    want = hand_vertex_mask(rig_skinning(model.mhr), rest.joints[0].numpy(), rest.keypoints[0, :70].numpy(), v)
    np.testing.assert_array_equal(hand, want)


def test_painted_face_regions_are_used_when_loaded(rigged) -> None:
    model, _ = rigged
    v = model.cfg.num_verts
    paint = torch.zeros(v, 3)
    paint[:4] = torch.tensor([1.0, 0.5, 0.0])
    model.head_pose.face_region_rgb = paint
    try:
        got = mesh_render_fields(model)["canonical_colors"]["face_region_rgb"]
    finally:
        del model.head_pose.face_region_rgb
    assert got.dtype == np.float32 and got.shape == (v, 3)
    np.testing.assert_array_equal(got, paint.numpy())


class _NoSkin(torch.nn.Module):
    """A rig wrapper that hides its skinning weights (as a scripted rig of another layout would)."""

    def __init__(self, rig: torch.nn.Module) -> None:
        super().__init__()
        self.inner = rig

    def forward(self, *args):
        return self.inner(*args)


def test_fields_absent_without_rig_or_skinning(rigged) -> None:
    no_skin = random_model(tiny_config(), seed=1)
    no_skin.mhr = _NoSkin(no_skin.mhr)  # a rig that exposes no skinning triplets
    fields = mesh_render_fields(no_skin)
    assert fields["hand_vert_mask"] is None and fields["canonical_colors"]["positions"].shape == (no_skin.cfg.num_verts, 3)
    no_skin.mhr = None
    assert mesh_render_fields(no_skin) == {"canonical_colors": None, "hand_vert_mask": None}


def test_to_mhr_pose_fills_or_passes_fields(rigged) -> None:
    model, _ = rigged
    b = Bodies.empty([1], 2, (32, 32)).replace(flags=np.full((1, 2), BodyFlag.VISIBLE, np.uint8))
    cam = Camera.default((32, 32), 2)
    plain = to_mhr_pose(b, cam)
    assert plain["canonical_colors"] is None and plain["hand_vert_mask"] is None
    built = to_mhr_pose(b, cam, model=model)
    assert built["canonical_colors"]["positions"].shape == (model.cfg.num_verts, 3)
    assert built["hand_vert_mask"].shape == (model.cfg.num_verts,)
    core = {"canonical_colors": {"positions": np.ones((3, 3), np.float32)}, "hand_vert_mask": np.array([True, False, True])}
    passed = to_mhr_pose(b, cam, model=model, render_fields=core)
    assert passed["canonical_colors"] is core["canonical_colors"] and passed["hand_vert_mask"] is core["hand_vert_mask"]


def _core_tracks(data: dict) -> list[tuple[int, list[int]]]:
    """Core's BuildPoseFile track rule: slot k is a track on every frame whose list is longer than k."""
    frames = data["frames"]
    width = max((len(f) for f in frames), default=0)
    return [(k, [t for t, f in enumerate(frames) if k < len(f)]) for k in range(width)]


def test_pose_data_meets_core_pose_file_contract(rigged) -> None:
    """Every slot core's GLB/BVH builders read holds a valid pose: rotations, joints, shape, model params."""
    model, _ = rigged
    n_t, nj = 6, model.cfg.num_joints
    b = Bodies.empty([3, 8], n_t, (32, 48))
    g = np.random.default_rng(2)
    params = {k: (g.standard_normal(v.shape) * 0.2).astype(np.float32) for k, v in b.params.items()}
    params["cam_t"][..., 2] += 3.0
    flags = np.full((2, n_t), BodyFlag.VISIBLE, np.uint8)
    flags[0, 2:4] = BodyFlag.MISSING  # person 3 missing while person 8 is present: placeholder slots
    flags[0, 4] = BodyFlag.FILLED
    flags[1, 1] = BodyFlag.OCCLUDED
    rots = np.stack([np.linalg.qr(g.standard_normal((3, 3)))[0] for _ in range(2 * n_t * nj)]).reshape(2, n_t, nj, 3, 3)
    rots *= np.sign(np.linalg.det(rots))[..., None, None]
    extras = {"model_params": g.standard_normal((2, n_t, 204)).astype(np.float32),
              "joint_coords": g.standard_normal((2, n_t, nj, 3)).astype(np.float32),
              "joint_global_rots": rots.astype(np.float32)}
    b = b.replace(params=params, flags=flags, extras=extras, faces=np.zeros((4, 3), np.int32))
    data = to_mhr_pose(b, Camera.default((32, 48), n_t))
    assert data["faces"].shape == (4, 3) and tuple(data["image_size"]) == (32, 48)
    tracks = _core_tracks(data)
    assert [k for k, _ in tracks] == [0, 1] and tracks[0][1] == list(range(n_t))
    for k, frames in tracks:
        for t in frames:
            p = data["frames"][t][k]
            assert p["obj_id"] == [3, 8][k]
            r = np.asarray(p["pred_global_rots"], np.float64)
            assert r.shape == (nj, 3, 3)
            np.testing.assert_allclose(r @ np.swapaxes(r, -1, -2), np.broadcast_to(np.eye(3), r.shape), atol=1e-5)
            assert np.asarray(p["pred_joint_coords"]).shape == (nj, 3)
            assert np.asarray(p["shape_params"]).shape == (45,) and np.asarray(p["mhr_model_params"]).shape == (204,)
            assert np.asarray(p["expr_params"]).shape == (72,) and np.asarray(p["pred_cam_t"]).shape == (3,)
    hole = data["frames"][2][0]
    assert hole["body4d_missing"] and hole["pred_cam_t"][2] < 0 and hole["body4d_flags"] == 0
    np.testing.assert_array_equal(hole["pred_global_rots"], extras["joint_global_rots"][0, 1])  # nearest present pose
    np.testing.assert_array_equal(data["frames"][3][0]["mhr_model_params"], extras["model_params"][0, 4])
    back, _ = from_mhr_pose(data)
    np.testing.assert_array_equal(back.flags, flags)  # flags survive the round trip
