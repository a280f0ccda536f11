"""The run manifest (run.json), the output-folder lock, and --overwrite / --resume.

``run.json`` is rewritten atomically whenever something changes: the inputs (video path, size,
modification time and a partial hash), the options, the model files used, package versions, every
stage with the key of its inputs and the files it wrote (with sizes), start/end times and the
status (running, complete, failed, interrupted, with the stage where it stopped). A folder that
holds another run's results is never written into silently: the caller must choose overwrite
(remove exactly the files the old manifest lists) or resume (reuse the stages whose key and files
still match). A lock file refuses a second concurrent run into the same folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterable

from .atomic import write_text_atomic
from .errors import Body4DError

log = logging.getLogger(__name__)

MANIFEST_NAME = "run.json"
LOCK_NAME = ".body4d.lock"
MANIFEST_VERSION = 1
# what a pipeline run writes; a folder holding any of them holds results
KNOWN_OUTPUTS = ("clip.npz", "prompts.npz", "tracks.npz", "mask_overlay.mp4", "amodal.npz", "camera.npz",
                 "bodies_raw.npz", "bodies.npz", "params.npz", "params_camera.npz", "render_4d.mp4", "meshes", "glb", "world", "anim",
                 MANIFEST_NAME)
STAGES = ("decode", "sam3", "amodal", "camera", "bodies", "smooth", "world", "render")
ALWAYS_RUN = ("world", "render")  # stages --resume runs again (their results are not loaded back)
# the options each stage's result depends on (besides those of the stages before it)
STAGE_OPTIONS: dict[str, tuple[str, ...]] = {  # "profile.x": field x of the run profile
    "decode": ("video",),
    "sam3": ("points_json", "detect_frame", "detect_threshold", "max_people", "direction", "models_root",
             "profile.device", "profile.precision"),
    "amodal": ("amodal", "amodal_settings", "profile.amodal_accel"),
    "camera": ("fov_mode", "manual_fov"),
    "bodies": ("body_mode", "profile.backbone_fp8", "profile.decoder_precision", "profile.compile",
               "profile.attention", "profile.crop_kernel"),
    "smooth": ("smooth", "smooth_settings"),
    "world": ("world", "world_camera", "world_floor", "world_depth_every"),
    "render": ("render_mode", "write_meshes", "write_glb", "write_anim", "anim_fidelity"),
}

PACKAGES = ("torch", "numpy", "transformers", "diffusers", "av", "trimesh")


class OutputFolderError(Body4DError):
    """The output folder holds another run's results or is being written by another run."""


# --------------------------------------------------------------------------- small helpers


def _plain(value: Any) -> Any:
    """JSON-ready copy of options (dataclasses, paths, tuples, numpy scalars)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def video_fingerprint(path: str | Path) -> dict[str, Any]:
    """Path, size, modification time and a hash of the first and last MiB (cheap on large files)."""
    p = Path(path)
    out: dict[str, Any] = {"path": str(p.resolve()) if p.exists() else str(p)}
    with contextlib.suppress(OSError):
        st = p.stat()
        h = hashlib.sha256(str(st.st_size).encode())
        with open(p, "rb") as f:
            h.update(f.read(1 << 20))
            if st.st_size > 2 << 20:
                f.seek(-(1 << 20), os.SEEK_END)
                h.update(f.read(1 << 20))
        out.update(size=st.st_size, mtime=st.st_mtime, sha256_ends=h.hexdigest())
    return out


def package_versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for name in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def model_files(names: Iterable[str], search: list[Path] | None) -> dict[str, Any]:
    """Each model's folder and its files with sizes (absent models are left out)."""
    from .errors import MissingWeightsError
    from .weights import expected_files, get_spec, resolve_model_dir

    out: dict[str, Any] = {}
    for name in names:
        try:
            folder = resolve_model_dir(name, search)
        except MissingWeightsError:
            continue
        files = {}
        for rel in expected_files(get_spec(name)):
            with contextlib.suppress(OSError):
                files[rel] = (folder / rel).stat().st_size
        out[name] = {"folder": str(folder), "files": files}
    return out


def _option(options: dict[str, Any], key: str) -> Any:
    """options[key], or for "a.b" options[a][b] (None where missing)."""
    value: Any = options
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def stage_keys(video: dict[str, Any], options: dict[str, Any]) -> dict[str, str]:
    """A key per stage from its own options and the key of the stage before it (a change re-runs what follows)."""
    keys, prev = {}, _hash({"video": {k: video.get(k) for k in ("size", "sha256_ends")}})
    for stage in STAGES:
        prev = keys[stage] = _hash([prev, {k: _option(options, k) for k in STAGE_OPTIONS[stage]}])
    return keys


def _files_under(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    return [path] if path.is_file() else []


# --------------------------------------------------------------------------- lock


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """An O_EXCL lock file in the output folder: one run at a time; a dead process's lock is taken over."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK_NAME
        self.held = False

    def acquire(self) -> None:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._remove_if_stale():
                    raise OutputFolderError(self._busy_message()) from None
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}, f)
            self.held = True
            return
        raise OutputFolderError(self._busy_message())

    def _owner(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def _remove_if_stale(self) -> bool:
        """Remove the lock of a process that no longer runs on this host; True when removed."""
        owner = self._owner()
        pid = owner.get("pid")
        if owner.get("host") != socket.gethostname() or not isinstance(pid, int) or _pid_alive(pid):
            return False
        log.warning("removing the stale lock of process %s (no longer running) in %s", pid, self.path.parent)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        return True

    def _busy_message(self) -> str:
        owner = self._owner()
        who = f"process {owner.get('pid', '?')} on {owner.get('host', '?')}"
        return (f"another run ({who}) is writing into {self.path.parent}: wait for it to finish or choose another "
                f"--out (if that run is gone, delete {self.path})")

    def release(self) -> None:
        if self.held:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self.held = False


# --------------------------------------------------------------------------- output folder choice


def default_output_dir(video: str | Path, base: str | Path = "outputs") -> Path:
    """outputs/<video stem>, or the first of <stem>_2, <stem>_3, ... that is absent or empty."""
    stem = Path(video).stem or "run"
    base = Path(base)
    for i in range(1, 10000):
        cand = base / (stem if i == 1 else f"{stem}_{i}")
        if not cand.exists() or (cand.is_dir() and not any(cand.iterdir())):
            return cand
    raise OutputFolderError(f"no free output folder name for {stem} under {base}; pass --out")


def existing_results(folder: Path) -> list[str]:
    """Names of our outputs already in ``folder`` (empty: a fresh folder)."""
    return [name for name in KNOWN_OUTPUTS if (folder / name).exists()]


def read_manifest(folder: Path) -> dict[str, Any] | None:
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise OutputFolderError(f"{path} is unreadable ({err}); delete it or choose another --out") from err
    return data if isinstance(data, dict) else None


def _describe_old(old: dict[str, Any] | None, found: list[str]) -> str:
    if old is None:
        return f"results of an earlier run ({', '.join(found[:4])}{', ...' if len(found) > 4 else ''})"
    video = (old.get("inputs") or {}).get("video", {}).get("path", "?")
    where = f", stopped in stage {old['stopped_at']}" if old.get("stopped_at") else ""
    return f"the results of another run of {video} (status {old.get('status', '?')}{where})"


def remove_old_outputs(folder: Path, old: dict[str, Any] | None) -> list[Path]:
    """Delete exactly the files the old manifest lists (or, without one, our known output names)."""
    gone: list[Path] = []
    if old is not None:
        for entry in (old.get("files") or {}).values():
            for rel in entry.get("paths", []):
                p = folder / rel
                if p.is_file() or p.is_symlink():
                    p.unlink()
                    gone.append(p)
        for name in ("meshes", "glb", "world", "anim"):  # sub-folders left empty by the deletions
            d = folder / name
            if d.is_dir():
                for sub in sorted((x for x in d.rglob("*") if x.is_dir()), key=lambda x: -len(x.parts)):
                    with contextlib.suppress(OSError):
                        sub.rmdir()
                with contextlib.suppress(OSError):
                    d.rmdir()
    else:
        for name in KNOWN_OUTPUTS:
            p = folder / name
            gone += _files_under(p)
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    with contextlib.suppress(FileNotFoundError):
        (folder / MANIFEST_NAME).unlink()
    return gone


# --------------------------------------------------------------------------- the manifest


class Manifest:
    """run.json of one run, saved atomically after every change (thread-safe: writes finish on threads)."""

    def __init__(self, folder: Path, data: dict[str, Any], reuse: dict[str, dict[str, Any]] | None = None) -> None:
        self.folder = Path(folder)
        self.data = data
        self.reuse = reuse or {}  # stage -> its entry in the old manifest, to be loaded instead of computed
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        return self.folder / MANIFEST_NAME

    def save(self) -> None:
        """Write run.json; under the lock, so an older snapshot never lands after a newer one."""
        with self._lock:
            text = json.dumps(self.data, indent=1, sort_keys=False, default=str)
            write_text_atomic(self.path, text + "\n")

    def record_memory_plan(self, description: str) -> None:
        """What a memory cap made the run do (batch sizes, offloads, the amodal sampler's low-memory mode)."""
        with self._lock:
            self.data["memory_plan"] = description
        self.save()

    def set_stage(self, stage: str) -> None:
        """The stage now running (where a killed run stopped)."""
        with self._lock:
            self.data["current_stage"] = stage
        self.save()

    def stage_done(self, stage: str, files: Iterable[str], seconds: float | None = None,
                   reused: bool = False) -> None:
        """A stage's results are computed; ``files`` are the output names that hold them."""
        with self._lock:
            self.data["stages"][stage] = {"key": self.data["stage_keys"][stage], "files": list(files),
                                          "seconds": seconds, "reused": reused}
        self.save()

    def file_written(self, name: str, path: Path) -> None:
        """An output (file or folder) is complete on disk: record every file in it with its size."""
        path = Path(path)
        paths = _files_under(path)
        with self._lock:
            self.data["files"][name] = {
                "path": os.path.relpath(path, self.folder),
                "paths": [os.path.relpath(p, self.folder) for p in paths],
                "bytes": sum(p.stat().st_size for p in paths)}
        self.save()

    def stage_complete_on_disk(self, stage: str) -> bool:
        """True when the stage was recorded done and every file it names is written."""
        entry = self.data["stages"].get(stage)
        return bool(entry) and all(f in self.data["files"] for f in entry["files"])

    def finish(self, status: str, error: str | None = None) -> None:
        """complete | failed | interrupted; a failure keeps the stage it stopped in."""
        with self._lock:
            self.data["status"] = status
            self.data["ended"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            if status != "complete":
                self.data["stopped_at"] = self.data.get("current_stage")
            if error:
                self.data["error"] = error
        self.save()


def start_run(folder: Path, video: str | Path, options: Any, model_names: Iterable[str],
              search: list[Path] | None, overwrite: bool = False, resume: bool = False) -> Manifest:
    """Check the folder (refuse another run's results unless overwrite/resume) and write a new run.json."""
    folder = Path(folder)
    found = existing_results(folder)
    old = read_manifest(folder) if found else None
    if found and not (overwrite or resume):
        raise OutputFolderError(f"{folder} already holds {_describe_old(old, found)}: pass --overwrite to replace "
                                f"them, --resume to reuse their finished stages, or choose another --out")
    video_info = video_fingerprint(video)
    opts = _plain(options)
    keys = stage_keys(video_info, opts)
    reuse: dict[str, dict[str, Any]] = {}
    if found and resume:
        if old is None:
            raise OutputFolderError(f"{folder} holds results without a {MANIFEST_NAME}, so they cannot be resumed: "
                                    f"pass --overwrite or choose another --out")
        reuse = _reusable(folder, old, keys)
    if found:
        _clear_for(folder, old, reuse)
    data = {
        "version": MANIFEST_VERSION, "status": "running", "current_stage": None,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "ended": None,
        "host": socket.gethostname(), "pid": os.getpid(),
        "inputs": {"video": video_info}, "options": opts, "stage_keys": keys,
        "models": model_files(model_names, search), "packages": package_versions(),
        "resumed_from": sorted(reuse) if reuse else None,
        "stages": {}, "files": {},
    }
    if reuse:  # carried over: the reused stages' entries and files stay valid
        data["files"] = {n: e for n, e in (old.get("files") or {}).items()
                         if any(n in s.get("files", []) for s in reuse.values())}
    manifest = Manifest(folder, data, reuse)
    manifest.save()
    return manifest


def _reusable(folder: Path, old: dict[str, Any], keys: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Old stages, in order, whose key matches and whose files are all still there with their sizes."""
    out = {}
    files = old.get("files") or {}
    for stage in STAGES:
        if stage in ALWAYS_RUN:
            break
        entry = (old.get("stages") or {}).get(stage)
        if not entry or entry.get("key") != keys[stage]:
            break
        intact = all(name in files and all((folder / p).is_file() for p in files[name]["paths"])
                     for name in entry.get("files", []))
        if not intact:
            break
        out[stage] = entry
    return out


def _clear_for(folder: Path, old: dict[str, Any] | None, reuse: dict[str, dict[str, Any]]) -> None:
    """Remove the old run's files except those of the stages being reused (no stale file survives)."""
    keep = {n for s in reuse.values() for n in s.get("files", [])}
    if old is None:
        remove_old_outputs(folder, None)
        return
    files = old.get("files") or {}
    dropped = {n: e for n, e in files.items() if n not in keep}
    remove_old_outputs(folder, {"files": dropped})
    listed = {Path(e["path"]).parts[0] for e in files.values() if e.get("path")}
    for name in KNOWN_OUTPUTS:  # our names the old manifest does not list (a run killed mid-write)
        if name == MANIFEST_NAME or name in listed:
            continue
        p = folder / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


# --------------------------------------------------------------------------- for callers running many folders


def plain_options(options: Any) -> dict[str, Any]:
    """Options as run.json records them (JSON values), to compare with a manifest's ``options``."""
    return json.loads(json.dumps(_plain(options), default=str))


def lock_busy(folder: Path) -> str | None:
    """Why ``folder`` is being written by a live run (its lock's owner), or None; never removes a lock."""
    lock = RunLock(Path(folder))
    if not lock.path.exists():
        return None
    owner = lock._owner()
    pid = owner.get("pid")
    if owner.get("host") == socket.gethostname() and isinstance(pid, int) and not _pid_alive(pid):
        return None  # stale: the next run takes it over
    return lock._busy_message()


def same_run(old: dict[str, Any], video: str | Path, options: Any) -> bool:
    """True when the manifest ``old`` was made from this video (same contents) with these options."""
    opts = plain_options(options)
    return old.get("options") == opts and old.get("stage_keys") == stage_keys(video_fingerprint(video), opts)


def foreign_entries(folder: Path) -> list[str]:
    """Names in ``folder`` that no run writes (not an output, the manifest, the lock or a temporary)."""
    from .atomic import TMP_TAG

    if not Path(folder).is_dir():
        return []
    return sorted(p.name for p in Path(folder).iterdir()
                  if p.name not in KNOWN_OUTPUTS and p.name != LOCK_NAME and TMP_TAG not in p.name)


def add_record(folder: Path, key: str, value: Any) -> bool:
    """Store ``value`` under ``key`` in a finished folder's run.json (under its lock); False when busy or absent."""
    lock = RunLock(Path(folder))
    try:
        lock.acquire()
    except OutputFolderError:
        return False
    try:
        data = read_manifest(Path(folder))
        if data is None:
            return False
        data[key] = value
        write_text_atomic(Path(folder) / MANIFEST_NAME, json.dumps(data, indent=1, default=str) + "\n")
        return True
    finally:
        lock.release()
