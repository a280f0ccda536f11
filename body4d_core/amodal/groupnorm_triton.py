"""GroupNorm statistics split across many Triton programs (for the VAE's and UNet's large groups).

PyTorch's CUDA GroupNorm reduces each (sample, group) with one thread block: at the VAE's full
resolution a group holds 4 x 512 x 1024 values, so a frame chunk gets a few hundred blocks for the
whole GPU. Here each program reduces CHUNK values of
one group to (mean, M2); the partial results are combined exactly (Chan's parallel formula, fp64)
and folded with the affine weights into one per-(sample, channel) scale and shift, applied by a
second elementwise kernel. Imported only on CUDA (CPU tests run it in Triton's interpreter).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

CHUNK = 8192  # values per statistics program


@triton.jit
def _chunk_stats_kernel(x_ptr, mean_ptr, m2_ptr, group_len, n_chunks, CHUNK: tl.constexpr):
    grp = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1).to(tl.int64)
    offs = chunk * CHUNK + tl.arange(0, CHUNK)
    mask = offs < group_len
    x = tl.load(x_ptr + grp * group_len + offs, mask=mask, other=0.0).to(tl.float32)
    count = tl.minimum(group_len - chunk * CHUNK, CHUNK).to(tl.float32)
    mean = tl.sum(x, 0) / count
    d = tl.where(mask, x - mean, 0.0)
    tl.store(mean_ptr + grp * n_chunks + chunk, mean)
    tl.store(m2_ptr + grp * n_chunks + chunk, tl.sum(d * d, 0))


@triton.jit
def _scale_shift_kernel(x_ptr, a_ptr, b_ptr, y_ptr, n, spatial, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    nc = offs // spatial
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    a = tl.load(a_ptr + nc, mask=mask, other=0.0)
    b = tl.load(b_ptr + nc, mask=mask, other=0.0)
    tl.store(y_ptr + offs, (x * a + b).to(y_ptr.dtype.element_ty), mask=mask)


def group_stats(x: torch.Tensor, groups: int, chunk: int = CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, biased variance) per (sample, group) of a contiguous x [N, C, ...], both float64 [N, G]."""
    n = x.shape[0]
    group_len = x.numel() // (n * groups)
    n_chunks = triton.cdiv(group_len, chunk)
    means = torch.empty((n * groups, n_chunks), device=x.device, dtype=torch.float32)
    m2s = torch.empty_like(means)
    _chunk_stats_kernel[(n * groups, n_chunks)](x, means, m2s, group_len, n_chunks, CHUNK=chunk, num_warps=8)
    counts = torch.full((n_chunks,), float(chunk), device=x.device, dtype=torch.float64)
    counts[-1] = group_len - chunk * (n_chunks - 1)
    means64 = means.double()
    mean = (means64 * counts).sum(1) / group_len
    m2 = m2s.double().sum(1) + (counts * (means64 - mean[:, None]) ** 2).sum(1)
    return mean.view(n, groups), (m2 / group_len).view(n, groups)


def group_norm(x: torch.Tensor, groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
               eps: float, chunk: int = CHUNK) -> torch.Tensor:
    """``F.group_norm(x, groups, weight, bias, eps)`` for a contiguous x [N, C, ...]; output in x's dtype."""
    n, c = x.shape[:2]
    mean, var = group_stats(x, groups, chunk)
    rstd = (var + eps).rsqrt().repeat_interleave(c // groups, dim=1)  # [N, C]
    mean = mean.repeat_interleave(c // groups, dim=1)
    w = rstd if weight is None else rstd * weight.double()
    shift = -mean * w if bias is None else bias.double() - mean * w
    y = torch.empty_like(x)
    numel, block = x.numel(), 4096
    _scale_shift_kernel[(triton.cdiv(numel, block),)](x, w.float().contiguous(), shift.float().contiguous(), y,
                                                       numel, numel // (n * c), BLOCK=block, num_warps=8)
    return y
