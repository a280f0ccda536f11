"""Video decoding with frame selection, resizing and a memory budget checked before decoding.

PyAV (threaded FFmpeg decoding) is the default, decord and OpenCV the alternatives; all
three resize while or right after decoding. Frames are decoded in chunks straight into one preallocated output
(uint8 numpy, or a float torch tensor for ComfyUI's IMAGE) so peak memory is the output
plus one chunk.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .data import Clip
from .errors import MemoryBudgetError, VideoError
from .runtime import NULL_HOOKS, Hooks

log = logging.getLogger(__name__)

BACKENDS = ("auto", "decord", "pyav", "opencv")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".gif", ".mpg", ".mpeg", ".wmv", ".flv")
CHUNK = 32
NOT_VIDEO_FORMATS = {"tty", "txt", "srt", "ass", "webvtt", "json", "lrc"}


class NotAVideoError(VideoError):
    """The file is readable but is not a video (e.g. text that FFmpeg renders as ANSI art)."""


@dataclass(frozen=True)
class VideoInfo:
    """What a video holds before any selection."""

    path: str
    num_frames: int
    fps: float
    height: int  # as displayed (after the rotation below)
    width: int
    rotation: int = 0  # degrees counter-clockwise that turn the stored frames upright (0, 90, 180, 270)
    rotation_source: str = ""  # "matrix" (display-matrix side data), "tag" (legacy rotate tag) or ""
    times: np.ndarray | None = None  # presentation time (s) of every frame, when the container has them


@dataclass(frozen=True)
class Orientation:
    """Rotation and frame timing read from the container (PyAV) before decoding."""

    rotation: int = 0
    source: str = ""
    raw_height: int = 0  # as stored, before the rotation
    raw_width: int = 0
    times: np.ndarray | None = None


@dataclass(frozen=True)
class Selection:
    """Which source frames to decode and at what size."""

    indices: np.ndarray  # int64 source frame indices, increasing
    fps: float  # fps of the selected sequence
    height: int
    width: int


def check_video_path(path: str | os.PathLike) -> Path:
    """The path as a Path, or one clear VideoError when it is missing or not a file."""
    p = Path(path)
    if not p.exists():
        raise VideoError(f"video not found: {p}")
    if not p.is_file():
        raise VideoError(f"not a file: {p}")
    if p.stat().st_size == 0:
        raise VideoError(f"the video file is empty (0 bytes): {p}")
    return p


def resolve_inside(base: str | os.PathLike, name: str) -> Path:
    """Join a user-given relative name to base, refusing anything that escapes base."""
    base_p = Path(base).resolve()
    p = (base_p / name).resolve()
    if p != base_p and base_p not in p.parents:
        raise VideoError(f"{name!r} points outside the allowed folder; pick a file inside it")
    return p


# --------------------------------------------------------------------------- probing


def _probe_decord(path: str) -> VideoInfo:
    import decord

    vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    n = len(vr)
    h, w = vr[0].shape[:2] if n else (0, 0)
    return VideoInfo(path, n, float(vr.get_avg_fps()), int(h), int(w))


def _probe_pyav(path: str) -> VideoInfo:
    import av

    with av.open(path) as container:
        if container.format.name in NOT_VIDEO_FORMATS:
            raise NotAVideoError(f"{Path(path).name} is not a video (FFmpeg reads it as {container.format.name!r})")
        if not container.streams.video:
            raise VideoError(f"no video stream in {Path(path).name}")
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
        n = stream.frames
        if not n:  # some containers do not store a count: count by decoding
            n = sum(1 for _ in container.decode(stream))
        return VideoInfo(path, int(n), fps, int(stream.codec_context.height), int(stream.codec_context.width))


def _probe_pyav_format_only(path: str) -> None:
    """Refuse files FFmpeg only reads as text art, whatever decoder was chosen."""
    import av

    try:
        with av.open(path) as container:
            if container.format.name in NOT_VIDEO_FORMATS:
                raise NotAVideoError(f"{Path(path).name} is not a video (FFmpeg reads it as {container.format.name!r})")
    except av.FFmpegError:
        return


def _probe_opencv(path: str) -> VideoInfo:
    import cv2

    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            raise VideoError(f"OpenCV cannot open {Path(path).name}")
        return VideoInfo(path, int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), float(cap.get(cv2.CAP_PROP_FPS)) or 25.0,
                         int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)))
    finally:
        cap.release()


_PROBES = {"decord": _probe_decord, "pyav": _probe_pyav, "opencv": _probe_opencv}


def _tag_rotation(metadata: dict) -> int:
    """Counter-clockwise degrees from a legacy ``rotate`` tag (which counts clockwise); 0 when absent or odd."""
    for key, value in metadata.items():
        if key.lower() == "rotate":
            try:
                cw = int(float(value))
            except ValueError:
                return 0
            return (-cw) % 360 if cw % 90 == 0 else 0
    return 0


def read_orientation(path: str) -> Orientation:
    """Display rotation (display-matrix side data, else the legacy ``rotate`` tag) and frame times, via PyAV.

    Phones store portrait video as landscape frames plus a rotation; every decoder here turns
    frames upright by it. Times come from the packets (no decoding) and reveal variable frame rates.
    """
    try:
        import av
    except ImportError:
        return Orientation()
    try:
        with av.open(path) as container:
            if not container.streams.video:
                return Orientation()
            stream = container.streams.video[0]
            raw_h, raw_w = int(stream.codec_context.height), int(stream.codec_context.width)
            tb = float(stream.time_base or 0)
            pts = [p.pts for p in container.demux(stream) if p.pts is not None]
            container.seek(0)
            rotation, source = 0, ""
            for frame in container.decode(stream):
                matrix = int(round(getattr(frame, "rotation", 0) or 0))
                if matrix % 90 == 0 and matrix % 360:
                    rotation, source = matrix % 360, "matrix"
                break
            if not source and _tag_rotation(dict(stream.metadata)):
                rotation, source = _tag_rotation(dict(stream.metadata)), "tag"
    except Exception:  # noqa: BLE001 - the decoders report unreadable files themselves
        return Orientation()
    times = np.sort(np.asarray(pts, np.float64)) * tb if pts and tb else None
    return Orientation(rotation, source, raw_h, raw_w, times)


def _upright(info: VideoInfo, orient: Orientation, backend: str) -> VideoInfo:
    """info with the displayed size, the rotation and the frame times from the container."""
    from dataclasses import replace

    h, w = info.height, info.width
    if orient.raw_height and orient.raw_width:
        h, w = orient.raw_height, orient.raw_width
        if orient.rotation in (90, 270):
            h, w = w, h
    times = orient.times if orient.times is not None and orient.times.size == info.num_frames else None
    return replace(info, height=h, width=w, rotation=orient.rotation, rotation_source=orient.source, times=times)


def available_backends() -> list[str]:
    """Decoders importable here, fastest first (PyAV's threaded decoding led bench/bench_decode.py)."""
    out = []
    for name, mod in (("pyav", "av"), ("decord", "decord"), ("opencv", "cv2")):
        try:
            __import__(mod)
            out.append(name)
        except ImportError:
            continue
    return out


def _backend_order(backend: str) -> list[str]:
    if backend not in BACKENDS:
        raise VideoError(f"unknown decoder {backend!r}; use one of {', '.join(BACKENDS)}")
    avail = available_backends()
    if backend != "auto":
        if backend not in avail:
            raise VideoError(f"decoder {backend!r} is not installed (available: {', '.join(avail) or 'none'})")
        return [backend]
    if not avail:
        raise VideoError("no video decoder installed: pip install decord av")
    return avail


def probe(path: str | os.PathLike, backend: str = "auto") -> tuple[VideoInfo, str]:
    """Frame count, fps and size of a video, and the backend that could read it."""
    p = str(check_video_path(path))
    errors = []
    order = _backend_order(backend)
    if "pyav" in available_backends() and "pyav" not in order:
        _probe_pyav_format_only(p)
    for name in order:
        try:
            info = _PROBES[name](p)
        except NotAVideoError:
            raise
        except VideoError as err:
            errors.append(f"{name}: {err}")
            continue
        except Exception as err:  # noqa: BLE001 - decoders raise many types on bad files
            errors.append(f"{name}: {type(err).__name__}: {err}")
            continue
        if info.num_frames > 0 and info.height > 0 and info.width > 0:
            return _upright(info, read_orientation(p), name), name
        errors.append(f"{name}: no frames")
    kind = "not a video" if Path(p).suffix.lower() not in VIDEO_EXTENSIONS else "unreadable, corrupt or empty"
    raise VideoError(f"cannot read {Path(p).name}: {kind} ({'; '.join(errors)})")


# --------------------------------------------------------------------------- selection


def scaled_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """Size with the longer side at most max_side (0 = unchanged), aspect kept, even sides."""
    if max_side <= 0 or max(height, width) <= max_side:
        return height, width
    s = max_side / max(height, width)
    h = max(2, int(round(height * s / 2)) * 2)
    w = max(2, int(round(width * s / 2)) * 2)
    return h, w


def select_frames(info: VideoInfo, *, skip_first_frames: int = 0, frame_load_cap: int = 0,
                  select_every_nth: int = 1, force_rate: float = 0.0, max_side: int = 0) -> Selection:
    """Source frame indices after force_rate, skip, stride and cap (in that order)."""
    if skip_first_frames < 0 or frame_load_cap < 0 or force_rate < 0 or max_side < 0:
        raise VideoError("skip_first_frames, frame_load_cap, force_rate and max_side must be >= 0")
    if select_every_nth < 1:
        raise VideoError(f"select_every_nth must be >= 1, got {select_every_nth}")
    fps = info.fps
    vfr = variable_rate(info.times)
    if vfr and not force_rate:
        log.warning("%s has a variable frame rate (frame intervals %s); using its average rate %.3g fps. Set "
                    "force_rate to resample it by time.", Path(info.path).name, vfr, fps)
    if force_rate and vfr:
        idx = _indices_by_time(info.times, force_rate)
        fps = float(force_rate)
    elif force_rate and abs(force_rate - fps) > 1e-6:
        duration = info.num_frames / fps
        n_out = max(1, int(math.floor(duration * force_rate + 1e-9)))
        idx = np.floor(np.arange(n_out) * fps / force_rate + 1e-9).astype(np.int64)
        idx = idx[idx < info.num_frames]
        fps = float(force_rate)
    else:
        idx = np.arange(info.num_frames, dtype=np.int64)
    idx = idx[skip_first_frames:][::select_every_nth]
    if frame_load_cap:
        idx = idx[:frame_load_cap]
    if idx.size == 0:
        raise VideoError(
            f"the selection keeps no frame: the video has {info.num_frames} frames; skip_first_frames="
            f"{skip_first_frames}, select_every_nth={select_every_nth}, force_rate={force_rate:g}. "
            "Lower skip_first_frames or the stride."
        )
    h, w = scaled_size(info.height, info.width, max_side)
    return Selection(idx, fps / select_every_nth, h, w)


def variable_rate(times: np.ndarray | None) -> str:
    """"a-b ms" when frame intervals vary by more than a fifth of their median (and 2 ms), else ""."""
    if times is None or times.size < 3:
        return ""
    d = np.diff(times)
    med = float(np.median(d))
    if med <= 0 or float(np.abs(d - med).max()) <= max(0.2 * med, 0.002):
        return ""
    return f"{d.min() * 1000:.0f}-{d.max() * 1000:.0f} ms"


def _indices_by_time(times: np.ndarray, rate: float) -> np.ndarray:
    """For each tick of a ``rate`` fps clock from the first frame, the frame on screen at that time."""
    span = float(times[-1] - times[0]) + float(np.median(np.diff(times)))
    ticks = times[0] + np.arange(max(1, int(math.floor(span * rate + 1e-9)))) / rate
    return np.clip(np.searchsorted(times, ticks + 1e-6, side="right") - 1, 0, times.size - 1).astype(np.int64)


# --------------------------------------------------------------------------- memory


def available_ram() -> int:
    """Bytes of RAM available now."""
    import psutil

    return int(psutil.virtual_memory().available)


def check_budget(sel: Selection, bytes_per_value: int, budget_bytes: int | None = None,
                 image_batch: bool = False) -> int:
    """Bytes the frames will take; raises MemoryBudgetError (with what to do) over budget.

    budget_bytes None or 0 means half the RAM available now. ``image_batch``: the frames become a ComfyUI
    IMAGE batch (one tensor, every frame in RAM at once), so the message also says what a frame costs there
    and that the headless run keeps long videos on disk instead.
    """
    need = int(sel.indices.size) * sel.height * sel.width * 3 * bytes_per_value
    budget = budget_bytes or available_ram() // 2
    if need <= budget:
        return need
    per_frame = sel.height * sel.width * 3 * bytes_per_value
    fit = int(budget // per_frame)
    side = max(2, int(max(sel.height, sel.width) * math.sqrt(budget / need)) // 2 * 2)
    head = (f"loading {sel.indices.size} frames of {sel.width}x{sel.height} needs {need / 2**30:.1f} GiB but the "
            f"budget is {budget / 2**30:.1f} GiB. ")
    if image_batch:
        head += (f"An IMAGE batch holds every frame in RAM at once ({per_frame / 2**20:.1f} MiB a frame at this "
                 f"size); for a long video use the headless run (python -m body4d_core run), which keeps the frames "
                 f"on disk, or load it in parts (skip_first_frames + frame_load_cap). ")
    if fit >= 1:
        raise MemoryBudgetError(head + f"Set frame_load_cap between 1 and {fit}, raise select_every_nth, "
                                f"or set max_side to about {side}.")
    side = max(2, int(max(sel.height, sel.width) * math.sqrt(budget / per_frame)) // 2 * 2)
    raise MemoryBudgetError(head + f"Even one frame is over the budget: set max_side to about {side}.")


# --------------------------------------------------------------------------- decoding


def _chunks(indices: np.ndarray, size: int = CHUNK) -> Iterator[np.ndarray]:
    for s in range(0, indices.size, size):
        yield indices[s:s + size]


def _decode_decord(path: str, sel: Selection, info: VideoInfo) -> Iterator[np.ndarray]:
    import decord

    kw = {}
    if not info.rotation and (sel.height, sel.width) != (info.height, info.width):
        kw = {"width": sel.width, "height": sel.height}  # rotated video: decord turns it upright, we resize after
    vr = decord.VideoReader(path, ctx=decord.cpu(0), **kw)
    for chunk in _chunks(sel.indices):
        yield vr.get_batch(chunk.tolist()).asnumpy()


def _resize(frame: np.ndarray, sel: Selection) -> np.ndarray:
    if frame.shape[:2] == (sel.height, sel.width):
        return frame
    import cv2

    return cv2.resize(frame, (sel.width, sel.height), interpolation=cv2.INTER_AREA)


def _turn(frame: np.ndarray, rotation: int) -> np.ndarray:
    """A stored frame turned upright by ``rotation`` degrees counter-clockwise."""
    return np.rot90(frame, k=rotation // 90) if rotation else frame


def _decode_pyav(path: str, sel: Selection, info: VideoInfo) -> Iterator[np.ndarray]:
    import av

    h, w = (sel.width, sel.height) if info.rotation in (90, 270) else (sel.height, sel.width)
    wanted = sel.indices
    buf: list[np.ndarray] = []
    pos = 0
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(container.decode(stream)):
            if pos >= wanted.size:
                break
            while pos < wanted.size and wanted[pos] == i:  # force_rate may repeat a frame
                buf.append(_turn(frame.to_ndarray(format="rgb24", width=w, height=h), info.rotation))
                pos += 1
            if len(buf) >= CHUNK:
                yield np.stack(buf)
                buf = []
    if buf:
        yield np.stack(buf)
    if pos < wanted.size:
        raise VideoError(f"{Path(path).name} ended after fewer frames than its header said ({pos} of {wanted.size} read)")


def _decode_opencv(path: str, sel: Selection, info: VideoInfo) -> Iterator[np.ndarray]:
    import cv2

    cap = cv2.VideoCapture(path)
    cap.set(cv2.CAP_PROP_ORIENTATION_AUTO, 0)  # frames as stored: turned by the container's rotation below
    wanted = sel.indices
    buf: list[np.ndarray] = []
    pos = 0
    i = 0
    try:
        while pos < wanted.size:
            ok, bgr = cap.read()
            if not ok:
                raise VideoError(f"{Path(path).name} ended early ({pos} of {wanted.size} frames read)")
            while pos < wanted.size and wanted[pos] == i:
                buf.append(_resize(np.ascontiguousarray(_turn(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), info.rotation)), sel))
                pos += 1
            if len(buf) >= CHUNK:
                yield np.stack(buf)
                buf = []
            i += 1
    finally:
        cap.release()
    if buf:
        yield np.stack(buf)


_DECODERS = {"decord": _decode_decord, "pyav": _decode_pyav, "opencv": _decode_opencv}


def iter_chunks(path: str | os.PathLike, sel: Selection, info: VideoInfo, backend: str) -> Iterator[np.ndarray]:
    """uint8 [t, H, W, 3] chunks of the selected frames, in order."""
    for chunk in _DECODERS[backend](str(path), sel, info):
        yield _resize_batch(chunk, sel)


def _resize_batch(chunk: np.ndarray, sel: Selection) -> np.ndarray:
    if chunk.shape[1:3] == (sel.height, sel.width):
        return chunk
    return np.stack([_resize(f, sel) for f in chunk])


def decode_into(path: str | os.PathLike, sel: Selection, info: VideoInfo, backend: str,
                write: Callable[[int, np.ndarray], None], hooks: Hooks = NULL_HOOKS) -> None:
    """Decode the selection chunk by chunk, handing each chunk to write(start, chunk)."""
    done = 0
    total = int(sel.indices.size)
    for chunk in _prefetch(iter_chunks(path, sel, info, backend)):
        hooks.check_interrupt()
        write(done, chunk)
        done += chunk.shape[0]
        hooks.progress(done, total)
    if done != total:
        raise VideoError(f"decoded {done} frames but expected {total}")


def _prefetch(chunks: Iterator[np.ndarray], depth: int = 2) -> Iterator[np.ndarray]:
    """Decode the next chunks in a background thread while the caller converts this one.

    The decoders release the GIL, so decoding overlaps the conversion to IMAGE. The
    thread stops at the end, on an error (re-raised here) or when the consumer stops.
    """
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def worker() -> None:
        try:
            for chunk in chunks:
                while not stop.is_set():
                    try:
                        q.put(chunk, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(end)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            q.put(err)

    thread = threading.Thread(target=worker, name="body4d-decode", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


@dataclass
class LoadOptions:
    """User choices for loading a video (VideoHelperSuite's names)."""

    skip_first_frames: int = 0
    frame_load_cap: int = 0
    select_every_nth: int = 1
    force_rate: float = 0.0
    max_side: int = 0
    backend: str = "auto"
    memory_budget_bytes: int | None = None


def plan(path: str | os.PathLike, opts: LoadOptions) -> tuple[VideoInfo, Selection, str]:
    """Probe the file and select frames; no frame is decoded yet."""
    info, backend = probe(path, opts.backend)
    sel = select_frames(info, skip_first_frames=opts.skip_first_frames, frame_load_cap=opts.frame_load_cap,
                        select_every_nth=opts.select_every_nth, force_rate=opts.force_rate,
                        max_side=opts.max_side)
    return info, sel, backend


def make_clip(path: str | os.PathLike, info: VideoInfo, sel: Selection, frames: np.ndarray | None = None) -> Clip:
    """The clip descriptor of a selection."""
    return Clip(fps=sel.fps, num_frames=int(sel.indices.size), image_size=(sel.height, sel.width),
                source=str(path), source_size=(info.height, info.width), frame_indices=sel.indices, frames=frames)


def load_video(path: str | os.PathLike, opts: LoadOptions | None = None,
               hooks: Hooks = NULL_HOOKS) -> tuple[np.ndarray, Clip]:
    """Decode a video to uint8 frames [T, H, W, 3] plus its Clip descriptor."""
    opts = opts or LoadOptions()
    info, sel, backend = plan(path, opts)
    check_budget(sel, 1, opts.memory_budget_bytes)
    out = np.empty((sel.indices.size, sel.height, sel.width, 3), np.uint8)

    def write(start: int, chunk: np.ndarray) -> None:
        out[start:start + chunk.shape[0]] = chunk

    decode_into(path, sel, info, backend, write, hooks)
    return out, make_clip(path, info, sel)


def load_video_tensor(path: str | os.PathLike, opts: LoadOptions | None = None, dtype=None,
                      hooks: Hooks = NULL_HOOKS):
    """Decode straight into a float torch tensor [T, H, W, 3] in 0..1 (ComfyUI IMAGE layout)."""
    import torch

    dtype = dtype or torch.float32
    opts = opts or LoadOptions()
    info, sel, backend = plan(path, opts)
    check_budget(sel, torch.empty((), dtype=dtype).element_size(), opts.memory_budget_bytes, image_batch=True)
    out = torch.empty((sel.indices.size, sel.height, sel.width, 3), dtype=dtype)
    scale = 1.0 / 255.0

    def write(start: int, chunk: np.ndarray) -> None:
        dst = out[start:start + chunk.shape[0]]
        dst.copy_(torch.from_numpy(chunk))
        dst.mul_(scale)

    decode_into(path, sel, info, backend, write, hooks)
    return out, make_clip(path, info, sel)


def select_from_frames(n_frames: int, fps: float, height: int, width: int, opts: LoadOptions) -> Selection:
    """Apply the same selection rules to frames already in memory (an IMAGE batch / VIDEO)."""
    info = VideoInfo("<frames>", n_frames, fps, height, width)
    return select_frames(info, skip_first_frames=opts.skip_first_frames, frame_load_cap=opts.frame_load_cap,
                         select_every_nth=opts.select_every_nth, force_rate=opts.force_rate,
                         max_side=opts.max_side)
