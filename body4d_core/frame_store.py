"""Decoded frames kept in a file instead of RAM, so a long clip's host memory does not grow with its length.

The store is one raw uint8 file [T, H, W, 3] in a temporary folder inside the run's output folder.
Chunks are written with plain file writes (no page of the mapping is touched while decoding) and
the stages read ``store.frames``: an ordinary ndarray over a shared read/write memory map, so every
stage that indexes frames works unchanged. Pages a stage reads count in the process's resident
set (as file-backed pages) until dropped: a background pager drops them every ``interval``
seconds with ``madvise(MADV_DONTNEED)`` (the data stays in the file; the next read faults it back
in from the page cache), so the resident frames are those the stages read in that time, whatever
their access pattern. ``keep`` and ``empty`` put other per-frame arrays in files of the store too.
``close`` drops the mappings (each unmapped once no view of it is left) and deletes the folder,
also after a failure; a folder left by a killed run is removed by ``remove_stale``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import mmap
import os
import shutil
import threading
import uuid
from pathlib import Path

import numpy as np

from .atomic import TMP_TAG
from .errors import InputError, MemoryBudgetError

log = logging.getLogger(__name__)

PREFIX = ".frames"  # the store's folder: .frames.<id>.body4d-tmp inside the output folder
PAGER_INTERVAL = 0.25  # seconds between page drops (bounds the resident frames to what stages read in that time)


def remove_stale(folder: str | Path) -> list[Path]:
    """Delete frame stores left in ``folder`` by a killed run; returns them."""
    gone = []
    for p in Path(folder).glob(f"{PREFIX}.*{TMP_TAG}"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
            gone.append(p)
    return gone


class FrameStore:
    """uint8 frames [T, H, W, 3] in a file under ``folder`` with an ndarray view (``frames``) over it."""

    def __init__(self, folder: str | Path, num_frames: int, height: int, width: int,
                 interval: float = PAGER_INTERVAL) -> None:
        if num_frames < 1 or height < 1 or width < 1:
            raise InputError(f"frame store: bad shape ({num_frames}, {height}, {width}, 3)")
        self.shape = (int(num_frames), int(height), int(width), 3)
        self.frame_bytes = int(height) * int(width) * 3
        self.dir = Path(folder) / f"{PREFIX}.{uuid.uuid4().hex[:8]}{TMP_TAG}"
        self.dir.mkdir(parents=True)
        self.path = self.dir / "frames.u8"
        self._mm: mmap.mmap | None = None
        self._frames: np.ndarray | None = None
        self._stop = threading.Event()
        self._pager: threading.Thread | None = None
        self._extra: list[mmap.mmap] = []  # mappings of arrays moved out of RAM by ``keep``
        self.interval = interval
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), 0o600)
            os.ftruncate(self._fd, num_frames * self.frame_bytes)
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    def __enter__(self) -> "FrameStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return self.shape[0]

    def write(self, start: int, chunk: np.ndarray) -> None:
        """Store frames [start, start + len(chunk)) with a file write (the mapping's pages stay untouched)."""
        chunk = np.ascontiguousarray(chunk, np.uint8)
        if chunk.ndim != 4 or chunk.shape[1:] != self.shape[1:] or not 0 <= start <= self.shape[0] - len(chunk):
            raise InputError(f"frame store: chunk {chunk.shape} at {start} does not fit {self.shape}")
        view = memoryview(chunk.reshape(-1))
        offset = start * self.frame_bytes
        while view.nbytes:
            n = os.pwrite(self._fd, view, offset) if hasattr(os, "pwrite") else self._seek_write(view, offset)
            view, offset = view[n:], offset + n

    def _seek_write(self, view: memoryview, offset: int) -> int:
        os.lseek(self._fd, offset, os.SEEK_SET)
        return os.write(self._fd, view)

    @property
    def frames(self) -> np.ndarray:
        """uint8 [T, H, W, 3] over the file (mapped on first use; the pager starts with it)."""
        if self._frames is None:
            if self._mm is None and self._fd < 0:
                raise InputError("frame store: already closed")
            self._mm = mmap.mmap(self._fd, self.shape[0] * self.frame_bytes, access=mmap.ACCESS_WRITE)
            self._frames = np.ndarray(self.shape, np.uint8, buffer=self._mm)
            self._start_pager()
        return self._frames

    def empty(self, shape: tuple[int, ...], dtype: np.dtype | type = np.uint8) -> np.ndarray:
        """A zero-filled array in a new file of the store, paged like the frames: for a stage that fills a
        per-frame output (e.g. a tracker's packed masks) without holding it in RAM. The file's blocks are
        reserved up front where the system can (a full disk is then a clear error here, not a crash on a write
        through the mapping)."""
        return self._mapped(np.zeros(0, dtype).dtype, tuple(int(v) for v in shape), None)

    def holds(self, arr: np.ndarray) -> bool:
        """Whether ``arr`` (or the array it is a view of; of a container such as ``KeyframeDepth``, its ``maps``)
        lives in one of the store's files."""
        base = getattr(arr, "maps", arr)
        while isinstance(base, np.ndarray):
            base = base.base
        return base is not None and any(base is mm for mm in [self._mm, *self._extra] if mm is not None)

    def keep(self, arr: np.ndarray) -> np.ndarray:
        """A copy of ``arr`` in a new file of the store (same shape, dtype and values), paged like the frames:
        a stage's per-frame output (packed masks, vertices) leaves RAM for the rest of the run."""
        arr = np.ascontiguousarray(arr)
        if arr.nbytes == 0 or self._fd < 0:
            return arr
        return self._mapped(arr.dtype, arr.shape, arr)

    def _mapped(self, dtype: np.dtype, shape: tuple[int, ...], data: np.ndarray | None) -> np.ndarray:
        """A new file of ``shape``/``dtype`` (holding ``data``, else zeros) mapped as an ndarray."""
        if self._fd < 0:
            raise InputError("frame store: already closed")
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if nbytes == 0:
            return np.zeros(shape, dtype)
        path = self.dir / f"{uuid.uuid4().hex[:8]}.bin"
        try:
            with open(path, "w+b") as f:
                f.truncate(nbytes)
                if data is None:
                    _reserve(f.fileno(), nbytes, self.dir)
                else:
                    f.write(memoryview(data.reshape(-1).view(np.uint8)))
                    f.flush()
                mm = mmap.mmap(f.fileno(), nbytes, access=mmap.ACCESS_WRITE)
        except BaseException:
            path.unlink(missing_ok=True)  # nothing half-written is left behind
            raise
        self._extra.append(mm)
        self._start_pager()
        return np.ndarray(shape, dtype, buffer=mm)

    def drop_pages(self) -> None:
        """Drop the mappings' resident pages (they are read back from the files when needed again)."""
        if not (hasattr(mmap, "MADV_DONTNEED") and hasattr(mmap.mmap, "madvise")):
            return
        for mm in [self._mm, *self._extra]:
            if mm is not None:
                with contextlib.suppress(ValueError, OSError):  # closed meanwhile
                    mm.madvise(mmap.MADV_DONTNEED)

    def _start_pager(self) -> None:
        if self._pager is None and self.interval > 0 and hasattr(mmap, "MADV_DONTNEED"):
            self._pager = threading.Thread(target=self._page_out, name="body4d-frame-pager", daemon=True)
            self._pager.start()

    def _page_out(self) -> None:
        while not self._stop.wait(self.interval):
            self.drop_pages()

    def close(self) -> None:
        """Stop the pager, unmap, close and delete the folder (safe to call twice)."""
        self._stop.set()
        if self._pager is not None:
            self._pager.join()
            self._pager = None
        self._frames = None
        self._extra = []
        self._mm = None  # never closed by hand: a view a stage still holds keeps it mapped; unmapped with the last one
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.dir.exists():
            log.warning("could not remove the frame store %s (delete it by hand)", self.dir)


def _reserve(fd: int, nbytes: int, folder: Path) -> None:
    """Allocate a new file's blocks (writes through a mapping of a sparse file on a full disk kill the process
    with SIGBUS); a file system that cannot reserve is left sparse after a free-space check."""
    try:
        os.posix_fallocate(fd, 0, nbytes)
    except AttributeError:  # no posix_fallocate (Windows, macOS): check the free space at least
        check_disk(folder, nbytes, "the run's per-frame outputs")
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise MemoryBudgetError(f"a per-frame output needs {nbytes / 2**30:.1f} GiB in {folder} but its disk "
                                    f"is full; free some space or pick another output folder") from err
        check_disk(folder, nbytes, "the run's per-frame outputs")  # EINVAL / EOPNOTSUPP: the file system cannot reserve blocks


def check_disk(folder: str | Path, need: int, what: str = "the decoded frames") -> None:
    """Refuse, before decoding, a store larger than the free space of ``folder``'s disk (one clear sentence)."""
    free = shutil.disk_usage(folder).free
    if need > free:
        raise MemoryBudgetError(f"{what} need {need / 2**30:.1f} GiB in {folder} but its disk has "
                                f"{free / 2**30:.1f} GiB free; free some space, pick another output folder, or load "
                                f"fewer frames (frame_load_cap, select_every_nth) or a smaller size (max_side)")


def decode_to_store(path: str | os.PathLike, opts: object, folder: str | Path, hooks: object = None,
                    interval: float = PAGER_INTERVAL) -> tuple[FrameStore, object]:
    """Decode a video chunk by chunk into a new FrameStore under ``folder``; returns (store, clip)."""
    from .runtime import NULL_HOOKS
    from .video import LoadOptions, decode_into, make_clip, plan

    opts = opts or LoadOptions()
    info, sel, backend = plan(path, opts)
    check_disk(folder, int(sel.indices.size) * sel.height * sel.width * 3)
    store = FrameStore(folder, int(sel.indices.size), sel.height, sel.width, interval)
    try:
        decode_into(path, sel, info, backend, store.write, hooks or NULL_HOOKS)
    except BaseException:
        store.close()
        raise
    return store, make_clip(path, info, sel)
