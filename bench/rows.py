"""The one JSON row format every bench writes, one measured figure per row.

A row: ``{"bench", "case", "metric", "value", "unit", "device", "date", "commit", "command",
"extra"}`` -- ``device`` is the card's name (``torch.cuda.get_device_name``) or "cpu", ``date``
the UTC time of the measurement, ``commit`` the repository's ``git rev-parse HEAD`` (None when
git cannot tell), ``command`` the ``python -m bench.<name> ...`` line that produced it and
``extra`` a free dict (the settings and counts the figure belongs to). Rows are appended as JSON
lines to ``bench/results/<bench>.jsonl`` (git-ignored; not for ``--tiny`` smoke runs) and to
``--jsonl PATH`` when given, each as soon as it is measured, so a run cut short keeps its rows.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"
FIELDS = ("bench", "case", "metric", "value", "unit", "device", "date", "commit", "command", "extra")


def device_name(device: Any = None) -> str:
    """The CUDA card's name for a CUDA device (or, with None, when one is present), else 'cpu'."""
    import torch

    if device is not None and torch.device(device).type != "cuda":
        return "cpu"
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def git_commit() -> str | None:
    """The repository's HEAD commit, or None where git or the .git folder is missing."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def command_line(bench: str, argv: list[str] | None = None) -> str:
    """The module form of this run's command: ``python -m bench.<bench> <args>``."""
    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python", "-m", f"bench.{bench}"] + [shlex.quote(a) for a in args])


def add_rows_args(ap: argparse.ArgumentParser) -> None:
    """The options every bench takes for its rows: --jsonl PATH (JSON lines) and --no-results."""
    ap.add_argument("--jsonl", type=Path, default=None, metavar="PATH",
                    help="also append every measured figure as a JSON line here (the common row format)")
    ap.add_argument("--no-results", action="store_true",
                    help="do not append the rows to bench/results/<bench>.jsonl (--tiny runs never do)")


def _clean(value: Any) -> Any:
    """JSON-safe value: NaN/inf become None, numpy scalars plain numbers, paths strings."""
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


class RowWriter:
    """Collects a bench's rows and appends each to its JSON-lines files as it is added."""

    def __init__(self, bench: str, path: Path | None = None, results: bool = True, device: Any = None,
                 results_dir: Path = RESULTS_DIR, argv: list[str] | None = None) -> None:
        self.bench, self.rows = bench, []
        self.device = device_name(device)
        self.commit = git_commit()
        self.command = command_line(bench, argv)
        self.paths = [p for p in (Path(results_dir) / f"{bench}.jsonl" if results else None, path) if p is not None]

    @classmethod
    def from_args(cls, bench: str, args: argparse.Namespace, device: Any = None) -> "RowWriter":
        """A writer for a bench run with add_rows_args's options (no results file for --tiny runs)."""
        tiny = bool(getattr(args, "tiny", False))
        return cls(bench, getattr(args, "jsonl", None), not (tiny or getattr(args, "no_results", False)), device)

    def add(self, case: str, metric: str, value: Any, unit: str, **extra: Any) -> dict[str, Any]:
        """Record one figure (``value`` in ``unit``) of ``case``; ``extra`` holds what it belongs to."""
        row = {"bench": self.bench, "case": str(case), "metric": str(metric), "value": _clean(value),
               "unit": str(unit), "device": self.device,
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "commit": self.commit, "command": self.command, "extra": _clean(extra)}
        self.rows.append(row)
        line = json.dumps(row, allow_nan=False) + "\n"
        for path in self.paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as f:
                f.write(line)
        return row


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Every row of a JSON-lines file written by RowWriter."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
