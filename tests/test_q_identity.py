"""Identity: the masks, bodies, meshes and files of an object id are that object's, whatever the prompt order.

The reference for each id is the same stage run on that id alone: every stage treats people
independently, so an id's result in a joint run must equal its solo result. Prompts are given
out of order (a higher id on an earlier frame than a lower one, listed high id first), one
person enters late and one leaves early, frames are non-square and people off-centre, so a
re-sort of ids that is not applied to the data, or a swapped row, shows as a mismatch.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from body4d_core.data import PARAM_DIMS, Bodies, BodyFlag, ObjectPrompt, Prompts, Tracks
from body4d_core.prompts import parse_prompts
from body4d_core.sam3 import propagate
from body4d_core.testing.sam3 import tiny_sam3
from body4d_core.video import LoadOptions, load_video

REPO = Path(__file__).resolve().parents[1]
T, H, W = 8, 64, 96
HIGH, LOW = 9, 2  # HIGH is prompted on an earlier frame than LOW
HIGH_FRAME, LOW_FRAME = 1, 5


@pytest.fixture(scope="module")
def bundle():
    return tiny_sam3(image_size=112, seed=0)


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    out, _ = load_video(REPO / "samples" / "cartoon_dancer_81f.mp4", LoadOptions(frame_load_cap=T, max_side=W))
    assert out.shape[1:3] == (96, 96)
    return np.ascontiguousarray(out[:, 12:12 + H])  # a 64 x 96 band: non-square


def _high() -> ObjectPrompt:
    return ObjectPrompt(HIGH, HIGH_FRAME, [[20.0, 30.0], [80.0, 10.0]], [1, 0])  # left person, a negative right


def _low() -> ObjectPrompt:
    return ObjectPrompt(LOW, LOW_FRAME, box=[60.0, 8.0, 90.0, 60.0])  # right person, by box


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return 1.0 if union == 0 else float((a & b).sum() / union)


@pytest.mark.parametrize("direction", ["forward", "backward", "both"])
def test_sam3_ids_prompted_out_of_order_keep_their_masks(bundle, frames, direction):
    """Each id's joint masks match its solo run (the tracker's objects barely interact: IoU >= 0.97), and on
    the prompt frames, where the two objects' masks differ most, they match their own id's more than the other's."""
    joint = propagate(bundle, frames, Prompts([_high(), _low()], (H, W), T), direction)
    assert sorted(joint.obj_ids.tolist()) == [LOW, HIGH]
    solo = {p.obj_id: propagate(bundle, frames, Prompts([p], (H, W), T), direction).masks_of(p.obj_id)
            for p in (_high(), _low())}
    for oid, other in ((HIGH, LOW), (LOW, HIGH)):
        mine = joint.masks_of(oid)
        np.testing.assert_array_equal(mine.any(axis=(1, 2)), solo[oid].any(axis=(1, 2)), err_msg=f"id {oid}")
        assert min(_iou(mine[t], solo[oid][t]) for t in range(T)) >= 0.97, f"id {oid}, {direction}"
        for t in (HIGH_FRAME, LOW_FRAME):
            if solo[oid][t].any() and solo[other][t].any():
                assert _iou(mine[t], solo[oid][t]) > _iou(mine[t], solo[other][t]) + 0.3, f"id {oid} frame {t}"
    high, low = joint.present[joint.index_of(HIGH)], joint.present[joint.index_of(LOW)]
    if direction == "forward":  # LOW enters late: nothing before its first prompt
        assert not low[:LOW_FRAME].any() and low[LOW_FRAME:].all() and not high[:HIGH_FRAME].any()
    elif direction == "backward":  # HIGH leaves early: nothing after its last prompt
        assert not high[HIGH_FRAME + 1:].any() and high[:HIGH_FRAME + 1].all() and low[:LOW_FRAME + 1].all()
    else:
        assert high.all() and low.all()


def test_points_json_out_of_order_keeps_each_objects_points():
    text = json.dumps({"version": 1, "objects": [
        {"id": 7, "points": [{"frame": 0, "x": 10, "y": 50, "label": 1}]},
        {"id": 3, "points": [{"frame": 4, "x": 90, "y": 5, "label": 1}, {"frame": 4, "x": 1, "y": 1, "label": 0}]},
        {"id": 12, "boxes": [{"frame": 2, "x0": 30, "y0": 10, "x1": 50, "y1": 40}]},
    ]})
    prompts = parse_prompts(text, (H, W), T)
    by_id = {it.obj_id: it for it in prompts.items}
    assert set(by_id) == {3, 7, 12}
    assert by_id[7].frame == 0 and by_id[7].points.tolist() == [[10.0, 50.0]]
    assert by_id[3].frame == 4 and by_id[3].points.tolist() == [[90.0, 5.0], [1.0, 1.0]]
    assert by_id[3].labels.tolist() == [1, 0]
    assert by_id[12].frame == 2 and by_id[12].box.tolist() == [30.0, 10.0, 50.0, 40.0]


# ----------------------------------------------------------------- downstream stages on hand-made tracks


def _tracks(ids=(HIGH, LOW)) -> Tracks:
    """HIGH: left, enters late (frames 3..7); LOW: right, leaves early (frames 0..4); off-centre, 64 x 96."""
    masks = {HIGH: np.zeros((T, H, W), bool), LOW: np.zeros((T, H, W), bool)}
    masks[HIGH][3:, 10:58, 8:34] = True
    masks[LOW][:5, 4:40, 60:92] = True
    return Tracks.from_masks(list(ids), np.stack([masks[i] for i in ids]))


@pytest.fixture(scope="module")
def body_model():
    from body4d_core.sam3d_body import tiny_config
    from body4d_core.testing.body import random_model

    return random_model(tiny_config(), seed=3).eval()


def _estimate(model, frames, tracks: Tracks) -> Bodies:
    from body4d_core.body_inputs import body_items
    from body4d_core.sam3d_body import bodies_from_results, estimate_bodies

    items = body_items(tracks)
    res = estimate_bodies(model, frames, items, None, mode="body", batch_size=16, return_vertices=True)
    return bodies_from_results(items, res, T, (H, W), faces=model.faces.numpy(), obj_ids=tracks.obj_ids.tolist())


def test_body_results_of_an_id_are_its_solo_results(body_model, frames):
    joint = _estimate(body_model, frames, _tracks((HIGH, LOW)))
    assert sorted(joint.obj_ids.tolist()) == [LOW, HIGH]
    for oid in (HIGH, LOW):
        solo = _estimate(body_model, frames, Tracks.from_masks([oid], _tracks((HIGH, LOW)).masks_of(oid)[None]))
        i = joint.index_of(oid)
        np.testing.assert_array_equal(joint.flags[i], solo.flags[0])
        for k in ("cam_t", "body_pose", "global_rot"):
            np.testing.assert_allclose(joint.params[k][i], solo.params[k][0], atol=1e-4, err_msg=f"{oid} {k}")
        np.testing.assert_allclose(joint.keypoints_2d[i], solo.keypoints_2d[0], atol=1e-2)  # px; float32 batching
    assert joint.flags[joint.index_of(HIGH)].tolist() == [0, 0, 0] + [BodyFlag.VISIBLE] * 5
    assert joint.flags[joint.index_of(LOW)].tolist() == [BodyFlag.VISIBLE] * 5 + [0, 0, 0]


def test_tracks_given_in_any_row_order_give_the_same_bodies(body_model, frames):
    a = _estimate(body_model, frames, _tracks((HIGH, LOW)))
    b = _estimate(body_model, frames, _tracks((LOW, HIGH)))
    for oid in (HIGH, LOW):
        np.testing.assert_allclose(a.params["cam_t"][a.index_of(oid)], b.params["cam_t"][b.index_of(oid)], atol=1e-4)


def _bodies() -> Bodies:
    """HIGH (row 0) enters late, LOW (row 1) leaves early; distinct, recognisable translations."""
    rng = np.random.default_rng(4)
    params = {k: rng.normal(0, 0.02, (2, T, d)).astype(np.float32) for k, d in PARAM_DIMS.items()}
    params["cam_t"][0] += np.array([-0.5, 0.0, 3.0], np.float32)
    params["cam_t"][1] += np.array([0.7, -0.2, 5.0], np.float32)
    flags = np.zeros((2, T), np.uint8)
    flags[0, 3:] = BodyFlag.VISIBLE
    flags[1, :5] = BodyFlag.VISIBLE
    quad = np.array([[-0.2, -0.3, 0], [0.2, -0.3, 0], [0.2, 0.3, 0], [-0.2, 0.3, 0]], np.float32)
    verts = np.broadcast_to(quad, (2, T, 4, 3)).copy()
    verts[1] *= 1.5  # LOW's mesh is bigger
    return Bodies(np.array([HIGH, LOW]), flags, params, (H, W), vertices=verts,
                  faces=np.array([[0, 2, 1], [0, 3, 2]], np.int32))


def test_smoothing_treats_each_id_alone():
    from body4d_core.smoothing import smooth_bodies

    b = _bodies()
    joint = smooth_bodies(b)
    for oid in (HIGH, LOW):
        i = b.index_of(oid)
        solo_in = Bodies(b.obj_ids[i:i + 1], b.flags[i:i + 1], {k: v[i:i + 1] for k, v in b.params.items()},
                         (H, W), vertices=b.vertices[i:i + 1], faces=b.faces)
        solo = smooth_bodies(solo_in)
        np.testing.assert_allclose(joint.params["cam_t"][i], solo.params["cam_t"][0], atol=1e-5)
        np.testing.assert_array_equal(joint.flags[i], solo.flags[0])


def test_render_ids_sit_where_each_person_is():
    from body4d_core.data import Camera
    from body4d_core.render import render_bodies

    b = _bodies()
    cam = Camera.from_focal(80.0, (H, W), T, "manual")
    _, masks, ids = render_bodies(None, b, cam, mode="silhouette", return_ids=True)
    for t in range(T):
        here = set(np.unique(ids[t]).tolist()) - {0}
        want = {oid for oid in (HIGH, LOW) if b.present[b.index_of(oid), t]}
        assert here == want, f"frame {t}: ids {here}, present {want}"
    cols_high = np.flatnonzero((ids[3] == HIGH).any(0))
    cols_low = np.flatnonzero((ids[3] == LOW).any(0))
    assert cols_high.max() < W / 2 < cols_low.min()  # HIGH on the left (cam_t x < 0), LOW on the right


def test_mesh_and_glb_files_carry_the_ids(tmp_path):
    import pygltflib
    import trimesh

    from body4d_core import export

    b = _bodies()
    export.write_meshes(b, tmp_path / "m")
    frames_of = {p.name: sorted(int(f.stem) for f in p.glob("*.ply")) for p in (tmp_path / "m").iterdir()}
    assert frames_of == {f"person_{HIGH}": [3, 4, 5, 6, 7], f"person_{LOW}": [0, 1, 2, 3, 4]}
    for oid in (HIGH, LOW):  # each file holds that person's mesh: its size and translation
        mesh = trimesh.load(tmp_path / "m" / f"person_{oid}" / "00000004.ply", process=False)
        i = b.index_of(oid)
        want = (b.vertices[i, 4] + b.params["cam_t"][i, 4]) * np.array([1, -1, -1], np.float32)
        np.testing.assert_allclose(np.asarray(mesh.vertices), want, atol=1e-5)
    export.write_glb(b, tmp_path / "g", fps=10.0)
    names = sorted(p.name for p in (tmp_path / "g").glob("*.glb"))
    assert names == sorted([f"body4d_person_{HIGH}.glb", f"body4d_person_{LOW}.glb"])
    for oid, count in ((HIGH, 5), (LOW, 5)):
        g = pygltflib.GLTF2.load(str(tmp_path / "g" / f"body4d_person_{oid}.glb"))
        assert len(g.meshes) == count


def test_mhr_pose_slots_carry_the_ids():
    from body4d_core.data import Camera
    from body4d_core.interop.mhr_pose_data import from_mhr_pose, to_mhr_pose

    b = _bodies()
    pose = to_mhr_pose(b, Camera.default((H, W), T))
    for t, persons in enumerate(pose["frames"]):
        live = {p["obj_id"]: p for p in persons if not p.get("body4d_missing")}
        assert set(live) == {oid for oid in (HIGH, LOW) if b.present[b.index_of(oid), t]}
        for oid, p in live.items():
            np.testing.assert_array_equal(p["pred_cam_t"], b.params["cam_t"][b.index_of(oid), t])
    back, _ = from_mhr_pose(pose)
    for oid in (HIGH, LOW):
        np.testing.assert_array_equal(back.flags[back.index_of(oid)], b.flags[b.index_of(oid)])


def test_node_chain_keeps_ids(pack, frames):
    """Tracks -> SAM 3D Body Batch -> Kalman Smooth -> Render -> Export over the ComfyUI stand-in."""
    import folder_paths

    from body4d_core.sam3d_body import tiny_config
    from body4d_core.testing.body import random_model, save_official_layout

    glue = importlib.import_module(f"{pack.__name__}.nodes.comfy_glue")
    glue.register_model_folders()
    root = folder_paths.get_folder_paths("sam3d_body")[0]
    save_official_layout(random_model(tiny_config(), seed=3), f"{root}/q-ident")
    data = importlib.import_module(f"{pack.__name__}.body4d_core.data")
    body = importlib.import_module(f"{pack.__name__}.nodes.body")
    smooth = importlib.import_module(f"{pack.__name__}.nodes.smooth")
    export = importlib.import_module(f"{pack.__name__}.nodes.export")
    tr = _tracks((HIGH, LOW))
    tracks = data.Tracks(tr.obj_ids, tr.packed, tr.image_size, tr.scores)
    handle = body.LoadSAM3DBody.execute(checkpoint="q-ident").args[0]
    img = torch.from_numpy(frames).float() / 255.0
    bodies, pose = body.BodyBatch.execute(handle, img, tracks=tracks, mode="body").args
    for t, persons in enumerate(pose["frames"]):
        live = sorted(p["obj_id"] for p in persons if not p.get("body4d_missing"))
        assert live == sorted(o for o in (HIGH, LOW) if tracks.present[tracks.index_of(o), t])
    smoothed = smooth.KalmanSmooth.execute(bodies=bodies, max_gap=0).args[0]
    for oid in (HIGH, LOW):
        assert (smoothed.present[smoothed.index_of(oid)] == tracks.present[tracks.index_of(oid)]).all()
    rel = export.ExportMeshes.execute(smoothed, filename_prefix="q/ident").args[0]
    out = Path(folder_paths.get_output_directory()) / rel
    assert sorted(int(p.stem) for p in (out / f"person_{LOW}").glob("*.ply")) == [0, 1, 2, 3, 4]
    assert sorted(int(p.stem) for p in (out / f"person_{HIGH}").glob("*.ply")) == [3, 4, 5, 6, 7]
