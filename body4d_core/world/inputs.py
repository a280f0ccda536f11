"""Turn pipeline / ComfyUI inputs into what the world stage reads: person masks and metric depth."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..alloc import Alloc, zeros
from ..data import Tracks
from ..errors import InputError
from .depth import KeyframeDepth


def people_from_tracks(tracks: Tracks | None, num_frames: int, image_size: tuple[int, int], *,
                       alloc: Alloc | None = None) -> np.ndarray | None:
    """bool [T, H, W]: pixels covered by any tracked person (resized to the frames when needed), in an array
    from ``alloc`` (zero-filled, e.g. ``FrameStore.empty``; default RAM)."""
    if tracks is None:
        return None
    import cv2

    if tracks.num_frames != num_frames:
        raise InputError(f"World Ground: the tracks have {tracks.num_frames} frames but the clip has {num_frames}")
    h, w = image_size
    out = zeros(alloc, (num_frames, h, w), bool)
    for t in range(num_frames):
        m = tracks.frame_masks(t).any(0) if tracks.num_objects else np.zeros(tracks.image_size, bool)
        if m.shape != (h, w):
            m = cv2.resize(m.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
        out[t] = m
    return out


def _array(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, np.float32)


def depth_from_geometry(geometry: Mapping[str, Any] | None, num_frames: int, image_size: tuple[int, int]
                        ) -> np.ndarray | None:
    """Metric depth [T, H, W] from a MoGe geometry (``depth`` [B, H, W] or ``points`` [B, H, W, 3]).

    One geometry (B = 1) gives frame 0's depth only (NaN elsewhere); B = T gives every frame.
    Invalid pixels (``mask`` false, non-finite, <= 0) are NaN.
    """
    depth = keyframe_depth_from_geometry(geometry, num_frames, image_size)
    return None if depth is None else np.asarray(depth)


def keyframe_depth_from_geometry(geometry: Mapping[str, Any] | None, num_frames: int, image_size: tuple[int, int]
                                 ) -> KeyframeDepth | None:
    """``depth_from_geometry`` keeping only the frames the geometry has (frame 0 for one geometry, every frame
    for T): a single MoGe geometry no longer costs a NaN map for every other frame of the clip."""
    if geometry is None:
        return None
    import cv2

    if not isinstance(geometry, Mapping):
        raise InputError("World Ground: the MoGe geometry must be a mapping with 'depth' or 'points'")
    if geometry.get("depth") is not None:
        d = _array(geometry["depth"])
    elif geometry.get("points") is not None:
        d = _array(geometry["points"])[..., 2]
    else:
        raise InputError("World Ground: the MoGe geometry holds neither 'depth' nor 'points'")
    if d.ndim == 2:
        d = d[None]
    if d.ndim != 3 or d.shape[0] not in (1, num_frames):
        raise InputError(f"World Ground: MoGe depth must be [1 or {num_frames}, H, W], got {d.shape}")
    if geometry.get("mask") is not None:
        m = _array(geometry["mask"]).reshape(d.shape) > 0.5
        d = np.where(m, d, np.nan)
    d = np.where(np.isfinite(d) & (d > 0), d, np.nan)
    h, w = image_size
    maps = np.empty((d.shape[0], h, w), np.float32)
    for i in range(d.shape[0]):
        maps[i] = d[i] if d.shape[1:] == (h, w) else cv2.resize(d[i], (w, h), interpolation=cv2.INTER_NEAREST)
    return KeyframeDepth(np.arange(d.shape[0]), maps, num_frames)


def moge_depth(model: Any, frames: np.ndarray, every_n: int = 1, batch_size: int = 4,
               resolution_level: int = 9, *, alloc: Alloc | None = None) -> KeyframeDepth:
    """Metric depth of every ``every_n``-th frame from MoGe-2 ``infer`` (NaN where MoGe's mask is off; the other
    frames read as NaN), for the world stage's floor and camera translation; only the K keyframes' maps are
    kept, in an array [K, H, W] from ``alloc`` (zero-filled; default RAM)."""
    import torch

    from ..fov import _frames_to_batch, quiet_cpu_autocast

    frames = np.asarray(frames)
    if frames.ndim != 4 or every_n < 1:
        raise InputError(f"MoGe depth needs frames [T, H, W, 3] and every_n >= 1, got {frames.shape}, {every_n}")
    t, h, w = frames.shape[:3]
    param = next(model.parameters())
    idx = list(range(0, t, every_n))
    out = zeros(alloc, (len(idx), h, w), np.float32)
    for s in range(0, len(idx), batch_size):
        chunk = idx[s:s + batch_size]
        with torch.inference_mode(), quiet_cpu_autocast():
            res = model.infer(_frames_to_batch(frames, chunk, param.device, param.dtype),
                              resolution_level=resolution_level, force_projection=False, apply_mask=True,
                              use_fp16=param.device.type == "cuda")
        geo = {"depth": res["depth"], "mask": res.get("mask")}
        out[s:s + len(chunk)] = depth_from_geometry(geo, len(chunk), (h, w))
    return KeyframeDepth(idx, out, t)
