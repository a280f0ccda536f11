"""SAM-3 mask propagation from point/box prompts on any frames, forward, backward or both.

Frames stream one at a time from the CPU to the device, the tracker's memory bank is
pruned to the frames it can still attend to, and masks leave the device bit-packed, so
device memory stays flat however long the clip is. The backbone runs once per frame for all
objects; on tracked frames the objects also share one batched memory attention + mask decoder
(tracker_step.py), the next frame is read and pinned while the device computes, and nothing
waits for the device except masks landing a few frames late (see SpeedOptions).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..alloc import Alloc, zeros
from ..data import ObjectPrompt, Prompts, Tracks, check_same_frames
from ..errors import InputError, MemoryBudgetError
from ..runtime import NULL_HOOKS, Hooks, autocast
from ..runtime import upload as to_device
from .frames import FrameSource, as_frame_source
from .compiled import CompiledBackbone
from .fused_backbone import FusedBackbone
from .graphs import GraphedDecoder, GraphedFeatures
from .loading import Sam3Bundle
from .tracker_step import can_batch, tracked_step

log = logging.getLogger(__name__)

DIRECTIONS = ("both", "forward", "backward")


def pack_bits_torch(masks: torch.Tensor) -> torch.Tensor:
    """Bit-pack bool [..., H, W] along W on the masks' device; same layout as numpy.packbits."""
    width = masks.shape[-1]
    pad = (-width) % 8
    m = masks.to(torch.uint8)
    if pad:
        m = F.pad(m, (0, pad))
    m = m.reshape(*m.shape[:-1], -1, 8)
    # bit shifts made on the device: a host-built weight tensor would be a synced upload every frame
    shifts = torch.arange(7, -1, -1, dtype=torch.uint8, device=m.device)  # numpy.packbits order (big-endian)
    # the 8 shifted bits are disjoint, so a uint8 sum cannot overflow: no int32/int64 intermediates
    return (m << shifts).sum(-1, dtype=torch.uint8)


@dataclass(frozen=True)
class SpeedOptions:
    """Propagation speed-ups (all on by default; all off is the plain per-object reference path).

    ``batch_objects``: on tracked frames run memory attention + mask decoder for all objects
    as one batch (the backbone runs once per frame either way). ``async_io``: frames go up
    through pinned memory without a sync, masks stay on the device until a few frames later
    and come down bit-packed in one non-blocking copy per frame. ``prefetch``: read and pin
    the next frame on a worker thread while the device computes. ``cuda_graphs``: on CUDA,
    replay the vision backbone, and the memory attention + mask decoder once the memory bank is
    full, as captured CUDA graphs instead of ~3,000 launches a frame from Python (graphs.py).
    Results are identical. ``fused_backbone``: on CUDA, the ViT layers' rotary embedding, window
    partition and window merge run as single Triton passes (fused_backbone.py); identical features.
    ``compile_backbone`` (off by default; ``sam3_speed=compile``): on CUDA, torch.compile the vision
    backbone for the propagation (compiled.py): faster, not bit-exact.
    """

    batch_objects: bool = True
    async_io: bool = True
    prefetch: bool = True
    cuda_graphs: bool = True
    compile_backbone: bool = False
    fused_backbone: bool = True


BASELINE = SpeedOptions(False, False, False, False, compile_backbone=False, fused_backbone=False)
_LAG = 4  # frames a packed mask may stay in flight before the host waits for it


@dataclass
class _Plan:
    """Which prompts sit on which frames, and each object's prompted frames."""

    by_frame: dict[int, list[ObjectPrompt]]
    obj_frames: dict[int, np.ndarray]
    obj_ids: list[int]


def _merge(items: list[ObjectPrompt]) -> ObjectPrompt:
    """One prompt per (object, frame): points concatenated, at most one box."""
    if len(items) == 1:
        return items[0]
    boxes = [it.box for it in items if it.box is not None]
    if len(boxes) > 1:
        raise InputError(f"object {items[0].obj_id} has {len(boxes)} boxes on frame {items[0].frame}; give one")
    return ObjectPrompt(items[0].obj_id, items[0].frame, np.concatenate([it.points for it in items]),
                        np.concatenate([it.labels for it in items]), boxes[0] if boxes else None)


def check_prompts(prompts: Any, source: FrameSource) -> Prompts:
    """Prompts valid for these frames (same size and length), re-checked against the frames."""
    if not isinstance(prompts, Prompts):
        raise InputError(f"prompts must be a Prompts object, got {type(prompts).__name__}")
    if tuple(prompts.image_size) != tuple(source.image_size):
        ph, pw = prompts.image_size
        fh, fw = source.image_size
        raise InputError(f"the prompts were placed on a {pw}x{ph} image but the frames are {fw}x{fh}; "
                         f"prompt on the same frames you propagate")
    check_same_frames(prompts=prompts.num_frames, frames=source.num_frames)
    return Prompts(list(prompts.items), source.image_size, source.num_frames)


def make_plan(prompts: Prompts) -> _Plan:
    """Group prompts by frame (sorted) and list each object's prompted frames."""
    grouped: dict[tuple[int, int], list[ObjectPrompt]] = defaultdict(list)
    for it in prompts.items:
        grouped[(it.frame, it.obj_id)].append(it)
    by_frame: dict[int, list[ObjectPrompt]] = defaultdict(list)
    obj_frames: dict[int, list[int]] = defaultdict(list)
    for (frame, obj), items in sorted(grouped.items()):
        by_frame[frame].append(_merge(items))
        obj_frames[obj].append(frame)
    return _Plan(dict(by_frame), {k: np.asarray(v) for k, v in obj_frames.items()}, sorted(obj_frames))


def check_tracks_memory(num_objects: int, num_frames: int, size: tuple[int, int]) -> None:
    """Refuse before tracking when the packed masks alone would not fit in RAM."""
    from ..video import available_ram

    need = num_objects * num_frames * size[0] * ((size[1] + 7) // 8)
    free = available_ram()
    if need > 0.8 * free:
        raise MemoryBudgetError(f"{num_objects} object(s) x {num_frames} frames at {size[1]}x{size[0]} need "
                                f"{need / 2**30:.1f} GiB of packed masks but {free / 2**30:.1f} GiB RAM is free; "
                                f"load fewer frames, a smaller size, or track fewer objects")


def _take(x: torch.Tensor, picks: list[int]) -> torch.Tensor:
    """``x[picks]`` from row slices: a host-side index list would be a synced upload on CUDA."""
    if picks == list(range(x.shape[0])):  # every object: no copy
        return x
    return torch.cat([x[k:k + 1] for k in picks])


class _Recorder:
    """Collects packed masks and scores; per (object, frame) keeps the result nearest a prompt.

    ``alloc(shape, dtype)`` (a zero-filled array, e.g. ``FrameStore.empty``) holds the packed masks when given:
    they are then written straight into it (a file) rather than into RAM; default ``np.zeros``.
    """

    def __init__(self, plan: _Plan, num_frames: int, size: tuple[int, int], deferred: bool = False,
                 alloc: Alloc | None = None):
        self.plan = plan
        self.size = size
        self.deferred = deferred  # copy masks down non-blocking and land them a few frames later
        self.pending: list[tuple[list[int], int, torch.Tensor, torch.Tensor, Any]] = []
        self.row = {obj: i for i, obj in enumerate(plan.obj_ids)}
        n = len(plan.obj_ids)
        h, w = size
        shape = (n, num_frames, h, (w + 7) // 8)
        if alloc is None:  # RAM: refuse what cannot fit (an allocator's own storage is its caller's to check)
            check_tracks_memory(n, num_frames, size)
        self.packed = zeros(alloc, shape, np.uint8)
        self.scores = np.zeros((n, num_frames), np.float32)
        self.dist = np.full((n, num_frames), np.iinfo(np.int64).max, np.int64)

    def distance(self, obj: int, frame: int, reverse: bool) -> int | None:
        """Frames from the nearest prompt behind ``frame`` in the direction of travel (None: none)."""
        frames = self.plan.obj_frames[obj]
        behind = frames[frames >= frame] if reverse else frames[frames <= frame]
        if behind.size == 0:
            return None
        return int(abs(frame - (behind.min() if reverse else behind.max())))

    def record(self, out: Any, frame: int, reverse: bool, only: set[int] | None = None,
               threshold: float = 0.0) -> None:
        """Store the masks of one tracker output where they beat what is already stored."""
        rows, picks = [], []
        for k, obj in enumerate(out.object_ids):
            if only is not None and obj not in only:
                continue
            d = self.distance(obj, frame, reverse)
            if d is None or d >= self.dist[self.row[obj], frame]:
                continue
            self.dist[self.row[obj], frame] = d
            rows.append(self.row[obj])
            picks.append(k)
        if not picks:
            return
        logits = _take(out.pred_masks, picks).float()  # [k, 1, h, w] low-res logits
        full = F.interpolate(logits, size=self.size, mode="bilinear", align_corners=False)[:, 0] > threshold
        packed = pack_bits_torch(full)
        scores = torch.sigmoid(_take(out.object_score_logits, picks).float().reshape(-1))
        if not (self.deferred and packed.is_cuda):
            self.packed[rows, frame] = packed.cpu().numpy()
            self.scores[rows, frame] = scores.cpu().numpy()
            return
        host_packed = torch.empty(packed.shape, dtype=torch.uint8, pin_memory=True)
        host_scores = torch.empty(scores.shape, dtype=torch.float32, pin_memory=True)
        host_packed.copy_(packed, non_blocking=True)
        host_scores.copy_(scores, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        self.pending.append((rows, frame, host_packed, host_scores, done))
        while len(self.pending) > _LAG:
            self._land(self.pending.pop(0))

    def _land(self, item: tuple) -> None:
        rows, frame, host_packed, host_scores, done = item
        done.synchronize()
        self.packed[rows, frame] = host_packed.numpy()
        self.scores[rows, frame] = host_scores.numpy()

    def flush(self) -> None:
        """Wait for masks still in flight and store them."""
        while self.pending:
            self._land(self.pending.pop(0))

    def tracks(self) -> Tracks:
        self.flush()
        return Tracks(np.asarray(self.plan.obj_ids, np.int64), self.packed, self.size, self.scores)


def _encode(bundle: Sam3Bundle, source: FrameSource, frame: int, hwc: torch.Tensor | None = None,
            upload: bool = False) -> torch.Tensor:
    """One frame through the checkpoint's own video processor, on the model's device.

    ``hwc``: the frame already read (uint8 [H, W, 3], maybe pinned); ``upload``: move it to
    the device ourselves without a sync (the processor's own copy is from pageable memory).
    """
    hwc = source.get(frame) if hwc is None else hwc
    dev = bundle.device
    if upload:
        hwc = to_device(hwc, dev)  # pinned + non-blocking on CUDA, a no-op move on the CPU
    chw = hwc.permute(2, 0, 1)[None]  # [1, 3, H, W] uint8, a one-frame video
    out = bundle.processor.video_processor(videos=[chw], device=dev, return_tensors="pt")
    return out.pixel_values_videos[0, 0].to(bundle.dtype)


class _Frames:
    """Frames in step order; with ``prefetch`` the next one is read (and pinned) on a worker thread."""

    def __init__(self, source: FrameSource, order: list[int], prefetch: bool, pin: bool):
        self.source, self.order, self.pin = source, order, pin
        self.pool = ThreadPoolExecutor(max_workers=1) if prefetch and order else None
        self.ahead: dict[int, Future] = {}

    def _read(self, frame: int) -> torch.Tensor:
        hwc = self.source.get(frame)
        return hwc.pin_memory() if self.pin else hwc

    def get(self, step: int) -> torch.Tensor:
        """The frame of step ``step``, and start reading the next one."""
        if self.pool is None:
            return self._read(self.order[step])
        fut = self.ahead.pop(step, None) or self.pool.submit(self._read, self.order[step])
        if step + 1 < len(self.order):
            self.ahead[step + 1] = self.pool.submit(self._read, self.order[step + 1])
        return fut.result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def _add_prompt(bundle: Sam3Bundle, session: Any, item: ObjectPrompt, size: tuple[int, int]) -> None:
    kwargs: dict[str, Any] = {}
    if item.points.shape[0]:
        kwargs["input_points"] = [[item.points.astype(float).tolist()]]
        kwargs["input_labels"] = [[item.labels.astype(int).tolist()]]
    if item.box is not None:
        kwargs["input_boxes"] = [[item.box.astype(float).tolist()]]
    bundle.processor.add_inputs_to_inference_session(session, frame_idx=item.frame, obj_ids=[item.obj_id],
                                                     original_size=size, **kwargs)


def _forget_tracking(session: Any) -> None:
    """Drop tracked (non-prompt) memories so each pass starts from the prompts only."""
    for per_obj in session.output_dict_per_obj.values():
        per_obj["non_cond_frame_outputs"].clear()
    for tracked in session.frames_tracked_per_obj.values():
        tracked.clear()


def _prune(session: Any, frame: int, reverse: bool, keep: int) -> None:
    """Bound the session: free this frame's pixels and high-res masks, and memories out of reach."""
    if session.processed_frames is not None:
        session.processed_frames.pop(frame, None)
    for per_obj in session.output_dict_per_obj.values():
        for store in per_obj.values():
            if frame in store:
                store[frame].pop("high_res_masks", None)
        non_cond = per_obj["non_cond_frame_outputs"]
        for old in [t for t in non_cond if (t - frame if reverse else frame - t) >= keep]:
            del non_cond[old]
    for tracked in session.frames_tracked_per_obj.values():
        for old in [t for t in tracked if (t - frame if reverse else frame - t) >= keep]:
            del tracked[old]


def _steps(plan: _Plan, num_frames: int, direction: str) -> list[tuple[int, bool]]:
    """The (frame, reverse) steps of the propagation passes, in order.

    A pass that would only visit its starting frame is left out: every prompt then sits on that
    frame, whose masks the prompts gave already (e.g. the backward pass of ``both`` when all
    prompts are on frame 0, as after people detection on the first frame).
    """
    first, last = min(plan.by_frame), max(plan.by_frame)
    steps: list[tuple[int, bool]] = []
    if direction in ("both", "forward") and first < num_frames - 1:
        steps += [(f, False) for f in range(first, num_frames)]
    if direction in ("both", "backward") and last > 0:
        steps += [(f, True) for f in range(last, -1, -1)]
    return steps


def propagate(
    bundle: Sam3Bundle,
    frames: Any,
    prompts: Prompts,
    direction: str = "both",
    hooks: Hooks = NULL_HOOKS,
    mask_threshold: float = 0.0,
    speed: SpeedOptions = SpeedOptions(),
    *,
    alloc: Alloc | None = None,
) -> Tracks:
    """Track every prompted object through the clip; returns Tracks keyed by the prompts' ids.

    ``direction``: ``forward`` fills each object from its first prompted frame to the end,
    ``backward`` from its last prompted frame to the start, ``both`` the whole clip (on frames
    between prompts the result tracked from the nearer prompt wins). Frames an object is not
    tracked on stay empty with score 0. ``speed`` picks the speed-ups (see SpeedOptions). ``alloc(shape,
    dtype)``: returns the zero-filled array the packed masks are written into (e.g. ``FrameStore.empty``, so a
    long clip's masks never sit in RAM); default ``np.zeros``.
    """
    if direction not in DIRECTIONS:
        raise InputError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
    source = as_frame_source(frames)
    prompts = check_prompts(prompts, source)
    plan = make_plan(prompts)
    steps = _steps(plan, source.num_frames, direction)
    total = len(prompts.items) + len(steps)
    recorder = _Recorder(plan, source.num_frames, source.image_size, deferred=speed.async_io, alloc=alloc)
    cfg = bundle.tracker.config
    keep = max(int(cfg.num_maskmem), int(cfg.max_object_pointers_in_encoder)) + 1
    dev = bundle.device
    session = bundle.processor.init_video_session(inference_device=dev, inference_state_device=dev,
                                                  video_storage_device=dev, dtype=bundle.dtype)
    reader = _Frames(source, [f for f, _ in steps], speed.prefetch, pin=speed.async_io and dev.type == "cuda")
    compiled = CompiledBackbone(bundle.tracker, speed.compile_backbone)
    fused = FusedBackbone(bundle.tracker, speed.fused_backbone and not compiled.active, bundle.dtype)
    features = GraphedFeatures(bundle.tracker, speed.cuda_graphs and not compiled.active)  # compiled: no capture
    decoder = GraphedDecoder(speed.cuda_graphs)
    done = 0
    try:
        with compiled, fused, torch.inference_mode(), autocast(dev, bundle.dtype):
            for frame, items in plan.by_frame.items():
                pixels = _encode(bundle, source, frame, upload=speed.async_io)
                for item in items:
                    hooks.check_interrupt()
                    features(session, frame, pixels)
                    _add_prompt(bundle, session, item, source.image_size)
                    out = bundle.tracker(inference_session=session, frame_idx=frame, frame=pixels)
                    recorder.record(out, frame, False, only={item.obj_id}, threshold=mask_threshold)
                    _forget_tracking(session)
                    _prune(session, frame, False, keep)
                    done += 1
                    hooks.progress(done, total)
            previous = None
            for step, (frame, reverse) in enumerate(steps):
                hooks.check_interrupt()
                if reverse != previous:
                    _forget_tracking(session)
                    previous = reverse
                pixels = _encode(bundle, source, frame, reader.get(step), upload=speed.async_io)
                features(session, frame, pixels)
                if speed.batch_objects and can_batch(bundle.tracker, session):
                    out = tracked_step(bundle.tracker, session, frame, pixels, reverse, decoder)
                else:
                    out = bundle.tracker(inference_session=session, frame_idx=frame, frame=pixels, reverse=reverse)
                recorder.record(out, frame, reverse, threshold=mask_threshold)
                _prune(session, frame, reverse, keep)
                done += 1
                hooks.progress(done, total)
        tracks = recorder.tracks()
    finally:
        reader.close()
        features.close()
        decoder.close()
        session.reset_inference_session()
        session.processed_frames = None
    log.info("SAM-3 tracked %d object(s) over %d frames (%s)", len(plan.obj_ids), source.num_frames, direction)
    return tracks
