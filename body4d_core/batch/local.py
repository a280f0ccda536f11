"""The batch without Ray: which videos to run and how (shared with the Ray engine), and a one-process engine.

``plan_jobs`` decides per video from its folder's run.json and lock (see ``outputs``).
``run_local`` runs the planned videos one after another in this process through one
``VideoWorker`` (models loaded once, kept across videos): the batch on one machine with
nothing beyond the pipeline's own requirements.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

from ..errors import InputError
from ..pipeline import PipelineOptions
from .jobs import VideoJob, job_options
from .outputs import FAILED, KEEP, Row, finish_summary, plan_folder

log = logging.getLogger(__name__)
Event = Callable[[str, dict[str, Any]], None]  # ("row", {"row": Row}) | ("progress", {"line": str})


def plan_jobs(jobs: list[VideoJob], base: PipelineOptions, out_root: Path, overwrite: bool
              ) -> tuple[dict[int, Row], list[tuple[int, PipelineOptions, str]]]:
    """Rows of videos already settled (finished earlier, or refused) and the (index, options, folder mode) to run."""
    rows: dict[int, Row] = {}
    todo: list[tuple[int, PipelineOptions, str]] = []
    for i, job in enumerate(jobs):
        out = Path(out_root) / job.name
        try:
            opts = job_options(base, job)
            mode, row = plan_folder(out, job.video, opts, overwrite, job.name)
        except InputError as err:
            rows[i] = Row(str(job.video), job.name, FAILED, str(out), error=str(err))
            continue
        if mode == KEEP and row is not None:
            rows[i] = row
        else:
            todo.append((i, opts, mode))
    return rows, todo


def run_local(jobs: list[VideoJob], base: PipelineOptions, out_root: str | Path, *, overwrite: bool = False,
              on_event: Event | None = None, worker: Any = None) -> list[Row]:
    """Run every job in this process, one after another (``worker``: a VideoWorker to reuse, e.g. its models)."""
    from .worker import VideoWorker

    out_root = Path(out_root)
    on_event = on_event or (lambda kind, data: None)
    rows, todo = plan_jobs(jobs, base, out_root, overwrite)
    for i in sorted(rows):
        on_event("row", {"row": rows[i]})
    worker = worker or VideoWorker("local")
    try:
        for n, (i, opts, mode) in enumerate(todo):
            on_event("progress", {"line": f"batch: video {n + 1}/{len(todo)} to run: {jobs[i].name}"})
            rows[i] = worker.run_video(jobs[i], opts, str(out_root / jobs[i].name), mode=mode)
            on_event("row", {"row": rows[i]})
    finally:
        ordered = finish_summary(out_root, jobs, rows)
    return ordered
