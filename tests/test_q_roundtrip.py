"""Round trips with every field set to a non-default value, compared field by field.

A loader that drops an optional field (scores, iou, completed frames, confidence, extras, a
camera's source, a clip's source size ...) passes a round trip that leaves the field at its
default. Here every dataclass field is set to something no default produces, object ids are
given out of order, and the comparison walks ``dataclasses.fields`` so a field added later is
compared too.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from body4d_core import export
from body4d_core.data import (PARAM_DIMS, Amodal, Bodies, BodyFlag, Camera, Clip, ObjectPrompt, Prompts, Tracks)
from body4d_core.interop.mhr_pose_data import EXTRA_KEYS, from_mhr_pose, to_mhr_pose

RNG = np.random.default_rng(11)
H, W, T = 14, 21, 4  # odd, non-square: a bit-packing or H/W slip shows


def _equal(a, b, path: str = "") -> None:
    """Deep equality of dataclasses, dicts, arrays and scalars (NaN == NaN), with the failing path."""
    if dataclasses.is_dataclass(a):
        assert type(a) is type(b), path
        for f in dataclasses.fields(a):
            _equal(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}")
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{path}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            _equal(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)) and a and dataclasses.is_dataclass(a[0]):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _equal(x, y, f"{path}[{i}]")
    elif isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        assert a is not None and b is not None, f"{path}: {type(a)} vs {type(b)}"
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape and a.dtype == b.dtype, f"{path}: {a.shape} {a.dtype} vs {b.shape} {b.dtype}"
        np.testing.assert_array_equal(a, b, err_msg=path)
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def _not_default(obj, default) -> None:
    """Every field of obj differs from the same field of a default-built object (so a dropped field shows)."""
    for f in dataclasses.fields(obj):
        a, b = getattr(obj, f.name), getattr(default, f.name)
        if isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.shape == b.shape:
            same = np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
        elif isinstance(a, dict):
            same = not a or set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
        else:
            same = (a is None and b is None) or (type(a) is type(b) and not isinstance(a, np.ndarray) and a == b)
        assert not same, f"field {f.name} is at its default: the round trip would not test it"


def _masks(n: int) -> np.ndarray:
    m = RNG.random((n, T, H, W)) > 0.6
    m[:, 0] = False  # every object absent on frame 0
    return m


def test_clip_every_field(tmp_path):
    clip = Clip(fps=23.976, num_frames=T, image_size=(H, W), source="a/b.mp4", source_size=(3 * H, 3 * W),
                frame_indices=np.array([5, 7, 9, 11]), frames=RNG.integers(0, 255, (T, H, W, 3), dtype=np.uint8))
    _not_default(clip, Clip(fps=1.0, num_frames=T + 1, image_size=(H + 1, W + 1)))
    _equal(clip, Clip.load_npz(clip.save_npz(tmp_path / "c.npz")))


def test_prompts_every_field(tmp_path):
    items = [
        ObjectPrompt(7, 3, points=[[1.5, 2.25], [20.0, 13.0]], labels=[1, 0]),
        ObjectPrompt(2, 1, box=[3.0, 1.0, 19.5, 12.0]),
        ObjectPrompt(7, 0, points=[[4.0, 5.0]], labels=[1], box=[0.0, 0.0, 10.0, 8.0]),
    ]
    prompts = Prompts(items, (H, W), T)
    back = Prompts.load_npz(prompts.save_npz(tmp_path / "p.npz"))
    _equal(prompts, back)
    assert [(it.obj_id, it.frame) for it in back.items] == [(7, 3), (2, 1), (7, 0)]  # order as given


def test_tracks_every_field(tmp_path):
    scores = RNG.random((3, T)).astype(np.float32)
    tracks = Tracks.from_masks([9, 1, 4], _masks(3), scores)
    _not_default(tracks, Tracks.from_masks([1, 2, 3], np.zeros((3, T, H + 1, W), bool)))
    back = Tracks.load_npz(tracks.save_npz(tmp_path / "t.npz"))
    _equal(tracks, back)
    assert back.obj_ids.tolist() == [9, 1, 4]
    np.testing.assert_array_equal(back.masks_of(1), unpack := tracks.masks_of(1))
    assert unpack.shape == (T, H, W)


def test_amodal_every_field(tmp_path):
    occluded = np.zeros((2, T), bool)
    occluded[1, 1:3] = True
    occluded[0, 3] = True
    iou = RNG.random((2, T)).astype(np.float32)
    idx = np.array([[1, 2], [0, 3], [1, 1]])
    rgb = RNG.integers(0, 255, (3, H, W, 3), dtype=np.uint8)
    from body4d_core.data import pack_masks

    amodal = Amodal(np.array([8, 3]), occluded, pack_masks(_masks(2)), (H, W), iou, idx, rgb)
    _not_default(amodal, Amodal(np.array([1, 2]), np.zeros((2, T), bool), pack_masks(np.zeros((2, T, H, W + 1), bool)),
                                (H, W + 1)))
    back = Amodal.load_npz(amodal.save_npz(tmp_path / "a.npz"))
    _equal(amodal, back)
    np.testing.assert_array_equal(back.completed(8, 3), rgb[1])  # object 8 is row 0
    np.testing.assert_array_equal(back.completed(3, 1), rgb[2])
    assert back.completed(3, 0) is None


def test_camera_every_field(tmp_path):
    k = np.stack([np.linspace(100, 130, T), np.linspace(101, 131, T), np.full(T, 9.5), np.full(T, 6.5)], -1)
    cam = Camera(k.astype(np.float32), (H, W), "moge_geometry")
    _not_default(cam, Camera.default((H + 2, W), T))
    _equal(cam, Camera.load_npz(cam.save_npz(tmp_path / "k.npz")))


def _full_bodies() -> Bodies:
    n, k, v = 3, 5, 6
    params = {name: RNG.normal(size=(n, T, d)).astype(np.float32) for name, d in PARAM_DIMS.items()}
    flags = np.array([[1, 2, 4, 0], [0, 1, 1, 2], [4, 1, 0, 1]], np.uint8)
    return Bodies(np.array([12, 5, 7]), flags, params, (H, W),
                  keypoints_3d=RNG.normal(size=(n, T, k, 3)).astype(np.float32),
                  keypoints_2d=RNG.normal(size=(n, T, k, 2)).astype(np.float32),
                  vertices=RNG.normal(size=(n, T, v, 3)).astype(np.float32),
                  faces=np.array([[0, 2, 1], [1, 2, 3], [3, 5, 4]], np.int32),
                  confidence=RNG.random((n, T)).astype(np.float32),
                  extras={"model_params": RNG.normal(size=(n, T, 204)).astype(np.float32),
                          "joint_coords": RNG.normal(size=(n, T, 4, 3)).astype(np.float32)})


def test_bodies_every_field(tmp_path):
    bodies = _full_bodies()
    _not_default(bodies, Bodies.empty([1, 2, 3], T, (H + 1, W)))
    _equal(bodies, Bodies.load_npz(bodies.save_npz(tmp_path / "b.npz")))


def test_params_export_every_field(tmp_path):
    bodies = _full_bodies()
    cam = Camera(np.tile(np.array([[55.0, 56.0, 10.0, 7.0]], np.float32), (T, 1)), (H, W), "manual")
    path = export.save_params(bodies, tmp_path / "params.npz", cam)
    _equal(bodies, Bodies.load_npz(path))
    _equal(cam, Camera.load_npz(tmp_path / "params_camera.npz"))
    with np.load(path) as raw:  # an independent reader sees the same numbers under plain names
        np.testing.assert_array_equal(raw["param.cam_t"], bodies.params["cam_t"])
        np.testing.assert_array_equal(raw["obj_ids"], [12, 5, 7])


def test_mhr_pose_every_field_survives():
    """Core MHR_POSE_DATA and back: every field MHR_POSE_DATA can carry, per-frame focal included."""
    bodies = _full_bodies()
    bodies = bodies.replace(extras={name: RNG.normal(size=(3, T, 6)).astype(np.float32) for name in EXTRA_KEYS},
                            confidence=None)
    focal = np.linspace(80, 95, T).astype(np.float32)
    cam = Camera(np.stack([focal, focal, np.full(T, W / 2), np.full(T, H / 2)], -1), (H, W), "estimated")
    back, cam2 = from_mhr_pose(to_mhr_pose(bodies, cam))
    order = np.argsort(bodies.obj_ids)  # MHR slots are in id order
    assert back.obj_ids.tolist() == bodies.obj_ids[order].tolist()
    observed = (bodies.flags[order] & (BodyFlag.VISIBLE | BodyFlag.OCCLUDED | BodyFlag.FILLED)) > 0
    assert np.array_equal(back.present, observed)
    for name in PARAM_DIMS:
        np.testing.assert_array_equal(back.params[name][observed], bodies.params[name][order][observed], err_msg=name)
    for name in ("keypoints_3d", "keypoints_2d", "vertices"):
        np.testing.assert_array_equal(getattr(back, name)[observed], getattr(bodies, name)[order][observed])
    for name in EXTRA_KEYS:
        np.testing.assert_array_equal(back.extras[name][observed], bodies.extras[name][order][observed])
    np.testing.assert_array_equal(back.faces, bodies.faces)
    assert back.image_size == (H, W) and cam2.image_size == (H, W)
    np.testing.assert_allclose(cam2.intrinsics[:, 1], focal, rtol=1e-6)
    np.testing.assert_allclose(cam2.intrinsics[:, 2:], [[W / 2, H / 2]] * T)


@pytest.mark.parametrize("kind", ["tracks", "bodies"])
def test_reordered_ids_keep_their_rows(tmp_path, kind):
    """Rows travel with their ids: loading never re-sorts ids away from their data."""
    if kind == "tracks":
        masks = np.zeros((2, T, H, W), bool)
        masks[0, :, :3, :4] = True  # id 30: top-left
        masks[1, :, -3:, -4:] = True  # id 10: bottom-right
        back = Tracks.load_npz(Tracks.from_masks([30, 10], masks).save_npz(tmp_path / "t.npz"))
        assert back.masks_of(30)[0, 0, 0] and back.masks_of(10)[0, -1, -1] and not back.masks_of(10)[0, 0, 0]
    else:
        b = _full_bodies()
        back = Bodies.load_npz(b.save_npz(tmp_path / "b.npz"))
        for oid in (12, 5, 7):
            np.testing.assert_array_equal(back.params["cam_t"][back.index_of(oid)], b.params["cam_t"][b.index_of(oid)])
