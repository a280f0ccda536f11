"""The videos of a batch: a folder, a glob or a list file, each with optional per-video overrides.

A list file is either text (one video per line: its path, then ``key=value`` overrides; ``#``
starts a comment) or JSON (a list of objects with ``"video"`` and the same keys). Relative paths
are taken from the list file's folder. Overrides: ``points`` (SAM3 Points JSON file), ``frames``
(``START:END``, end exclusive, or ``START:``), ``name`` (output folder name), ``detect_frame``,
``max_people``, ``manual_fov``.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..pipeline import PipelineOptions, options_from_points

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".gif")
LIST_SUFFIXES = (".txt", ".lst", ".list", ".json")
OVERRIDE_KEYS = ("points", "frames", "name", "detect_frame", "max_people", "manual_fov")
_INT_KEYS = ("detect_frame", "max_people")


@dataclass(frozen=True)
class VideoJob:
    """One video of the batch, the name of its output folder and its overrides."""

    video: Path
    name: str
    overrides: dict[str, Any] = field(default_factory=dict)


def _is_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def _videos_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)


def _parse_frames(value: Any, where: str) -> tuple[int, int]:
    """``START:END`` (END exclusive, 0 or empty = to the end) -> (skip_first_frames, frame_load_cap)."""
    text = str(value)
    start_s, sep, end_s = text.partition(":")
    try:
        start = int(start_s or 0)
        end = int(end_s) if end_s.strip() else 0
    except ValueError:
        start = end = -1
    if not sep or start < 0 or end < 0 or (end and end <= start):
        raise InputError(f"{where}: frames must be START:END with 0 <= START < END (or START:), got {text!r}")
    return start, (end - start if end else 0)


def _check_override(key: str, value: Any, where: str, base: Path) -> Any:
    """One override validated and normalised (paths made absolute)."""
    if key not in OVERRIDE_KEYS:
        raise InputError(f"{where}: unknown override {key!r} (known: {', '.join(OVERRIDE_KEYS)})")
    if key == "points":
        path = Path(str(value)).expanduser()
        path = path if path.is_absolute() else base / path
        if not path.is_file():
            raise InputError(f"{where}: points file {path} does not exist")
        return str(path)
    if key == "frames":
        _parse_frames(value, where)
        return str(value)
    if key in _INT_KEYS or key == "manual_fov":
        try:
            return int(value) if key in _INT_KEYS else float(value)
        except (TypeError, ValueError):
            raise InputError(f"{where}: {key} must be a number, got {value!r}") from None
    name = str(value)
    if not name or Path(name).name != name or name in (".", ".."):
        raise InputError(f"{where}: name must be a plain folder name, got {value!r}")
    return name


def _entry(video: Any, overrides: dict[str, Any], where: str, base: Path) -> tuple[Path, dict[str, Any]]:
    path = Path(str(video)).expanduser()
    path = path if path.is_absolute() else base / path
    return path, {k: _check_override(k, v, where, base) for k, v in overrides.items()}


def read_list_file(path: Path) -> list[tuple[Path, dict[str, Any]]]:
    """(video, overrides) per entry of a text or JSON list file."""
    base = path.parent
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise InputError(f"{path} is not valid JSON: {err}") from None
        if not isinstance(data, list):
            raise InputError(f"{path} must hold a JSON list of {{\"video\": ...}} objects")
        out = []
        for i, item in enumerate(data):
            where = f"{path} entry {i + 1}"
            if isinstance(item, str):
                item = {"video": item}
            if not isinstance(item, dict) or "video" not in item:
                raise InputError(f"{where}: expected a path or an object with a \"video\" key")
            rest = {k: v for k, v in item.items() if k != "video"}
            out.append(_entry(item["video"], rest, where, base))
        return out
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        where = f"{path} line {n}"
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError as err:
            raise InputError(f"{where}: {err}") from None
        if not tokens:
            continue
        overrides = {}
        for tok in tokens[1:]:
            key, sep, value = tok.partition("=")
            if not sep:
                raise InputError(f"{where}: expected key=value after the video path, got {tok!r}")
            overrides[key] = value
        out.append(_entry(tokens[0], overrides, where, base))
    return out


def _expand(item: str) -> list[tuple[Path, dict[str, Any]]]:
    """What one command-line input names: a folder, a glob, a list file or one video."""
    path = Path(item).expanduser()
    if path.is_dir():
        return [(p, {}) for p in _videos_in(path)]
    if path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
        return read_list_file(path)
    if path.is_file():
        return [(path, {})]
    if _is_glob(item):
        return [(Path(p), {}) for p in sorted(glob.glob(str(path))) if Path(p).is_file()]
    raise InputError(f"batch input {item!r} is not a folder, a video, a list file or a glob that matches files")


def collect_jobs(inputs: list[str]) -> list[VideoJob]:
    """Every video named by the inputs, once, with a unique output folder name each."""
    entries: list[tuple[Path, dict[str, Any]]] = []
    seen: set[Path] = set()
    for item in inputs:
        for video, overrides in _expand(item):
            key = video.resolve()
            if key in seen:
                continue
            seen.add(key)
            entries.append((video, overrides))
    if not entries:
        raise InputError(f"no video found in {', '.join(inputs)} (video suffixes: {' '.join(VIDEO_SUFFIXES)})")
    jobs: list[VideoJob] = []
    names: dict[str, Path] = {}
    for video, overrides in entries:
        name = overrides.get("name") or video.stem
        if name in names and "name" not in overrides:
            name = f"{video.stem}_{video.suffix.lstrip('.').lower()}"
        if name in names:
            raise InputError(f"{video} and {names[name]} would share the output folder {name!r}: "
                             "give one of them name=... in a list file")
        names[name] = video
        jobs.append(VideoJob(video, name, {k: v for k, v in overrides.items() if k != "name"}))
    return jobs


def job_options(base: PipelineOptions, job: VideoJob) -> PipelineOptions:
    """The batch's options with this video's overrides applied."""
    ov = job.overrides
    video = base.video
    if "frames" in ov:
        skip, cap = _parse_frames(ov["frames"], str(job.video))
        video = dataclasses.replace(video, skip_first_frames=skip, frame_load_cap=cap)
    changes: dict[str, Any] = {"video": video}
    if "points" in ov:
        changes["points_json"] = options_from_points(ov["points"])
    for key in ("detect_frame", "max_people", "manual_fov"):
        if key in ov:
            changes[key] = ov[key]
    return dataclasses.replace(base, **changes)
