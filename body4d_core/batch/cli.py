"""``python -m body4d_core batch``: the run command's options over many videos, on Ray workers or in this process."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the parser is built on every command: torch is imported only when the batch runs
    from ..pipeline import PipelineOptions

log = logging.getLogger(__name__)
_NOT_COPIED = {"help", "input_video", "out", "overwrite", "resume"}  # run options the batch replaces with its own


def add_batch_parser(subparsers: Any) -> argparse.ArgumentParser:
    """The ``batch`` sub-command; add it after ``run`` (it takes every option of run but its input and output)."""
    run = subparsers.choices.get("run")
    if run is None:
        raise RuntimeError("add the batch parser after the run parser: batch copies run's options")
    from ..run_options import HelpFormatter

    p = subparsers.add_parser("batch", formatter_class=HelpFormatter, help="the whole pipeline on many videos (a folder, a glob or a list file), "
                                            "one output folder each, on every GPU (Ray)")
    p.add_argument("inputs", nargs="+",
                   help="folders, quoted globs ('clips/*.mp4'), list files (.txt: a video per line with optional "
                        "key=value overrides points=, frames=START:END, name=, detect_frame=, max_people=, "
                        "manual_fov=; or .json) or videos")
    p.add_argument("--out", "-o", default="outputs/batch",
                   help="output root; one folder per video (default: outputs/batch)")
    p.add_argument("--engine", choices=("auto", "ray", "local"), default="auto",
                   help="ray: one worker per GPU (pip install ray); local: the videos one after another in this "
                        "process, models loaded once (no Ray needed); auto: ray when it is installed, else local")
    p.add_argument("--address", help="Ray cluster to join (e.g. ray://head:10001 or auto); default: start a local Ray")
    p.add_argument("--workers", type=int, default=0,
                   help="workers, each with one GPU (0 = one per GPU; on a machine without GPU 0 means 1 CPU worker)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace each video's earlier results (default: keep finished videos, resume the others "
                        "from their finished stages; see run.json in each folder)")
    p.add_argument("--split", action="store_true",
                   help="one video at a time, its body stage, amodal jobs and overlay render split over every "
                        "worker (fewer videos than GPUs)")
    p.add_argument("--object_store_mb", type=int, default=0,
                   help="local Ray's shared-memory store for decoded frames (0 = Ray's default, 30%% of RAM)")
    for action in run._actions:
        if action.dest not in _NOT_COPIED:
            p._add_action(action)
    p.set_defaults(func=cmd_batch)
    return p


def options_from_args(args: argparse.Namespace) -> "PipelineOptions":
    """PipelineOptions from the run options (exactly as the run command builds them)."""
    from ..run_options import pipeline_options

    return pipeline_options(args)


def print_event(kind: str, data: dict[str, Any]) -> None:
    """Progress to stderr: one line per finished or failed video, the running stages when they change."""
    if kind == "row":
        row = data["row"]
        detail = f": {row.error}" if row.error else f" ({row.frames} frames, people {row.people})"
        sys.stderr.write(f"{row.status.upper()} {row.video}{detail}\n")
    else:
        sys.stderr.write(data["line"] + "\n")
    sys.stderr.flush()


def pick_engine(args: argparse.Namespace, pool: Any = None) -> str:
    """'ray' or 'local' for ``--engine`` (auto: Ray when a pool is given or Ray is installed); errors name the fix."""
    import importlib.util

    from ..errors import InputError

    engine = getattr(args, "engine", "auto")
    if engine == "auto":
        engine = "ray" if pool is not None or args.address or importlib.util.find_spec("ray") else "local"
    if engine == "local" and (args.address or args.split or args.workers > 1):
        raise InputError("--address, --split and --workers > 1 need the Ray engine (--engine ray, pip install ray)")
    return engine


def cmd_batch(args: argparse.Namespace, pool: Any = None) -> int:
    """Run the batch; 0 when every video is done, 1 when some failed, 130 when interrupted."""
    from .jobs import collect_jobs
    from .outputs import FAILED, SUMMARY_CSV, SUMMARY_JSON, format_table

    jobs = collect_jobs(args.inputs)
    opts = options_from_args(args)
    out = Path(args.out)
    engine = pick_engine(args, pool)
    print(f"batch: {len(jobs)} video(s) -> {out} ({engine} engine)", file=sys.stderr)
    try:
        if engine == "local":
            from .local import run_local

            rows = run_local(jobs, opts, out, overwrite=args.overwrite, on_event=print_event)
        else:
            from .engine import init_ray, run_batch

            init_ray(args.address, object_store_mb=args.object_store_mb)
            rows = run_batch(jobs, opts, out, pool=pool, workers=args.workers, overwrite=args.overwrite,
                             split=args.split, on_event=print_event)
    except KeyboardInterrupt:
        print(f"batch stopped; finished videos are kept, run the same command to resume ({out / SUMMARY_CSV})",
              file=sys.stderr)
        return 130
    print(format_table(rows))
    print(f"summary: {out / SUMMARY_CSV} and {out / SUMMARY_JSON}")
    return 1 if any(r.status == FAILED for r in rows) else 0

