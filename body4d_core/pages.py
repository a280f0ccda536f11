"""Dropping the resident pages of a slice of a file-mapped array (a frame store's frames or outputs).

A whole-clip pass over a store array (e.g. every frame's mask) maps its pages faster than the store's pager
drops them; such a pass drops each chunk's pages once it is done with it, as the pager would. The data stays
in the file (the next read faults it back in from the page cache).
"""

from __future__ import annotations

import contextlib
import mmap

import numpy as np


def drop_resident(arr: np.ndarray) -> bool:
    """Drop the resident pages spanned by ``arr`` when it is a view of an ndarray over an ``mmap`` (a no-op for
    arrays in RAM and where madvise is missing); returns whether it did. Neighbouring bytes on the span's first
    and last page are dropped too (harmless: they are read back from the file)."""
    if not (hasattr(mmap, "MADV_DONTNEED") and hasattr(mmap.mmap, "madvise")) or arr.size == 0:
        return False
    base = arr.base
    while isinstance(base, np.ndarray):
        base = base.base
    if not isinstance(base, mmap.mmap) or base.closed:
        return False
    start = arr.ctypes.data - np.frombuffer(base, np.uint8, count=1).ctypes.data  # bytes from the mapping's start
    offsets = [(n - 1) * s for n, s in zip(arr.shape, arr.strides)]
    lo = start + sum(o for o in offsets if o < 0)
    hi = start + sum(o for o in offsets if o > 0) + arr.itemsize
    page = mmap.PAGESIZE
    lo, hi = lo // page * page, min(len(base), -(-hi // page) * page)
    if hi <= lo:
        return False
    with contextlib.suppress(ValueError, OSError):  # closed meanwhile
        base.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
        return True
    return False
