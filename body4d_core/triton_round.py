"""Rounding and launch settings shared by the fused Triton kernels: each step rounds where PyTorch's op did.

Imported only where Triton is (CUDA, or its CPU interpreter in the tests).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}
EXACT = {"enable_fp_fusion": False}  # launch option: a*b + c*d as two products and a sum, as separate ops do


@triton.jit
def round_to(x, dt: tl.constexpr):
    """fp32 ``x`` rounded to ``dt`` (nearest even) and back: PyTorch's rounding of a separate op's output.
    bf16 by bit arithmetic, because Triton's CPU interpreter truncates in ``.to``."""
    if dt == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True)
    else:
        return x.to(dt).to(tl.float32)
