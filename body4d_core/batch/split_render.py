"""One video's overlay render over every worker, streamed to the one encoder in frame order.

The clip is cut into contiguous frame ranges of whole render batches (exactly the batches one
worker would render, so every frame's pixels equal a one-worker render); the ranges are dealt to
the workers in turn, each renders its range on its own device (``VideoWorker.render_frames``),
and the driver hands the rendered ranges to the MP4 stream in frame order. At most ``depth``
ranges per worker are in flight, so memory is a few ranges whatever the clip's length.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from typing import Any, Callable, Sequence

import numpy as np

from ..data import Bodies, Camera
from ..errors import InputError
from ..render import BatchSink, check_inputs, iter_render, render_bodies
from ..runtime import NULL_HOOKS, Hooks

log = logging.getLogger(__name__)

DEPTH = 2  # ranges in flight per worker: one rendering, one waiting (its frames already sent)
WAIT_S = 0.5  # how often the driver checks for an interrupt while it waits for a range


def frame_ranges(n_frames: int, batch_size: int, batches_per_range: int = 1) -> list[tuple[int, int]]:
    """Contiguous [start, stop) frame ranges of ``batches_per_range`` whole render batches each (the last may be short)."""
    if batch_size < 1 or batches_per_range < 1:
        raise InputError(f"need a render batch and batches per range >= 1, got {batch_size} and {batches_per_range}")
    step = batch_size * batches_per_range
    return [(a, min(n_frames, a + step)) for a in range(0, n_frames, step)]


def slice_bodies(bodies: Bodies, start: int, stop: int) -> Bodies:
    """The bodies of frames [start, stop) with what the render reads (parameters, flags, vertices, 2D keypoints)."""
    def part(arr: np.ndarray | None) -> np.ndarray | None:
        return None if arr is None else np.ascontiguousarray(arr[:, start:stop])  # also reads a frame store's slice

    return Bodies(bodies.obj_ids, part(bodies.flags), {k: part(v) for k, v in bodies.params.items()},
                  bodies.image_size, keypoints_2d=part(bodies.keypoints_2d), vertices=part(bodies.vertices),
                  faces=bodies.faces)


def render_range(frames: np.ndarray | None, bodies: Bodies, camera: Camera, mode: str, batch_size: int,
                 **kwargs: Any) -> np.ndarray:
    """uint8 images [T, H, W, 3] of a whole (sliced) clip, rendered as ``render_bodies`` renders it with a BatchSink."""
    h, w = bodies.image_size
    out = np.empty((bodies.num_frames, h, w, 3), np.uint8)
    for sl, img, _, _ in iter_render(frames, bodies, camera, mode, NULL_HOOKS, max(1, batch_size), **kwargs):
        out[sl] = img
    return out


def render_split(workers: Sequence[Any], frames: Any, bodies: Bodies, camera: Camera, mode: str = "overlay",
                 hooks: Hooks = NULL_HOOKS, batch_size: int = 16, opacity: float = 0.85,
                 vertices_fn: Callable | None = None, device: Any = None, return_ids: bool = False,
                 chunk: int | None = None, depth: int = DEPTH) -> tuple[np.ndarray, ...]:
    """``render_bodies`` (same arguments and result) with a BatchSink's batches rendered by ``workers``.

    Only a streamed render (``hooks`` a BatchSink) of at least two batches is split; any other call
    is ``render_bodies`` itself (a vertices function stays in this process: it may not travel).
    """
    kwargs = dict(opacity=opacity, vertices_fn=vertices_fn, device=device, return_ids=return_ids, chunk=chunk)
    if not isinstance(hooks, BatchSink) or vertices_fn is not None or len(workers) < 2:
        return render_bodies(frames, bodies, camera, mode, hooks, batch_size, **kwargs)
    bg, camera = check_inputs(frames, bodies, camera, mode, opacity)
    batch = max(1, hooks.batch_size)
    ranges = frame_ranges(bodies.num_frames, batch)
    if len(ranges) < 2:
        return render_bodies(frames, bodies, camera, mode, hooks, batch_size, **kwargs)
    opts = dict(opacity=opacity, device=device, chunk=chunk)
    log.info("render: %d ranges of %d frames over %d workers", len(ranges), batch, len(workers))

    def submit(i: int) -> Any:
        a, b = ranges[i]
        part = None if bg is None else np.ascontiguousarray(bg[a:b])
        cam = Camera(camera.intrinsics[a:b], camera.image_size, camera.source)
        return workers[i % len(workers)].render_frames.remote(part, slice_bodies(bodies, a, b), cam, mode, batch,
                                                               **opts)

    _stream_in_order(ranges, submit, hooks, max(1, depth) * len(workers))
    h, w = bodies.image_size
    empty = (np.zeros((0, h, w, 3), np.uint8), np.zeros((0, h, w), np.float32))
    return (*empty, np.zeros((0, h, w), np.int16)) if return_ids else empty


def _stream_in_order(ranges: list[tuple[int, int]], submit: Callable[[int], Any], sink: BatchSink,
                     window: int) -> None:
    """Keep ``window`` ranges submitted; put each one's images into the sink in frame order."""
    import ray

    total = ranges[-1][1]
    pending: deque = deque()
    nxt = 0
    try:
        while nxt < len(ranges) or pending:
            while nxt < len(ranges) and len(pending) < window:
                sink.check_interrupt()
                pending.append((ranges[nxt][1], submit(nxt)))
                nxt += 1
            stop, ref = pending[0]
            while not ray.wait([ref], timeout=WAIT_S)[0]:
                sink.check_interrupt()
            images = _get(ray, ref)
            pending.popleft()
            sink.put(images)
            sink.progress(stop, total)
    except BaseException:
        for _, ref in pending:  # the ranges not handed over yet: nobody will read them
            with contextlib.suppress(Exception):  # a dead worker's: the original error matters
                ray.cancel(ref)
        raise


def _get(ray: Any, ref: Any) -> np.ndarray:
    """A range's images; a worker's error is raised as itself (its message, not Ray's wrapper), chained to Ray's."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as err:
        cause = getattr(err, "cause", None)
        if isinstance(cause, Exception):
            raise cause from err
        raise
