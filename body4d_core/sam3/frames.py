"""Frame access for SAM-3: one frame at a time from CPU, so VRAM does not grow with video length."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import InputError


@dataclass
class FrameSource:
    """Random access to the frames of a clip as uint8 [H, W, 3] CPU tensors.

    ``frames`` is anything indexable with a length whose items are [H, W, C] images:
    a ComfyUI IMAGE batch (float 0..1, [T, H, W, C]), a uint8 numpy array, or a lazy
    decoder object. Nothing is copied up front.
    """

    frames: Any
    num_frames: int
    image_size: tuple[int, int]

    def get(self, index: int) -> torch.Tensor:
        """Frame ``index`` as a uint8 [H, W, 3] CPU tensor."""
        if not 0 <= index < self.num_frames:
            raise InputError(f"frame {index} is past the clip ({self.num_frames} frames, 0..{self.num_frames - 1})")
        return to_uint8(self.frames[index], self.image_size)


def to_uint8(frame: Any, size: tuple[int, int] | None = None) -> torch.Tensor:
    """One [H, W, C] image (uint8 or float 0..1, numpy or torch) as a uint8 [H, W, 3] CPU tensor."""
    t = torch.from_numpy(np.ascontiguousarray(frame)) if isinstance(frame, np.ndarray) else torch.as_tensor(frame)
    if t.ndim != 3 or t.shape[-1] not in (1, 3, 4):
        raise InputError(f"a frame must be [H, W, 3] (RGB), got shape {tuple(t.shape)}")
    if size is not None and tuple(t.shape[:2]) != tuple(size):
        raise InputError(f"frame size {tuple(t.shape[:2])} differs from the clip's {tuple(size)}")
    t = t.detach().cpu()
    if t.shape[-1] == 1:
        t = t.expand(-1, -1, 3)
    t = t[..., :3]
    if t.dtype == torch.uint8:
        return t.contiguous()
    if not (t.is_floating_point()):
        raise InputError(f"frames must be uint8 or float in 0..1, got {t.dtype}")
    return (t.float().clamp(0, 1) * 255.0).round().to(torch.uint8).contiguous()


def as_frame_source(frames: Any) -> FrameSource:
    """Wrap a frame batch / sequence; checks it is non-empty and of one size."""
    if isinstance(frames, FrameSource):
        return frames
    if frames is None:
        raise InputError("no frames given")
    try:
        n = len(frames)
    except TypeError as err:
        raise InputError(f"frames must be a batch [T, H, W, 3] or a sequence of images, got {type(frames).__name__}") from err
    if n == 0:
        raise InputError("the clip has zero frames")
    shape = getattr(frames, "shape", None)
    if shape is not None and len(shape) == 4:
        size = (int(shape[1]), int(shape[2]))
        if shape[3] not in (1, 3, 4):
            raise InputError(f"frames must be [T, H, W, 3], got shape {tuple(shape)}")
    elif shape is not None:
        raise InputError(f"frames must be [T, H, W, 3], got shape {tuple(shape)}")
    else:
        first = to_uint8(frames[0])
        size = (int(first.shape[0]), int(first.shape[1]))
    if size[0] < 1 or size[1] < 1:
        raise InputError(f"frames are empty images ({size[1]}x{size[0]})")
    return FrameSource(frames, n, size)


