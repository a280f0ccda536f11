"""The run's disk plan (body4d_core/disk_plan.py): its parts follow the options, it bounds what a tiny run really
writes (store files per stage, outputs per kind) without being wildly larger, and a disk too small for the whole
run is refused before any stage runs, leaving the output folder as it was."""

from __future__ import annotations

import json
import shutil
import traceback
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest

from body4d_core import disk_plan as D
from body4d_core import pipeline
from body4d_core.errors import MemoryBudgetError
from body4d_core.frame_store import FrameStore
from body4d_core.video import LoadOptions

from .tiny_runs import SAMPLE

FRAMES = 8
POINTS = {"version": 1, "image_size": [350, 350],
          "objects": [{"id": 1, "points": [{"frame": 0, "x": 175, "y": 160, "label": 1}]},
                      {"id": 2, "points": [{"frame": 6, "x": 120, "y": 250, "label": 1}]}]}
AMODAL = {"detection_resolution": (64, 64), "completion_resolution": (64, 64), "steps": 1, "refine": False}


def _opts(models: Path | None = None, **kw) -> pipeline.PipelineOptions:
    base = dict(video=LoadOptions(frame_load_cap=FRAMES, max_side=64), points_json=json.dumps(POINTS),
                amodal=True, amodal_settings=dict(AMODAL), fov_mode="first", models_root=models, batch_size=4,
                world=True, write_anim=True, write_meshes=True, write_glb=True)
    base.update(kw)
    return pipeline.PipelineOptions(**base)


def _names(plan: D.DiskPlan) -> set[str]:
    return {p.name for p in plan.parts}


# ------------------------------------------------------------------ the plan itself


def test_parts_follow_the_options_and_the_clip():
    full = D.plan_disk(100, (360, 640), 2, _opts())
    assert {"decoded frames", "SAM-3 masks", "amodal detection (depth, masks)", "amodal completed frames (at most)",
            "smoothed bodies", "world stage (masks, depth, vertices)", "meshes (.ply)", "GLB files",
            "animation (anim/)", "amodal.npz", "world results"} <= _names(full)
    assert full.get("decoded frames") == D.blocks(100 * 360 * 640 * 3)
    assert full.get("SAM-3 masks") == D.blocks(2 * 100 * 360 * 80)
    assert full.total == full.store + full.outputs == sum(p.nbytes for p in full.parts)
    off = dict(amodal=False, smooth=False, world=False, write_meshes=False, write_glb=False, write_anim=False)
    for key, gone in [("amodal", {"amodal detection (depth, masks)", "amodal.npz"}), ("smooth", {"smoothed bodies"}),
                      ("world", {"world results", "world stage (masks, depth, vertices)"}),
                      ("write_meshes", {"meshes (.ply)"}), ("write_glb", {"GLB files"}),
                      ("write_anim", {"animation (anim/)"})]:
        less = D.plan_disk(100, (360, 640), 2, _opts(**{key: off[key]}))
        assert not gone & _names(less) and less.total < full.total, key
    # no meshes without the world stage: one copy (out/meshes) instead of two (out/world/meshes too)
    assert D.plan_disk(100, (360, 640), 2, _opts(world=False)).get("meshes (.ply)") * 2 == full.get("meshes (.ply)")
    # the world stage's MoGe-2 depth only where MoGe-2 runs and depth is asked
    world = "world stage (masks, depth, vertices)"
    assert D.plan_disk(100, (360, 640), 2, _opts(fov_mode="none")).get(world) < full.get(world)
    assert D.plan_disk(100, (360, 640), 2, _opts(world_depth_every=0)).get(world) < full.get(world)
    # the amodal detection pass grows with its resolution; refinement drops the per-person detection masks
    hi = dict(AMODAL, detection_resolution=(128, 256))
    det = "amodal detection (depth, masks)"
    assert D.plan_disk(100, (360, 640), 2, _opts(amodal_settings=hi)).get(det) > full.get(det)
    assert D.plan_disk(100, (360, 640), 2, _opts(amodal_settings=dict(AMODAL, refine=True))).get(det) < full.get(det)
    # frames, people and size scale it; frames in RAM leave only the outputs
    assert D.plan_disk(200, (360, 640), 2, _opts()).total > 1.9 * full.total
    assert D.plan_disk(100, (360, 640), 3, _opts()).total > full.total
    ram = D.plan_disk(100, (360, 640), 2, _opts(), store=False)
    assert ram.store == 0 and ram.outputs == full.outputs


def test_model_sizes_are_the_released_models():
    from body4d_core.amodal.depth import read_preprocessing
    from body4d_core.sam3d_body.config import Sam3dBodyConfig
    from body4d_core.sam3d_body.heads import NUM_FACE

    cfg, m = Sam3dBodyConfig(), D.ModelSizes()
    assert (m.verts, m.faces, m.joints, m.keypoints) == (cfg.num_verts, cfg.num_faces, cfg.num_joints,
                                                          cfg.num_keypoints)
    prep = read_preprocessing(Path("no_such_folder"))
    assert (m.depth_size, m.depth_multiple) == (prep["size"], prep["multiple"]) and D.EXPR_TARGETS == NUM_FACE


def test_people_from_the_points_or_max_people():
    assert D.count_people(_opts(), (64, 64), FRAMES) == 2
    assert D.count_people(_opts(points_json=None, max_people=7), (64, 64), FRAMES) == 7
    assert D.plan_for_run(SAMPLE, _opts(points_json="not json")) is None  # the sam3 stage says why
    assert D.plan_for_run(Path("no_such_video.mp4"), _opts()) is None  # the decode stage says why
    plan = D.plan_for_run(SAMPLE, _opts())
    assert plan is not None and plan.get("decoded frames") == D.blocks(FRAMES * 64 * 64 * 3)
    decoded = (np.zeros((7, 48, 48, 3), np.uint8), None)
    ram = D.plan_for_run(SAMPLE, _opts(), decoded)
    assert ram.store == 0 and ram.outputs == D.plan_disk(7, (48, 48), 2, _opts()).outputs


def test_refusal_names_the_biggest_parts_and_the_options():
    plan = D.plan_disk(9000, (1080, 1920), 2, _opts(models_root=None))
    big = plan.biggest(3)
    assert big[0].nbytes >= big[1].nbytes >= big[2].nbytes >= max(p.nbytes for p in plan.parts[3:]
                                                                    if p not in big)
    usage = namedtuple("usage", "total used free")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(shutil, "disk_usage", lambda p: usage(1 << 40, 0, plan.total - 1))
        with pytest.raises(MemoryBudgetError) as err:
            D.check_run_disk(".", plan)
        msg = str(err.value)
        assert "\n" not in msg and f"{plan.total / 2**30:.1f} GiB" in msg
        assert all(p.name in msg for p in big) and "--no_amodal" in msg and "--frame_load_cap" in msg
        D.check_run_disk(".", plan, reclaim=1)  # an earlier run's outputs it replaces count as free
        mp.setattr(shutil, "disk_usage", lambda p: usage(1 << 40, 0, plan.total))
        D.check_run_disk(".", plan)
    no_mesh = D.plan_disk(50, (360, 640), 5, _opts(amodal=False, world=False))
    assert no_mesh.biggest(1)[0].name == "meshes (.ply)"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(shutil, "disk_usage", lambda p: usage(1 << 40, 0, 1 << 20))
        with pytest.raises(MemoryBudgetError, match="--no_meshes"):
            D.check_run_disk(".", no_mesh)


# ------------------------------------------------------------------ against a tiny run


@pytest.fixture(scope="module")
def models(full_run_models):
    """Every model of a full run as tiny checkpoints (conftest's session root)."""
    return full_run_models


PACKAGES = {"sam3/": "SAM-3 masks", "sam3d_body/infer": "bodies (results, vertices)",
            "sam3d_body/writer": "bodies (results, vertices)",
            "sam3d_body/refresh": "smoothed bodies", "world": "world stage (masks, depth, vertices)",
            "amodal/": "amodal detection (depth, masks)"}


def _part_of(shape: tuple[int, ...], dtype: np.dtype) -> str:
    """The plan part a store allocation belongs to, by the stage module that asked for it."""
    for frame in reversed(traceback.extract_stack()):
        path = Path(frame.filename).as_posix()
        for key, part in PACKAGES.items():
            if f"body4d_core/{key}" in path:
                if part.startswith("amodal") and len(shape) == 4 and shape[-1] == 3 and dtype == np.uint8:
                    return "amodal completed frames (at most)"  # [K, H, W, 3] completed RGB
                return part
    return "elsewhere"


def _sizes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


OUTPUTS = {"stage results (.npz)": ["clip.npz", "prompts.npz", "tracks.npz", "camera.npz", "bodies_raw.npz",
                                    "bodies.npz", "params.npz", "params_camera.npz", "run.json"],
           "amodal.npz": ["amodal.npz"], "videos (render, mask overlay)": ["render_4d.mp4", "mask_overlay.mp4"],
           "meshes (.ply)": ["meshes", "world/meshes"], "GLB files": ["glb", "world/glb"],
           "animation (anim/)": ["anim"],
           "world results": ["world/world.npz", "world/world.json", "world/contacts.csv", "world/world_bodies.npz",
                             "world/trajectory.png", "world/params.npz"]}


def test_plan_bounds_what_a_tiny_run_writes(models, tmp_path, monkeypatch):
    """Every store part of the plan is >= what the stages allocated and the store's files < 3x the plan; every
    output kind is >= what the run wrote."""
    got: dict[str, int] = {}
    kept, seen = [], {}
    empty, keep, close = FrameStore.empty, FrameStore.keep, FrameStore.close

    def spy_empty(self, shape, dtype=np.uint8):
        arr = empty(self, shape, dtype)
        part = _part_of(tuple(shape), np.dtype(dtype))
        got[part] = got.get(part, 0) + D.blocks(arr.nbytes)
        return arr

    def spy_close(self):
        if self.dir.is_dir() and "files" not in seen:
            seen.update(files=_sizes(self.dir), frames=self.path.stat().st_size)
        close(self)

    monkeypatch.setattr(FrameStore, "empty", spy_empty)
    monkeypatch.setattr(FrameStore, "keep", lambda self, arr: kept.append(arr.nbytes) or keep(self, arr))
    monkeypatch.setattr(FrameStore, "close", spy_close)
    out = tmp_path / "run"
    summary = pipeline.run_pipeline(SAMPLE, out, _opts(models))
    assert summary.obj_ids == [1, 2] and not any(kept)
    raw = np.load(out / "bodies_raw.npz")
    sizes = D.ModelSizes(verts=raw["vertices"].shape[2], faces=raw["faces"].shape[0],
                         joints=raw["extra.joint_coords"].shape[2], keypoints=raw["keypoints_3d"].shape[2],
                         depth_size=_tiny_depth_size(models))
    plan = D.plan_disk(FRAMES, (64, 64), 2, _opts(models), models=sizes)
    assert set(got) <= _names(plan) and "elsewhere" not in got
    assert {"SAM-3 masks", "amodal detection (depth, masks)", "bodies (results, vertices)", "smoothed bodies",
            "world stage (masks, depth, vertices)"} <= set(got)  # every stage wrote into the store
    for part, nbytes in got.items():
        assert plan.get(part) >= nbytes, (part, plan.get(part), nbytes)
    assert seen["frames"] == FRAMES * 64 * 64 * 3 and plan.get("decoded frames") >= seen["frames"]
    assert seen["files"] <= plan.store < 3 * seen["files"]
    for part, rels in OUTPUTS.items():
        wrote = sum(_sizes(out / r) if (out / r).is_dir() else (out / r).stat().st_size
                    for r in rels if (out / r).exists())
        assert wrote > 0, part
        assert plan.get(part) >= wrote, part


def _tiny_depth_size(models: Path) -> int:
    from body4d_core.amodal.depth import read_preprocessing
    from body4d_core.weights import resolve_model_dir

    return read_preprocessing(resolve_model_dir("depth_anything", [models]))["size"]


# ------------------------------------------------------------------ the start-up check in a run


def test_a_disk_too_small_is_refused_before_any_stage(tmp_path, monkeypatch):
    """Nothing decoded, no model loaded, no run.json, no store: the folder holds what it held."""
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(1 << 40, 0, 4096))
    began = []
    monkeypatch.setattr(pipeline, "_run_stages", lambda *a, **k: began.append(1))
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("the user's file")
    with pytest.raises(MemoryBudgetError, match=r"this run needs about .* MiB in .* but its disk has 0\.0 MiB free"):
        pipeline.run_pipeline(SAMPLE, out, _opts())
    assert began == [] and sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(1 << 40, 0, 1 << 40))
    pipeline.run_pipeline(SAMPLE, out, _opts())  # the same run with room: the stages start
    assert began == [1]


def test_an_earlier_runs_outputs_count_as_free(tmp_path, monkeypatch):
    out = tmp_path / "out"
    (out / "meshes").mkdir(parents=True)
    plan = D.plan_for_run(SAMPLE, _opts(), completed=0)  # the start-up check refuses on the definite parts
    (out / "meshes" / "old.ply").write_bytes(b"\0" * 1000)
    (out / "render_4d.mp4").write_bytes(b"\0" * 24)
    (out / "mine.txt").write_bytes(b"\0" * 5000)  # not ours: not replaced, not counted
    assert D.existing_bytes(out) == 1024
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(1 << 40, 0, plan.total - 1000))
    pipeline.check_disk_plan(SAMPLE, out, _opts())
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(1 << 40, 0, plan.total - 1025))
    with pytest.raises(MemoryBudgetError):
        pipeline.check_disk_plan(SAMPLE, out, _opts())
