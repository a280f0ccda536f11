"""Atomic file writes: every artefact appears under its final name complete, or not at all.

A writer gets a temporary path in the destination folder (same filesystem, so the final
``os.replace`` is atomic); on success the file is flushed to disk and renamed, on any error the
temporary file is removed and the error re-raised. A crash or a full disk therefore never leaves
a truncated file under a name a later run would trust.
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from pathlib import Path
from typing import Iterator

from .errors import Body4DError

TMP_TAG = ".body4d-tmp"  # every temporary name contains this (so leftovers are easy to find and clean)


class OutputWriteError(Body4DError, OSError):
    """An output could not be written (disk full, read-only folder, ...); nothing partial was left."""


def temp_path_for(path: str | Path) -> Path:
    """A unique temporary name beside ``path`` that keeps its suffix (writers that infer the format still work)."""
    path = Path(path)
    return path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}{TMP_TAG}{path.suffix}")


def _fsync(path: Path) -> None:
    """Flush a written file to disk (ignored where the platform cannot)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def describe_os_error(err: OSError, path: Path) -> str:
    """One sentence for a write failure, naming the file and what to do."""
    if err.errno == errno.ENOSPC:
        return f"the disk is full while writing {path}: free space or choose another output folder"
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write {path}: the folder is not writable (choose another output folder)"
    return f"could not write {path}: {err.strerror or err}"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; rename it to ``path`` once the block succeeds."""
    path = Path(path)
    tmp = temp_path_for(path)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(err, Body4DError):
            raise
        raise OutputWriteError(describe_os_error(err, path)) from err
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically; returns ``path``."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def remove_temporaries(folder: str | Path) -> list[Path]:
    """Delete leftover temporary files (from a killed run) anywhere under ``folder``; returns them."""
    folder = Path(folder)
    gone = []
    if folder.is_dir():
        for p in folder.rglob(f"*{TMP_TAG}*"):
            with contextlib.suppress(OSError):
                p.unlink()
                gone.append(p)
    return gone
