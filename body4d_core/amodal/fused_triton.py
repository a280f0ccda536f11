"""Triton kernels for the spatio-temporal resblocks: GroupNorm (+ broadcast add, + SiLU) and the blend.

diffusers runs each resblock as a chain of separate passes over the activations: broadcast add of
the time embedding, GroupNorm statistics, GroupNorm apply, SiLU, and in the spatio-temporal block a
permuted copy, a residual add, three passes of the alpha blend and a permuted copy back. Every pass
reads and writes the whole tensor, and the ones on permuted layouts run in PyTorch's non-vectorised
kernels. Here one GroupNorm is three launches (partial statistics, their exact combination, one
apply pass that adds, normalises and activates) and the temporal residual plus blend is one pass
writing the frame-major layout directly. GEGLU's GELU and product are one pass as well.

Tensors are addressed as [N, C, T, S] with any strides but a contiguous innermost S, so the
temporal block's [B, C, T, H, W] view of a frame-major [B*T, C, H, W] tensor is read in place.
The elementwise steps round to the tensor's dtype where diffusers' separate ops did, so only the
GroupNorm statistics' summation order differs from PyTorch (docs/ARCHITECTURE.md, "exact speed-ups").
Imported only where Triton is (CUDA, or its CPU interpreter in the tests).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ..triton_round import round_to as _round

TILE = 4096  # values per statistics program
APPLY_BLOCK = 2048  # values of one row per apply/blend program
COMBINE_BLOCK = 1024  # partials read per step of the combine loop


@triton.jit
def _partial_stats_kernel(x_ptr, add_ptr, mean_ptr, m2_ptr, cnt_ptr, C, T, S, Cg, G, lines, n_line_blocks,
                          n_s_blocks, sxn, sxc, sxt, san, sac, sat,
                          HAS_ADD: tl.constexpr, LINES: tl.constexpr, SBLOCK: tl.constexpr):
    row = tl.program_id(0)  # n * G + g
    part = tl.program_id(1)  # line block * n_s_blocks + s block
    n = (row // G).to(tl.int64)
    g = row % G
    lb = part // n_s_blocks
    sb = part % n_s_blocks
    line = lb * LINES + tl.arange(0, LINES)  # line = c_local * T + t
    s = sb * SBLOCK + tl.arange(0, SBLOCK)
    c = (g * Cg + line // T).to(tl.int64)
    t = (line % T).to(tl.int64)
    lmask = line < lines
    smask = s < S
    mask = lmask[:, None] & smask[None, :]
    base = n * sxn + c * sxc + t * sxt
    x = tl.load(x_ptr + base[:, None] + s[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_ADD:
        a = tl.load(add_ptr + n * san + c * sac + t * sat, mask=lmask, other=0.0).to(tl.float32)
        x = tl.where(mask, _round(x + a[:, None], x_ptr.dtype.element_ty), 0.0)  # the add's rounding
    count = tl.sum(tl.sum(mask.to(tl.float32), 1), 0)
    mean = tl.sum(tl.sum(x, 1), 0) / count
    d = tl.where(mask, x - mean, 0.0)
    out = row * (n_line_blocks * n_s_blocks) + part
    tl.store(mean_ptr + out, mean)
    tl.store(m2_ptr + out, tl.sum(tl.sum(d * d, 1), 0))
    tl.store(cnt_ptr + out, count)


@triton.jit
def _combine_kernel(mean_ptr, m2_ptr, cnt_ptr, out_mean_ptr, out_rstd_ptr, n_parts, group_len, eps,
                    BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for start in range(0, n_parts, BLOCK):
        i = start + tl.arange(0, BLOCK)
        m = tl.load(mean_ptr + row * n_parts + i, mask=i < n_parts, other=0.0)
        k = tl.load(cnt_ptr + row * n_parts + i, mask=i < n_parts, other=0.0)
        acc += m * k
    mean = tl.sum(acc, 0) / group_len
    acc2 = tl.zeros((BLOCK,), dtype=tl.float32)
    for start in range(0, n_parts, BLOCK):
        i = start + tl.arange(0, BLOCK)
        m = tl.load(mean_ptr + row * n_parts + i, mask=i < n_parts, other=0.0)
        k = tl.load(cnt_ptr + row * n_parts + i, mask=i < n_parts, other=0.0)
        q = tl.load(m2_ptr + row * n_parts + i, mask=i < n_parts, other=0.0)
        acc2 += q + k * (m - mean) * (m - mean)  # Chan's combination of partial (mean, M2)
    var = tl.maximum(tl.sum(acc2, 0) / group_len, 0.0)
    tl.store(out_mean_ptr + row, mean)
    tl.store(out_rstd_ptr + row, 1.0 / tl.sqrt(var + eps))


@triton.jit
def _apply_kernel(x_ptr, add_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, y_ptr, C, T, S, Cg, G,
                  sxn, sxc, sxt, san, sac, sat, HAS_ADD: tl.constexpr, HAS_AFFINE: tl.constexpr,
                  SILU: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # (n * C + c) * T + t of the contiguous output
    s = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = s < S
    t = row % T
    c = (row // T) % C
    n = row // (T * C)
    x = tl.load(x_ptr + n * sxn + c * sxc + t * sxt + s, mask=mask, other=0.0).to(tl.float32)
    if HAS_ADD:
        x = _round(x + tl.load(add_ptr + n * san + c * sac + t * sat).to(tl.float32), x_ptr.dtype.element_ty)
    grp = n * G + c // Cg
    scale = tl.load(rstd_ptr + grp)
    shift = -tl.load(mean_ptr + grp) * scale
    if HAS_AFFINE:
        w = tl.load(w_ptr + c).to(tl.float32)
        shift = shift * w + tl.load(b_ptr + c).to(tl.float32)
        scale = scale * w
    y = x * scale + shift
    if SILU:
        y = _round(y, y_ptr.dtype.element_ty)  # GroupNorm's output, then SiLU on it
        y = y / (1.0 + tl.exp(-y))
    tl.store(y_ptr + row * S + s, _round(y, y_ptr.dtype.element_ty).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _blend_kernel(xs_ptr, a_ptr, alpha_ptr, om_ptr, y_ptr, C, T, S, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # bt * C + c of the frame-major output
    s = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = s < S
    c = row % C
    bt = row // C
    b = bt // T
    t = bt % T
    dt = y_ptr.dtype.element_ty
    xs = tl.load(xs_ptr + row * S + s, mask=mask, other=0.0).to(tl.float32)
    a = tl.load(a_ptr + ((b * C + c) * T + t) * S + s, mask=mask, other=0.0).to(tl.float32)
    al = tl.load(alpha_ptr + bt).to(tl.float32)
    om = tl.load(om_ptr + bt).to(tl.float32)
    xt = _round(xs + a, dt)  # the temporal resnet's residual add
    y = _round(al * xs, dt) + _round(om * xt, dt)
    tl.store(y_ptr + row * S + s, _round(y, dt).to(dt), mask=mask)


@triton.jit
def _geglu_kernel(v_ptr, g_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    dt = v_ptr.dtype.element_ty
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    gelu = _round(0.5 * g * (1.0 + tl.erf(g * 0.7071067811865476)), dt)  # F.gelu (erf form), rounded
    tl.store(v_ptr + offs, _round(v * gelu, dt).to(dt), mask=mask)


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


class _View(NamedTuple):
    """A [N, C, (T,) H, W] tensor read as [N, C, T, S] (S = H*W contiguous) and a per-(n, c, t) add's strides."""

    x: torch.Tensor
    n: int
    c: int
    t: int
    s: int
    sx: tuple[int, int, int]  # x's (n, c, t) strides
    sa: tuple[int, int, int]  # the add's (n, c, t) strides (0 = broadcast, or no add)


def _strides(x: torch.Tensor) -> tuple[int, int, int] | None:
    """(n, c, t) strides of x read as [N, C, T, S], or None where S is not one contiguous block."""
    if x.dim() == 5:
        ok = x.stride(4) == 1 and (x.shape[3] == 1 or x.stride(3) == x.shape[4])
        return (x.stride(0), x.stride(1), x.stride(2)) if ok else None
    ok = x.stride(-1) == 1 and (x.dim() == 3 or x.shape[-2] == 1 or x.stride(-2) == x.shape[-1])
    return (x.stride(0), x.stride(1), 0) if ok else None


def _view(x: torch.Tensor, add: torch.Tensor | None = None) -> _View:
    """x read in place where its spatial block is contiguous, else copied once (e.g. channels_last)."""
    if x.dim() < 3:
        raise ValueError(f"expected [N, C, ...], got shape {tuple(x.shape)}")
    if _strides(x) is None:
        x = x.contiguous()
    t = x.shape[2] if x.dim() == 5 else 1
    s = x.shape[-2] * x.shape[-1] if x.dim() >= 4 else x.shape[-1]
    sa = (0, 0, 0) if add is None else (add.stride(0), add.stride(1), add.stride(2) if t > 1 else 0)
    return _View(x, x.shape[0], x.shape[1], t, s, _strides(x), sa)


def _group_stats(v: _View, groups: int, eps: float, add: torch.Tensor | None = None, tile: int = TILE
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, rstd) per (sample, group) of ``x + add`` as [N*G] fp32, each program reducing ``tile`` values."""
    if v.c % groups:
        raise ValueError(f"{v.c} channels do not split into {groups} groups")
    cg = v.c // groups
    lines = cg * v.t
    sblock = min(_pow2(v.s), 1024, tile)
    lines_per = min(max(1, tile // sblock), _pow2(lines))
    n_lb, n_sb = triton.cdiv(lines, lines_per), triton.cdiv(v.s, sblock)
    rows, parts = v.n * groups, n_lb * n_sb
    means = torch.empty((rows, parts), device=v.x.device, dtype=torch.float32)
    m2s, cnts = torch.empty_like(means), torch.empty_like(means)
    _partial_stats_kernel[(rows, parts)](v.x, v.x if add is None else add, means, m2s, cnts, v.c, v.t, v.s, cg,
                                         groups, lines, n_lb, n_sb, *v.sx, *v.sa, HAS_ADD=add is not None,
                                         LINES=lines_per, SBLOCK=sblock, num_warps=8)
    mean = torch.empty(rows, device=v.x.device, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    _combine_kernel[(rows,)](means, m2s, cnts, mean, rstd, parts, float(cg * v.t * v.s), float(eps),
                             BLOCK=min(COMBINE_BLOCK, _pow2(parts)), num_warps=4)
    return mean, rstd


def group_norm_act(x: torch.Tensor, groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
                   eps: float, add: torch.Tensor | None = None, silu: bool = True, tile: int = TILE
                   ) -> torch.Tensor:
    """``silu(group_norm(x + add))`` as one chain: x [N, C, (T,) H, W] (read in place when H*W is one
    contiguous block, else copied once), ``add`` broadcast over space as [N, C, T] (any strides, 0 allowed);
    output contiguous, x's dtype. ``silu=False``: plain GroupNorm (the ``fast_groupnorm`` option)."""
    v = _view(x, add)
    mean, rstd = _group_stats(v, groups, eps, add, tile)
    y = torch.empty(v.x.shape, device=v.x.device, dtype=v.x.dtype)
    block = min(APPLY_BLOCK, _pow2(v.s))
    _apply_kernel[(v.n * v.c * v.t, triton.cdiv(v.s, block))](
        v.x, v.x if add is None else add, mean, rstd, v.x if weight is None else weight,
        v.x if bias is None else bias, y, v.c, v.t, v.s, v.c // groups, groups, *v.sx, *v.sa,
        HAS_ADD=add is not None, HAS_AFFINE=weight is not None, SILU=silu, BLOCK=block,
        num_warps=4 if block <= 1024 else 8)
    return y


def _out_like(x: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """A kernel's output: ``out`` (checked: contiguous, x's shape and dtype), else a new tensor like ``x``."""
    if out is None:
        return torch.empty_like(x)
    if not out.is_contiguous() or out.shape != x.shape or out.dtype != x.dtype or out.device != x.device:
        raise ValueError(f"out must be contiguous {tuple(x.shape)} {x.dtype}, got {tuple(out.shape)} {out.dtype}")
    return out


def residual_blend(spatial: torch.Tensor, temporal: torch.Tensor, alpha: torch.Tensor, one_minus: torch.Tensor,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """``alpha * xs + one_minus * (xs + temporal)`` written frame-major: spatial [B*T, C, H, W] contiguous,
    temporal [B, C, T, H, W] contiguous, alpha / one_minus [B*T] in the dtype (each product and sum rounded
    to it, as the separate ops were); into ``out`` (contiguous, like ``spatial``) when given."""
    b, c, t = temporal.shape[:3]
    s = spatial.shape[-2] * spatial.shape[-1]
    if not (spatial.is_contiguous() and temporal.is_contiguous()) or spatial.shape[0] != b * t:
        raise ValueError(f"residual_blend: shapes {tuple(spatial.shape)} / {tuple(temporal.shape)} or layout do not fit")
    y = _out_like(spatial, out)
    block = min(APPLY_BLOCK, _pow2(s))
    _blend_kernel[(b * t * c, triton.cdiv(s, block))](spatial, temporal, alpha.contiguous(), one_minus.contiguous(),
                                                      y, c, t, s, BLOCK=block, num_warps=4 if block <= 1024 else 8)
    return y


def geglu_(value: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``value.mul_(F.gelu(gate))`` in one pass (no GELU-sized temporary); both contiguous, same shape."""
    if value.shape != gate.shape or not (value.is_contiguous() and gate.is_contiguous()):
        raise ValueError(f"geglu_: shapes {tuple(value.shape)} / {tuple(gate.shape)} or layout do not fit")
    n, block = value.numel(), 4096
    _geglu_kernel[(triton.cdiv(n, block),)](value, gate, n, BLOCK=block, num_warps=8)
    return value


@triton.jit
def _apply_tokens_kernel(x_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, y_ptr, C, S, Cg, G,
                         CB: tl.constexpr, SB: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * CB + tl.arange(0, CB)
    s = tl.program_id(2) * SB + tl.arange(0, SB)
    cmask = c < C
    mask = cmask[:, None] & (s < S)[None, :]
    x = tl.load(x_ptr + (n * C + c)[:, None] * S + s[None, :], mask=mask, other=0.0).to(tl.float32)
    grp = n * G + c // Cg
    rstd = tl.load(rstd_ptr + grp, mask=cmask, other=0.0)
    w = tl.load(w_ptr + c, mask=cmask, other=0.0).to(tl.float32)
    shift = -tl.load(mean_ptr + grp, mask=cmask, other=0.0) * rstd * w + tl.load(b_ptr + c, mask=cmask,
                                                                               other=0.0).to(tl.float32)
    scale = rstd * w  # the same arithmetic as _apply_kernel
    y = x * scale[:, None] + shift[:, None]
    dt = y_ptr.dtype.element_ty
    tl.store(y_ptr + (n * S + s[None, :]) * C + c[:, None], _round(y, dt).to(dt), mask=mask)


@triton.jit
def _token_major_add_kernel(h_ptr, emb_ptr, y_ptr, T, S, C, SB: tl.constexpr, CB: tl.constexpr):
    bt = tl.program_id(0).to(tl.int64)
    s = tl.program_id(1) * SB + tl.arange(0, SB)
    c = tl.program_id(2) * CB + tl.arange(0, CB)
    cmask = c < C
    mask = (s < S)[:, None] & cmask[None, :]
    b = bt // T
    t = bt % T
    dt = y_ptr.dtype.element_ty
    h = tl.load(h_ptr + (bt * S + s)[:, None] * C + c[None, :], mask=mask, other=0.0).to(tl.float32)
    e = tl.load(emb_ptr + bt * C + c, mask=cmask, other=0.0).to(tl.float32)
    tl.store(y_ptr + ((b * S + s) * T + t)[:, None] * C + c[None, :], _round(h + e[None, :], dt).to(dt), mask=mask)


@triton.jit
def _frame_major_blend_kernel(xs_ptr, mix_ptr, alpha_ptr, om_ptr, y_ptr, T, S, C, SB: tl.constexpr,
                              CB: tl.constexpr):
    bt = tl.program_id(0).to(tl.int64)
    s = tl.program_id(1) * SB + tl.arange(0, SB)
    c = tl.program_id(2) * CB + tl.arange(0, CB)
    mask = (s < S)[:, None] & (c < C)[None, :]
    b = bt // T
    t = bt % T
    dt = y_ptr.dtype.element_ty
    frame = (bt * S + s)[:, None] * C + c[None, :]
    xs = tl.load(xs_ptr + frame, mask=mask, other=0.0).to(tl.float32)
    mix = tl.load(mix_ptr + ((b * S + s) * T + t)[:, None] * C + c[None, :], mask=mask, other=0.0).to(tl.float32)
    al = tl.load(alpha_ptr + bt).to(tl.float32)
    om = tl.load(om_ptr + bt).to(tl.float32)
    y = _round(al * xs, dt) + _round(om * mix, dt)
    tl.store(y_ptr + frame, _round(y, dt).to(dt), mask=mask)


@triton.jit
def _channels_add_kernel(y_ptr, r_ptr, out_ptr, C, S, SB: tl.constexpr, CB: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    s = tl.program_id(1) * SB + tl.arange(0, SB)
    c = tl.program_id(2) * CB + tl.arange(0, CB)
    mask = (s < S)[:, None] & (c < C)[None, :]
    dt = out_ptr.dtype.element_ty
    y = tl.load(y_ptr + (n * S + s)[:, None] * C + c[None, :], mask=mask, other=0.0).to(tl.float32)
    chan = (n * C + c)[None, :] * S + s[:, None]
    r = tl.load(r_ptr + chan, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + chan, _round(y + r, dt).to(dt), mask=mask)


def _tiles(s: int, c: int) -> tuple[int, int]:
    """(SB, CB) tile of a [S, C] transpose-style kernel: 64 x 64 at most."""
    return min(64, _pow2(s)), min(64, _pow2(c))


def group_norm_tokens(x: torch.Tensor, groups: int, weight: torch.Tensor, bias: torch.Tensor, eps: float
                      ) -> torch.Tensor:
    """``group_norm(x).permute(0, 2, 3, 1).reshape(N, H*W, C)`` (contiguous) in one apply pass; x [N, C, H, W]
    contiguous, affine GroupNorm."""
    n, c, h, w = x.shape
    if not x.is_contiguous() or c % groups:
        raise ValueError(f"group_norm_tokens: {tuple(x.shape)} with {groups} groups, contiguous={x.is_contiguous()}")
    mean, rstd = _group_stats(_view(x), groups, eps)
    s = h * w
    y = torch.empty((n, s, c), device=x.device, dtype=x.dtype)
    sb, cb = _tiles(s, c)
    _apply_tokens_kernel[(n, triton.cdiv(c, cb), triton.cdiv(s, sb))](x, mean, rstd, weight, bias, y, c, s,
                                                                      c // groups, groups, CB=cb, SB=sb, num_warps=4)
    return y


def token_major_add(h: torch.Tensor, emb: torch.Tensor, frames: int) -> torch.Tensor:
    """``(h + emb[:, None])`` reordered [B*T, S, C] -> [B*S, T, C] (the temporal block's layout) in one pass."""
    bt, s, c = h.shape
    if not (h.is_contiguous() and emb.is_contiguous()) or emb.shape != (bt, c) or bt % frames:
        raise ValueError(f"token_major_add: {tuple(h.shape)} / {tuple(emb.shape)} with {frames} frames")
    y = torch.empty((bt // frames * s, frames, c), device=h.device, dtype=h.dtype)
    sb, cb = _tiles(s, c)
    _token_major_add_kernel[(bt, triton.cdiv(s, sb), triton.cdiv(c, cb))](h, emb, y, frames, s, c, SB=sb, CB=cb,
                                                                          num_warps=4)
    return y


def frame_major_blend(spatial: torch.Tensor, mixed: torch.Tensor, alpha: torch.Tensor, one_minus: torch.Tensor,
                      out: torch.Tensor | None = None) -> torch.Tensor:
    """``alpha * spatial + one_minus * mixed`` with ``mixed`` [B*S, T, C] read back in the frame-major
    [B*T, S, C] layout of ``spatial``; alpha / one_minus [B*T] in the dtype (each product and sum rounded);
    into ``out`` (contiguous, like ``spatial``) when given."""
    bt, s, c = spatial.shape
    frames = mixed.shape[1]
    if not (spatial.is_contiguous() and mixed.is_contiguous()) or mixed.numel() != spatial.numel() or bt % frames:
        raise ValueError(f"frame_major_blend: {tuple(spatial.shape)} / {tuple(mixed.shape)}")
    y = _out_like(spatial, out)
    sb, cb = _tiles(s, c)
    _frame_major_blend_kernel[(bt, triton.cdiv(s, sb), triton.cdiv(c, cb))](
        spatial, mixed, alpha.contiguous(), one_minus.contiguous(), y, frames, s, c, SB=sb, CB=cb, num_warps=4)
    return y


def channels_add(tokens: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """``tokens.reshape(N, H, W, C).permute(0, 3, 1, 2) + residual`` in one pass; tokens [N, H*W, C] and
    residual [N, C, H, W], both contiguous."""
    n, c, h, w = residual.shape
    if not (tokens.is_contiguous() and residual.is_contiguous()) or tokens.shape != (n, h * w, c):
        raise ValueError(f"channels_add: {tuple(tokens.shape)} / {tuple(residual.shape)}")
    out = torch.empty_like(residual)
    sb, cb = _tiles(h * w, c)
    _channels_add_kernel[(n, triton.cdiv(h * w, sb), triton.cdiv(c, cb))](tokens, residual, out, c, h * w, SB=sb,
                                                                          CB=cb, num_warps=4)
    return out
