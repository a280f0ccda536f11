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
def _tap(src_ptr, base, x, y, w, h, wt, acc0, acc1, acc2):
    """Add one bilinear neighbour (x, y) of weight ``wt`` to the three channel sums (0 outside)."""
    ok = (x >= 0) & (x < w) & (y >= 0) & (y < h)
    off = base + (tl.where(ok, y, 0).to(tl.int64) * w + tl.where(ok, x, 0)) * 3
    acc0 += wt * tl.load(src_ptr + off, mask=ok, other=0).to(tl.float32)
    acc1 += wt * tl.load(src_ptr + off + 1, mask=ok, other=0).to(tl.float32)
    acc2 += wt * tl.load(src_ptr + off + 2, mask=ok, other=0).to(tl.float32)
    return acc0, acc1, acc2


@triton.jit
def _crop_kernel(src_ptr, index_ptr, coef_ptr, out_ptr, h, w, size, value_scale,
                 FLIP: tl.constexpr, BLOCK: tl.constexpr):
    """Program (n, block): BLOCK output pixels of crop n; x = (col - tx) / sx, y = (row - ty) / sy."""
    n = tl.program_id(0)
    pix = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    live = pix < size * size
    row = pix // size
    col = pix - row * size
    sx = tl.load(coef_ptr + n * 4)
    tx = tl.load(coef_ptr + n * 4 + 1)
    sy = tl.load(coef_ptr + n * 4 + 2)
    ty = tl.load(coef_ptr + n * 4 + 3)
    x = (col.to(tl.float32) - tx) / sx
    y = (row.to(tl.float32) - ty) / sy
    if FLIP:
        x = (w - 1).to(tl.float32) - x
    xf = tl.floor(x)
    yf = tl.floor(y)
    fx = x - xf
    fy = y - yf
    x0 = xf.to(tl.int32)
    y0 = yf.to(tl.int32)
    base = tl.load(index_ptr + n).to(tl.int64) * h * w * 3
    a0 = tl.zeros([BLOCK], tl.float32)
    a1 = tl.zeros([BLOCK], tl.float32)
    a2 = tl.zeros([BLOCK], tl.float32)
    a0, a1, a2 = _tap(src_ptr, base, x0, y0, w, h, (1 - fx) * (1 - fy), a0, a1, a2)
    a0, a1, a2 = _tap(src_ptr, base, x0 + 1, y0, w, h, fx * (1 - fy), a0, a1, a2)
    a0, a1, a2 = _tap(src_ptr, base, x0, y0 + 1, w, h, (1 - fx) * fy, a0, a1, a2)
    a0, a1, a2 = _tap(src_ptr, base, x0 + 1, y0 + 1, w, h, fx * fy, a0, a1, a2)
    plane = size * size
    out = out_ptr + n.to(tl.int64) * 3 * plane + pix
    tl.store(out, a0 * value_scale, mask=live)
    tl.store(out + plane, a1 * value_scale, mask=live)
    tl.store(out + 2 * plane, a2 * value_scale, mask=live)


def crop_rgb(sources: torch.Tensor, index: torch.Tensor, coef: torch.Tensor, size: int, flip: bool = False,
             value_scale: float = 1.0, block: int = 512) -> torch.Tensor:
    """[N, 3, size, size] float32 crops of ``sources`` [F, H, W, 3] (any numeric dtype, contiguous).

    index [N] int32: which source each crop reads; coef [N, 4] float32: (sx, tx, sy, ty), the crop
    maps frame pixel x to sx * x + tx (``affine_matrices``' diagonal and shift); values x value_scale.
    """
    if sources.ndim != 4 or sources.shape[-1] != 3 or not sources.is_contiguous():
        raise ValueError(f"sources must be a contiguous [F, H, W, 3] tensor, got {tuple(sources.shape)}")
    n = int(index.shape[0])
    out = torch.empty(n, 3, size, size, dtype=torch.float32, device=sources.device)
    if n:
        h, w = int(sources.shape[1]), int(sources.shape[2])
        grid = (n, triton.cdiv(size * size, block))
        _crop_kernel[grid](sources, index.to(torch.int32).contiguous(), coef.to(torch.float32).contiguous(), out,
                           h, w, size, float(value_scale), FLIP=bool(flip), BLOCK=block)
    return out
