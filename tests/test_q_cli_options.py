"""Every flag of ``python -m body4d_core run`` reaches the pipeline, and the pipeline hands it to its stage.

A flag that is parsed but dropped on the way (``cmd_run`` building PipelineOptions, or a stage
function calling the library) passes every end-to-end test that only checks files; here each
flag is set to a non-default value and the value is looked for where the stage acts on it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from body4d_core import cli, pipeline, preflight, video
from body4d_core.data import Camera, Clip, Tracks

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "samples" / "cartoon_dancer_81f.mp4"
POINTS = json.dumps({"version": 1, "objects": [{"id": 2, "points": [{"frame": 0, "x": 5, "y": 6, "label": 1}]}]})


def _captured(monkeypatch, argv: list[str]) -> dict:
    """Run the CLI's ``run`` with run_pipeline replaced by a recorder; returns what it was called with."""
    seen: dict = {}

    def fake(video, out, opts, hooks_for=None, **kw):
        seen.update(video=str(video), out=str(out), opts=opts, **kw)
        return pipeline.RunSummary(Path(out))

    monkeypatch.setattr(pipeline, "run_pipeline", fake)
    # the checks before a run (weights, video, folder) have their own tests: here only the options matter
    monkeypatch.setattr(preflight, "run_preflight", lambda *a, **k: None)
    monkeypatch.setattr(video, "check_video_path", lambda *a, **k: None)
    assert cli.main(["run", *argv]) == 0
    return seen


def _config(tmp: Path) -> str:
    path = tmp / "cfg.yaml"
    path.write_text("smooth:\n  window: 7.5\n  occluded_noise: 9.0\namodal:\n  guidance: 2.25\n  seed: 5\n")
    return str(path)


# flag -> (argv, check(seen) that holds only when the flag reached the options)
def _cases(tmp: Path) -> dict:
    return {
        "input_video": (["-i", "clip.mp4"], lambda s: s["video"] == "clip.mp4"),
        "frame_load_cap": (["--frame_load_cap", "7"], lambda s: s["opts"].video.frame_load_cap == 7),
        "skip_first_frames": (["--skip_first_frames", "3"], lambda s: s["opts"].video.skip_first_frames == 3),
        "select_every_nth": (["--select_every_nth", "2"], lambda s: s["opts"].video.select_every_nth == 2),
        "force_rate": (["--force_rate", "12.5"], lambda s: s["opts"].video.force_rate == 12.5),
        "max_side": (["--max_side", "320"], lambda s: s["opts"].video.max_side == 320),
        "decoder": (["--decoder", "pyav"], lambda s: s["opts"].video.backend == "pyav"),
        "memory_budget_gb": (["--memory_budget_gb", "1.5"],
                             lambda s: s["opts"].video.memory_budget_bytes == int(1.5 * 2**30)),
        "out": (["-o", str(tmp / "o")], lambda s: s["out"] == str(tmp / "o")),
        "points": (["--points", POINTS], lambda s: s["opts"].points_json is not None
                   and json.loads(s["opts"].points_json)["objects"][0]["id"] == 2),
        "detect_frame": (["--detect_frame", "4"], lambda s: s["opts"].detect_frame == 4),
        "detect_threshold": (["--detect_threshold", "0.25"], lambda s: s["opts"].detect_threshold == 0.25),
        "max_people": (["--max_people", "3"], lambda s: s["opts"].max_people == 3),
        "direction": (["--direction", "backward"], lambda s: s["opts"].direction == "backward"),
        "no_amodal": (["--no_amodal"], lambda s: s["opts"].amodal is False),
        "amodal_steps": (["--amodal_steps", "3"], lambda s: s["opts"].amodal_settings["steps"] == 3),
        "amodal_resolution": (["--amodal_resolution", "64", "128"],
                              lambda s: tuple(s["opts"].amodal_settings["detection_resolution"]) == (64, 128)
                              and tuple(s["opts"].amodal_settings["completion_resolution"]) == (128, 256)),
        "fov": (["--fov", "all"], lambda s: s["opts"].fov_mode == "all"),
        "manual_fov": (["--manual_fov", "40"], lambda s: s["opts"].manual_fov == 40.0),
        "body_mode": (["--body_mode", "body"], lambda s: s["opts"].body_mode == "body"),
        "batch_size": (["--batch_size", "8"], lambda s: s["opts"].batch_size == 8),
        "no_compile": (["--no_compile"], lambda s: s["opts"].compile is False),
        "fp8": (["--fp8"], lambda s: s["opts"].fp8 is True),
        "no_smooth": (["--no_smooth"], lambda s: s["opts"].smooth is False),
        "smooth_mode": (["--smooth_mode", "causal"], lambda s: s["opts"].smooth_settings["mode"] == "causal"),
        "config": (["--config", _config(tmp)],
                   lambda s: s["opts"].smooth_settings["window"] == 7.5
                   and s["opts"].smooth_settings["occluded_noise"] == 9.0
                   and s["opts"].amodal_settings["guidance"] == 2.25 and s["opts"].amodal_settings["seed"] == 5),
        "render_mode": (["--render_mode", "normals"], lambda s: s["opts"].render_mode == "normals"),
        "no_meshes": (["--no_meshes"], lambda s: s["opts"].write_meshes is False),
        "no_glb": (["--no_glb"], lambda s: s["opts"].write_glb is False),
        "no_world": (["--no_world"], lambda s: s["opts"].world is False),
        "world_camera": (["--world_camera", "static"], lambda s: s["opts"].world_camera == "static"),
        "world_floor": (["--world_floor", "feet"], lambda s: s["opts"].world_floor == "feet"),
        "world_depth_every": (["--world_depth_every", "3"], lambda s: s["opts"].world_depth_every == 3),
        "no_anim": (["--no_anim"], lambda s: s["opts"].write_anim is False),
        "frames_in_ram": (["--frames_in_ram"], lambda s: s["opts"].frames_on_disk is False),
        "overwrite": (["--overwrite"], lambda s: s.get("overwrite") is True),
        "resume": (["--resume"], lambda s: s.get("resume") is True),
        "models_root": (["--models_root", str(tmp / "m")], lambda s: Path(s["opts"].models_root) == tmp / "m"),
        "device": (["--device", "cpu"], lambda s: s["opts"].device == "cpu"),
        "precision": (["--dtype", "bf16"], lambda s: s["opts"].dtype == "bf16"),  # --dtype: --precision's old name
        # the run profile's other flags (body4d_core/profile.py)
        "compile": (["--compile", "always"], lambda s: s["opts"].profile.compile_mode == "default"),
        "decoder_precision": (["--decoder_precision", "bf16"],
                              lambda s: str(s["opts"].profile.body_kwargs().get("decoder_dtype")) == "torch.bfloat16"),
        "backbone_fp8": (["--backbone_fp8"], lambda s: s["opts"].profile.body_kwargs().get("fp8") is True
                         and s["opts"].profile.decoder_precision == "fp32"),
        "attention": (["--compile", "max-autotune", "--attention", "math"],
                      lambda s: s["opts"].profile.attention == "math"),
        "crop_kernel": (["--crop_kernel", "grid_sample"],
                        lambda s: s["opts"].profile.body_kwargs().get("crop_kernel") == "grid_sample"),
        "sam3_speed": (["--sam3_speed", "reference"], lambda s: not s["opts"].profile.speed_options().batch_objects),
        "amodal_accel": (["--amodal_accel", "reference"],
                         lambda s: not s["opts"].profile.accel_config().cross_attn_shortcut),
        "loader": (["--loader", "legacy"], lambda s: s["opts"].profile.loader_kwargs() == {"fast": False}),
        "load_threads": (["--load_threads", "3"], lambda s: s["opts"].profile.load_threads == 3),
        "vram_gb": (["--vram_gb", "12"], lambda s: s["opts"].profile.vram_gb == 12.0),
        "offload": (["--offload", "never"], lambda s: s["opts"].profile.offload == "never"),
    }


def _run_dests() -> set[str]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    run = sub.choices["run"]
    return {a.dest for a in run._actions if a.dest not in ("help", "func")}


def test_every_run_flag_has_a_case(tmp_path):
    """A new flag of ``run`` without a case here fails: it would otherwise go unchecked."""
    assert _run_dests() == set(_cases(tmp_path))


@pytest.mark.parametrize("dest", sorted(_run_dests()))
def test_run_flag_reaches_the_options(dest, monkeypatch, tmp_path):
    argv, check = _cases(tmp_path)[dest]
    seen = _captured(monkeypatch, argv)
    assert check(seen), f"--{dest} did not reach the pipeline options"
    default = _captured(monkeypatch, [])  # the check must fail without the flag (it tests the flag, not a default)
    assert not check(default), f"the check of --{dest} also holds without the flag"


def test_config_flags_win_over_the_config(monkeypatch, tmp_path):
    seen = _captured(monkeypatch, ["--config", _config(tmp_path), "--smooth_mode", "causal", "--amodal_steps", "4"])
    assert seen["opts"].smooth_settings["mode"] == "causal" and seen["opts"].smooth_settings["window"] == 7.5
    assert seen["opts"].amodal_settings["steps"] == 4 and seen["opts"].amodal_settings["guidance"] == 2.25


def test_load_command_honours_cap_stride_and_format(tmp_path):
    assert cli.main(["load", "-i", str(SAMPLE), "-o", str(tmp_path), "--frame_load_cap", "3", "--select_every_nth",
                     "2", "--max_side", "96", "--image_format", "png"]) == 0
    imgs = sorted((tmp_path / "images").iterdir())
    assert [p.suffix for p in imgs] == [".png"] * 3
    clip = Clip.load_npz(tmp_path / "clip.npz")
    assert clip.num_frames == 3 and clip.frame_indices.tolist() == [0, 2, 4] and max(clip.image_size) == 96


# ----------------------------------------------------------------- stage functions pass the options on


class _Recorder:
    """A callable that records its keyword arguments and returns a fixed value."""

    def __init__(self, value=None):
        self.value, self.calls = value, []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self.value(*args, **kwargs) if callable(self.value) else self.value


def test_stage_prompts_passes_detection_options(monkeypatch):
    import body4d_core.sam3 as sam3
    import body4d_core.sam3.detect as detect

    monkeypatch.setattr(sam3, "load_sam3", _Recorder("bundle"))
    det = _Recorder("prompts")
    monkeypatch.setattr(detect, "detect_people", det)
    opts = pipeline.PipelineOptions(detect_frame=3, detect_threshold=0.2, max_people=4)
    clip = Clip(10.0, 5, (40, 60))
    pipeline.stage_prompts(np.zeros((5, 40, 60, 3), np.uint8), clip, opts, None)
    kw = det.calls[0][1]
    assert (kw["frame_index"], kw["score_threshold"], kw["max_people"]) == (3, 0.2, 4)


def test_stage_tracks_passes_direction(monkeypatch):
    import body4d_core.sam3 as sam3

    prop = _Recorder("tracks")
    monkeypatch.setattr(sam3, "propagate", prop)
    pipeline.stage_tracks("bundle", np.zeros((2, 8, 8, 3), np.uint8), "prompts",
                          pipeline.PipelineOptions(direction="backward"), None)
    assert prop.calls[0][1]["direction"] == "backward"


def test_stage_amodal_passes_every_setting(monkeypatch):
    import body4d_core.amodal.models as models
    import body4d_core.amodal.stage as stage

    monkeypatch.setattr(models, "load_amodal_models", _Recorder("models"))
    run = _Recorder(("amodal", "stats"))
    monkeypatch.setattr(stage, "run_amodal", run)
    settings = {"steps": 3, "guidance": 2.5, "seed": 9, "detection_resolution": (64, 128), "iou_final": 0.3}
    pipeline.stage_amodal(np.zeros((2, 8, 8, 3), np.uint8), "tracks", pipeline.PipelineOptions(
        amodal_settings=settings), None)
    occ, smp = run.calls[0][0][3], run.calls[0][0][4]
    assert (smp.steps, smp.guidance, smp.seed) == (3, 2.5, 9)
    assert occ.detection_resolution == (64, 128) and occ.iou_final == 0.3


@pytest.mark.parametrize("fp8", [False, True])
def test_stage_bodies_passes_mode_batch_and_fp8(monkeypatch, fp8):
    import torch

    import body4d_core.sam3d_body as sb

    class Model:
        faces = torch.zeros(1, 3, dtype=torch.int64)

        def compile_for(self, *a, **k):
            self.compiled = (a, k)

    model = Model()
    monkeypatch.setattr(sb, "load_sam3d_body", _Recorder(model))
    est = _Recorder([])
    monkeypatch.setattr(sb, "estimate_bodies", est)
    monkeypatch.setattr(sb, "bodies_from_results", _Recorder("bodies"))
    masks = np.zeros((1, 2, 8, 10), bool)
    masks[0, :, 2:6, 3:8] = True
    tracks = Tracks.from_masks([5], masks)
    opts = pipeline.PipelineOptions(body_mode="body", batch_size=7, fp8=fp8, compile=False)
    cam = Camera.default((8, 10), 2)
    pipeline.stage_bodies(np.zeros((2, 8, 10, 3), np.uint8), tracks, None, cam, opts, None)
    kw = est.calls[0][1]
    assert kw["mode"] == "body" and kw["batch_size"] == 7
    assert bool(kw.get("fp8", False)) is fp8
    assert (kw.get("decoder_dtype") == torch.bfloat16) is fp8
    assert model.compiled[0][0] == ""  # --no_compile: never compile


def test_stage_camera_source_priority(monkeypatch, tmp_path):
    """manual FOV wins; fov 'none' skips the model; otherwise the model's mode is passed on."""
    import body4d_core.fov as fov

    clip = Clip(10.0, 4, (48, 80))
    frames = np.zeros((4, 48, 80, 3), np.uint8)
    est = _Recorder(lambda model, frames, mode, hooks=None: Camera.from_focal(33.0, (48, 80), 4, "estimated"))
    monkeypatch.setattr(fov, "load_moge", _Recorder("moge"))
    monkeypatch.setattr(fov, "estimate_camera", est)
    cam = pipeline.stage_camera(frames, clip, pipeline.PipelineOptions(fov_mode="all"), None)
    assert cam.source == "estimated" and est.calls[-1][1]["mode"] == "all"
    cam = pipeline.stage_camera(frames, clip, pipeline.PipelineOptions(fov_mode="all", manual_fov=60.0), None)
    assert cam.source == "manual" and cam.fov_y_deg() == pytest.approx(60.0, abs=1e-3)
    n = len(est.calls)
    cam = pipeline.stage_camera(frames, clip, pipeline.PipelineOptions(fov_mode="none"), None)
    assert cam.source == "default" and len(est.calls) == n


def test_smooth_settings_reach_the_smoother(monkeypatch):
    import body4d_core.sam3d_body.refresh as refresh
    import body4d_core.smoothing as smoothing

    seen = _Recorder("smoothed")
    monkeypatch.setattr(smoothing, "smooth_bodies", seen)
    monkeypatch.setattr(refresh, "refresher", _Recorder(None))
    opts = pipeline.PipelineOptions(smooth_settings={"mode": "causal", "window": 6.0, "max_gap": 3})
    pipeline._smooth("bodies", opts, "model", "camera")
    s = seen.calls[0][0][1]
    assert (s.mode, s.window, s.max_gap) == ("causal", 6.0, 3)


def test_render_mode_and_export_switches_reach_the_writers(monkeypatch, tmp_path):
    import body4d_core.export as export
    import body4d_core.render as render

    rend = _Recorder(lambda frames, bodies, camera, mode, hooks=None: [np.zeros((8, 10, 3), np.uint8)] * 2)
    monkeypatch.setattr(render, "render_bodies", rend)
    calls = {}
    monkeypatch.setattr(export, "write_glb", lambda *a, **k: calls.setdefault("glb", a))
    monkeypatch.setattr(export, "save_params", lambda *a, **k: Path(calls.setdefault("params", a)[1]))
    monkeypatch.setattr(export, "write_meshes", lambda *a, **k: calls.setdefault("meshes", a))
    monkeypatch.setattr(export, "write_mp4", lambda path, *a, **k: Path(path).write_bytes(b"") and path)
    clip = Clip(10.0, 2, (8, 10))
    summary = pipeline.RunSummary(tmp_path)
    opts = pipeline.PipelineOptions(render_mode="depth", write_glb=False, write_meshes=False)
    pipeline._render_and_export(np.zeros((2, 8, 10, 3), np.uint8), clip, "bodies", "camera", opts, tmp_path,
                                summary, None)
    assert rend.calls[0][1]["mode"] == "depth"
    assert set(calls) == {"params"}
    calls.clear()
    pipeline._render_and_export(np.zeros((2, 8, 10, 3), np.uint8), clip, "bodies", "camera",
                                pipeline.PipelineOptions(), tmp_path, summary, None)
    assert set(calls) == {"params", "glb", "meshes"} and rend.calls[-1][1]["mode"] == "overlay"
