"""The world stage end to end on small synthetic clips: targets against baselines, outputs read back, faults."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest
import torch

from body4d_core.data import Bodies, Camera
from body4d_core.errors import InputError
from body4d_core.smoothing import smooth_bodies
from body4d_core.world import WorldOptions, world_stage
from body4d_core.world.metrics import floor_metrics, world_metrics
from body4d_core.world.smoother import WorldSmoothSettings
from body4d_core.testing.world import corrupt, make_scene, noisy_depth

T = 45


def _case(motion: str, camera: str, people: int = 1, seed: int = 0):
    sc = make_scene(motion, camera, people, frames=T, seed=seed, image_size=(120, 160), focal=150.0)
    bodies = corrupt(sc, seed=seed)
    cam = Camera.from_focal(150.0, sc.image_size, T, "manual")
    return sc, bodies, cam


def _held(bodies: Bodies) -> np.ndarray:
    j = bodies.keypoints_3d.astype(np.float64) + bodies.params["cam_t"][:, :, None]
    for i in range(j.shape[0]):
        for t in range(1, j.shape[1]):
            if bodies.flags[i, t] == 0:
                j[i, t] = j[i, t - 1]
    return j


def _to_world(j_c, res):
    return np.einsum("tij,ntkj->ntki", res.camera_rotations, j_c) + res.camera_positions[None, :, None]


@pytest.fixture(scope="module")
def walk():
    sc, bodies, cam = _case("walk", "static", people=3)
    res = world_stage(bodies, cam, sc.frames, sc.people_masks, noisy_depth(sc))
    return sc, bodies, cam, res


def test_walk_beats_baselines_and_keeps_feet_planted(walk):
    sc, bodies, _, res = walk
    assert res.camera_static and res.camera_source == "static"
    ours = world_metrics(res.joints, sc.joints, sc.contacts)
    raw = world_metrics(_to_world(_held(bodies), res), sc.joints, sc.contacts)
    cur = world_metrics(_to_world(_held(smooth_bodies(bodies)), res), sc.joints, sc.contacts)
    assert ours["skate"] <= cur["skate"] / 3
    assert ours["WA-MPJPE"] < min(raw["WA-MPJPE"], cur["WA-MPJPE"])
    assert ours["RTE%"] < min(raw["RTE%"], cur["RTE%"])
    fm = floor_metrics(res.floor.normal, res.floor.offset, sc.cam_R[0], sc.cam_c[0])
    assert fm["floor_deg"] < 2.0 and fm["floor_mm"] < 50 and res.floor.source == "depth"


def test_world_frame_convention(walk):
    sc, bodies, _, res = walk
    first = res.root[0, 0]
    assert abs(first[0]) < 1e-6 and abs(first[2]) < 1e-6  # origin under the first person's first position
    planted = res.joints[..., [15, 17, 18, 20], 1][res.contacts]
    assert abs(np.median(planted) - 0.02) < 0.03  # planted heel / toe keypoints sit on the floor (y = 0 + sole)
    assert np.allclose(res.camera_rotations[0] @ res.camera_rotations[0].T, np.eye(3), atol=1e-9)
    cam_height = res.camera_positions[0, 1]
    assert abs(cam_height - sc.cam_c[0, 1]) < 0.05
    assert np.array_equal(res.gravity, [0.0, -1.0, 0.0])


def test_pin_feet_option_is_used(walk):
    sc, bodies, cam, res = walk
    loose = world_stage(bodies, cam, None, None, noisy_depth(sc),
                        WorldOptions(smooth=WorldSmoothSettings(pin_feet=False)))
    a = world_metrics(res.joints, sc.joints, sc.contacts)["skate"]
    b = world_metrics(loose.joints, sc.joints, sc.contacts)["skate"]
    assert a < 0.6 * b


def test_save_reads_back(walk, tmp_path):
    _, bodies, _, res = walk
    files = res.save(tmp_path / "world")
    assert set(files) == {"world", "summary", "contacts", "bodies", "plot"}
    with np.load(files["world"]) as z:
        assert np.allclose(z["root"], res.root, atol=1e-5) and z["contacts"].dtype == bool
        assert z["camera_positions"].shape == (T, 3)
    summary = json.loads(files["summary"].read_text())
    assert summary["camera"]["static"] is True and summary["floor"]["source"] == "depth"
    rows = list(csv.DictReader(files["contacts"].open()))
    assert len(rows) == int(res.present.sum())
    r = rows[5]
    assert int(r["left_heel"]) == int(res.contacts[res.obj_ids.tolist().index(int(r["obj_id"])), int(r["frame"]), 0])
    wb = Bodies.load_npz(files["bodies"])
    keep = wb.present
    assert np.allclose(wb.params["cam_t"][keep], res.root[keep] * [1, -1, -1], atol=1e-5)  # WORLD_TO_BODIES
    img = cv2.imread(str(files["plot"]))
    assert img is not None and img.shape == (512, 512, 3) and img.std() > 5
    assert not list((tmp_path / "world").glob("*tmp*"))


def test_save_into_a_file_fails_cleanly(walk, tmp_path):
    from body4d_core.atomic import OutputWriteError

    blocker = tmp_path / "taken"
    blocker.write_text("x")
    with pytest.raises(OutputWriteError, match="taken"):
        walk[3].save(blocker / "world")
    assert blocker.read_text() == "x"


def test_moving_camera_clap_keeps_fast_hands():
    sc, bodies, cam = _case("clap", "handheld", seed=1)
    res = world_stage(bodies, cam, sc.frames, sc.people_masks, noisy_depth(sc, seed=1))
    assert not res.camera_static
    ours = world_metrics(res.joints, sc.joints, sc.contacts, hands=True)
    raw = world_metrics(_to_world(_held(bodies), res), sc.joints, sc.contacts, hands=True)
    assert ours["hands"] <= raw["hands"]
    assert ours["W-MPJPE"] < raw["W-MPJPE"]


def test_without_frames_or_depth_falls_back():
    sc, bodies, cam = _case("walk", "static", seed=2)
    res = world_stage(bodies, cam)
    assert res.camera_static and res.camera_source == "assumed_static" and res.floor.source == "feet"
    fm = floor_metrics(res.floor.normal, res.floor.offset, sc.cam_R[0], sc.cam_c[0])
    assert fm["floor_deg"] < 5.0 and fm["floor_mm"] < 150


def test_bad_inputs():
    sc, bodies, cam = _case("walk", "static", seed=3)
    with pytest.raises(InputError, match="keypoints"):
        world_stage(bodies.replace(keypoints_3d=None), cam)
    with pytest.raises(InputError, match="frames"):
        world_stage(bodies, cam, sc.frames[:10])
    with pytest.raises(InputError, match="camera_motion"):
        WorldOptions(camera_motion="sometimes")
    with pytest.raises(InputError, match="observed"):
        world_stage(bodies.replace(flags=np.zeros_like(bodies.flags)), cam)


def test_world_bodies_export_y_up_with_smoothed_meshes():
    sc, bodies, cam = _case("walk", "static", seed=5)
    pose = np.random.default_rng(0).normal(0, 0.1, bodies.params["body_pose"].shape).astype(np.float32)
    pose[~bodies.present] = 0.0
    with_mesh = bodies.replace(vertices=bodies.keypoints_3d.copy(), faces=np.array([[0, 1, 2]], np.int32),
                               params={**bodies.params, "body_pose": pose})
    smoothed = smooth_bodies(with_mesh)
    assert not np.allclose(smoothed.params["body_pose"], pose)
    res = world_stage(with_mesh, cam, mesh_bodies=smoothed)
    from body4d_core import export

    t = int(np.flatnonzero(res.bodies.present[0])[10])
    v = export.world_vertices(res.bodies, 0, t)  # what the mesh / GLB exporters write
    assert v[0, 1] - v[[15, 17, 18, 20], 1].min() > 1.2  # the nose is well above the feet: y up
    assert abs(v[[15, 17, 18, 20], 1].min()) < 0.12  # the feet are on the floor (y = 0)
    assert np.allclose(res.bodies.params["body_pose"], smoothed.params["body_pose"])  # meshes from mesh_bodies
    with pytest.raises(InputError, match="mesh bodies"):
        world_stage(with_mesh, cam, mesh_bodies=smooth_bodies(with_mesh).replace(
            obj_ids=with_mesh.obj_ids + 5))


class _DepthOracle(torch.nn.Module):
    """A MoGe-like model returning the scene's (noisy) depth of whichever frame it is shown."""

    def __init__(self, frames: np.ndarray, depth: np.ndarray) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.frames = torch.from_numpy(frames).float().permute(0, 3, 1, 2) / 255.0
        self.depth = torch.from_numpy(depth)
        self.seen: list[int] = []

    def infer(self, images, **_):
        idx = [int((self.frames - im[None]).abs().mean(dim=(1, 2, 3)).argmin()) for im in images]
        self.seen += idx
        return {"depth": self.depth[idx], "mask": torch.ones(len(idx), *self.depth.shape[1:], dtype=torch.bool)}


def test_ground_clip_one_call():
    from body4d_core.data import Tracks
    from body4d_core.world import ground_clip

    sc, bodies, cam = _case("walk", "dolly", seed=6)
    tracks = Tracks.from_masks([1], sc.people_masks[None])
    oracle = _DepthOracle(sc.frames, noisy_depth(sc, seed=6))
    res = ground_clip(sc.frames, tracks, cam, bodies, moge_model=oracle, depth_every=5)
    assert sorted(set(oracle.seen)) == list(range(0, T, 5))
    assert res.camera_source == "flow_depth" and res.floor.source == "depth"
    moved = np.linalg.norm(res.camera_positions[-1] - res.camera_positions[0])
    assert abs(moved - np.linalg.norm(sc.cam_c[-1] - sc.cam_c[0])) < 0.2
    bare = ground_clip(sc.frames, tracks, cam, bodies)  # no MoGe: rotation-only camera, floor from the feet
    assert bare.camera_source == "flow_rotation" and bare.floor.source == "feet"
