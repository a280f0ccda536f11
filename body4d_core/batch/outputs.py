"""Per-video output folders of a batch: the run's own manifest and lock, resume rules, the summary table.

Each video's folder follows the rules of the ``run`` command: ``run.json`` records the run as it
goes and ``.body4d.lock`` refuses a second writer (see ``body4d_core.manifest``). On a new batch
over the same output root, per video: a folder whose run.json says complete, made from the same
video with the same options, is kept (not run again); complete with other options or another
video is an error unless ``--overwrite``; a partial run (killed, failed, interrupted) resumes its
finished stages whose inputs and options are unchanged and redoes the rest; a folder being
written by a live run (its lock) is refused; results without run.json are an error unless
``--overwrite``; a non-empty folder holding none of our outputs is not ours and is never touched.
The batch-level summary (CSV and JSON) is written atomically into the output root.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import write_text_atomic
from ..errors import InputError
from ..manifest import (MANIFEST_NAME, OutputFolderError, add_record, existing_results, foreign_entries, lock_busy,
                        read_manifest, same_run)
from ..pipeline import PipelineOptions

SUMMARY_CSV = "batch_summary.csv"
SUMMARY_JSON = "batch_summary.json"
ROW_KEY = "batch_row"  # where a batch stores its summary row in a finished folder's run.json
FRESH, RESUME, OVERWRITE, KEEP = "fresh", "resume", "overwrite", "keep"  # what to do with a video's folder
STAGES = ("decode", "sam3", "amodal", "camera", "bodies", "smooth", "world", "render", "write_wait")
# statuses of a row
OK, KEPT, FAILED, NOT_RUN = "done", "done earlier", "failed", "not run"


@dataclass
class Row:
    """One line of the summary table."""

    video: str
    name: str
    status: str
    out_dir: str
    frames: int = 0
    people: list[int] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    error: str = ""
    worker: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Row":
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


def _kept_row(out_dir: Path, video: str, name: str, manifest: dict[str, Any]) -> Row:
    """The summary row of a finished folder: the batch's own row when one was stored, else what run.json says."""
    stored = manifest.get(ROW_KEY)
    if isinstance(stored, dict):
        row = Row.from_dict(stored)
    else:
        seconds = {s: float(e["seconds"]) for s, e in (manifest.get("stages") or {}).items()
                   if isinstance(e, dict) and isinstance(e.get("seconds"), (int, float))}
        outputs = {n: e.get("path", "") for n, e in (manifest.get("files") or {}).items()}
        row = Row(video, name, OK, str(out_dir), seconds=seconds, outputs=outputs)
    row.status, row.out_dir, row.error = KEPT, str(out_dir), ""
    return row


def plan_folder(out_dir: Path, video: str | Path, opts: PipelineOptions, overwrite: bool,
                name: str | None = None) -> tuple[str, Row | None]:
    """FRESH, RESUME or OVERWRITE (run the video so) or KEEP (finished earlier, with its row); InputError why not."""
    out_dir = Path(out_dir)
    busy = lock_busy(out_dir)
    if busy:
        raise InputError(busy)
    try:
        old = read_manifest(out_dir)
    except OutputFolderError as err:
        if not overwrite:
            raise InputError(str(err)) from None
        old = None
    found = existing_results(out_dir)
    if not found:
        foreign = foreign_entries(out_dir)
        if foreign:
            raise InputError(f"{out_dir} exists and was not written by a batch or run ({', '.join(foreign[:3])}): "
                             "remove it or choose another output folder")
        return FRESH, None
    if overwrite:
        return OVERWRITE, None
    if old is None:
        raise InputError(f"{out_dir} holds results without a {MANIFEST_NAME}: pass --overwrite to replace them "
                         "or choose another output folder")
    if old.get("status") != "complete":
        return RESUME, None
    if not same_run(old, video, opts):
        raise InputError(f"{out_dir} was finished from another video or with other options: pass --overwrite to run "
                         "it again or choose another output folder")
    return KEEP, _kept_row(out_dir, str(video), name or out_dir.name, old)


def record_row(out_dir: Path, row: Row) -> None:
    """Store the finished video's summary row in its run.json (a later batch that keeps the folder reports it)."""
    add_record(Path(out_dir), ROW_KEY, dataclasses.asdict(row))


def _stage_columns(rows: list[Row]) -> list[str]:
    extra = sorted({k for r in rows for k in r.seconds} - set(STAGES) - {"total"})
    return [*STAGES, *extra, "total"]


def summary_csv(rows: list[Row]) -> str:
    """The summary table as CSV text (one row per video, seconds per stage)."""
    stages = _stage_columns(rows)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["video", "name", "status", "frames", "people", *[f"{s}_s" for s in stages], "out_dir",
                "outputs", "error"])
    for r in rows:
        secs = [f"{r.seconds[s]:.3f}" if s in r.seconds else "" for s in stages]
        w.writerow([r.video, r.name, r.status, r.frames, " ".join(map(str, r.people)), *secs, r.out_dir,
                    " ".join(sorted(r.outputs)), r.error])
    return buf.getvalue()


def finish_summary(out_root: Path, jobs: list, rows: dict[int, Row]) -> list[Row]:
    """Rows in job order (a job with no row is "not run": the batch stopped first), written as the summary."""
    for i, job in enumerate(jobs):
        if i not in rows:
            rows[i] = Row(str(job.video), job.name, NOT_RUN, str(out_root / job.name), error="batch stopped")
    ordered = [rows[i] for i in range(len(jobs))]
    write_summary(out_root, ordered)
    return ordered


def write_summary(out_root: Path, rows: list[Row]) -> tuple[Path, Path]:
    """batch_summary.csv and batch_summary.json in the output root (atomically)."""
    out_root.mkdir(parents=True, exist_ok=True)
    csv_path = write_text_atomic(out_root / SUMMARY_CSV, summary_csv(rows))
    counts = {s: sum(r.status == s for r in rows) for s in (OK, KEPT, FAILED, NOT_RUN)}
    data = {"counts": counts, "videos": [dataclasses.asdict(r) for r in rows]}
    json_path = write_text_atomic(out_root / SUMMARY_JSON, json.dumps(data, indent=1))
    return csv_path, json_path


def format_table(rows: list[Row]) -> str:
    """A short plain-text table for the terminal."""
    lines = [f"{'video':28s} {'status':12s} {'frames':>6s} {'people':>6s} {'seconds':>8s}  error"]
    for r in rows:
        total = f"{r.seconds['total']:.1f}" if "total" in r.seconds else ""
        lines.append(f"{r.name[:28]:28s} {r.status:12s} {r.frames:6d} {len(r.people):6d} {total:>8s}  {r.error}")
    return "\n".join(lines)
