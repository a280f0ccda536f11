"""Whole-clip per-frame output arrays from a caller's allocator, so a stage can write them straight into
file-backed memory (``FrameStore.empty``) instead of RAM; without one they are plain ``np.zeros``.

An allocator is ``alloc(shape, dtype) -> ndarray`` and must return a ZERO-FILLED array (as ``np.zeros`` and
``FrameStore.empty`` do): stages only write the entries they compute and rely on the rest being zero.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

Alloc = Callable[[tuple[int, ...], Any], np.ndarray]


def zeros(alloc: Alloc | None, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """A zero-filled array of ``shape``/``dtype`` from ``alloc`` (None: ``np.zeros``, in RAM)."""
    shape = tuple(int(v) for v in shape)
    if alloc is None:
        return np.zeros(shape, dtype)
    arr = alloc(shape, np.dtype(dtype))
    if arr.shape != shape or arr.dtype != np.dtype(dtype):
        raise TypeError(f"allocator returned {arr.shape} {arr.dtype}, asked for {shape} {np.dtype(dtype)}")
    return arr


def zeros_like(alloc: Alloc | None, like: np.ndarray) -> np.ndarray:
    """``np.zeros_like(like)`` (C order) from ``alloc`` (None: in RAM)."""
    return zeros(alloc, like.shape, like.dtype)


def full(alloc: Alloc | None, shape: tuple[int, ...], value: Any, dtype: Any) -> np.ndarray:
    """``np.full(shape, value, dtype)`` from ``alloc`` (None: in RAM), filled one leading row at a time."""
    if alloc is None:
        return np.full(shape, value, dtype)
    arr = zeros(alloc, shape, dtype)
    if arr.ndim == 0:
        arr[...] = value
    for i in range(arr.shape[0] if arr.ndim else 0):
        arr[i] = value
    return arr
