"""Relative depth for occlusion detection: Depth Anything V2 through transformers.

Computed once per clip at the network's own resolution (shorter side >= 518, multiple of
14, aspect kept), normalised with the clip's global min/max to [-1, 1] and resized to each
diffusion resolution on demand, so every person and both passes share one depth run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..alloc import Alloc, zeros
from ..errors import InputError
from ..runtime import NULL_HOOKS, Hooks, autocast

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_depth_model(directory: str | Path, device: torch.device | str = "cpu",
                     dtype: torch.dtype = torch.float32, weight_dtype: torch.dtype | None = None
                     ) -> tuple[torch.nn.Module, dict]:
    """Load a transformers Depth Anything (V2) folder; returns (model, preprocessing settings)."""
    from transformers import DepthAnythingForDepthEstimation

    directory = Path(directory)
    if weight_dtype is None:
        weight_dtype = dtype if torch.device(device).type == "cuda" else torch.float32
    model = DepthAnythingForDepthEstimation.from_pretrained(directory, dtype=weight_dtype).to(device).eval()
    return model, read_preprocessing(directory)


def read_preprocessing(directory: Path) -> dict:
    """Input size / mean / std from preprocessor_config.json (DA-V2 defaults when absent)."""
    prep = {"size": 518, "multiple": 14, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    path = Path(directory) / "preprocessor_config.json"
    if path.is_file():
        cfg = json.loads(path.read_text())
        size = cfg.get("size", {})
        prep["size"] = int(size.get("height", size.get("shortest_edge", 518)) if isinstance(size, dict) else size)
        prep["multiple"] = int(cfg.get("ensure_multiple_of", 14))
        prep["mean"] = tuple(cfg.get("image_mean", IMAGENET_MEAN))
        prep["std"] = tuple(cfg.get("image_std", IMAGENET_STD))
    return prep


def network_size(image_size: tuple[int, int], size: int = 518, multiple: int = 14) -> tuple[int, int]:
    """DA-V2's input size: scale so both sides reach ``size`` (aspect kept), round up to ``multiple``."""
    h, w = image_size
    scale = max(size / h, size / w)
    return (int(math.ceil(h * scale / multiple) * multiple), int(math.ceil(w * scale / multiple) * multiple))


def unit_float(x: torch.Tensor) -> torch.Tensor:
    """Frames as float32 in [0, 1]: uint8 scaled by 1/255 (after the upload, so bytes travel), float as is."""
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


@torch.no_grad()
def estimate_depth(model: torch.nn.Module, frames: torch.Tensor, prep: dict | None = None, batch_size: int = 16,
                   dtype: torch.dtype = torch.float32, hooks: Hooks = NULL_HOOKS, *,
                   alloc: Alloc | None = None) -> torch.Tensor:
    """Raw relative depth (float32 [T, h', w'] on the CPU) of frames [T, H, W, 3] in [0, 1] (or uint8 0..255).

    ``alloc(shape, dtype)``: where the whole-clip result is written batch by batch (e.g. ``FrameStore.empty``,
    so a long clip's depth stays out of RAM); default: the batches concatenated in RAM.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise InputError(f"depth: frames must be [T, H, W, 3] with T >= 1, got {tuple(frames.shape)}")
    prep = prep or {"size": 518, "multiple": 14, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    dev = next(model.parameters()).device
    wdtype = next(model.parameters()).dtype
    size = network_size(tuple(frames.shape[1:3]), prep["size"], prep["multiple"])
    mean = torch.tensor(prep["mean"], device=dev).view(1, 3, 1, 1)
    std = torch.tensor(prep["std"], device=dev).view(1, 3, 1, 1)
    out: list[torch.Tensor] = []
    arr: np.ndarray | None = None
    n = frames.shape[0]
    for s in range(0, n, batch_size):
        hooks.check_interrupt()
        x = unit_float(frames[s:s + batch_size].to(dev)).permute(0, 3, 1, 2)
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False).clamp(0, 1)
        x = ((x - mean) / std).to(wdtype)
        with autocast(dev, dtype):
            pred = model(pixel_values=x).predicted_depth
        if alloc is None:
            out.append(pred.float().cpu())
        else:
            if arr is None:  # the network's output size is known after its first batch
                arr = zeros(alloc, (n, *pred.shape[1:]), np.float32)
            arr[s:s + batch_size] = pred.float().cpu().numpy()
        hooks.progress(min(n, s + batch_size), n)
    return torch.cat(out) if arr is None else torch.from_numpy(arr)


def normalize_depth(raw: torch.Tensor, in_place: bool = False, chunk: int = 16) -> torch.Tensor:
    """Map depth to [-1, 1] with the clip's global min/max (a constant map gives zeros).

    ``in_place``: overwrite ``raw`` ``chunk`` frames at a time (the same elementwise operations, so the same
    values) instead of returning a new whole-clip tensor; for a depth map that lives in a caller's allocator.
    """
    lo, hi = raw.min(), raw.max()
    if float(hi - lo) <= 1e-12:
        return raw.zero_() if in_place else torch.zeros_like(raw)
    if not in_place:
        return (raw - lo) / (hi - lo) * 2 - 1
    span = hi - lo
    for s in range(0, raw.shape[0], chunk):
        raw[s:s + chunk].sub_(lo).div_(span).mul_(2).sub_(1)
    return raw


def resize_depth(depth: torch.Tensor, size: tuple[int, int], frames: torch.Tensor | None = None) -> torch.Tensor:
    """Depth [T, h, w] (optionally only ``frames``) resized bilinearly to ``size`` -> [T', 1, H, W]."""
    d = depth if frames is None else depth[frames]
    return F.interpolate(d[:, None].float(), size=size, mode="bilinear", align_corners=True)


def resize_depth_into(depth: torch.Tensor, size: tuple[int, int], alloc: Alloc | None, chunk: int = 16
                      ) -> torch.Tensor:
    """``resize_depth(depth, size)`` computed ``chunk`` frames at a time into an array from ``alloc`` (None: RAM).

    Each frame is resized on its own, so the values equal the whole-clip call's; the clip never has a second
    whole-clip copy in RAM.
    """
    out = torch.from_numpy(zeros(alloc, (depth.shape[0], 1, *size), np.float32))
    for s in range(0, depth.shape[0], chunk):
        out[s:s + chunk] = resize_depth(depth[s:s + chunk], size)
    return out
