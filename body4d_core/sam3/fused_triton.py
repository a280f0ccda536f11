"""Triton kernels for SAM-3's ViT layers: rotary embedding, window partition, window merge + residual add.

transformers runs the rotary embedding of q and k as seven fp32 passes each (upcast, two products, a
negated pairwise swap, a stack, a sum, a downcast), the window partition as a padded copy and a permuted
copy of the fp32 LayerNorm output (then cast to bf16 once per projection), and the window merge as a
permuted copy before the residual add. Here each is one pass. Every value is computed as the separate
ops compute it (fp32 products and sum without fused multiply-add, nearest-even rounding where they
round), so the results are bit-identical (docs/ARCHITECTURE.md, "exact speed-ups"). Imported only where Triton
is (CUDA, or its CPU interpreter in the tests).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..triton_round import EXACT as _EXACT
from ..triton_round import TL_DTYPES as _DT
from ..triton_round import round_to

ROWS = 4  # token rows per program


@triton.jit
def _rope_one(src, dst, at, rot, cs, sn, sign, mask, OUT: tl.constexpr):
    x = tl.load(src + at, mask=mask, other=0.0).to(tl.float32)
    xp = tl.load(src + rot, mask=mask, other=0.0).to(tl.float32) * sign  # rotate_pairwise: (-x[2i+1], x[2i])
    tl.store(dst + at, round_to(x * cs + xp * sn, OUT), mask=mask)


@triton.jit
def _rope_kernel(q_ptr, k_ptr, cos_ptr, sin_ptr, qo_ptr, ko_ptr, rows, N, C, D,
                 OUT: tl.constexpr, ROWS: tl.constexpr, CB: tl.constexpr):
    r = (tl.program_id(0) * ROWS + tl.arange(0, ROWS)).to(tl.int64)[:, None]
    c = tl.arange(0, CB)[None, :]
    mask = (r < rows) & (c < C)
    d = c % D
    at = r * C + c
    rot = r * C + (c ^ 1)  # the pair partner: x[2i] pairs with x[2i+1]
    pos = (r % N) * D + d
    cs = tl.load(cos_ptr + pos, mask=mask, other=0.0)
    sn = tl.load(sin_ptr + pos, mask=mask, other=0.0)
    sign = tl.where(d % 2 == 0, -1.0, 1.0)
    _rope_one(q_ptr, qo_ptr, at, rot, cs, sn, sign, mask, OUT)
    _rope_one(k_ptr, ko_ptr, at, rot, cs, sn, sign, mask, OUT)


@triton.jit
def _partition_kernel(x_ptr, y_ptr, rows, H, W, C, WS, NWH, NWW,
                      OUT: tl.constexpr, ROWS: tl.constexpr, CB: tl.constexpr):
    r = (tl.program_id(0) * ROWS + tl.arange(0, ROWS)).to(tl.int64)[:, None]  # window-major output row
    c = tl.arange(0, CB)[None, :]
    win = r // (WS * WS)
    p = r % (WS * WS)
    b = win // (NWH * NWW)
    wi = win % (NWH * NWW)
    y = (wi // NWW) * WS + p // WS
    x = (wi % NWW) * WS + p % WS
    inside = (y < H) & (x < W)  # the zero padding of a partial window
    mask = (r < rows) & (c < C)
    v = tl.load(x_ptr + ((b * H + y) * W + x) * C + c, mask=mask & inside, other=0.0).to(tl.float32)
    tl.store(y_ptr + r * C + c, round_to(v, OUT), mask=mask)


@triton.jit
def _merge_add_kernel(res_ptr, win_ptr, out_ptr, rows, H, W, C, WS, NWH, NWW,
                      OUT: tl.constexpr, ROWS: tl.constexpr, CB: tl.constexpr):
    r = (tl.program_id(0) * ROWS + tl.arange(0, ROWS)).to(tl.int64)[:, None]  # [B, H, W] output row
    c = tl.arange(0, CB)[None, :]
    mask = (r < rows) & (c < C)
    b = r // (H * W)
    y = (r // W) % H
    x = r % W
    wrow = ((b * NWH + y // WS) * NWW + x // WS) * (WS * WS) + (y % WS) * WS + x % WS
    res = tl.load(res_ptr + r * C + c, mask=mask, other=0.0).to(tl.float32)
    h = tl.load(win_ptr + wrow * C + c, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + r * C + c, round_to(res + h, OUT), mask=mask)


def _grid(rows: int) -> tuple[int]:
    return (triton.cdiv(rows, ROWS),)


def rope_qk(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' ``apply_rotary_pos_emb_2d`` on the projections ``q``, ``k`` ([B, N, C] contiguous);
    returns [B, heads, N, C / heads] views strided as its outputs are (the projections' layout)."""
    b, n, c = q.shape
    d = c // heads
    qo, ko = torch.empty_like(q), torch.empty_like(k)
    _rope_kernel[_grid(b * n)](q, k, cos, sin, qo, ko, b * n, n, c, d, OUT=_DT[q.dtype], ROWS=ROWS,
                               CB=triton.next_power_of_2(c), **_EXACT)
    return tuple(t.view(b, n, heads, d).transpose(1, 2) for t in (qo, ko))


def window_partition(x: torch.Tensor, ws: int, dtype: torch.dtype) -> tuple[torch.Tensor, tuple[int, int]]:
    """transformers' ``window_partition`` of ``x`` ([B, H, W, C] contiguous) cast to ``dtype``, in one pass:
    [B * windows, ws, ws, C] and the padded (H, W)."""
    b, h, w, c = x.shape
    nwh, nww = triton.cdiv(h, ws), triton.cdiv(w, ws)
    out = torch.empty(b * nwh * nww, ws, ws, c, device=x.device, dtype=dtype)
    rows = out.shape[0] * ws * ws
    _partition_kernel[_grid(rows)](x, out, rows, h, w, c, ws, nwh, nww, OUT=_DT[dtype], ROWS=ROWS,
                                   CB=triton.next_power_of_2(c))
    return out, (nwh * ws, nww * ws)


def merge_add(residual: torch.Tensor, windows: torch.Tensor, ws: int) -> torch.Tensor:
    """``residual + window_unpartition(windows)`` in one pass (the padding dropped, dtype promoted as
    PyTorch promotes it); ``residual`` [B, H, W, C], ``windows`` [B * windows, ws, ws, C], both contiguous."""
    b, h, w, c = residual.shape
    dtype = torch.promote_types(residual.dtype, windows.dtype)
    out = torch.empty(b, h, w, c, device=residual.device, dtype=dtype)
    rows = b * h * w
    _merge_add_kernel[_grid(rows)](residual, windows, out, rows, h, w, c, ws, triton.cdiv(h, ws),
                                   triton.cdiv(w, ws), OUT=_DT[dtype], ROWS=ROWS, CB=triton.next_power_of_2(c))
    return out
