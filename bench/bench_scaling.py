"""Multi-GPU scaling (issue #23): one 5-person 720p clip split over 1 and N workers, and a batch on 1 and N.

One command on a host with several GPUs, real-size random weights in bf16 (written first when
``--models`` lacks them, body4d_core/testing/checkpoints.py preset "real"):

- clip1 / clipN: the EX-02-like clip of bench_pipeline (5 people x 90 frames, 1280x720, points +
  boxes on frame 0, amodal completion at ``--steps``) through ``run_batch(split=True)`` on 1
  worker and on N (its body, amodal and render stages shared by every worker); per-stage
  seconds from each run's summary row (run.json); the table gives both, the speed-up and the
  efficiency (speed-up / N); the two runs' bodies.npz / params.npz (max abs difference per array)
  and render_4d.mp4 (decoded frames) are compared.
- batch1 / batchN: ``--one_copies`` copies of the clip on 1 worker and ``--copies`` on N (their
  first ``--batch_frames`` frames at ``--batch_steps``, so both fit one 10-minute call): videos
  per hour and the N-worker figure as a % of N times the 1-worker one.

``--occlusion truth`` (default) replaces SAM-3's and the amodal-mask sampler's outputs by the
clip's known masks after they ran, as bench_pipeline does, inside every Ray worker process (a
Ray worker setup hook, ``install_truth``), so the amount of completion work matches a clip with
real occlusion. One pool of N workers is started (the 1-worker runs use its first worker) and
warmed up (``--warmup_frames`` frames of the clip at 1 step, one video per worker), so the timed
runs do not carry model loading. Stage seconds are
the pipeline's own (not CUDA-synchronised at the edges; each stage ends by copying its results
to the host).

Each part's results are kept in ``--work``/scaling.json, so the parts may run as separate
commands (a device call is limited to 10 minutes) and the last one prints the whole table,
writes the rows (bench/rows.py) and a markdown block for BENCHMARKS.md:

    python -m bench.bench_scaling --models /tmp/models --parts clip1 clipN      # ~8 min on 4 GPUs
    python -m bench.bench_scaling --models /tmp/models --parts batch1 batchN    # ~7 min; prints both halves
    python -m bench.bench_scaling --models /tmp/models                          # every part in one command
    python -m bench.bench_scaling --tiny --workers 2 --warmup_frames 0          # CPU smoke run (2 CPU workers)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from bench.rows import RowWriter, add_rows_args, command_line
from bench.scaling_report import (batch_lines, compare_lines, compare_runs, linear_pct, markdown, stage_rows,
                                  stage_table, target_lines)
from bench.timers import Stopwatch

log = logging.getLogger("bench_scaling")
PARTS = ("clip1", "clipN", "batch1", "batchN")
TRUTH_ENV = "BODY4D_BENCH_TRUTH"  # the truth-mask file the worker setup hook reads
STATE = "scaling.json"
CLIP_KEYS = ("tiny", "frames", "people", "size", "steps", "occlusion", "workers", "models", "warmup_frames",
             "batch_size")
BATCH_KEYS = ("copies", "one_copies", "batch_steps", "batch_frames")
_TRUTH: list[contextlib.ExitStack] = []  # the worker's installed patches (kept for the process's life)


# --------------------------------------------------------------------------- inside every Ray worker


def install_truth() -> None:
    """Ray worker setup hook: with TRUTH_ENV set, SAM-3's tracks and the amodal-mask sampler's masks are
    replaced (after they ran) by the clip's known masks, cut to the frames the run loaded."""
    path = os.environ.get(TRUTH_ENV)
    if not path or _TRUTH:
        return
    with np.load(path) as z:
        visible, amodal, width = z["visible"], z["amodal"], int(z["width"])
    _TRUTH.append(truth_stack(visible, amodal, width))


def truth_stack(visible: np.ndarray, amodal: np.ndarray, width: int) -> contextlib.ExitStack:
    """The patches of bench_pipeline's ``--occlusion truth`` (tracks cut to the run's frame count)."""
    import body4d_core.sam3 as sam3_pkg
    from bench.bench_pipeline import Record, TruthMasks
    from bench.patching import patched
    from body4d_core.amodal import models as amodal_models
    from body4d_core.data import Tracks

    real_propagate, real_load = sam3_pkg.propagate, amodal_models.load_amodal_models
    rec = Record()

    def propagate(*args: Any, **kwargs: Any) -> Tracks:
        tracks = real_propagate(*args, **kwargs)
        keep = [i - 1 for i in tracks.obj_ids.tolist()]
        return Tracks(tracks.obj_ids, np.ascontiguousarray(visible[keep][:, :tracks.num_frames]), tracks.image_size)

    def load_amodal_models(*args: Any, **kwargs: Any) -> Any:
        models = real_load(*args, **kwargs)
        models.mask = TruthMasks(models.mask, amodal, width, rec)
        return models

    stack = contextlib.ExitStack()
    stack.enter_context(patched(sam3_pkg, "propagate", propagate))
    stack.enter_context(patched(amodal_models, "load_amodal_models", load_amodal_models))
    return stack


# --------------------------------------------------------------------------- setup: checkpoints, clip, state


def pipeline_args(args: argparse.Namespace) -> argparse.Namespace:
    """bench_pipeline's settings for the clip (its defaults: 5 people, 90 frames, 720x1280, 25 steps)."""
    from bench.bench_pipeline import parse_args

    argv = ["--tiny"] if args.tiny else []
    for flag, value in (("--frames", args.frames), ("--people", args.people), ("--size", args.size),
                        ("--amodal-steps", args.steps)):
        if value:
            argv += [flag, str(value)]
    pipe = parse_args(argv + ["--occlusion", args.occlusion])
    pipe.batch_size = args.batch_size
    return pipe


def _write_checkpoints(root: str, tiny: bool) -> None:
    """bench_pipeline's checkpoint writer (reuses complete ones); a function of its own for a spawned process."""
    from bench.bench_pipeline import Record, ensure_checkpoints

    ensure_checkpoints(Path(root), argparse.Namespace(tiny=tiny, no_amodal=False), Record(), math.inf)


def ensure_models(root: Path, tiny: bool) -> None:
    """Write the checkpoints where missing; real ones in a child process, so this one never holds a GPU."""
    if tiny:
        _write_checkpoints(str(root), True)
        return
    import multiprocessing

    proc = multiprocessing.get_context("spawn").Process(target=_write_checkpoints, args=(str(root), False))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"writing the checkpoints under {root} failed (exit code {proc.exitcode})")


def ensure_clip(folder: Path, pipe: argparse.Namespace, fresh: bool) -> tuple[Path, dict]:
    """The clip's MP4, its truth masks (for the workers) and its prompts; made unless already there."""
    from bench.clips import make_clip, write_clip

    video, truth, prompts = folder / "clip.mp4", folder / "truth.npz", folder / "prompts.json"
    if fresh or not (video.is_file() and truth.is_file() and prompts.is_file()):
        folder.mkdir(parents=True, exist_ok=True)
        clip = make_clip(pipe.frames, pipe.people, pipe.height, pipe.width)
        write_clip(clip, video)
        np.savez(truth, visible=clip.visible, amodal=clip.amodal, width=np.int64(pipe.width))
        prompts.write_text(json.dumps(clip.prompts))
    return video, json.loads(prompts.read_text())


def load_state(path: Path, setting: dict, fresh: bool) -> tuple[dict, bool]:
    """Earlier parts' results where made with this setting, and whether the clip is to be made afresh.

    A change of the clip's keys drops everything (the clip is remade); of the batch's, the batch results only.
    """
    state: dict[str, Any] = {"setting": setting, "clip": {}, "batch": {}}
    if fresh or not path.is_file():
        return state, True
    old = json.loads(path.read_text())
    same = lambda keys: all(old.get("setting", {}).get(k) == setting.get(k) for k in keys)  # noqa: E731
    if not same(CLIP_KEYS):
        log.warning("%s holds results of another clip setting: starting afresh", path)
        return state, True
    state["clip"] = old.get("clip", {})
    if "compare" in old:
        state["compare"] = old["compare"]
    if same(BATCH_KEYS):
        state["batch"] = old.get("batch", {})
    return state, False


def save_state(path: Path, state: dict) -> None:
    from body4d_core.atomic import write_text_atomic

    write_text_atomic(path, json.dumps(state, indent=1))


# --------------------------------------------------------------------------- the timed runs


def options(pipe: argparse.Namespace, prompts: dict, models: Path, steps: int, frames: int = 0) -> Any:
    """bench_pipeline's pipeline options for the clip at ``steps`` amodal steps (``frames``: a frame cap)."""
    from bench.bench_pipeline import options as pipeline_options
    from body4d_core.video import LoadOptions

    opts = pipeline_options(pipe, SimpleNamespace(prompts=prompts), models)  # only the clip's prompts are read
    return dataclasses.replace(opts, video=LoadOptions(frame_load_cap=frames), batch_size=pipe.batch_size,
                               amodal_settings={**opts.amodal_settings, "steps": steps})


def copies(video: Path, folder: Path, count: int) -> list[Any]:
    """``count`` batch jobs, each a hard link (or copy) of the clip."""
    from bench.bench_batch import make_clips
    from body4d_core.batch.jobs import VideoJob

    shutil.rmtree(folder, ignore_errors=True)  # links of an earlier command's clip
    return [VideoJob(Path(p), Path(p).stem) for p in make_clips(video, folder, count)]


def timed_batch(pool: Any, jobs: list, opts: Any, out: Path, split: bool) -> tuple[list, float]:
    """run_batch into a fresh ``out``: its rows and wall seconds."""
    from body4d_core.batch.engine import run_batch

    shutil.rmtree(out, ignore_errors=True)
    with Stopwatch("cpu") as sw:  # "cpu": the GPUs are the workers'; nothing to synchronise in this process
        rows = run_batch(jobs, opts, out, pool=pool, split=split)
    return rows, sw.seconds


def warm_up(pool: Any, jobs: list, opts: Any, out: Path) -> float:
    """One short video per worker (not split), so every worker has loaded every model before the timing."""
    rows, seconds = timed_batch(pool, jobs[:pool.spec.count], opts, out, False)  # idle workers take one each
    for r in rows:
        if r.status != "done":
            log.warning("warm-up video %s failed: %s", r.name, r.error)
    shutil.rmtree(out, ignore_errors=True)
    log.info("warm-up of %d workers: %.1f s", pool.spec.count, seconds)
    return seconds


def shard_counts(actors: list[Any]) -> list[dict[str, int]]:
    """Each worker's body, amodal and render shard counts so far (VideoWorker.stats)."""
    import ray

    keys = ("shards", "amodal_shards", "render_shards")
    return [{k: int(s[k]) for k in keys} for s in ray.get([a.stats.remote() for a in actors])]


def clip_run(pool: Any, video: Path, opts: Any, out: Path) -> dict:
    """The clip split over the pool: its stage seconds (the summary row's), the shards each worker ran (how the
    stages were shared) and where its outputs are."""
    from body4d_core.batch.jobs import VideoJob

    before = shard_counts(pool.actors)
    (row,), wall = timed_batch(pool, [VideoJob(video, "clip")], opts, out, True)
    after = shard_counts(pool.actors)
    shards = {k: [b[k] - a[k] for a, b in zip(before, after)] for k in after[0]}
    return {"workers": pool.spec.count, "status": row.status, "error": row.error, "wall_s": round(wall, 3),
            "seconds": {k: round(float(v), 3) for k, v in row.seconds.items()}, "shards": shards,
            "out": str(out / "clip")}


def batch_run(pool: Any, jobs: list, opts: Any, out: Path) -> dict:
    """The copies over the pool, one video per worker at a time: seconds and videos per hour."""
    rows, wall = timed_batch(pool, jobs, opts, out, False)
    shutil.rmtree(out, ignore_errors=True)  # 8 videos' meshes and GLBs: gigabytes on a real run
    done = sum(r.status == "done" for r in rows)
    return {"workers": pool.spec.count, "videos": len(rows), "done": done, "batch_s": round(wall, 3),
            "videos_per_hour": round(3600 * done / wall, 2) if wall > 0 else 0.0,
            "failed": [r.error for r in rows if r.status != "done"]}


class PoolView:
    """The first ``count`` workers of a pool, as ``run_batch`` sees a pool (a lost worker is replaced in the pool)."""

    def __init__(self, pool: Any, count: int) -> None:
        self.pool, self.count = pool, count
        self.spec = dataclasses.replace(pool.spec, count=min(count, pool.spec.count))

    @property
    def actors(self) -> list[Any]:
        return self.pool.actors[:self.count]

    def replace(self, actor: Any) -> Any:
        return self.pool.replace(actor)


def run_parts(args: argparse.Namespace, n: int, ctx: dict, state: dict, save: Any) -> list[str]:
    """One pool of N workers, warmed up; each part of ``args.parts`` on its first worker ("1") or on all ("N").

    One pool for both counts: one start and one warm-up, and the 1-worker runs use a worker exactly like
    the N-worker runs' (the others stay idle meanwhile). Returns the parts measured.
    """
    from body4d_core.batch.engine import WorkerPool, plan_workers

    work, measured = ctx["work"], []
    pool = WorkerPool(plan_workers(n))
    try:
        if args.warmup_frames:
            warm_up(pool, ctx["jobs"], ctx["warm"], work / "warm")
        for part in PARTS:
            if part not in args.parts:
                continue
            kind, key = part[:-1], part[-1]
            view = PoolView(pool, 1 if key == "1" else pool.spec.count)
            if kind == "clip":
                state["clip"][key] = clip_run(view, ctx["video"], ctx["clip"], work / f"clip_{key}")
            else:
                jobs = ctx["jobs"][:args.one_copies if key == "1" else args.copies]
                state["batch"][key] = batch_run(view, jobs, ctx["batch"], work / f"batch_{key}")
            save()
            measured.append(part)
    finally:
        pool.shutdown()
    return measured


# --------------------------------------------------------------------------- report


def write_rows(args: argparse.Namespace, state: dict, n: int, measured: list[str]) -> None:
    """The measured parts' figures as rows, and the derived ones (speed-up, agreement, % of linear) once both
    sides of a pair are there."""
    out = RowWriter.from_args("bench_scaling", args)
    setting = {**state["setting"], "workers_n": n}
    clip, batch = state["clip"], state["batch"]
    for key in ("1", "N"):
        if f"clip{key}" in measured:
            r = clip[key]
            for stage, s in r["seconds"].items():
                out.add(f"1 clip split over {r['workers']} workers", f"{stage}_s", s, "s", status=r["status"],
                        **setting)
        if f"batch{key}" in measured:
            r = batch[key]
            case = f"batch of {r['videos']} on {r['workers']} workers"
            out.add(case, "batch_s", r["batch_s"], "s", done=r["done"], **setting)
            out.add(case, "videos_per_hour", r["videos_per_hour"], "videos/h", done=r["done"], **setting)
    if clip.get("1") and clip.get("N") and {"clip1", "clipN"} & set(measured):
        case = f"1 clip, 1 vs {clip['N']['workers']} workers"
        for r in stage_rows(clip["1"]["seconds"], clip["N"]["seconds"], clip["N"]["workers"]):
            if r["speed_up"] is not None:
                out.add(case, f"{r['stage']}_speed_up", round(r["speed_up"], 4), "x", **setting)
                out.add(case, f"{r['stage']}_efficiency", round(r["efficiency"], 4), "ratio", **setting)
        for name, c in state.get("compare", {}).items():
            if c.get("max_abs") is not None:
                out.add(case, f"{name.split('.')[0].replace('_4d', '')}_max_abs_diff", c["max_abs"], "abs", **setting)
    if batch.get("1") and batch.get("N") and {"batch1", "batchN"} & set(measured):
        pct = linear_pct(batch["1"]["videos_per_hour"], batch["N"]["videos_per_hour"], batch["N"]["workers"])
        out.add(f"batch, 1 vs {batch['N']['workers']} workers", "pct_of_linear", pct, "%", **setting)


def machine() -> str:
    """The cards (count x name) or CPU, and torch."""
    import torch

    cards = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else \
        f"CPU only ({os.cpu_count()} cores)"
    return f"{cards}, torch {torch.__version__}"


def report(args: argparse.Namespace, state: dict, n: int) -> None:
    """Print the stage table, the agreement, the batch table, the targets and the markdown block."""
    clip, batch = state["clip"], state["batch"]
    workers = (clip.get("N") or batch.get("N") or {}).get("workers", n)
    for key in ("1", "N"):
        r = clip.get(key)
        if r and r["status"] != "done":
            print(f"clip on {r['workers']} worker(s) failed: {r['error']}")
        elif r:
            print(f"clip on {r['workers']} worker(s): shards per worker: " +
                  ", ".join(f"{k} {v}" for k, v in r.get("shards", {}).items()))
    if clip.get("1") and clip.get("N"):
        print("\n".join(stage_table(stage_rows(clip["1"]["seconds"], clip["N"]["seconds"], workers), workers)))
        if "compare" in state:
            print("\n".join(compare_lines(state["compare"])))
    if batch:
        print("\n".join(batch_lines(batch.get("1"), batch.get("N"), workers)))
        for r in batch.values():
            for err in r["failed"][:3]:
                print(f"        failed: {err}")
    print("\n".join(target_lines(state, workers)))
    print("\n" + "\n".join(markdown(state, workers, machine(), command_line("bench_scaling", args.argv))))


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=0, help="N (default: every visible GPU, torch.cuda.device_count())")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="what to run in this command")
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "bench_scaling"),
                   help="the clip, the outputs and the results of earlier parts (scaling.json)")
    p.add_argument("--models", default="", help="checkpoint root, written where incomplete (default: WORK/models)")
    p.add_argument("--tiny", action="store_true", help="tiny checkpoints, a tiny clip at 2 steps (CPU smoke run)")
    p.add_argument("--frames", type=int, default=0, help="clip length (default 90; tiny 6)")
    p.add_argument("--people", type=int, default=0, help="people in the clip (default 5; tiny 2)")
    p.add_argument("--size", default="", help="HxW (default 720x1280; tiny 96x128)")
    p.add_argument("--steps", type=int, default=0, help="amodal steps of the single clip (default 25; tiny 2)")
    p.add_argument("--copies", type=int, default=8, help="batch videos on N workers")
    p.add_argument("--one_copies", type=int, default=4, help="batch videos on 1 worker (sequential: 4 give its rate)")
    p.add_argument("--batch_steps", type=int, default=0, help="amodal steps of the batch videos (default 4; tiny 2)")
    p.add_argument("--batch_frames", type=int, default=45, help="frames of the clip each batch video runs (0: all)")
    p.add_argument("--warmup_frames", type=int, default=16, help="frames of each worker's warm-up video (0: none)")
    p.add_argument("--occlusion", choices=("truth", "model"), default="truth")
    p.add_argument("--batch_size", type=int, default=64, help="SAM-3D-Body crops per batch (bench_pipeline's 64; "
                                                              "the body stage is split at whole batches)")
    p.add_argument("--object_store_mb", type=int, default=0, help="the local Ray's object store (0: Ray's default)")
    p.add_argument("--fresh", action="store_true", help="forget earlier parts' results and remake the clip")
    add_rows_args(p)
    args = p.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    args.batch_steps = args.batch_steps or (2 if args.tiny else 4)
    if min(args.copies, args.one_copies, args.batch_steps) < 1 or min(args.warmup_frames, args.batch_frames) < 0:
        p.error("need --copies, --one_copies, --batch_steps >= 1 and --warmup_frames, --batch_frames >= 0")
    return args


def worker_count(args: argparse.Namespace) -> int:
    """N: --workers, else every visible GPU (no GPU and no --workers: an error naming the option)."""
    if args.workers:
        return args.workers
    import torch

    n = torch.cuda.device_count()
    if n < 1:
        raise SystemExit("no GPU visible: pass --workers N (CPU workers)")
    return n


def main(argv: list[str] | None = None) -> int:
    """Run the requested parts, keep their results in --work, print the tables and write the rows."""
    from body4d_core.batch.engine import import_ray, init_ray

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    n, pipe = worker_count(args), pipeline_args(args)
    work = Path(args.work)
    models = Path(args.models) if args.models else work / "models"
    setting = {"tiny": args.tiny, "frames": pipe.frames, "people": pipe.people, "size": f"{pipe.height}x{pipe.width}",
               "steps": pipe.amodal_steps, "occlusion": args.occlusion, "batch_size": args.batch_size,
               "warmup_frames": args.warmup_frames, "workers": n, "models": str(models), "copies": args.copies,
               "one_copies": args.one_copies, "batch_steps": args.batch_steps, "batch_frames": args.batch_frames}
    state, fresh = load_state(work / STATE, setting, args.fresh)
    save = lambda: save_state(work / STATE, state)  # noqa: E731
    work.mkdir(parents=True, exist_ok=True)
    ensure_models(models, args.tiny)
    video, prompts = ensure_clip(work / "clip", pipe, fresh)
    ctx = {"work": work, "video": video, "jobs": copies(video, work / "in", max(args.copies, args.one_copies, n)),
           "clip": options(pipe, prompts, models, pipe.amodal_steps),
           "batch": options(pipe, prompts, models, args.batch_steps, args.batch_frames),
           "warm": options(pipe, prompts, models, 1, args.warmup_frames)}
    ray = import_ray()
    if ray.is_initialized():  # its workers would lack the setup hook and the truth masks
        raise SystemExit("Ray is already running in this process: run the bench in a process of its own")
    temp = tempfile.mkdtemp(prefix="b4dray")  # short: Ray's socket paths must stay under ~100 characters
    env = {TRUTH_ENV: str(work / "clip" / "truth.npz")} if args.occlusion == "truth" else {}
    init_ray(num_cpus=max(n, os.cpu_count() or 1), object_store_mb=args.object_store_mb,
             temp_dir=temp, setup_hook="bench.bench_scaling.install_truth",
             env=env)
    try:
        measured = run_parts(args, n, ctx, state, save)
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
    one, many = state["clip"].get("1"), state["clip"].get("N")
    if one and many and one["status"] == many["status"] == "done":
        state["compare"] = compare_runs(Path(one["out"]), Path(many["out"]))
        save()
    report(args, state, n)
    write_rows(args, state, n, measured)
    bad = [r for r in [*state["clip"].values(), *state["batch"].values()] if r.get("status", "done") != "done"
           or r.get("failed")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
