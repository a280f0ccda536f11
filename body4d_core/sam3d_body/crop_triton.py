"""Triton kernel for the person crops: bilinear, axis-aligned warps read straight from HWC frames.

A body crop is an axis-aligned scale + shift of the frame (``crop.affine_matrices``), so each output
pixel needs only its own source coordinate: no sampling grid is built. The kernel reads the frames
as uploaded (uint8 or float, H x W x 3), so no float copy of whole frames is made, and writes the
[N, 3, S, S] float32 crops in one launch for the whole batch (``F.grid_sample`` needed one call per
frame, on a float copy of it). Same bilinear rule as ``grid_sample(align_corners=True,
padding_mode='zeros')``: neighbours outside the frame count as 0. Imported only on the CUDA path
(or by a test), so CPU-only installs never need triton.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _crop_kernel(src_ptr, index_ptr, coef_ptr, out_ptr, h, w, frame_w, size, value_scale,
                 CH: tl.constexpr, FLIP: tl.constexpr, BLOCK: tl.constexpr):
    """Program (n, block): BLOCK output pixels of crop n.

    Frame position x = (col - tx) / sx (mirrored as (frame_w - 1) - x), y = (row - ty) / sy; the
    source holds the frame from (ox, oy) on (a window of it, or the whole frame with 0, 0). The four
    bilinear neighbours count as 0 outside the source.
    """
    n = tl.program_id(0)
    pix = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    live = pix < size * size
    row = pix // size
    col = pix - row * size
    cp = coef_ptr + n * 6
    x = (col.to(tl.float32) - tl.load(cp + 1)) / tl.load(cp)
    y = (row.to(tl.float32) - tl.load(cp + 3)) / tl.load(cp + 2)
    if FLIP:
        x = (frame_w - 1).to(tl.float32) - x
    x = x - tl.load(cp + 4)
    y = y - tl.load(cp + 5)
    xf = tl.floor(x)
    yf = tl.floor(y)
    fx = x - xf
    fy = y - yf
    x0 = xf.to(tl.int32)
    y0 = yf.to(tl.int32)
    okx0 = (x0 >= 0) & (x0 < w)
    okx1 = (x0 + 1 >= 0) & (x0 + 1 < w)
    oky0 = (y0 >= 0) & (y0 < h)
    oky1 = (y0 + 1 >= 0) & (y0 + 1 < h)
    base = tl.load(index_ptr + n).to(tl.int64) * h * w * CH
    r0 = base + tl.where(oky0, y0, 0).to(tl.int64) * w * CH
    r1 = base + tl.where(oky1, y0 + 1, 0).to(tl.int64) * w * CH
    c0 = tl.where(okx0, x0, 0) * CH
    c1 = tl.where(okx1, x0 + 1, 0) * CH
    plane = size * size
    out = out_ptr + n.to(tl.int64) * CH * plane + pix
    for c in tl.static_range(CH):
        v = (1 - fx) * (1 - fy) * tl.load(src_ptr + r0 + c0 + c, mask=live & okx0 & oky0, other=0).to(tl.float32)
        v += fx * (1 - fy) * tl.load(src_ptr + r0 + c1 + c, mask=live & okx1 & oky0, other=0).to(tl.float32)
        v += (1 - fx) * fy * tl.load(src_ptr + r1 + c0 + c, mask=live & okx0 & oky1, other=0).to(tl.float32)
        v += fx * fy * tl.load(src_ptr + r1 + c1 + c, mask=live & okx1 & oky1, other=0).to(tl.float32)
        tl.store(out + c * plane, v * value_scale, mask=live)


def crop_rgb(sources: torch.Tensor, index: torch.Tensor, coef: torch.Tensor, size: int, flip: bool = False,
             value_scale: float = 1.0, block: int = 512) -> torch.Tensor:
    """[N, 3, size, size] float32 crops of ``sources`` [F, H, W, 3] (any numeric dtype, contiguous).

    index [N] int32: which source each crop reads; coef [N, 4] float32: (sx, tx, sy, ty), the crop
    maps frame pixel x to sx * x + tx (``affine_matrices``' diagonal and shift); values x value_scale.
    """
    if sources.ndim != 4 or sources.shape[-1] != 3 or not sources.is_contiguous():
        raise ValueError(f"sources must be a contiguous [F, H, W, 3] tensor, got {tuple(sources.shape)}")
    return _launch(sources, index, _with_origin(coef, None), size, int(sources.shape[2]), flip, value_scale, 3,
                   block)


def crop_windows(windows: torch.Tensor, origin: torch.Tensor, coef: torch.Tensor, size: int, frame_w: int,
                 flip: bool = False, block: int = 512) -> torch.Tensor:
    """[N, 1, size, size] float32 crops of per-crop single-channel windows [N, h, w] (e.g. masks).

    Window i holds the frame from origin[i] = (x0, y0) on, zero padded past its content; coef as
    ``crop_rgb``; frame_w is the full frame's width (for mirrored crops). Values are read as they are.
    """
    if windows.ndim != 3 or not windows.is_contiguous():
        raise ValueError(f"windows must be a contiguous [N, h, w] tensor, got {tuple(windows.shape)}")
    index = torch.arange(windows.shape[0], device=windows.device, dtype=torch.int32)
    return _launch(windows, index, _with_origin(coef, origin), size, frame_w, flip, 1.0, 1, block)


def _with_origin(coef: torch.Tensor, origin: torch.Tensor | None) -> torch.Tensor:
    """[N, 6] float32 (sx, tx, sy, ty, ox, oy)."""
    coef = coef.to(torch.float32)
    origin = torch.zeros_like(coef[:, :2]) if origin is None else origin.to(coef)
    return torch.cat([coef, origin], 1).contiguous()


def _launch(src: torch.Tensor, index: torch.Tensor, coef6: torch.Tensor, size: int, frame_w: int, flip: bool,
            value_scale: float, ch: int, block: int) -> torch.Tensor:
    n = int(index.shape[0])
    out = torch.empty(n, ch, size, size, dtype=torch.float32, device=src.device)
    if n:
        h, w = int(src.shape[1]), int(src.shape[2])
        grid = (n, triton.cdiv(size * size, block))
        _crop_kernel[grid](src, index.to(torch.int32).contiguous(), coef6, out, h, w, int(frame_w), size,
                           float(value_scale), CH=ch, FLIP=bool(flip), BLOCK=block)
    return out
