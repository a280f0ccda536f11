"""The Amodal Complete stage: depth once, occlusion detection, refinement, completion.

1. depth for the whole clip, shared by all people (normalised over the clip);
2. amodal masks for every person and frame at the detection resolution; IoU with the
   visible mask, exemptions, single-frame gap fill -> occluded runs, padded -> segments;
3. only inside segments: amodal masks again at the completion resolution, final cut;
4. only segments with a finally occluded frame: content completion.
Frames without occlusion never reach steps 3-4 (fast path).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ..alloc import Alloc, zeros
from ..data import Amodal, Tracks, pack_masks, unpack_masks
from ..errors import InputError
from ..runtime import NULL_HOOKS, Hooks
from .config import OcclusionConfig, SamplerConfig
from .depth import normalize_depth, resize_depth, resize_depth_into, unit_float
from .models import AmodalModels, OnDemand
from .occlusion import (binarize, detection_size, fill_single_gaps, occluded_flags, padded_segments,
                        plan_windows, score_frames)
from .job import VideoJob
from .lowmem import LowMemory

log = logging.getLogger(__name__)
_CHUNK = 16


@dataclass
class AmodalStats:
    """What the stage did and how long each part took (seconds)."""

    timings: dict[str, float] = field(default_factory=dict)
    segments: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    detected: dict[int, np.ndarray] = field(default_factory=dict)  # bool [T] after the detection pass
    detection_iou: dict[int, np.ndarray] = field(default_factory=dict)
    exempt: dict[int, np.ndarray] = field(default_factory=dict)  # int8 [T] Exempt codes (detection pass)
    completed_frames: int = 0


class _SubHooks:
    """Maps one sub-stage's progress onto a slice of the overall bar, moving it on every denoising step.

    Samplers report after each finished batch of windows; between reports, every interrupt
    check (one per diffusion step) advances the bar by one expected step, never past the slice,
    so the bar moves smoothly instead of jumping from slice to slice. It never goes backwards.
    """

    def __init__(self, hooks: Hooks, lo: float, hi: float, scale: int = 1000, expected_steps: int = 0) -> None:
        self.hooks, self.lo, self.hi, self.scale = hooks, lo, hi, scale
        self.step = (hi - lo) / expected_steps if expected_steps > 0 else 0.0
        self.reached = lo  # from progress reports
        self.crept = lo  # from steps since the last report
        self.shown = -1

    def _show(self) -> None:
        value = int(round(min(self.hi, max(self.reached, self.crept)) * self.scale))
        if value > self.shown:
            self.shown = value
            self.hooks.progress(value, self.scale)

    def progress(self, done: int, total: int) -> None:
        self.reached = max(self.reached, self.lo + (self.hi - self.lo) * (done / max(total, 1)))
        self.crept = max(self.crept, self.reached)
        self._show()

    def check_interrupt(self) -> None:
        self.hooks.check_interrupt()
        if self.step:
            self.crept = min(self.hi, max(self.crept, self.reached) + self.step)
            self._show()


@contextlib.contextmanager
def _quiet_sampler() -> Iterator[None]:
    """Inside, diffusers' scheduler notice about numpy's ``__array__(copy=...)`` protocol is not shown.

    set_timesteps converts a torch tensor with ``np.array``, which numpy 2 reports with a
    DeprecationWarning on every run; it is the library's, not the user's, to act on.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"__array__ implementation doesn't accept a copy keyword",
                                category=DeprecationWarning)
        yield


def _expected_steps(jobs: list[VideoJob], sampler: SamplerConfig) -> int:
    """Diffusion steps the sampler will run for jobs if each window ran alone (the bar's step size)."""
    windows = sum(len(plan_windows(0, job.length, sampler.window, sampler.overlap)) for job in jobs)
    return windows * max(1, int(sampler.steps))


def _as_frames(frames: torch.Tensor | np.ndarray) -> torch.Tensor:
    """IMAGE-like [T, H, W, 3] (float 0..1 or uint8) -> torch tensor, validated."""
    t = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
    if t.ndim != 4 or t.shape[-1] != 3:
        raise InputError(f"amodal: frames must be [T, H, W, 3], got {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise InputError("amodal: no frames")
    return t


def _resize_frames(frames: torch.Tensor, idx: np.ndarray, size: tuple[int, int], dev: torch.device) -> torch.Tensor:
    """Selected frames -> [n, 3, h, w] in [0, 1] (antialiased bilinear; computed on ``dev``, returned on the CPU)."""
    out = []
    for s in range(0, len(idx), _CHUNK):
        x = unit_float(frames[torch.as_tensor(idx[s:s + _CHUNK], dtype=torch.long)].to(dev)).permute(0, 3, 1, 2)
        out.append(F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False).clamp(0, 1).cpu())
    return torch.cat(out)


def _resize_masks(masks: np.ndarray, size: tuple[int, int], dev: torch.device) -> torch.Tensor:
    """bool [n, H, W] -> soft masks [n, 1, h, w] in [0, 1] on the CPU (antialiased bilinear, like upstream)."""
    x = torch.from_numpy(np.ascontiguousarray(masks))[:, None]
    if tuple(x.shape[-2:]) == tuple(size):
        return x.float()
    out = [F.interpolate(x[s:s + _CHUNK].to(dev).float(), size=size, mode="bilinear", antialias=True,
                         align_corners=False).clamp(0, 1).cpu() for s in range(0, x.shape[0], _CHUNK)]
    return torch.cat(out)


def _conditions(tracks: Tracks, obj_id: int, size: tuple[int, int], dev: torch.device, alloc: Alloc | None
                ) -> torch.Tensor:
    """``_resize_masks(tracks.masks_of(obj_id), size, dev) * 2 - 1`` built ``_CHUNK`` frames at a time into an array
    from ``alloc`` (None: RAM): the same chunks as the whole-clip call, so the same values, and no whole-clip mask."""
    n_t = tracks.num_frames
    out = torch.from_numpy(zeros(alloc, (n_t, 1, *size), np.float32))
    for s in range(0, n_t, _CHUNK):
        out[s:s + _CHUNK] = _resize_masks(tracks.masks_of(obj_id, slice(s, s + _CHUNK)), size, dev) * 2 - 1
    return out


def _takes(part: object, keyword: str, method: str | None = None) -> bool:
    """Whether ``part`` (or its ``method``; through OnDemand wrappers) names ``keyword`` (test fakes need not)."""
    while isinstance(part, OnDemand):
        part = part.part
    try:
        return keyword in inspect.signature(getattr(part, method) if method else part).parameters
    except (TypeError, ValueError):
        return False


def _gray_mask(pred: torch.Tensor, size: tuple[int, int], occ: OcclusionConfig, dev: torch.device) -> np.ndarray:
    """Predicted frames [n, 3, h, w] -> channel mean, resized (bicubic) to ``size``, binarised: bool [n, H, W]."""
    g = pred.float().mean(dim=1, keepdim=True)
    out = []
    for s in range(0, g.shape[0], _CHUNK):
        x = g[s:s + _CHUNK].to(dev)
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False)
        out.append((x[:, 0] > occ.mask_threshold).cpu().numpy())
    return binarize(np.concatenate(out), 0.5, occ.keep_largest)


def _nearest(masks: np.ndarray, size: tuple[int, int], dev: torch.device) -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(masks))[:, None]
    if tuple(x.shape[-2:]) == tuple(size):
        return masks.astype(bool)
    out = [F.interpolate(x[s:s + _CHUNK].to(dev).float(), size=size, mode="nearest")[:, 0].cpu().numpy() > 0.5
           for s in range(0, x.shape[0], _CHUNK)]
    return np.concatenate(out)


def _seed_key(obj_id: int, stage: int, start: int) -> int:
    return (int(obj_id) * 3 + stage) * 100_000 + int(start)


def _detect(tracks: Tracks, obj_id: int, pred: torch.Tensor, occ: OcclusionConfig, dev: torch.device,
            pack: bool, alloc: Alloc | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """One person's detection pass, ``_CHUNK`` frames at a time: IoU (float32 [T]) and exemption codes (int8 [T])
    of the visible vs the predicted amodal masks, and with ``pack`` (no refinement to redo them) the amodal masks
    packed into an array from ``alloc`` (None: RAM). Every step is per frame, so chunks change no value."""
    n_t, (h, w) = tracks.num_frames, tracks.image_size
    ious, exempt = np.zeros(n_t, np.float32), np.zeros(n_t, np.int8)
    packed = zeros(alloc, (n_t, h, (w + 7) // 8), np.uint8) if pack else None
    for s in range(0, n_t, _CHUNK):
        am = _gray_mask(pred[s:s + _CHUNK], (h, w), occ, dev)
        ious[s:s + _CHUNK], exempt[s:s + _CHUNK] = score_frames(tracks.masks_of(obj_id, slice(s, s + _CHUNK)), am,
                                                                 occ, dev)
        if packed is not None:
            packed[s:s + _CHUNK] = pack_masks(am)
    return ious, exempt, packed


def check_inputs(frames: torch.Tensor, tracks: Tracks) -> None:
    """Frames and tracks must describe the same clip; at least one person."""
    if tracks.num_objects == 0:
        raise InputError("amodal: the tracks hold no person; run Propagate with at least one object first")
    if tracks.num_frames != frames.shape[0]:
        raise InputError(f"amodal: frame counts do not match (frames: {frames.shape[0]}, tracks: "
                         f"{tracks.num_frames}); feed both from the same clip")
    if tuple(tracks.image_size) != tuple(frames.shape[1:3]):
        raise InputError(f"amodal: frame size {tuple(frames.shape[1:3])} differs from the tracks' "
                         f"{tuple(tracks.image_size)}; feed both from the same clip")


def run_amodal(frames: torch.Tensor | np.ndarray, tracks: Tracks, models: AmodalModels,
               occ: OcclusionConfig | None = None, sampler: SamplerConfig | None = None,
               hooks: Hooks = NULL_HOOKS, budget_px: int = 1 << 20, memory: LowMemory | None = None, *,
               alloc: Alloc | None = None,
               before_completion: Callable[[int], None] | None = None) -> tuple[Amodal, AmodalStats]:
    """Occlusion flags, amodal masks and completed RGB for every tracked person (see module doc).

    ``memory``: the memory plan's low-memory sampling mode (amodal/lowmem.py), passed to every sampler call.
    ``alloc(shape, dtype)``: returns the zero-filled arrays the packed amodal masks and the completed RGB are
    written into (e.g. ``FrameStore.empty``: a long clip's outputs stay out of RAM), and the detection pass's
    whole-clip inputs and outputs (depth, conditions, predictions; where the models take it); default ``np.zeros``.
    ``before_completion(K)``: called with the number of person-frames to complete once the detection found them,
    before their RGB is allocated or any completion work runs (e.g. a disk check: it may raise to stop the run).
    """
    occ, sampler = occ or OcclusionConfig(), sampler or SamplerConfig()
    frames = _as_frames(frames)
    check_inputs(frames, tracks)
    n_t, h, w = frames.shape[0], frames.shape[1], frames.shape[2]
    det = detection_size((h, w), occ.detection_resolution, occ.swap_portrait)
    comp = detection_size((h, w), occ.completion_resolution, occ.swap_portrait)
    stats = AmodalStats()
    ids = [int(i) for i in tracks.obj_ids]
    dev = torch.device(getattr(models, "device", "cpu"))
    low = {"memory": memory} if memory is not None and memory.active else {}  # fakes need not take it

    t0 = time.perf_counter()
    depth_kw = {"batch_size": memory.depth_frames} if memory is not None and memory.depth_frames else {}
    in_alloc = alloc is not None and _takes(models.depth, "alloc")  # then the raw depth is ours to overwrite
    if in_alloc:
        depth_kw["alloc"] = alloc
    depth = normalize_depth(models.depth(frames, _SubHooks(hooks, 0.0, 0.1), **depth_kw), in_place=in_alloc)
    stats.timings["depth"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    all_idx = np.arange(n_t)
    depth_det = resize_depth_into(depth, det, alloc, _CHUNK)
    jobs = [VideoJob(_conditions(tracks, o, det, dev, alloc), depth_det, _seed_key(o, 0, 0), all_idx, o) for o in ids]
    out_kw = {"out_alloc": alloc} if alloc is not None and _takes(models.mask, "out_alloc", "run_jobs") else {}
    with _quiet_sampler():
        preds = models.mask.run_jobs(jobs, sampler, _SubHooks(hooks, 0.1, 0.5, expected_steps=_expected_steps(
            jobs, sampler)), budget_px, **low, **out_kw)
    del jobs, depth_det
    occluded = np.zeros((len(ids), n_t), bool)
    iou = np.full((len(ids), n_t), np.nan, np.float32)
    amodal = zeros(alloc, (len(ids), n_t, h, (w + 7) // 8), np.uint8)
    det_packed: dict[int, np.ndarray] = {}  # detection-pass amodal masks, kept only without refinement
    for k, (o, pred) in enumerate(zip(ids, preds)):
        ious, exempt, packed = _detect(tracks, o, pred, occ, dev, not occ.refine, alloc)
        flags = occluded_flags(ious, exempt, occ.iou_occluded)
        if occ.fill_single_gaps:
            flags = fill_single_gaps(flags)
        iou[k] = ious
        stats.detected[o], stats.detection_iou[o], stats.exempt[o] = flags, ious, exempt
        stats.segments[o] = padded_segments(flags, occ.pad_frames)
        amodal[k] = tracks.packed[k]
        if packed is not None and stats.segments[o]:
            det_packed[k] = packed
    del preds
    stats.timings["detect"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    segs = [(k, o, a, b) for k, o in enumerate(ids) for a, b in stats.segments[o]]
    hi_masks: dict[tuple[int, int], np.ndarray] = {}
    if segs:
        if occ.refine:
            jobs = []
            for k, o, a, b in segs:
                idx = np.arange(a, b)
                jobs.append(VideoJob(_resize_masks(tracks.masks_of(o, slice(a, b)), comp, dev) * 2 - 1,
                                     resize_depth(depth, comp, torch.as_tensor(idx)), _seed_key(o, 1, a), idx, o))
            with _quiet_sampler():
                preds = models.mask.run_jobs(jobs, sampler, _SubHooks(hooks, 0.5, 0.7, expected_steps=_expected_steps(
                    jobs, sampler)), budget_px, **low)
            del jobs
        for n_seg, (k, o, a, b) in enumerate(segs):
            if occ.refine:
                hi = _gray_mask(preds[n_seg], comp, occ, dev)
                full = _nearest(hi, (h, w), dev)
            else:  # reuse the detection pass's masks, resized to the completion resolution
                full = unpack_masks(det_packed[k][a:b], w)
                hi = _resize_masks(full, comp, dev)[:, 0].numpy() > 0.5
            hi_masks[(k, a)] = hi
            vis = tracks.masks_of(o, slice(a, b))
            ious, exempt = score_frames(vis, full, occ, dev)
            flags = occluded_flags(ious, exempt, occ.iou_final)
            if occ.fill_single_gaps:
                flags = fill_single_gaps(flags)
            occluded[k, a:b] = flags
            iou[k, a:b] = ious
            am = np.where(flags[:, None, None], full | vis, vis)
            amodal[k, a:b] = pack_masks(am)
    stats.timings["refine"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    done = [(k, o, a, b) for k, o, a, b in segs if occluded[k, a:b].any()] if models.content is not None else []
    rows: list[tuple[int, int]] = []
    n_completed = sum(int(occluded[k, a:b].sum()) for k, _, a, b in done)
    if before_completion is not None:
        before_completion(n_completed)
    completed_rgb = zeros(alloc, (n_completed, h, w, 3), np.uint8)
    if segs and models.content is None:
        log.warning("amodal: no content-completion model loaded; occluded frames get masks but no completed RGB")
    if done:
        jobs = []
        for k, o, a, b in done:
            idx = np.arange(a, b)
            rgb = _resize_frames(frames, idx, comp, dev)
            vis_c = _resize_masks(tracks.masks_of(o, slice(a, b)), comp, dev) > 0.5
            modal_rgb = torch.where(vis_c, rgb, torch.ones_like(rgb)) * 2 - 1
            union = torch.from_numpy(hi_masks[(k, a)])[:, None] | vis_c
            jobs.append(VideoJob(modal_rgb, union.float() * 2 - 1, _seed_key(o, 2, a), idx, o,
                                 keep=occluded[k, a:b].copy()))  # only finally occluded frames are read
        with _quiet_sampler():
            preds = models.content.run_jobs(jobs, sampler, _SubHooks(hooks, 0.7, 1.0, expected_steps=_expected_steps(
                jobs, sampler)), budget_px, **low)
        del jobs
        for (k, o, a, b), pred in zip(done, preds):
            keep = np.flatnonzero(occluded[k, a:b])
            for s in range(0, keep.size, _CHUNK):
                sel = keep[s:s + _CHUNK]
                up = F.interpolate(pred[torch.as_tensor(sel)].float().to(dev), size=(h, w), mode="bilinear",
                                   align_corners=False)
                rgb = (up.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
                completed_rgb[len(rows):len(rows) + len(sel)] = rgb
                rows += [(k, a + int(j)) for j in sel]
    stats.timings["complete"] = time.perf_counter() - t0
    stats.completed_frames = len(rows)
    hooks.progress(1000, 1000)
    completed_rgb = completed_rgb[:len(rows)]  # every row is filled (the count above is the rows'); never longer
    completed_index = np.array(rows, np.int64).reshape(-1, 2)
    out = Amodal(np.array(ids, np.int64), occluded, amodal, (h, w), iou, completed_index, completed_rgb)
    return out, stats
