"""Batch benchmark: N copies of a clip through the batch command on 1..all GPUs (Ray workers).

For each worker count, a fresh output root, the workers started (timed apart), then the batch
timed end to end: videos per hour and the speed-up over one worker. ``--split`` also times one
clip with its body stage split over all workers. Without real weights, ``--tiny`` writes tiny
random checkpoints first (the scheduling then dominates; meaningful only with real weights).
Every printed figure is also written as a JSON row (bench/rows.py), one group per worker count.

    python -m bench.bench_batch --copies 8 --workers 1 2 4 8 --frames 90 --max_side 720 [--models_root DIR]
    python -m bench.bench_batch --tiny --copies 4 --workers 1 2      # CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

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
    return {"workers": pool.spec.count, "split": split, "videos": len(rows),
            "done": done, "start_s": round(started, 2), "batch_s": round(wall, 2),
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
    if speed is not None:
        out.add(case, "speed_up", speed, "x", **extra)


def main() -> int:
    """Time the batch at each worker count (and split), print the table, write the rows."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--video", default=str(REPO / "samples" / "cartoon_dancer_81f.mp4"))
    p.add_argument("--copies", type=int, default=8)
    p.add_argument("--workers", type=int, nargs="+", default=[1])
    p.add_argument("--frames", type=int, default=0, help="frame cap per video (0 = all)")
    p.add_argument("--max_side", type=int, default=0)
    p.add_argument("--no_amodal", action="store_true")
    p.add_argument("--models_root")
    p.add_argument("--tiny", action="store_true", help="write tiny random checkpoints and use them")
    p.add_argument("--split", action="store_true", help="also time one clip with its body stage over all workers")
    p.add_argument("--address", help="Ray cluster to join (default: a local Ray)")
    p.add_argument("--json", help="write the results here too")
    add_rows_args(p)
    args = p.parse_args()

    from body4d_core.batch.engine import init_ray
    from body4d_core.batch.jobs import collect_jobs
    from body4d_core.pipeline import PipelineOptions
    from body4d_core.video import LoadOptions

    work = Path(tempfile.mkdtemp(prefix="bench_batch_"))
    models = args.models_root
    if args.tiny:
        from body4d_core.testing.checkpoints import write_tiny_checkpoints

        models = str(work / "models")
        write_tiny_checkpoints(models)
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
          f"{'videos/h':>9s} {'speed-up':>8s}")
    for r in results:
        ratio = base["batch_s"] / r["batch_s"] if base and r["batch_s"] and not r["split"] else None
        speed = f"{ratio:.2f}x" if ratio is not None else ""
        print(f"{r['workers']:7d} {str(r['split']):>5s} {r['videos']:6d} {r['done']:4d} {r['start_s']:7.1f} "
              f"{r['batch_s']:8.1f} {r['videos_per_hour']:9.1f} {speed:>8s}")
        write_rows(out, r, ratio, **setting)
        for err in r["failed"][:3]:
            print(f"        failed: {err}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
