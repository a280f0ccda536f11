"""Whole-pipeline benchmark: every stage of the headless run on one clip, real-size random weights.

Writes random-weight checkpoints in every model's official on-disk layout (body4d_core/tiny.py;
``--tiny``: the test sizes, default: the released sizes, large parameters in bf16), then runs
``body4d_core.pipeline.run_pipeline`` on a synthetic clip resembling upstream's resource
example EX-02 (5 people, 90 frames, 1280x720, people walking past each other and behind a
pole), prompted with points + boxes on frame 0 (so SAM-3 needs no person detection). Every
real loader and stage runs: SAM-3 tracking, amodal depth / masks / refinement / completion,
MoGe-2 FOV, SAM-3D-Body, smoothing, the world frame, render + exports (the animation export
included). Prints one markdown table: per-stage
seconds (RunSummary.timings, CUDA-synchronised), per-stage and overall peak GPU memory, the
checkpoint-writing time (separate, not in the total) and the counts the timings belong to.

Random weights produce meaningless masks and bodies. How much work follows the masks depends
on them: with ``--occlusion truth`` (default) SAM-3 and the amodal-mask sampler run for real
(their time counts) but their outputs are replaced by the clip's known visible / amodal masks,
so the amount of refinement, completion and body work matches a clip with real occlusion (as
bench/bench_amodal.py does); ``--occlusion model`` keeps the random networks' outputs (then
random masks decide how many frames are occluded, often none). Either way the table states the
counts (present person-frames, occluded frames, completed frames, body crops) the times
correspond to.

    python -m bench.bench_pipeline                             # H200: write real-size checkpoints + run (~6-7 min)
    python -m bench.bench_pipeline --models models/bench_real  # keep / reuse the written checkpoints
    python -m bench.bench_pipeline --amodal-steps 4            # quicker; the amodal row is then at 4 steps
    python -m bench.bench_pipeline --no-world                  # without the world stage (as before it existed)
    python -m bench.bench_pipeline --tiny                      # CPU smoke test (tiny checkpoints, tiny clip)
    python -m bench.bench_pipeline --warm                      # + a second run with the models kept loaded
    python -m bench.bench_pipeline --vram-cap 12               # a 12 GB card: cap simulated, batches/offload planned
    python -m bench.bench_pipeline --profile loader=legacy     # any run-profile field (body4d_core/profile.py)

``--warm``: after the first (cold) run, a second run in the same process reuses the loaded models
(``run_pipeline(models=...)``); a second table gives every stage's cold and warm seconds and peaks.
``--vram-cap GB``: the run profile's ``vram_gb`` (batch sizes and offloads from ``memory_plan``) and, on
CUDA, ``torch.cuda.set_per_process_memory_fraction`` so the allocator cannot use more; the table
then says what the plan chose and what was offloaded. Without CUDA the cap is ignored (a note says so).

Every stage's seconds and peak GPU memory, and the pipeline total, are also written as rows
(``bench/rows.py``: bench/results/bench_pipeline.jsonl, and ``--jsonl PATH``).

``--time-limit S`` (default 540 s real, 300 s tiny, counted from the start of the script) stops
the pipeline at the next interrupt check once passed and still prints the table of what ran;
a watchdog prints it and exits if a stage does not reach an interrupt check within 40 s more.
"""

from __future__ import annotations

import time

_T0 = time.perf_counter()  # the time limit counts from here (before the heavy imports)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import datetime  # noqa: E402
import faulthandler  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.clips import SyntheticClip, make_clip, write_clip  # noqa: E402
from bench.patching import patched  # noqa: E402
from bench.peak_memory import gpu_peak_gib  # noqa: E402
from bench.rows import RowWriter, add_rows_args  # noqa: E402
from bench.timers import sync  # noqa: E402
from body4d_core import pipeline as pl  # noqa: E402
from body4d_core.data import Amodal, Bodies, BodyFlag, Tracks, unpack_masks  # noqa: E402
from body4d_core.errors import Body4DError  # noqa: E402
from body4d_core.profile import RunProfile  # noqa: E402
from body4d_core.runtime import CallbackHooks  # noqa: E402
from body4d_core.video import LoadOptions  # noqa: E402

log = logging.getLogger("bench_pipeline")
STAGES = ("decode", "sam3", "amodal", "camera", "bodies", "smooth", "world", "render")
HARD_GRACE_S = 40.0


class TimeLimitReached(BaseException):
    """Raised from the hooks' interrupt check once the time limit has passed (BaseException: never swallowed)."""


# --------------------------------------------------------------------------- recording stage times


@dataclass
class Record:
    """What the run did so far: per-stage seconds and peak GiB, amodal details, replacement overhead."""

    seconds: dict[str, float] = field(default_factory=dict)
    peak_gib: dict[str, float] = field(default_factory=dict)
    running: str = ""  # the stage in progress (or the one that was stopped)
    partial_s: float = 0.0  # seconds the stopped stage ran
    amodal_parts: dict[str, float] = field(default_factory=dict)
    completed_frames: int | None = None
    truth_s: float = 0.0
    write_s: dict[str, float] = field(default_factory=dict)
    pipeline_s: float | None = None
    write_wait_s: float | None = None  # run_pipeline's final wait for its background writes (fifth session on)
    import_s: float | None = None  # the model libraries, imported before the clock (see import_model_libraries)
    stopped: str = ""
    after_runs: list[dict[str, float]] = field(default_factory=list)  # --repeat: memory held after each run
    warm_seconds: dict[str, float] = field(default_factory=dict)  # --warm: the second run, models kept loaded
    warm_peak_gib: dict[str, float] = field(default_factory=dict)
    warm_pipeline_s: float | None = None
    plan: str = ""  # the memory plan the run used (--vram-cap)
    bodies_batch: int = 64  # SAM-3D-Body batch the run used (a memory cap may lower it)
    kept_models: list[str] = field(default_factory=list)  # --warm: the models the second run found loaded
    parts: dict[str, float] = field(default_factory=dict)  # world stage parts and background writes (last run)
    warm_parts: dict[str, float] = field(default_factory=dict)  # the same of the --warm run
    offloaded: list[str] = field(default_factory=list)  # what left the GPU between uses (plan + released models)
    notes: list[str] = field(default_factory=list)


def import_model_libraries() -> float:
    """Import the libraries the loaders import lazily (transformers' model classes, diffusers, MoGe) and
    return the seconds it took. Done before the pipeline clock in every run, so its stages do not
    carry the imports in one run (checkpoints reused) and not in another (checkpoints written first)."""
    t0 = time.perf_counter()
    import diffusers  # noqa: F401
    from transformers import (CLIPVisionModelWithProjection, DepthAnythingForDepthEstimation,  # noqa: F401
                              Sam3TrackerVideoModel)

    try:
        import moge.model.v2  # noqa: F401
    except ImportError:
        pass
    return time.perf_counter() - t0


def stage_timer(rec: Record) -> type:
    """pipeline._Timer that synchronises CUDA at both ends and also records into rec (partial runs too)."""

    class StageTimer(pl._Timer):
        def __enter__(self) -> None:
            sync()
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            rec.running = self.name
            super().__enter__()

        def __exit__(self, *exc: object) -> None:
            sync()
            super().__exit__(*exc)
            rec.peak_gib[self.name] = gpu_peak_gib()
            if exc[0] is not None:  # stopped (time limit) or failed: keep the name, time it apart
                rec.partial_s = self.summary.timings[self.name]
                return
            rec.seconds[self.name] = self.summary.timings[self.name]
            rec.running = ""

    return StageTimer


def amodal_recorder(rec: Record, run_amodal: Any) -> Any:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        amodal, stats = run_amodal(*args, **kwargs)
        rec.amodal_parts = dict(stats.timings)
        rec.completed_frames = int(stats.completed_frames)
        return amodal, stats
    return wrapped


class TruthMasks:
    """Wraps the amodal-mask sampler: runs it for real, then returns the clip's known amodal masks."""

    def __init__(self, sampler: Any, amodal: np.ndarray, width: int, rec: Record) -> None:
        self.sampler, self.amodal, self.width, self.rec = sampler, amodal, width, rec

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sampler, name)

    def run_jobs(self, jobs: Any, sampler: Any, hooks: Any = None, budget_px: int = 1 << 20, **low: Any
                 ) -> list[torch.Tensor]:
        """``low``: the memory plan's low-memory keywords (memory, device), passed on."""
        import torch.nn.functional as F

        out = self.sampler.run_jobs(jobs, sampler, hooks, budget_px, **low) if hooks is not None else \
            self.sampler.run_jobs(jobs, sampler, budget_px=budget_px, **low)
        t0 = time.perf_counter()
        res = []
        for job, pred in zip(jobs, out):
            m = unpack_masks(self.amodal[int(job.obj_id) - 1, np.asarray(job.frames)], self.width)
            m = torch.from_numpy(m)[:, None].float()
            m = (F.interpolate(m, size=tuple(job.cond_a.shape[-2:]), mode="area") > 0).float()  # covers the
            res.append(m.expand(-1, 3, -1, -1).to(pred.dtype))  # visible mask after resizing back (no erosion)
        self.rec.truth_s += time.perf_counter() - t0
        return res


def truth_patches(stack: contextlib.ExitStack, clip: SyntheticClip, rec: Record) -> None:
    """Replace SAM-3's and the amodal-mask sampler's outputs (after they ran) by the clip's known masks."""
    import body4d_core.sam3 as sam3_pkg
    from body4d_core.amodal import models as amodal_models

    real_propagate, real_load = sam3_pkg.propagate, amodal_models.load_amodal_models
    width = clip.size[1]

    def propagate(*args: Any, **kwargs: Any) -> Tracks:
        tracks = real_propagate(*args, **kwargs)
        t0 = time.perf_counter()
        keep = [i - 1 for i in tracks.obj_ids.tolist()]
        out = Tracks(tracks.obj_ids, clip.visible[keep], tracks.image_size)
        rec.truth_s += time.perf_counter() - t0
        return out

    def load_amodal_models(*args: Any, **kwargs: Any) -> Any:
        models = real_load(*args, **kwargs)
        models.mask = TruthMasks(models.mask, clip.amodal, width, rec)
        return models

    stack.enter_context(patched(sam3_pkg, "propagate", propagate))
    stack.enter_context(patched(amodal_models, "load_amodal_models", load_amodal_models))


# --------------------------------------------------------------------------- counts and the table


def counts(out: Path) -> dict[str, Any]:
    """Present person-frames, occluded / completed frames and body crops, read from the saved npz files."""
    c: dict[str, Any] = {}
    if (out / "tracks.npz").is_file():
        tr = Tracks.load_npz(out / "tracks.npz")
        c["people"], c["frames"] = tr.num_objects, tr.num_frames
        c["present"] = int(tr.present.sum())
    if (out / "amodal.npz").is_file():
        am = Amodal.load_npz(out / "amodal.npz")
        c["occluded"] = int(am.occluded.sum())
        c["completed"] = 0 if am.completed_index is None else int(len(am.completed_index))
    if (out / "bodies_raw.npz").is_file():
        b = Bodies.load_npz(out / "bodies_raw.npz")
        c["crops_visible"] = int(((b.flags & BodyFlag.VISIBLE) > 0).sum())
        c["crops_occluded"] = int(((b.flags & BodyFlag.OCCLUDED) > 0).sum())
    return c


def machine_line() -> str:
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU only"
    cuda = f", CUDA {torch.version.cuda}" if torch.cuda.is_available() else ""
    return (f"{dev}; torch {torch.__version__}{cuda}; python {platform.python_version()}; "
            f"{os.cpu_count()} CPU cores; {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")


def _fmt(v: float | None, digits: int = 2) -> str:
    return "–" if v is None or v != v else f"{v:.{digits}f}"


def stage_notes(args: argparse.Namespace, rec: Record, c: dict[str, Any]) -> dict[str, str]:
    n = f"{c.get('people', args.people)} people x {c.get('frames', args.frames)} frames"
    parts = ", ".join(f"{k} {v:.1f} s" for k, v in rec.amodal_parts.items())
    crops = c.get("crops_visible", 0) + c.get("crops_occluded", 0)
    return {
        "decode": f"{args.frames} frames {args.height}x{args.width} (H.264)",
        "sam3": f"{n}, points + boxes on frame 0; {c.get('present', '?')} present person-frames",
        "amodal": (f"**{args.amodal_steps} steps**, {'x'.join(map(str, args.amodal_res[0]))} / "
                   f"{'x'.join(map(str, args.amodal_res[1]))}; {c.get('occluded', '?')} occluded person-frames, "
                   f"{c.get('completed', '?')} completed; {parts}" if not args.no_amodal else "off (--no-amodal)"),
        "camera": "MoGe-2 ViT-L, fov_mode first" if not args.tiny else "tiny MoGe-2, fov_mode first",
        "bodies": (f"{crops} body crops ({c.get('crops_visible', '?')} visible, {c.get('crops_occluded', '?')} "
                   f"occluded), mode {args.body_mode}, batch {rec.bodies_batch}, "
                   f"compile {'auto' if torch.cuda.is_available() and not args.no_compile else 'off'}"
                   f"{', FP8' if args.fp8 else ''}"),
        "smooth": "Kalman/RTS per person + rig refresh",
        "world": ("floor, camera motion, contacts, world-frame bodies (MoGe-2 depth every 10th frame)"
                  if not args.no_world else "off (--no-world)"),
        "render": "overlay render + MP4 (params, PLY meshes, GLBs, animation scene + BVH: background writes "
                  "meanwhile)",
    }


def table(args: argparse.Namespace, rec: Record, c: dict[str, Any]) -> str:
    notes = stage_notes(args, rec, c)
    lines = ["", f"## Whole pipeline ({'tiny checkpoints' if args.tiny else 'real-size random weights'}, "
             f"occlusion {args.occlusion})", "", "| stage | seconds | peak GPU GiB | what |",
             "| --- | ---: | ---: | --- |"]
    for s in STAGES:
        if s in rec.seconds:
            lines.append(f"| {s} | {rec.seconds[s]:.2f} | {_fmt(rec.peak_gib.get(s))} | {notes[s]} |")
        elif rec.stopped and s == rec.running:
            lines.append(f"| {s} | stopped after {rec.partial_s:.2f} | {_fmt(rec.peak_gib.get(s))} | {notes[s]} |")
        elif s == "amodal" and args.no_amodal:
            lines.append("| amodal | – | – | off (--no-amodal) |")
        elif s == "world" and args.no_world:
            lines.append("| world | – | – | off (--no-world) |")
    timed = sum(rec.seconds.values())
    start = rec.parts.get("world_start")
    if start is not None:  # the world stage's depth, run before the bodies stage (pipeline.WORLD_EARLY)
        lines.append(f"| world_start (before bodies) | {start:.2f} | – | the world stage's MoGe-2 depth; its camera "
                     f"motion then runs on a thread during the bodies stage |")
        timed += start
    if rec.pipeline_s is not None:
        if rec.write_wait_s is None:  # run_pipeline before the fifth session: every write on the main thread
            lines.append(f"| untimed (npz saves, mask overlay video) | {rec.pipeline_s - timed:.2f} | – | |")
        else:
            lines.append(f"| untimed (host work between stages + final write wait) | {rec.pipeline_s - timed:.2f} "
                         f"| – | npz files, mask video, params, meshes, GLB written in the background; "
                         f"{rec.write_wait_s:.2f} s waiting for them at the end |")
        peak = max([v for v in rec.peak_gib.values() if v == v] or [float("nan")])
        lines.append(f"| **pipeline total** | **{rec.pipeline_s:.2f}** | **{_fmt(peak)}** | run_pipeline wall time |")
    if rec.import_s is not None:
        lines.append(f"| library imports (not in the total) | {rec.import_s:.2f} | – | transformers, diffusers, MoGe: "
                     f"imported before the clock |")
    total_w = sum(rec.write_s.values())
    what = ", ".join(f"{k} {v:.1f}" for k, v in rec.write_s.items()) or "reused --models"
    lines.append(f"| checkpoint writing (not in the total) | {total_w:.2f} | – | {what} |")
    lines += ["", f"Machine: {machine_line()}.",
              f"Counts: {json.dumps(c)}; " + (f"truth-mask replacement overhead {rec.truth_s:.2f} s (inside sam3/amodal)."
                                              if args.occlusion == "truth" else "masks as the random networks gave them."),
              f"Script wall time {time.perf_counter() - _T0:.1f} s.",
              "Random weights: masks, completions and bodies are meaningless; only time and memory count."]
    if args.vram_cap:
        released = [o for o in rec.offloaded if o.startswith("released ")]
        lines.append(f"Memory cap: {args.vram_cap:g} GB ({cap_how(args)}); {rec.plan or 'no plan (the run did not start)'}"
                     + (f"; between stages: {', '.join(released)}" if released else "") + ".")
    lines += [f"Note: {n}" for n in rec.notes]
    lines += parts_lines("cold run" if rec.warm_seconds else "run", rec.parts)
    if rec.warm_seconds:
        lines += warm_table(rec)
        lines += parts_lines("warm run", rec.warm_parts)
    if rec.stopped:
        lines.append(f"STOPPED: {rec.stopped}")
    return "\n".join(lines)


def cap_how(args: argparse.Namespace) -> str:
    return ("simulated with torch.cuda.set_per_process_memory_fraction" if torch.cuda.is_available()
            else "ignored: no CUDA device")


def warm_table(rec: Record) -> list[str]:
    """--warm: every stage's cold and warm seconds and peaks side by side."""
    lines = ["", "## Cold and warm (models kept loaded) runs", "",
             f"Models kept loaded for the warm run: {', '.join(rec.kept_models) or 'none'}.", "",
             "| stage | cold s | warm s | cold peak GiB | warm peak GiB |", "| --- | ---: | ---: | ---: | ---: |"]
    for s in STAGES:
        if s in rec.seconds or s in rec.warm_seconds:
            lines.append(f"| {s} | {_fmt(rec.seconds.get(s))} | {_fmt(rec.warm_seconds.get(s))} | "
                         f"{_fmt(rec.peak_gib.get(s))} | {_fmt(rec.warm_peak_gib.get(s))} |")
    lines.append(f"| **pipeline total** | **{_fmt(rec.pipeline_s)}** | **{_fmt(rec.warm_pipeline_s)}** | | |")
    return lines


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny checkpoints and a tiny clip (CPU smoke test)")
    ap.add_argument("--frames", type=int, default=None, help="clip length (default 90; tiny 6)")
    ap.add_argument("--people", type=int, default=None, help="people in the clip (default 5; tiny 2)")
    ap.add_argument("--size", default=None, help="HxW (default 720x1280; tiny 96x128)")
    ap.add_argument("--no-amodal", action="store_true", help="skip the amodal stage")
    ap.add_argument("--no-world", action="store_true", help="skip the world stage (floor, camera motion, contacts)")
    ap.add_argument("--amodal-steps", type=int, default=None, help="sampler steps (default 25; tiny 2)")
    ap.add_argument("--amodal-res", default="", help="detection and completion resolutions 'HxW,HxW' "
                                                     "(default upstream's 256x512,512x1024; tiny 64x64,64x64)")
    ap.add_argument("--occlusion", choices=("truth", "model"), default="truth",
                    help="truth: replace SAM-3 / amodal-mask outputs by the clip's known masks after they ran")
    ap.add_argument("--body-mode", choices=("body", "full"), default="full")
    ap.add_argument("--fp8", action="store_true", help="opt-in FP8 SAM-3D-Body backbone + bf16 decoders")
    ap.add_argument("--no-compile", action="store_true", help="eager SAM-3D-Body (compile is the default on CUDA)")
    ap.add_argument("--models", default="", help="checkpoint root: reused where complete, written otherwise "
                                                 "(default: a temporary folder, deleted afterwards)")
    ap.add_argument("--out", default="", help="keep the pipeline outputs here (default: temporary)")
    ap.add_argument("--time-limit", type=float, default=None, help="seconds from start (default 540; tiny 300)")
    ap.add_argument("--json", default="", help="also write the figures (stage seconds, peaks, counts) to this file")
    ap.add_argument("--verbose", action="store_true", help="INFO logs of every module")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run the pipeline N times in this process and report the memory held after each run "
                         "(CUDA allocated/reserved, RSS): it must not grow from the second run on")
    ap.add_argument("--warm", action="store_true",
                    help="then run again in this process with the models kept loaded; report cold and warm per stage")
    ap.add_argument("--vram-cap", type=float, default=0.0, metavar="GB",
                    help="GPU memory cap in GB: the run profile's vram_gb, enforced on CUDA with "
                         "torch.cuda.set_per_process_memory_fraction (ignored without CUDA)")
    ap.add_argument("--world-late", action="store_true",
                    help="solve the world stage's depth and camera motion inside that stage, not before / during the "
                         "bodies stage (pipeline.WORLD_EARLY off: the before figure of that overlap)")
    ap.add_argument("--world-before-render", action="store_true",
                    help="run the world stage before the render, not on a thread beside it (pipeline.WORLD_BESIDE_RENDER "
                         "off: the before figure of that overlap; with it on, the two stages' seconds overlap)")
    ap.add_argument("--sam3-no-graphs", action="store_true",
                    help="SAM-3 without CUDA graphs (its speed option cuda_graphs off: the before figure of that "
                         "speed-up; nothing else changes)")
    ap.add_argument("--profile", action="append", default=[], metavar="FIELD=VALUE",
                    help="a run-profile field (body4d_core/profile.py), e.g. loader=legacy (repeatable)")
    add_rows_args(ap)
    args = ap.parse_args(argv)
    if args.vram_cap < 0:
        ap.error(f"--vram-cap must be >= 0 GB, got {args.vram_cap:g}")
    try:
        args.run_profile = run_profile(args)
    except (ValueError, Body4DError) as err:
        ap.error(str(err))
    tiny = args.tiny
    args.frames = args.frames or (6 if tiny else 90)
    args.people = args.people or (2 if tiny else 5)
    size = args.size or ("96x128" if tiny else "720x1280")
    try:
        args.height, args.width = (int(v) for v in size.lower().split("x"))
    except ValueError:
        ap.error(f"--size must be HxW, e.g. 720x1280, got {size!r}")
    args.amodal_steps = args.amodal_steps or (2 if tiny else 25)
    res = args.amodal_res or ("64x64,64x64" if tiny else "256x512,512x1024")
    try:
        args.amodal_res = [tuple(int(v) for v in r.lower().split("x")) for r in res.split(",")]
        assert len(args.amodal_res) == 2 and all(len(r) == 2 for r in args.amodal_res)
    except (ValueError, AssertionError):
        ap.error(f"--amodal-res must be two HxW sizes, e.g. 256x512,512x1024, got {res!r}")
    args.time_limit = args.time_limit or (300.0 if tiny else 540.0)
    if args.frames < 2 or args.people < 1 or args.height < 32 or args.width < 32 or args.amodal_steps < 1:
        ap.error("need --frames >= 2, --people >= 1, --size >= 32x32 and --amodal-steps >= 1")
    return args


def no_sam3_graphs(speed_options: Any) -> Any:
    """``RunProfile.speed_options`` with SAM-3's CUDA graphs off (``--sam3-no-graphs``)."""
    from dataclasses import replace

    return lambda self: replace(speed_options(self), cuda_graphs=False)


def run_profile(args: argparse.Namespace) -> RunProfile:
    """The run profile from --profile FIELD=VALUE, --no-compile, --fp8 and --vram-cap."""
    values: dict[str, Any] = {}
    for item in args.profile:
        if "=" not in item:
            raise ValueError(f"--profile takes FIELD=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        values[key.strip()] = value.strip()
    if args.no_compile:
        values["compile"] = "off"
    if args.fp8:
        values.update(backbone_fp8=True, decoder_precision="bf16")
    if args.vram_cap:
        values["vram_gb"] = args.vram_cap
    return RunProfile.from_dict(values)


def options(args: argparse.Namespace, clip: SyntheticClip, models: Path) -> pl.PipelineOptions:
    amodal = {"steps": args.amodal_steps, "detection_resolution": args.amodal_res[0],
              "completion_resolution": args.amodal_res[1]}
    profile = getattr(args, "run_profile", None) or run_profile(args)
    return pl.PipelineOptions(video=LoadOptions(), points_json=json.dumps(clip.prompts), amodal=not args.no_amodal,
                              amodal_settings=amodal, body_mode=args.body_mode, batch_size=64,
                              world=not args.no_world, models_root=models, profile=profile)


def apply_cap(args: argparse.Namespace, rec: Record) -> None:
    """--vram-cap on CUDA: the caching allocator may use at most that many GB of the device."""
    if not args.vram_cap:
        return
    from body4d_core.runtime import prefer_expandable_segments

    prefer_expandable_segments()  # as the headless command does under --vram_gb
    if not torch.cuda.is_available():
        rec.notes.append(f"--vram-cap {args.vram_cap:g} ignored: no CUDA device (the run uses the CPU)")
        return
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, args.vram_cap * 1e9 / total))


def note_parts(summary: Any) -> dict[str, float]:
    """The world stage's parts (world_*, world_start: its depth before the bodies stage) and each background
    write's seconds (write_*) of one run."""
    parts = dict(getattr(summary, "parts", {}) or {})
    if "world_start" in summary.timings:
        parts["world_start"] = summary.timings["world_start"]
    return parts


def parts_lines(title: str, parts: dict[str, float]) -> list[str]:
    """Two lines: the world stage's parts and the background writes, in seconds."""
    world = {k[6:]: v for k, v in parts.items() if k.startswith("world_")}
    writes = {k[6:]: v for k, v in parts.items() if k.startswith("write_")}
    if not world and not writes:
        return []
    order = ["start", "depth", "people", "people_background", "camera_motion_background", "camera_motion", "floor",
             "smooth", "contacts", "bodies", "plot"]
    keys = [k for k in order if k in world] + sorted(k for k in world if k not in order)
    return ["", f"{title}: world stage parts (s): " + (", ".join(f"{k} {world[k]:.3f}" for k in keys) or "none")
            + " (start = depth before the bodies stage; *_background ran on a thread during the bodies stage; "
              "camera_motion = the stage's wait for it)",
            f"{title}: background writes (s, on {pl.WRITE_WORKERS} writer threads): "
            + (", ".join(f"{k} {v:.2f}" for k, v in sorted(writes.items(), key=lambda kv: -kv[1])) or "none")]


def note_memory(rec: Record, summary: Any) -> None:
    """What the memory plan chose and what was offloaded, from the run's summary."""
    plan = getattr(summary, "memory", None)
    if plan is not None:
        rec.plan, rec.bodies_batch = plan.describe(), plan.bodies_batch
        rec.offloaded = list(dict.fromkeys([*plan.offloaded(), *(f"released {n}" for n in summary.released)]))
    rec.notes += [n for n in summary.notes if n not in rec.notes]


def ensure_checkpoints(root: Path, args: argparse.Namespace, rec: Record, deadline: float) -> None:
    """Write every model's checkpoint under root unless a complete one is there already."""
    from body4d_core.errors import Body4DError
    from body4d_core.testing.checkpoints import target_dir, write_checkpoints
    from body4d_core.weights import MODEL_SPECS, verify

    preset = "tiny" if args.tiny else "real"
    marker = root / ".bench_preset"  # written by this script: never reuse tiny checkpoints for a real run
    other = marker.is_file() and marker.read_text().strip() != preset
    names = []
    for name, spec in MODEL_SPECS.items():
        if args.no_amodal and name.startswith(("diffusion_vas", "depth")):
            continue
        try:
            if other:
                raise Body4DError(f"{root} holds checkpoints of another preset")
            verify(name, target_dir(root, spec))
        except Body4DError:
            names.append(name)
    if not names:
        log.info("reusing the checkpoints in %s", root)
        return
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    dtype = None if args.tiny else torch.bfloat16

    def written(name: str, seconds: float) -> None:
        rec.write_s[name] = seconds
        log.info("wrote %s in %.1f s", name, seconds)
        if time.perf_counter() > deadline:
            raise TimeLimitReached(f"time limit reached while writing checkpoints (after {name})")

    root.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    write_checkpoints(root, names, seed=0, preset=preset, device=device, weight_dtype=dtype, on_written=written)
    marker.write_text(preset)


def start_watchdog(args: argparse.Namespace, rec: Record, holder: dict) -> threading.Timer:
    """Print the table and exit if the run is still going HARD_GRACE_S after the time limit."""
    def fire() -> None:
        rec.stopped = f"{rec.running or 'setup'} (watchdog: no interrupt check within {HARD_GRACE_S:.0f} s of the limit)"
        try:
            c = counts(holder["out"]) if holder.get("out") else {}
        except Exception as err:  # noqa: BLE001 - files may be half written
            c = {"unreadable": str(err)[:100]}
        print(table(args, rec, c), flush=True)
        faulthandler.dump_traceback(all_threads=True)
        os._exit(3)

    timer = threading.Timer(max(args.time_limit + HARD_GRACE_S - (time.perf_counter() - _T0), 1.0), fire)
    timer.daemon = True
    timer.start()
    return timer


def memory_after_run() -> dict[str, float]:
    """MiB still held once a run returned and garbage was collected: CUDA allocated and reserved, process RSS."""
    import gc
    import resource

    gc.collect()
    out = {"rss_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    with contextlib.suppress(OSError, ValueError, IndexError):
        out["rss_mib"] = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        out["cuda_allocated_mib"] = torch.cuda.memory_allocated() / 2**20
        out["cuda_reserved_mib"] = torch.cuda.memory_reserved() / 2**20
    return out


def repeat_lines(rec: Record) -> list[str]:
    """One line per run of --repeat with the memory it left behind."""
    return [f"after run {i + 1}: " + ", ".join(f"{k} {v:.1f}" for k, v in m.items())
            for i, m in enumerate(rec.after_runs)]


def warm_run(rec: Record, run: Any) -> Any:
    """The second run (models kept loaded): its stage times go to rec.warm_*, the cold run's stay."""
    cold = rec.seconds, rec.peak_gib
    rec.seconds, rec.peak_gib = {}, {}
    try:
        t0 = time.perf_counter()
        summary = run()
        rec.warm_pipeline_s = time.perf_counter() - t0
        rec.warm_parts = note_parts(summary)
        note_memory(rec, summary)
        return summary
    finally:
        rec.warm_seconds, rec.warm_peak_gib = rec.seconds, rec.peak_gib
        rec.seconds, rec.peak_gib = cold


def write_rows(args: argparse.Namespace, rec: Record, c: dict[str, Any]) -> None:
    """The table's figures as rows: seconds and peak GPU GiB per finished stage, the pipeline total."""
    w = RowWriter.from_args("bench_pipeline", args)
    case = (f"{args.frames}f {args.height}x{args.width}, {args.people} people, "
            f"{'tiny' if args.tiny else 'real-size'} random weights, occlusion {args.occlusion}")
    extra = {"amodal": not args.no_amodal, "amodal_steps": args.amodal_steps, "world": not args.no_world,
             "body_mode": args.body_mode, "fp8": args.fp8, "compile": not args.no_compile, "counts": c,
             "profile": args.run_profile.to_dict(), "vram_cap_gb": args.vram_cap, "plan": rec.plan,
             "offloaded": rec.offloaded}
    for s in STAGES:
        if s in rec.seconds:
            w.add(case, f"{s}_seconds", rec.seconds[s], "s", **extra)
            w.add(case, f"{s}_peak_gpu", rec.peak_gib.get(s, float("nan")), "GiB", **extra)
    if rec.pipeline_s is not None and not rec.stopped:
        w.add(case, "pipeline_seconds", rec.pipeline_s, "s", write_wait_s=rec.write_wait_s, **extra)
        peak = max([v for v in rec.peak_gib.values() if v == v] or [float("nan")])
        w.add(case, "pipeline_peak_gpu", peak, "GiB", **extra)
    for s in STAGES:
        if s in rec.warm_seconds:
            w.add(case, f"{s}_warm_seconds", rec.warm_seconds[s], "s", **extra)
            w.add(case, f"{s}_warm_peak_gpu", rec.warm_peak_gib.get(s, float("nan")), "GiB", **extra)
    if rec.warm_pipeline_s is not None and not rec.stopped:
        w.add(case, "pipeline_warm_seconds", rec.warm_pipeline_s, "s", **extra)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for name in ("bench_pipeline", "body4d_core.pipeline"):
        logging.getLogger(name).setLevel(logging.INFO)
    deadline = _T0 + args.time_limit
    rec, holder = Record(), {}
    watchdog = start_watchdog(args, rec, holder)
    tmp = Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    models = Path(args.models) if args.models else tmp / "models"
    out = Path(args.out) if args.out else tmp / "out"
    holder["out"] = out

    def check() -> None:
        if time.perf_counter() > deadline:
            raise TimeLimitReached(f"time limit {args.time_limit:.0f} s reached")

    try:
        ensure_checkpoints(models, args, rec, deadline)
        rec.import_s = import_model_libraries()
        t0 = time.perf_counter()
        clip = make_clip(args.frames, args.people, args.height, args.width)
        video = write_clip(clip, tmp / "clip.mp4")
        log.info("clip %d frames %dx%d, %d people written in %.1f s", args.frames, args.height, args.width,
                 args.people, time.perf_counter() - t0)
        with contextlib.ExitStack() as stack:
            stack.enter_context(patched(pl, "_Timer", stage_timer(rec)))
            if args.world_late:
                stack.enter_context(patched(pl, "WORLD_EARLY", False))
            if args.world_before_render:
                stack.enter_context(patched(pl, "WORLD_BESIDE_RENDER", False))
            if args.sam3_no_graphs:
                stack.enter_context(patched(RunProfile, "speed_options", no_sam3_graphs(RunProfile.speed_options)))
            import body4d_core.amodal.stage as amodal_stage

            stack.enter_context(patched(amodal_stage, "run_amodal", amodal_recorder(rec, amodal_stage.run_amodal)))
            if args.occlusion == "truth":
                truth_patches(stack, clip, rec)
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            apply_cap(args, rec)
            cache: pl.ModelCache | None = {} if args.warm else None  # --warm: the models stay loaded
            for _ in range(max(1, args.repeat)):
                t0 = time.perf_counter()
                summary = pl.run_pipeline(video, out, options(args, clip, models),
                                          hooks_for=lambda name: CallbackHooks(on_check=check), overwrite=True,
                                          models=cache)
                rec.pipeline_s = time.perf_counter() - t0
                rec.write_wait_s = summary.timings.get("write_wait")
                rec.parts = note_parts(summary)
                note_memory(rec, summary)
                if args.repeat > 1:
                    rec.after_runs.append(memory_after_run())
                    log.info(repeat_lines(rec)[-1])
            if args.warm:
                rec.kept_models = sorted({str(k[0]) for k in cache})
                summary = warm_run(rec, lambda: pl.run_pipeline(
                    video, out, options(args, clip, models), hooks_for=lambda name: CallbackHooks(on_check=check),
                    overwrite=True, models=cache))
                cache.clear()
        for n in summary.notes:
            log.warning("pipeline note: %s", n)
    except TimeLimitReached as stop:
        rec.stopped = f"{rec.running or 'setup'} ({stop})"
    except Exception as err:  # noqa: BLE001 - still print the table of what ran, then the traceback
        import traceback

        traceback.print_exc()
        rec.stopped = f"{rec.running or 'setup'} failed: {type(err).__name__}: {str(err)[:300]}"
    finally:
        watchdog.cancel()
    c = counts(out)
    print(table(args, rec, c), flush=True)
    write_rows(args, rec, c)
    for line in repeat_lines(rec):
        print(line, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": {k: v for k, v in vars(args).items()}, "record": asdict(rec),
                                               "counts": c, "machine": machine_line()}, indent=1, default=str))
    shutil.rmtree(tmp, ignore_errors=True)  # holds the models / outputs only when --models / --out were not given
    return (1 if "time limit" in rec.stopped else 2) if rec.stopped else 0


if __name__ == "__main__":
    sys.exit(main())
