"""Batch benchmark: N copies of a clip through the batch command on 1..all GPUs (Ray workers), or one GPU's throughput.

For each worker count, a fresh output root, the workers started (timed apart), then the batch
timed end to end: videos per hour and the speed-up over one worker. ``--split`` also times one
clip with its body and amodal stages and its overlay render split over all workers; ``render_s``
is the render stage's seconds per video (the render and the exports beside it), to set the split
render against one worker's. Without real weights, ``--tiny``
writes tiny random checkpoints first (the scheduling then dominates; meaningful only with real
weights). Every printed figure is also written as a JSON row (bench/rows.py).

``--throughput`` needs no Ray: ``--clips`` copies of the clip back to back in this process
through one batch worker (models loaded once, kept in its cache), then the same clips as
separate ``python -m body4d_core run`` processes (models loaded by each). One table: seconds
per clip, total, and model-load seconds (measured in the worker; for the processes, startup
and loading together, derived as a clip's wall time minus the worker's mean time for a clip
whose models were already loaded). The in-process run goes first, so it alone reads the
weights from a cold disk cache (the comparison favours the separate processes).

    python -m bench.bench_batch --copies 8 --workers 1 2 4 8 --frames 90 --max_side 720 [--models DIR]
    python -m bench.bench_batch --throughput --models DIR --clips 3 --frames 90 --max_side 720
    python -m bench.bench_batch --tiny --copies 4 --workers 1 2      # CPU smoke runs
    python -m bench.bench_batch --throughput --tiny --clips 3 --frames 2 --max_side 64 --no_amodal
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.rows import REPO, RowWriter, add_rows_args
from bench.timers import Stopwatch


def make_clips(src: Path, folder: Path, copies: int) -> list[str]:
    """``copies`` hard links (or copies) of the clip under distinct names."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(copies):
        dst = folder / f"clip_{i:03d}{src.suffix}"
        try:
            dst.hardlink_to(src)
        except OSError:
            shutil.copy(src, dst)
        names.append(str(dst))
    return names


def one_count(count: int, jobs, opts, out: Path, split: bool) -> dict:
    """Start ``count`` workers, run the batch, stop them; wall times and statuses."""
    from body4d_core.batch.engine import WorkerPool, plan_workers, run_batch

    with Stopwatch("cpu") as start:  # "cpu": the GPUs are the workers'; nothing to synchronise in this process
        pool = WorkerPool(plan_workers(count))
    started = start.seconds
    try:
        with Stopwatch("cpu") as batch:
            rows = run_batch(jobs, opts, out, pool=pool, split=split)
        wall = batch.seconds
    finally:
        pool.shutdown()
    done = sum(r.status == "done" for r in rows)
    render = [r.seconds["render"] for r in rows if r.status == "done" and "render" in r.seconds]
    return {"workers": pool.spec.count, "split": split, "videos": len(rows),
            "done": done, "start_s": round(started, 2), "batch_s": round(wall, 2),
            "render_s": round(sum(render) / len(render), 2) if render else None,
            "videos_per_hour": round(3600 * done / wall, 1) if wall > 0 else 0.0,
            "failed": [r.error for r in rows if r.status == "failed"]}


def write_rows(out: RowWriter, r: dict, speed: float | None, **setting: object) -> None:
    """One printed line's figures as rows: start and batch seconds, videos done, videos per hour, speed-up."""
    case = f"{r['workers']} workers" + (", split (1 clip)" if r["split"] else "")
    extra = {"workers": r["workers"], "split": r["split"], "videos": r["videos"], "failed": len(r["failed"]),
             **setting}
    out.add(case, "start_s", r["start_s"], "s", **extra)
    out.add(case, "batch_s", r["batch_s"], "s", **extra)
    out.add(case, "done", r["done"], "videos", **extra)
    out.add(case, "videos_per_hour", r["videos_per_hour"], "videos/h", **extra)
    if r.get("render_s") is not None:  # only where the runs recorded the render stage's seconds
        out.add(case, "render_s", r["render_s"], "s", **extra)
    if speed is not None:
        out.add(case, "speed_up", speed, "x", **extra)


class LoadTimes(dict):
    """A model cache that times each load: the time from a missed lookup to the stored model."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds = 0.0
        self._asked: dict[Any, float] = {}

    def __contains__(self, key: object) -> bool:
        found = super().__contains__(key)
        if not found:
            self._asked[key] = time.perf_counter()
        return found

    def __setitem__(self, key: Any, value: Any) -> None:
        if key in self._asked:
            self.seconds += time.perf_counter() - self._asked.pop(key)
        super().__setitem__(key, value)


def run_argv(clip: str, out: Path, models: str | None, args: argparse.Namespace) -> list[str]:
    """The ``run`` command's arguments for one clip (the same options for both ways of running)."""
    argv = ["run", "-i", clip, "-o", str(out), "--frame_load_cap", str(args.frames), "--max_side", str(args.max_side)]
    if models:
        argv += ["--models_root", models]
    if args.no_amodal:
        argv.append("--no_amodal")
    if args.tiny:  # random networks: detect anything, no camera model, one person
        argv += ["--detect_threshold", "0", "--fov", "none", "--body_mode", "body", "--max_people", "1", "--no_glb"]
    return argv + list(args.run_args)


def in_process(clips: list[str], models: str | None, args: argparse.Namespace, out: Path) -> list[dict]:
    """Every clip through one batch worker in this process: wall and model-load seconds per clip."""
    from body4d_core.batch.jobs import VideoJob
    from body4d_core.batch.worker import VideoWorker
    from body4d_core.cli import build_parser, pipeline_options

    worker = VideoWorker("bench")
    cache = worker._models = LoadTimes()
    results = []
    for i, clip in enumerate(clips):
        dest = out / f"clip_{i + 1}"
        opts = pipeline_options(build_parser().parse_args(run_argv(clip, dest, models, args)))
        loaded = cache.seconds
        with Stopwatch(opts.device) as sw:
            row = worker.run_video(VideoJob(Path(clip), dest.name), opts, str(dest))
        results.append({"seconds": sw.seconds, "load_s": cache.seconds - loaded, "status": row.status,
                        "error": row.error, "frames": row.frames})
    del worker, cache
    gc.collect()
    _empty_cuda()
    return results


def _empty_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def separate_processes(clips: list[str], models: str | None, args: argparse.Namespace, out: Path) -> list[dict]:
    """Every clip as its own ``python -m body4d_core run`` process: wall seconds per clip."""
    results = []
    for i, clip in enumerate(clips):
        argv = [sys.executable, "-m", "body4d_core", *run_argv(clip, out / f"clip_{i + 1}", models, args)]
        t0 = time.perf_counter()
        proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        tail = (proc.stderr.strip().splitlines() or [""])[-1]
        results.append({"seconds": wall, "status": "done" if proc.returncode == 0 else "failed",
                        "error": "" if proc.returncode == 0 else tail})
    return results


def throughput(args: argparse.Namespace, models: str | None, work: Path) -> int:
    """The one-GPU table: clips back to back in one process (models once) vs one process per clip."""
    clips = make_clips(Path(args.video), work / "in", args.clips)
    one = in_process(clips, models, args, work / "one")
    many = separate_processes(clips, models, args, work / "many")
    warm = [r["seconds"] for r in one[1:] if r["load_s"] < 0.05 * r["seconds"]] or [one[-1]["seconds"]]
    steady = sum(warm) / len(warm)
    for r in many:
        r["load_s"] = max(0.0, r["seconds"] - steady)  # startup + model loading, derived
    out = RowWriter.from_args("bench_batch", args)
    setting = {"video": Path(args.video).name, "clips": args.clips, "frames": args.frames, "max_side": args.max_side,
               "amodal": not args.no_amodal, "tiny": args.tiny, "run_args": " ".join(args.run_args)}
    cases = (("one process, models loaded once", one, "measured"),
             (f"{len(clips)} run processes, models loaded by each", many, "derived: wall - warm in-process clip"))
    heads = " ".join(f"{f'clip {i + 1} s':>9s}" for i in range(len(clips)))
    print(f"{'mode':48s} {heads} {'total s':>8s} {'load s':>7s}")
    totals = {}
    for case, rows, how in cases:
        total = sum(r["seconds"] for r in rows)
        load = sum(r["load_s"] for r in rows)
        totals[case] = total
        cells = " ".join(f"{r['seconds']:9.2f}" for r in rows)
        print(f"{case:48s} {cells} {total:8.2f} {load:7.2f}")
        extra = {**setting, "load": how, "failed": [r["error"] for r in rows if r["status"] != "done"]}
        for i, r in enumerate(rows):
            out.add(case, f"clip_{i + 1}_s", round(r["seconds"], 3), "s", **extra)
            out.add(case, f"clip_{i + 1}_load_s", round(r["load_s"], 3), "s", **extra)
        out.add(case, "total_s", round(total, 3), "s", **extra)
        out.add(case, "load_s", round(load, 3), "s", **extra)
        for r in rows:
            if r["status"] != "done":
                print(f"        failed: {r['error']}")
    (c1, t1), (c2, t2) = totals.items()
    if t1 > 0:
        print(f"one process is {t2 / t1:.2f}x the throughput of separate processes")
        out.add(c1, "speed_up", round(t2 / t1, 3), "x", **setting)
    ok = all(r["status"] == "done" for r in one + many)
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    """Time the batch at each worker count (and split), or one GPU's throughput; print the table, write the rows."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--video", default=str(REPO / "samples" / "cartoon_dancer_81f.mp4"))
    p.add_argument("--copies", type=int, default=8)
    p.add_argument("--workers", type=int, nargs="+", default=[1])
    p.add_argument("--frames", type=int, default=0, help="frame cap per video (0 = all)")
    p.add_argument("--max_side", type=int, default=0)
    p.add_argument("--no_amodal", action="store_true")
    p.add_argument("--models", "--models_root", dest="models_root", help="the models folder (setup's)")
    p.add_argument("--tiny", action="store_true", help="write tiny random checkpoints and use them")
    p.add_argument("--split", action="store_true", help="also time one clip with its body stage over all workers")
    p.add_argument("--address", help="Ray cluster to join (default: a local Ray)")
    p.add_argument("--json", help="write the results here too")
    p.add_argument("--throughput", action="store_true",
                   help="one GPU, no Ray: clips back to back in one process vs one run process per clip")
    p.add_argument("--clips", type=int, default=3, help="clips for --throughput (copies of --video)")
    p.add_argument("--run_args", nargs=argparse.REMAINDER, default=[],
                   help="the rest of the line: more run options for --throughput (both ways)")
    add_rows_args(p)
    args = p.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench_batch_"))
    models = args.models_root
    if args.tiny:
        from body4d_core.testing.checkpoints import write_tiny_checkpoints

        models = str(work / "models")
        write_tiny_checkpoints(models, ["sam3", "sam3d_body"] if args.throughput and args.no_amodal else None)
    if args.throughput:
        try:
            return throughput(args, models, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    from body4d_core.batch.engine import init_ray
    from body4d_core.batch.jobs import collect_jobs
    from body4d_core.pipeline import PipelineOptions
    from body4d_core.video import LoadOptions

    make_clips(Path(args.video), work / "in", args.copies)
    jobs = collect_jobs([str(work / "in")])
    opts = PipelineOptions(video=LoadOptions(frame_load_cap=args.frames, max_side=args.max_side),
                           amodal=not args.no_amodal, models_root=Path(models) if models else None,
                           detect_threshold=0.0 if args.tiny else 0.5)
    init_ray(args.address, temp_dir=str(work / "ray") if not args.address else None)
    results = [one_count(n, jobs, opts, work / f"out_{n}", False) for n in args.workers]
    if args.split:
        results.append(one_count(max(args.workers), jobs[:1], opts, work / "out_split", True))
    base = next((r for r in results if r["workers"] == 1 and not r["split"]), None)
    # made after the runs: reading the card's name opens CUDA in this process, which must not hold a GPU meanwhile
    out = RowWriter.from_args("bench_batch", args)
    setting = {"video": Path(args.video).name, "copies": args.copies, "frames": args.frames,
               "max_side": args.max_side, "amodal": not args.no_amodal, "tiny": args.tiny,
               "address": args.address or "local"}
    print(f"{'workers':>7s} {'split':>5s} {'videos':>6s} {'done':>4s} {'start_s':>7s} {'batch_s':>8s} "
          f"{'videos/h':>9s} {'speed-up':>8s} {'render_s':>8s}")
    for r in results:
        ratio = base["batch_s"] / r["batch_s"] if base and r["batch_s"] and not r["split"] else None
        speed = f"{ratio:.2f}x" if ratio is not None else ""
        render = f"{r['render_s']:.2f}" if r["render_s"] is not None else ""
        print(f"{r['workers']:7d} {str(r['split']):>5s} {r['videos']:6d} {r['done']:4d} {r['start_s']:7.1f} "
              f"{r['batch_s']:8.1f} {r['videos_per_hour']:9.1f} {speed:>8s} {render:>8s}")
        write_rows(out, r, ratio, **setting)
        for err in r["failed"][:3]:
            print(f"        failed: {err}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
