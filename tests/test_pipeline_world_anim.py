"""The headless run's world stage (out/world) and animation export (out/anim): on by default, listed in
run.json, read back with independent readers, and switched off by PipelineOptions world / write_anim."""

from __future__ import annotations

import csv
import io
import json
import logging

import numpy as np
import pytest

from body4d_core.data import Bodies
from body4d_core.pipeline import run_pipeline

from .tiny_runs import SAMPLE, small_options, tiny_models

ANIM_FILES = ("body4d_scene.glb", "body4d_all.bvh", "body4d_all_flags.csv", "body4d_anim.npz")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny_models(tmp_path_factory)


@pytest.fixture(scope="module")
def default_run(models, tmp_path_factory):
    """One tiny run with the defaults (world and animation on), its log records kept."""
    out = tmp_path_factory.mktemp("world_anim")
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(logging.WARNING)
    logging.getLogger("body4d_core").addHandler(handler)
    try:
        summary = run_pipeline(SAMPLE, out, small_options(models, anim_fidelity=False))
    finally:
        logging.getLogger("body4d_core").removeHandler(handler)
    return out, summary, records


def summary_models(out):
    """The models root the run recorded in run.json."""
    from pathlib import Path

    return Path(_manifest(out)["options"]["models_root"])


def _manifest(out) -> dict:
    return json.loads((out / "run.json").read_text())


def test_world_outputs_are_written_and_recorded(default_run):
    out, summary, _ = default_run
    world = out / "world"
    for name in ("world.npz", "world.json", "contacts.csv", "world_bodies.npz", "trajectory.png", "params.npz"):
        assert (world / name).is_file(), name
    data = _manifest(out)
    assert data["status"] == "complete"
    assert data["stages"]["world"]["files"] and "world" in data["stages"]["world"]["files"]
    recorded = {p for e in data["files"].values() for p in e["paths"]}
    for name in ("world.npz", "world.json", "contacts.csv", "world_bodies.npz", "params.npz"):
        assert f"world/{name}" in recorded, name
    assert any(p.startswith("world/glb/") and p.endswith(".glb") for p in recorded)
    assert not any(p.startswith("world/meshes/") for p in recorded) or (world / "meshes").is_dir()
    assert "world" in summary.timings


def test_world_bodies_load_back_in_the_world_frame(default_run):
    out, summary, _ = default_run
    wb = Bodies.load_npz(out / "world" / "world_bodies.npz")
    cam = Bodies.load_npz(out / "bodies.npz")
    assert wb.obj_ids.tolist() == cam.obj_ids.tolist() == summary.obj_ids
    assert wb.num_frames == cam.num_frames == 4
    # the world bodies are placed by the world stage: their roots are not the camera-space translations
    present = wb.present
    assert present.any()
    assert not np.allclose(wb.params["cam_t"][present], cam.params["cam_t"][present], atol=1e-3)
    summary_json = json.loads((out / "world" / "world.json").read_text())
    assert summary_json["obj_ids"] == summary.obj_ids and summary_json["floor"]["source"] in ("feet", "depth")
    with np.load(out / "world" / "world.npz") as z:
        rot = z["camera_rotations"]
        assert rot.shape == (4, 3, 3)
        assert np.allclose(np.einsum("tij,tkj->tik", rot, rot), np.eye(3), atol=1e-6)
    rows = list(csv.reader((out / "world" / "contacts.csv").open()))
    assert rows[0][:2] == ["frame", "obj_id"] and len(rows) > 1


def test_anim_outputs_or_a_logged_skip(default_run):
    """The skinned scene when the tiny rig is native MHR; otherwise a warning says why it was skipped."""
    out, summary, records = default_run
    anim = out / "anim"
    if not anim.is_dir():
        assert any("animation export skipped" in r.getMessage() for r in records)
        assert any("animation export skipped" in n for n in summary.notes)
        # justified only when the model's rig really cannot be skinned (the tiny scripted stand-in rig)
        from body4d_core.anim import supports_skinned_export
        from body4d_core.sam3d_body import load_sam3d_body

        assert not supports_skinned_export(load_sam3d_body(search_dirs=[summary_models(out)]).mhr)
        return
    for name in ANIM_FILES:
        assert (anim / name).is_file(), name
    for oid in summary.obj_ids:
        assert (anim / f"body4d_person_{oid}.bvh").is_file()
    recorded = {p for e in _manifest(out)["files"].values() for p in e["paths"]}
    assert all(f"anim/{n}" in recorded for n in ANIM_FILES)
    assert (anim / "body4d_all.bvh").read_text().startswith("HIERARCHY")
    with np.load(anim / "body4d_anim.npz") as z:
        assert z["obj_ids"].tolist() == summary.obj_ids
        assert z["joint_world"].shape[1] == 4
        assert "flag_contact_left_heel" in z.files  # the world frame's contacts reached the export
    from .test_glb_validator import validate

    report = validate([anim / "body4d_scene.glb"])[0]
    assert report["errors"] == 0, report


def test_no_world_and_no_anim_skip_them(models, tmp_path):
    summary = run_pipeline(SAMPLE, tmp_path, small_options(models, world=False, write_anim=False,
                                                          write_meshes=False))
    assert not (tmp_path / "world").exists() and not (tmp_path / "anim").exists()
    data = _manifest(tmp_path)
    assert data["status"] == "complete" and data["stages"]["world"]["files"] == []
    assert not any(k.startswith("world") or k == "anim" for k in summary.files)
    assert data["options"]["world"] is False and data["options"]["write_anim"] is False
    assert (tmp_path / "render_4d.mp4").is_file() and (tmp_path / "bodies.npz").is_file()


def test_world_options_reach_the_world_stage(models, tmp_path, monkeypatch):
    """--world_camera / --world_floor / --world_depth_every end up in ground_clip's arguments."""
    import body4d_core.world as world

    seen = {}
    real = world.ground_clip

    def spy(*a, **k):
        seen.update(k)
        return real(*a, **k)

    monkeypatch.setattr(world, "ground_clip", spy)
    run_pipeline(SAMPLE, tmp_path, small_options(models, world_camera="static", world_floor="feet",
                                                 world_depth_every=3, write_anim=False, write_meshes=False,
                                                 write_glb=False))
    assert seen["options"].camera_motion == "static" and seen["options"].floor == "feet"
    assert seen["depth_every"] == 3
    assert seen["moge_model"] is None  # fov none: no MoGe-2 for the depth either
    assert seen["mesh_bodies"] is not None
    with np.load(tmp_path / "world" / "world.npz") as z:
        assert np.allclose(z["camera_rotations"], z["camera_rotations"][:1])  # static: one camera pose


def test_anim_scene_with_a_native_rig_placed_in_the_world(models, tmp_path, monkeypatch):
    """With a native MHR rig (random, the tiny model's sizes) the run writes the skinned scene in the world frame."""
    from body4d_core import pipeline
    from body4d_core.sam3d_body.mhr_rig import MhrRig
    from body4d_core.testing.body import random_rig_tensors

    real_init = pipeline.AnimRig.__init__

    def native(self, model):
        real_init(self, model)
        cfg = model.cfg
        self.mhr = MhrRig(random_rig_tensors(cfg.num_verts, cfg.num_joints, seed=1)).eval()

    monkeypatch.setattr(pipeline.AnimRig, "__init__", native)
    summary = run_pipeline(SAMPLE, tmp_path, small_options(models, anim_fidelity=False, write_meshes=False,
                                                          write_glb=False))
    anim = tmp_path / "anim"
    for name in ANIM_FILES:
        assert (anim / name).is_file(), name
    assert (anim / f"body4d_person_{summary.obj_ids[0]}.bvh").read_text().startswith("HIERARCHY")
    recorded = {p for e in _manifest(tmp_path)["files"].values() for p in e["paths"]}
    assert all(f"anim/{n}" in recorded for n in ANIM_FILES)
    with np.load(anim / "body4d_anim.npz") as z:
        assert z["obj_ids"].tolist() == summary.obj_ids and z["joint_world"].shape[1] == 4
        contacts = np.load(tmp_path / "world" / "world.npz")["contacts"]
        assert np.array_equal(z["flag_contact_left_heel"], contacts[..., 0])  # world contacts reached it
    from .test_glb_validator import validate

    report = validate([anim / "body4d_scene.glb"])[0]
    assert report["errors"] == 0, report


def test_scene_world_from_a_world_result():
    """Camera poses, the y = 0 floor and per-foot contacts of a world result, as the animation export takes them."""
    from types import SimpleNamespace

    from body4d_core.anim.world_input import scene_world_from
    from body4d_core.errors import InputError

    t = 3
    angles = np.linspace(0.0, 0.4, t)
    rot = np.stack([[[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]] for a in angles])
    pos = np.stack([[0.5 * k, 1.6, -3.0] for k in range(t)])
    contacts = np.zeros((2, t, 4), bool)
    contacts[0, 0, 0] = True  # left heel
    contacts[1, 2, 3] = True  # right toe
    world = SimpleNamespace(camera_rotations=rot, camera_positions=pos, contacts=contacts,
                            root=np.zeros((2, t, 3)), present=np.ones((2, t), bool))
    scene = scene_world_from(world)
    assert np.allclose(scene.world_from_camera[:, :3, :3], rot) and np.allclose(scene.world_from_camera[:, :3, 3], pos)
    assert np.allclose(scene.floor.normal, [0, 1, 0]) and np.allclose(scene.floor.point, 0)
    assert scene.floor.size >= 2 * 3.0  # covers the camera 3 m away
    assert scene.contacts["left_heel"].tolist() == [[True, False, False], [False, False, False]]
    assert scene.contacts["right_toe"].tolist() == [[False, False, False], [False, False, True]]
    world.camera_rotations = rot * 2.0  # not a rotation: refused by SceneWorld
    with pytest.raises(InputError):
        scene_world_from(world)


def test_resume_runs_the_world_stage_again_and_overwrite_clears_it(models, tmp_path):
    """--resume reuses bodies and smoothing but grounds the world again; a run without the world stage
    over a folder that had one leaves no stale world/ file."""
    opts = small_options(models, write_anim=False, write_meshes=False, write_glb=False)
    run_pipeline(SAMPLE, tmp_path, opts)
    first = (tmp_path / "world" / "world.npz").read_bytes()
    summary = run_pipeline(SAMPLE, tmp_path, opts, resume=True)
    assert {"sam3", "camera", "bodies", "smooth"} <= set(summary.reused) and "world" not in summary.reused
    data = _manifest(tmp_path)
    assert data["status"] == "complete" and data["stages"]["world"]["reused"] is False
    with np.load(tmp_path / "world" / "world.npz") as a, np.load(io.BytesIO(first)) as b:
        assert np.allclose(a["root"], b["root"])  # same inputs, same world
    small = small_options(models, world=False, write_anim=False, write_meshes=False, write_glb=False)
    run_pipeline(SAMPLE, tmp_path, small, overwrite=True)
    assert not (tmp_path / "world").exists()
