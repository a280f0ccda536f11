"""Triton kernels for the DINOv3 backbone's eager blocks: q/k rotary embedding, layer-scale residual add.

Eagerly, a block's rotary embedding is six passes each for q and k (a product with cos, a negation and a
concatenation for rotate-half, a product with sin, a sum, a concatenation with the prefix tokens), and each
layer-scale residual writes the scaled branch before adding it. Here each is one pass. Every value is computed
as the separate ops compute it (products and sums without fused multiply-add, nearest-even rounding where they
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
def _rope_one(src, dst, at, partner, out, cs, sn, sign, rotated, mask, OUT: tl.constexpr):
    x = tl.load(src + at, mask=mask, other=0.0).to(tl.float32)
    xp = tl.load(src + partner, mask=mask, other=0.0).to(tl.float32) * sign  # rotate-half: (-x[j + D/2], x[j])
    y = round_to(round_to(x * cs, OUT) + round_to(xp * sn, OUT), OUT)
    tl.store(dst + out, tl.where(rotated, y, x), mask=mask)


@triton.jit
def _rope_qk_kernel(qkv_ptr, sin_ptr, cos_ptr, q_ptr, k_ptr, rows, N, P, C, D,
                    OUT: tl.constexpr, ROWS: tl.constexpr, CB: tl.constexpr):
    r = (tl.program_id(0) * ROWS + tl.arange(0, ROWS)).to(tl.int64)[:, None]  # token row of [B, N]
    c = tl.arange(0, CB)[None, :]  # channel of q (or k): head * D + d
    mask = (r < rows) & (c < C)
    b, t = r // N, r % N
    h, d = c // D, c % D
    half = D // 2
    first = d < half
    partner = tl.where(first, c + half, c - half)
    sign = tl.where(first, -1.0, 1.0)
    pos = t - (N - P)  # the patch index; prefix tokens (pos < 0) pass unchanged
    rotated = pos >= 0
    table = tl.where(rotated, pos, 0) * D + d
    cs = tl.load(cos_ptr + table, mask=mask, other=0.0).to(tl.float32)
    sn = tl.load(sin_ptr + table, mask=mask, other=0.0).to(tl.float32)
    src = r * (3 * C)  # the row of the fused qkv projection: q at [0, C), k at [C, 2C)
    out = ((b * (C // D) + h) * N + t) * D + d  # [B, heads, N, D] contiguous
    _rope_one(qkv_ptr, q_ptr, src + c, src + partner, out, cs, sn, sign, rotated, mask, OUT)
    _rope_one(qkv_ptr + C, k_ptr, src + c, src + partner, out, cs, sn, sign, rotated, mask, OUT)


@triton.jit
def _scale_add_kernel(x_ptr, a_ptr, g_ptr, out_ptr, rows, C,
                      PROD: tl.constexpr, OUT: tl.constexpr, ROWS: tl.constexpr, CB: tl.constexpr):
    r = (tl.program_id(0) * ROWS + tl.arange(0, ROWS)).to(tl.int64)[:, None]
    c = tl.arange(0, CB)[None, :]
    mask = (r < rows) & (c < C)
    x = tl.load(x_ptr + r * C + c, mask=mask, other=0.0).to(tl.float32)
    a = tl.load(a_ptr + r * C + c, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + c, mask=c < C, other=0.0).to(tl.float32)
    tl.store(out_ptr + r * C + c, round_to(x + round_to(a * g, PROD), OUT), mask=mask)


def _grid(rows: int) -> tuple[int]:
    return (triton.cdiv(rows, ROWS),)


def rope_qk(qkv: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``apply_rope`` of q and k read from the fused projection ``qkv`` ([B, N, 3C] contiguous), the tables
    ``sin``, ``cos`` ([P, D], already in ``qkv``'s dtype) on the last P tokens: q, k [B, heads, N, D]
    contiguous, as ``apply_rope``'s concatenation returns them."""
    qkv = qkv.contiguous()  # a no-op for the projection's output
    b, n, c3 = qkv.shape
    c = c3 // 3
    d = c // heads
    q = torch.empty(b, heads, n, d, device=qkv.device, dtype=qkv.dtype)
    k = torch.empty_like(q)
    _rope_qk_kernel[_grid(b * n)](qkv, sin.contiguous(), cos.contiguous(), q, k, b * n, n, sin.shape[0], c, d,
                                  OUT=_DT[qkv.dtype], ROWS=ROWS, CB=triton.next_power_of_2(c), **_EXACT)
    return q, k


def scale_add(x: torch.Tensor, a: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """``x + a * gamma`` (a layer-scale residual) in one pass, dtypes promoted as PyTorch promotes them; ``x``,
    ``a`` [..., C] contiguous, ``gamma`` [C]."""
    prod = torch.promote_types(a.dtype, gamma.dtype)
    dtype = torch.promote_types(x.dtype, prod)
    x, a, gamma = x.contiguous(), a.contiguous(), gamma.contiguous()  # no-ops for the block's tensors
    out = torch.empty(x.shape, device=x.device, dtype=dtype)
    c = x.shape[-1]
    rows = x.numel() // c
    _scale_add_kernel[_grid(rows)](x, a, gamma, out, rows, c, PROD=_DT[prod], OUT=_DT[dtype], ROWS=ROWS,
                                   CB=triton.next_power_of_2(c), **_EXACT)
    return out
