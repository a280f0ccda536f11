"""Per-video output folders of a batch: start and completion markers, resume rules, the summary table.

A video's folder holds ``batch_started.json`` while it runs and ``batch_done.json`` (written
atomically, last) once every output is complete. On a new batch over the same output root:
a folder with ``batch_done.json`` made with the same options is kept (the video is not run
again); one made with other options is an error for that video unless ``--overwrite``; a
folder with only ``batch_started.json`` (a killed run) is cleared and its video runs again; a
non-empty folder without either marker is not ours and is never touched.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import write_text_atomic
from ..errors import InputError
from ..pipeline import PipelineOptions

DONE = "batch_done.json"
STARTED = "batch_started.json"
SUMMARY_CSV = "batch_summary.csv"
SUMMARY_JSON = "batch_summary.json"
STAGES = ("decode", "sam3", "amodal", "camera", "bodies", "smooth", "world", "render", "write_wait")
# statuses of a row
OK, KEPT, FAILED, NOT_RUN = "done", "done earlier", "failed", "not run"


def options_record(opts: PipelineOptions) -> dict[str, Any]:
    """The options as plain JSON values (what a finished folder was made with)."""
    def plain(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return plain(dataclasses.asdict(opts))


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


def read_done(out_dir: Path) -> dict[str, Any] | None:
    """The completion marker of a folder (None when the video has not finished there)."""
    path = out_dir / DONE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def resume_state(out_dir: Path, record: dict[str, Any], overwrite: bool) -> tuple[str, Row | None]:
    """'run' (run the video) or 'keep' (finished earlier, with its row), or raise InputError why not."""
    done = read_done(out_dir)
    if done is not None and not overwrite:
        if done.get("options") != record:
            raise InputError(f"{out_dir} was finished with other options: pass --overwrite to run it again "
                             "or choose another output folder")
        row = Row.from_dict(done["row"])
        row.status = KEPT
        return "keep", row
    if out_dir.exists() and any(out_dir.iterdir()) and done is None and not (out_dir / STARTED).is_file():
        raise InputError(f"{out_dir} exists and was not written by a batch: remove it or choose another output folder")
    return "run", None


def start_folder(out_dir: Path, video: str, record: dict[str, Any]) -> None:
    """Clear what an earlier (killed or overwritten) batch left and mark the folder as running."""
    if out_dir.exists() and ((out_dir / STARTED).is_file() or (out_dir / DONE).is_file()):
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / STARTED, json.dumps({"video": video, "options": record}, indent=1))


def finish_folder(out_dir: Path, record: dict[str, Any], row: Row) -> None:
    """Write the completion marker (last, atomically): the folder now counts as done."""
    write_text_atomic(out_dir / DONE, json.dumps({"video": row.video, "options": record,
                                                  "row": dataclasses.asdict(row)}, indent=1))
    (out_dir / STARTED).unlink(missing_ok=True)


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
