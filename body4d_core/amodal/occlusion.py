"""Occlusion detection logic (pure numpy): binarise, IoU, exemptions, gap fill, windows.

Mirrors SAM-Body4D's rules with its two slips fixed: the degenerate-box test
applies to every object (upstream's only fired for object id 1) and a zero-pixel border on
tiny frames no longer blanks the whole mask.
"""

from __future__ import annotations

import math
from enum import IntEnum

import numpy as np
import torch
from scipy import ndimage

from .config import OcclusionConfig

_EIGHT = np.ones((3, 3), dtype=bool)


class Exempt(IntEnum):
    """Why a frame may not count as occluded (0 = judged by IoU)."""

    NONE = 0
    BORDER = 1  # the visible object lies entirely in the image border
    EMPTY = 2  # visible and amodal masks both empty
    VISIBLE_LARGER = 3  # visible mask has more pixels than the amodal one
    LONG_OR_WIDE = 4  # amodal box spans most of the image
    SKINNY = 5  # amodal box far too thin
    NOT_VISIBLE = 6  # no visible pixel at all (upstream's border test catches it: no completion from nothing)


def detection_size(image_size: tuple[int, int], res: tuple[int, int], swap_portrait: bool = True) -> tuple[int, int]:
    """The (H, W) the diffusion runs at: ``res``, swapped when the clip is portrait."""
    h, w = image_size
    rh, rw = res
    if swap_portrait and h > w and rw > rh:
        return rw, rh
    return rh, rw


def binarize(pred: np.ndarray, threshold: float, keep_largest: bool = True) -> np.ndarray:
    """Predicted mask images [T, H, W] (or [T, H, W, 3]) in [0, 1] -> bool masks (bool input: already cut)."""
    pred = np.asarray(pred)
    if pred.dtype == bool and pred.ndim == 3 and 0.0 <= threshold < 1.0:  # same cut as on 0.0 / 1.0
        out = pred.copy() if keep_largest else pred
    else:
        pred = pred.astype(np.float32, copy=False)
        if pred.ndim == 4:
            pred = pred.mean(axis=-1)
        out = pred > threshold
    if keep_largest:
        for m in out:
            m[...] = largest_component(m)
    return out


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep only the largest 8-connected foreground component of a bool mask [H, W].

    Labels only the foreground's bounding box (components cannot leave it), not the frame.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return np.zeros(mask.shape, bool)
    cols = np.flatnonzero(mask.any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    labels, n = ndimage.label(mask[box], structure=_EIGHT)
    out = np.zeros(mask.shape, bool)
    if n <= 1:
        out[box] = labels > 0
        return out
    counts = np.bincount(labels.ravel())
    counts[0] = 0
    out[box] = labels == int(counts.argmax())
    return out


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two bool masks; 1.0 when both are empty."""
    union = np.logical_or(a, b).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(a, b).sum() / union)


def in_border(mask: np.ndarray, fraction: float) -> bool:
    """True if no pixel of ``mask`` lies inside the central region left by a border of ``fraction``."""
    h, w = mask.shape
    bh, bw = int(h * fraction), int(w * fraction)
    return not mask[bh:h - bh, bw:w - bw].any()


def _box_sides(mask: np.ndarray) -> tuple[int, int] | None:
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def is_long_or_wide(mask: np.ndarray, ratio: float) -> bool:
    """The mask's box spans >= ``ratio`` of the image height or width."""
    sides = _box_sides(mask)
    if sides is None:
        return False
    return sides[0] / mask.shape[0] >= ratio or sides[1] / mask.shape[1] >= ratio


def is_skinny(mask: np.ndarray, ratio: float) -> bool:
    """The mask's box has short side / long side < ``ratio``."""
    sides = _box_sides(mask)
    if sides is None:
        return False
    return min(sides) / max(sides) < ratio


def frame_exemption(visible: np.ndarray, amodal: np.ndarray, cfg: OcclusionConfig) -> Exempt:
    """The first exemption rule that applies to one frame (upstream order)."""
    n_vis, n_amo = int(visible.sum()), int(amodal.sum())
    if n_vis == 0:
        return Exempt.EMPTY if n_amo == 0 else Exempt.NOT_VISIBLE
    if in_border(visible, cfg.border_fraction):
        return Exempt.BORDER
    if n_vis > n_amo:
        return Exempt.VISIBLE_LARGER
    if is_long_or_wide(amodal, cfg.long_wide_ratio):
        return Exempt.LONG_OR_WIDE
    if is_skinny(amodal, cfg.skinny_ratio):
        return Exempt.SKINNY
    return Exempt.NONE


def score_frames(visible: np.ndarray, amodal: np.ndarray, cfg: OcclusionConfig,
                 device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """IoU (float32 [T]) and exemption codes (int8 [T]) of visible vs amodal masks [T, H, W].

    Vectorised over frames (on ``device``); same rules and order as ``frame_exemption``.
    """
    if visible.shape != amodal.shape:
        raise ValueError(f"visible {visible.shape} and amodal {amodal.shape} masks differ in shape")
    if len(visible) == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.int8)
    v = torch.as_tensor(np.ascontiguousarray(visible), device=device).bool()
    a = torch.as_tensor(np.ascontiguousarray(amodal), device=device).bool()
    _, h, w = v.shape
    n_vis, n_amo = v.sum((1, 2)), a.sum((1, 2))
    inter, union = (v & a).sum((1, 2)), (v | a).sum((1, 2))
    iou = torch.where(union > 0, inter.double() / union.clamp(min=1).double(), torch.ones_like(inter.double()))
    bh, bw = int(h * cfg.border_fraction), int(w * cfg.border_fraction)
    border = (n_vis > 0) & ~v[:, bh:h - bh, bw:w - bw].any(2).any(1)
    side_h, side_w = _box_extent(a.any(2)), _box_extent(a.any(1))
    present = n_amo > 0
    long_wide = present & ((side_h / h >= cfg.long_wide_ratio) | (side_w / w >= cfg.long_wide_ratio))
    skinny = present & (torch.minimum(side_h, side_w) / torch.maximum(side_h, side_w).clamp(min=1) < cfg.skinny_ratio)
    code = torch.zeros_like(n_vis, dtype=torch.int8)
    rules = ((skinny, Exempt.SKINNY), (long_wide, Exempt.LONG_OR_WIDE), (n_vis > n_amo, Exempt.VISIBLE_LARGER),
             (border, Exempt.BORDER), ((n_vis == 0) & (n_amo > 0), Exempt.NOT_VISIBLE),
             ((n_vis == 0) & (n_amo == 0), Exempt.EMPTY))
    for cond, val in rules:
        code = torch.where(cond, torch.full_like(code, int(val)), code)  # earlier rules win: applied last
    return iou.float().cpu().numpy(), code.cpu().numpy()


def _box_extent(proj: torch.Tensor) -> torch.Tensor:
    """Length of the occupied span of each row of a bool projection [T, N] (0 when empty)."""
    n = proj.shape[1]
    idx = torch.arange(n, device=proj.device)
    first = torch.where(proj, idx, n).min(1).values
    last = torch.where(proj, idx, -1).max(1).values
    return (last - first + 1).clamp(min=0).double()


def occluded_flags(ious: np.ndarray, exempt: np.ndarray, threshold: float) -> np.ndarray:
    """bool [T]: IoU below ``threshold`` on frames without an exemption."""
    return (np.asarray(ious) < threshold) & (np.asarray(exempt) == Exempt.NONE)


def fill_single_gaps(occluded: np.ndarray) -> np.ndarray:
    """Set a non-occluded frame whose two neighbours are occluded to occluded."""
    occ = np.asarray(occluded, dtype=bool).copy()
    if occ.size >= 3:
        gap = ~occ[1:-1] & occ[:-2] & occ[2:]
        occ[1:-1] |= gap
    return occ


def runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs of True as half-open (start, stop) pairs."""
    f = np.concatenate([[False], np.asarray(flags, dtype=bool), [False]])
    d = np.flatnonzero(np.diff(f.astype(np.int8)))
    return [(int(a), int(b)) for a, b in zip(d[::2], d[1::2])]


def padded_segments(occluded: np.ndarray, pad: int) -> list[tuple[int, int]]:
    """Occluded runs widened by ``pad`` frames each side (clipped), overlapping ones merged."""
    n = len(occluded)
    out: list[tuple[int, int]] = []
    for a, b in runs(occluded):
        a, b = max(0, a - pad), min(n, b + pad)
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def plan_windows(start: int, stop: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """Split [start, stop) into the fewest equal windows of at most ``window`` frames that share
    at least ``overlap`` frames with their neighbours (equal lengths batch together)."""
    n = stop - start
    if n <= window:
        return [(start, stop)]
    k = math.ceil((n - overlap) / (window - overlap))
    size = math.ceil((n + (k - 1) * overlap) / k)
    starts = [start + round(i * (n - size) / (k - 1)) for i in range(k)]
    return [(s, s + size) for s in starts]


def blend_weights(windows: list[tuple[int, int]], start: int, stop: int) -> list[np.ndarray]:
    """Per-window frame weights that sum to one over [start, stop), ramping across overlaps."""
    raw = []
    for a, b in windows:
        n = b - a
        ramp = np.minimum(np.arange(1, n + 1), np.arange(n, 0, -1)).astype(np.float64)
        raw.append(ramp)
    total = np.zeros(stop - start)
    for (a, b), w in zip(windows, raw):
        total[a - start:b - start] += w
    return [(w / total[a - start:b - start]).astype(np.float32) for (a, b), w in zip(windows, raw)]
