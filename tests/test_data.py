"""Data contracts: validation, npz round trips, mask packing."""

import numpy as np
import pytest

from body4d_core.data import (Amodal, Bodies, BodyFlag, Camera, Clip, ObjectPrompt, PARAM_DIMS, Prompts, Tracks,
                              check_same_frames, mask_boxes, pack_masks, unpack_masks)
from body4d_core.errors import InputError


def random_masks(n=2, t=5, h=17, w=23, seed=0):
    return np.random.default_rng(seed).random((n, t, h, w)) > 0.6


def test_pack_unpack_roundtrip_odd_width():
    m = random_masks(w=23)
    packed = pack_masks(m)
    assert packed.shape == (2, 5, 17, 3) and packed.dtype == np.uint8
    assert np.array_equal(unpack_masks(packed, 23), m)


def test_mask_boxes_and_empty():
    m = np.zeros((2, 10, 12), bool)
    m[0, 2:5, 3:9] = True
    boxes = mask_boxes(m)
    assert boxes[0].tolist() == [3, 2, 9, 5]
    assert np.isnan(boxes[1]).all()


def test_clip_roundtrip(tmp_path):
    frames = np.random.default_rng(1).integers(0, 255, (4, 6, 8, 3), dtype=np.uint8)
    clip = Clip(fps=12.5, num_frames=4, image_size=(6, 8), source="x.mp4", source_size=(60, 80),
                frame_indices=np.array([0, 3, 6, 9]), frames=frames)
    back = Clip.load_npz(clip.save_npz(tmp_path / "clip.npz"))
    assert back.fps == 12.5 and back.source_size == (60, 80) and back.frame_indices.tolist() == [0, 3, 6, 9]
    assert np.array_equal(back.frames, frames)


def test_clip_rejects_bad_values():
    with pytest.raises(InputError, match="at least one frame"):
        Clip(fps=10, num_frames=0, image_size=(4, 4))
    with pytest.raises(InputError, match="fps"):
        Clip(fps=0, num_frames=2, image_size=(4, 4))
    with pytest.raises(InputError, match="uint8"):
        Clip(fps=10, num_frames=1, image_size=(2, 2), frames=np.zeros((1, 2, 2, 3), np.float32))


def make_prompts():
    return Prompts([
        ObjectPrompt(1, 3, [[10, 20], [30, 40]], [1, 0]),
        ObjectPrompt(2, 0, box=[5, 5, 50, 60]),
        ObjectPrompt(1, 7, [[99.5, 79.5]], [1]),
    ], image_size=(80, 100), num_frames=8)


def test_prompts_roundtrip(tmp_path):
    p = make_prompts()
    assert p.obj_ids == [1, 2] and p.frames == [0, 3, 7]
    back = Prompts.load_npz(p.save_npz(tmp_path / "p.npz"))
    assert [(i.obj_id, i.frame) for i in back.items] == [(1, 3), (2, 0), (1, 7)]
    assert back.items[0].points.tolist() == [[10, 20], [30, 40]] and back.items[0].labels.tolist() == [1, 0]
    assert back.items[0].box is None and back.items[1].box.tolist() == [5, 5, 50, 60]


@pytest.mark.parametrize("item, message", [
    (ObjectPrompt(1, 8, [[1, 1]], [1]), "past the clip"),
    (ObjectPrompt(1, 0, [[101, 1]], [1]), "outside the 100x80 frame"),
    (ObjectPrompt(1, 0, [[1, -1]], [1]), "outside"),
    (ObjectPrompt(0, 0, [[1, 1]], [1]), "start at 1"),
    (ObjectPrompt(1, 0, [[1, 1]], [2]), "labels must be"),
    (ObjectPrompt(1, 0), "neither points nor a box"),
    (ObjectPrompt(1, 0, box=[10, 10, 5, 20]), "box"),
])
def test_prompts_bad_input(item, message):
    with pytest.raises(InputError, match=message):
        Prompts([item], image_size=(80, 100), num_frames=8)


def test_prompts_empty():
    with pytest.raises(InputError, match="no prompt"):
        Prompts([], image_size=(80, 100), num_frames=8)


def test_tracks_accessors_and_roundtrip(tmp_path):
    m = random_masks(n=2, t=4, h=9, w=13)
    m[1, 2] = False
    tr = Tracks.from_masks([3, 7], m)
    assert tr.num_frames == 4 and tr.num_objects == 2
    assert tr.present.tolist()[1] == [True, True, False, True]
    assert tr.scores[1, 2] == 0.0
    assert np.array_equal(tr.masks_of(7), m[1])
    assert np.array_equal(tr.frame_masks(1), m[:, 1])
    assert np.array_equal(tr.union(), m.any(axis=0))
    assert np.isnan(tr.boxes()[1, 2]).all()
    back = Tracks.load_npz(tr.save_npz(tmp_path / "t.npz"))
    assert back.obj_ids.tolist() == [3, 7] and np.array_equal(back.packed, tr.packed)
    with pytest.raises(InputError, match="object id 5 is not in the tracks"):
        tr.masks_of(5)


def test_tracks_bad_input():
    with pytest.raises(InputError, match="unique"):
        Tracks.from_masks([1, 1], random_masks())
    with pytest.raises(InputError, match="Tracks.packed must have shape"):
        Tracks(np.array([1]), np.zeros((1, 2, 5, 1), np.uint8), image_size=(4, 8))


def test_amodal_roundtrip_and_checks(tmp_path):
    n, t, h, w = 2, 3, 8, 10
    occ = np.zeros((n, t), bool)
    occ[1, 2] = True
    rgb = np.full((1, h, w, 3), 200, np.uint8)
    am = Amodal(np.array([1, 2]), occ, pack_masks(np.ones((n, t, h, w), bool)), (h, w),
                completed_index=np.array([[1, 2]]), completed_rgb=rgb)
    assert am.completed(2, 2)[0, 0].tolist() == [200, 200, 200]
    assert am.completed(1, 2) is None
    back = Amodal.load_npz(am.save_npz(tmp_path / "a.npz"))
    assert back.occluded.tolist() == occ.tolist() and back.amodal_mask(2, 0).all()
    with pytest.raises(InputError, match="flagged occluded"):
        Amodal(np.array([1, 2]), np.zeros((n, t), bool), pack_masks(np.ones((n, t, h, w), bool)), (h, w),
               completed_index=np.array([[1, 2]]), completed_rgb=rgb)


def test_camera_default_fov_and_broadcast(tmp_path):
    cam = Camera.default((480, 640), 3)
    assert cam.intrinsics[0].tolist() == [800.0, 800.0, 320.0, 240.0]
    assert cam.K(1)[0, 0] == 800.0
    fov = Camera.from_fov(60.0, (480, 640), 1)
    assert abs(fov.fov_y_deg() - 60.0) < 1e-4
    assert fov.check_frames(5).num_frames == 5
    with pytest.raises(InputError, match="Camera has 3 frames but the clip has 4"):
        cam.check_frames(4)
    back = Camera.load_npz(cam.save_npz(tmp_path / "c.npz"))
    assert back.source == "default" and np.array_equal(back.intrinsics, cam.intrinsics)
    with pytest.raises(InputError, match="FOV"):
        Camera.from_fov(0.0, (4, 4), 1)


def test_bodies_roundtrip_and_validation(tmp_path):
    b = Bodies.empty([4, 2], 6, (32, 48))
    assert b.params["body_pose"].shape == (2, 6, 133) and not b.present.any()
    flags = b.flags.copy()
    flags[0, :3] = BodyFlag.VISIBLE
    flags[1, 5] = BodyFlag.OCCLUDED | BodyFlag.FILLED
    kp = np.ones((2, 6, 70, 3), np.float32)
    b2 = b.replace(flags=flags, keypoints_3d=kp, extras={"score": np.ones((2, 6), np.float32)})
    back = Bodies.load_npz(b2.save_npz(tmp_path / "b.npz"))
    assert back.obj_ids.tolist() == [4, 2] and back.flags[1, 5] == 6
    assert back.keypoints_3d.shape == (2, 6, 70, 3) and back.extras["score"].shape == (2, 6)
    assert set(back.params) == set(PARAM_DIMS)
    bad = dict(b.params)
    bad["shape"] = np.zeros((2, 6, 44), np.float32)
    with pytest.raises(InputError, match=r"Bodies.params\['shape'\] must have shape \(2, 6, 45\)"):
        b.replace(params=bad)
    del bad["shape"]
    with pytest.raises(InputError, match="missing parameter blocks"):
        b.replace(params=bad)


def test_npz_kind_is_checked(tmp_path):
    path = Camera.default((4, 4), 1).save_npz(tmp_path / "c.npz")
    with pytest.raises(InputError, match="holds 'camera', expected 'tracks'"):
        Tracks.load_npz(path)
    with pytest.raises(InputError, match="no such file"):
        Tracks.load_npz(tmp_path / "missing.npz")


def test_check_same_frames():
    assert check_same_frames(frames=5, tracks=5) == 5
    with pytest.raises(InputError, match="frames: 5, tracks: 4"):
        check_same_frames(frames=5, tracks=4)
