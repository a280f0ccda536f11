"""One tiny headless run, then values that must hold whatever the (random) weights are.

Ids equal the prompt ids in every output, frame counts agree across every file, flags agree
between tracks, amodal results and bodies, the camera is exactly the one chosen (a manual FOV
on a non-square clip), 2D keypoints are the projection of the 3D ones through that camera,
the exported meshes and GLBs hold the bodies' own vertices, and the render's mesh pixels lie
where that person's vertices project.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import av
import numpy as np
import pytest

from body4d_core import export
from body4d_core.data import Amodal, Bodies, BodyFlag, Camera, Clip, Prompts, Tracks
from body4d_core.pipeline import PipelineOptions, run_pipeline
from body4d_core.testing.checkpoints import write_tiny_checkpoints
from body4d_core.video import LoadOptions, load_video

REPO = Path(__file__).resolve().parents[1]
T, H, W = 6, 64, 112
FOV = 47.0
HIGH, LOW = 8, 3  # HIGH prompted on an earlier frame than LOW, listed first


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("q_e2e")
    models = root / "models"
    write_tiny_checkpoints(models)
    frames, _ = load_video(REPO / "samples" / "cartoon_dancer_81f.mp4", LoadOptions(frame_load_cap=T, max_side=W))
    frames = np.ascontiguousarray(frames[:, 20:20 + H])  # a non-square clip
    video = export.write_mp4(root / "wide.mp4", frames, 10.0, (H, W))
    points = {"version": 1, "objects": [
        {"id": HIGH, "points": [{"frame": 1, "x": 30, "y": 35, "label": 1}]},
        {"id": LOW, "points": [{"frame": 4, "x": 85, "y": 20, "label": 1}, {"frame": 4, "x": 5, "y": 60, "label": 0}]},
    ]}
    opts = PipelineOptions(points_json=json.dumps(points), manual_fov=FOV, direction="both", body_mode="body",
                           amodal_settings={"steps": 1, "detection_resolution": (32, 56),
                                            "completion_resolution": (64, 112)},
                           models_root=models, batch_size=8, device="cpu")
    out = root / "out"
    summary = run_pipeline(video, out, opts)
    return summary, out


def test_ids_are_the_prompt_ids_everywhere(run):
    summary, out = run
    want = sorted([HIGH, LOW])
    assert sorted(summary.obj_ids) == want
    assert sorted({it.obj_id for it in Prompts.load_npz(out / "prompts.npz").items}) == want
    for name, cls in (("tracks", Tracks), ("amodal", Amodal), ("bodies_raw", Bodies), ("bodies", Bodies)):
        assert sorted(cls.load_npz(out / f"{name}.npz").obj_ids.tolist()) == want, name
    assert sorted(Bodies.load_npz(out / "params.npz").obj_ids.tolist()) == want
    assert sorted(p.name for p in (out / "meshes").iterdir()) == sorted(f"person_{i}" for i in want)
    assert sorted(p.name for p in (out / "glb").glob("*.glb")) == sorted(f"body4d_person_{i}.glb" for i in want)


def test_frame_counts_agree_across_files(run):
    summary, out = run
    clip = Clip.load_npz(out / "clip.npz")
    assert clip.num_frames == T == summary.num_frames and clip.image_size == (H, W)
    assert Tracks.load_npz(out / "tracks.npz").num_frames == T
    assert Amodal.load_npz(out / "amodal.npz").num_frames == T
    assert Camera.load_npz(out / "camera.npz").num_frames == T
    for name in ("bodies_raw", "bodies", "params"):
        b = Bodies.load_npz(out / f"{name}.npz")
        assert b.num_frames == T and b.image_size == (H, W), name
    for video in ("render_4d.mp4", "mask_overlay.mp4"):
        with av.open(str(out / video)) as c:
            decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        assert len(decoded) == T and decoded[0].shape == (H, W, 3), video


def test_camera_is_the_chosen_one(run):
    _, out = run
    cam = Camera.load_npz(out / "camera.npz")
    f = (H / 2) / math.tan(math.radians(FOV) / 2)
    assert cam.source == "manual"
    np.testing.assert_allclose(cam.intrinsics, np.tile([f, f, W / 2, H / 2], (T, 1)), rtol=1e-5)
    with np.load(out / "params_camera.npz") as z:  # the camera exported beside the params is the same one
        np.testing.assert_allclose(z["intrinsics"], cam.intrinsics)


def test_flags_follow_tracks_and_amodal(run):
    _, out = run
    tracks = Tracks.load_npz(out / "tracks.npz")
    amodal = Amodal.load_npz(out / "amodal.npz")
    raw = Bodies.load_npz(out / "bodies_raw.npz")
    smooth = Bodies.load_npz(out / "bodies.npz")
    for oid in (HIGH, LOW):
        ti, ai, ri, si = tracks.index_of(oid), amodal.index_of(oid), raw.index_of(oid), smooth.index_of(oid)
        occ = amodal.occluded[ai]
        vis = tracks.present[ti] & ~occ
        np.testing.assert_array_equal(raw.flags[ri] == BodyFlag.OCCLUDED, occ & raw.present[ri])
        np.testing.assert_array_equal(raw.flags[ri] == BodyFlag.VISIBLE, vis & raw.present[ri])
        assert not raw.present[ri][~(tracks.present[ti] | occ)].any()  # no body without a mask
        assert smooth.present[si][raw.present[ri]].all()  # the smoother keeps every observation
        observed = (smooth.flags[si] & (BodyFlag.VISIBLE | BodyFlag.OCCLUDED)) > 0
        np.testing.assert_array_equal(observed, raw.present[ri])


def test_keypoints_project_through_the_chosen_camera(run):
    _, out = run
    cam = Camera.load_npz(out / "camera.npz")
    for name in ("bodies_raw", "bodies"):
        b = Bodies.load_npz(out / f"{name}.npz")
        for i in range(b.num_objects):
            for t in np.flatnonzero(b.present[i]):
                p = b.keypoints_3d[i, t] + b.params["cam_t"][i, t]
                fx, fy, cx, cy = cam.intrinsics[t]
                uv = np.stack([fx * p[:, 0] / p[:, 2] + cx, fy * p[:, 1] / p[:, 2] + cy], -1)
                np.testing.assert_allclose(b.keypoints_2d[i, t], uv, rtol=1e-3, atol=1e-2, err_msg=f"{name} {i} {t}")


def test_exports_hold_the_smoothed_bodies(run):
    import trimesh

    _, out = run
    b = Bodies.load_npz(out / "bodies.npz")
    params = Bodies.load_npz(out / "params.npz")
    for k in b.params:
        np.testing.assert_array_equal(params.params[k], b.params[k])
    gl = np.array([1, -1, -1], np.float32)
    for oid in (HIGH, LOW):
        i = b.index_of(oid)
        files = sorted((out / "meshes" / f"person_{oid}").glob("*.ply"))
        assert [int(f.stem) for f in files] == np.flatnonzero(b.present[i]).tolist()
        t = int(files[-1].stem)
        mesh = trimesh.load(files[-1], process=False)
        np.testing.assert_allclose(mesh.vertices, (b.vertices[i, t] + b.params["cam_t"][i, t]) * gl, atol=1e-4)
        np.testing.assert_array_equal(mesh.faces, b.faces)
        scene = trimesh.load(out / "glb" / f"body4d_person_{oid}.glb", force="scene")
        assert len(scene.geometry) == int(b.present[i].sum())


def test_render_pixels_lie_where_the_person_projects(run):
    """Rendered mesh pixels (where the overlay differs from the frame) sit inside the projected vertices' box."""
    from body4d_core.render import render_bodies

    _, out = run
    b = Bodies.load_npz(out / "bodies.npz")
    cam = Camera.load_npz(out / "camera.npz")
    _, masks, ids = render_bodies(None, b, cam, mode="silhouette", return_ids=True)
    assert ids.shape == (T, H, W)
    for i, oid in enumerate(b.obj_ids.tolist()):
        for t in range(T):
            pix = np.argwhere(ids[t] == oid)
            if not b.present[i, t]:
                assert pix.size == 0
                continue
            p = b.vertices[i, t] + b.params["cam_t"][i, t]
            front = p[:, 2] > 1e-3
            if pix.size == 0 or not front.all():
                continue
            fx, fy, cx, cy = cam.intrinsics[t]
            u, v = fx * p[:, 0] / p[:, 2] + cx, fy * p[:, 1] / p[:, 2] + cy
            assert pix[:, 1].min() >= np.floor(u.min()) - 1 and pix[:, 1].max() <= np.ceil(u.max()) + 1
            assert pix[:, 0].min() >= np.floor(v.min()) - 1 and pix[:, 0].max() <= np.ceil(v.max()) + 1
