"""Person and hand crops: box -> square crop box, affine matrices, batched bilinear warps on device."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

BODY_PADDING = 1.25  # box growth before the aspect fixes (official GetBBoxCenterScale default)
HAND_PADDING = 0.9  # hand boxes are shrunk slightly (official transform_hand)
ASPECT = 0.75  # boxes are first made 3:4 (w:h), then square for the 1:1 model input


def crop_boxes(boxes: torch.Tensor, padding: float) -> tuple[torch.Tensor, torch.Tensor]:
    """xyxy [N, 4] -> (centre [N, 2], square side [N]) after padding and the 3:4 then 1:1 fixes."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    w = (boxes[:, 2] - boxes[:, 0]) * padding
    h = (boxes[:, 3] - boxes[:, 1]) * padding
    wide = w > h * ASPECT
    w, h = torch.where(wide, w, h * ASPECT), torch.where(wide, w / ASPECT, h)
    side = torch.where(w > h, w, h).clamp(min=1.0)  # a degenerate (e.g. predicted hand) box still crops 1 px
    return centre, side


def affine_matrices(centre: torch.Tensor, side: torch.Tensor, out: int) -> torch.Tensor:
    """[N, 2, 3] maps full-image pixels to crop pixels (crop centre at out/2)."""
    s = out / side
    a = torch.zeros(centre.shape[0], 2, 3, dtype=centre.dtype, device=centre.device)
    a[:, 0, 0] = s
    a[:, 1, 1] = s
    a[:, :, 2] = out / 2 - s[:, None] * centre
    return a


def scale_shift(affine: torch.Tensor) -> torch.Tensor:
    """[N, 4] float32 (sx, tx, sy, ty) of axis-aligned ``affine_matrices``: crop x = sx * x + tx (the crop kernel's input)."""
    return torch.stack([affine[:, 0, 0], affine[:, 0, 2], affine[:, 1, 1], affine[:, 1, 2]], 1).float()


def sample_grid(affine: torch.Tensor, out: int, hw: tuple[int, int], flip: bool = False) -> torch.Tensor:
    """grid_sample grid [N, out, out, 2] realising ``affine`` on an H x W source (optionally x-flipped)."""
    h, w = hw
    ar = torch.arange(out, device=affine.device, dtype=affine.dtype)
    x = (ar[None, None, :] - affine[:, 0, 2, None, None]) / affine[:, 0, 0, None, None]
    y = (ar[None, :, None] - affine[:, 1, 2, None, None]) / affine[:, 1, 1, None, None]
    if flip:
        x = (w - 1) - x
    gx = 2 * x / max(w - 1, 1) - 1
    gy = 2 * y / max(h - 1, 1) - 1
    n = affine.shape[0]
    return torch.stack([gx.expand(n, out, out), gy.expand(n, out, out)], -1)


def warp(src: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Bilinear warp of one source [1, C, H, W] (or [N, ...]) into N crops; outside is zero."""
    if src.shape[0] == 1 and grid.shape[0] > 1:
        src = src.expand(grid.shape[0], -1, -1, -1)
    return F.grid_sample(src, grid.to(src.dtype), mode="bilinear", padding_mode="zeros", align_corners=True)


def warp_window(src: np.ndarray, grid: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Warp one full-frame [H, W] array (a mask) uploading only the window the grid samples.

    Same result as ``warp`` on the whole frame (bilinear neighbours all lie inside the window),
    but a 1080p mask costs a few KB of transfer instead of 8 MB.
    """
    h, w = src.shape[:2]
    px = (grid[..., 0] + 1) * (w - 1) / 2
    py = (grid[..., 1] + 1) * (h - 1) / 2
    x0 = int(np.clip(np.floor(float(px.min())) - 1, 0, w - 1))
    x1 = int(np.clip(np.ceil(float(px.max())) + 1, 0, w - 1))
    y0 = int(np.clip(np.floor(float(py.min())) - 1, 0, h - 1))
    y1 = int(np.clip(np.ceil(float(py.max())) + 1, 0, h - 1))
    if x1 - x0 < 1 or y1 - y0 < 1:  # the crop lies (almost) outside the frame: nothing to sample
        x0, x1, y0, y1 = 0, w - 1, 0, h - 1
    sub = torch.from_numpy(np.ascontiguousarray(src[y0:y1 + 1, x0:x1 + 1])).to(device).float()
    g = torch.stack([2 * (px - x0) / (x1 - x0) - 1, 2 * (py - y0) / (y1 - y0) - 1], -1)
    return warp(sub[None, None], g[None])[0]
