"""Triton kernels that quantise activations to FP8 rows in the same pass that produces them.

Each program owns whole rows (a row fits in registers: 1280 or 5120 values here), so the row's
amax, the scale and the E4M3 cast cost no extra read of the activation. The quantised output's
element type is whatever ``q_ptr`` points to: float8_e4m3fn on the GPU, float32 in the CPU tests
(Triton's interpreter), so the tests check the math before the cast. Imported only when a CUDA
FP8 path (or a test) asks for it, so CPU-only installs never need triton.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

FP8_MAX = tl.constexpr(448.0)  # largest finite float8_e4m3fn
MIN_AMAX = tl.constexpr(1e-12)  # an all-zero row gets this amax (scale stays finite)

# A row of n values is held as two power-of-two tiles, A = the largest power of two <= n and B = the
# rest rounded up (1280 = 1024 + 256, 5120 = 4096 + 1024: no padding), which keeps the registers per
# thread, and so the occupancy, where one padded 2048 / 8192 tile would not.


@triton.jit
def _tiles(row, n_rows, n_cols, A: tl.constexpr, B: tl.constexpr):
    """Column indices and masks of both tiles for rows ``row`` [ROWS]."""
    ca = tl.arange(0, A)
    cb = A + tl.arange(0, B)
    live = row[:, None] < n_rows
    return ca, cb, live & (ca[None, :] < n_cols), live & (cb[None, :] < n_cols)


@triton.jit
def _load(ptr, row, stride, cols, mask):
    return tl.load(ptr + row[:, None] * stride + cols[None, :], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _store_rows(q_ptr, s_ptr, row, n_rows, n_cols, ya, yb, ca, cb, ma, mb):
    """Row-wise amax -> scale -> clamped quotients (stored as q_ptr's element type) and the scale."""
    amax = tl.maximum(tl.max(tl.abs(ya), 1), tl.max(tl.abs(yb), 1))
    scale = tl.maximum(amax, MIN_AMAX) / FP8_MAX
    qa = tl.clamp(ya / scale[:, None], -FP8_MAX, FP8_MAX)
    qb = tl.clamp(yb / scale[:, None], -FP8_MAX, FP8_MAX)
    tl.store(q_ptr + row[:, None] * n_cols + ca[None, :], qa.to(q_ptr.dtype.element_ty), mask=ma)
    tl.store(q_ptr + row[:, None] * n_cols + cb[None, :], qb.to(q_ptr.dtype.element_ty), mask=mb)
    tl.store(s_ptr + row, scale, mask=row < n_rows)


@triton.jit
def _norm_store(q_ptr, s_ptr, w_ptr, b_ptr, row, n_rows, n_cols, eps, xa, xb, ca, cb, ma, mb):
    """LayerNorm (fp32 statistics, affine) of the two tiles, then ``_store_rows``."""
    mean = (tl.sum(xa, 1) + tl.sum(xb, 1)) / n_cols
    xa = tl.where(ma, xa - mean[:, None], 0.0)
    xb = tl.where(mb, xb - mean[:, None], 0.0)
    rstd = tl.rsqrt((tl.sum(xa * xa, 1) + tl.sum(xb * xb, 1)) / n_cols + eps)[:, None]
    wa = tl.load(w_ptr + ca, mask=ca < n_cols, other=0.0).to(tl.float32)[None, :]
    wb = tl.load(w_ptr + cb, mask=cb < n_cols, other=0.0).to(tl.float32)[None, :]
    ba = tl.load(b_ptr + ca, mask=ca < n_cols, other=0.0).to(tl.float32)[None, :]
    bb = tl.load(b_ptr + cb, mask=cb < n_cols, other=0.0).to(tl.float32)[None, :]
    ya = tl.where(ma, xa * rstd * wa + ba, 0.0)
    yb = tl.where(mb, xb * rstd * wb + bb, 0.0)
    _store_rows(q_ptr, s_ptr, row, n_rows, n_cols, ya, yb, ca, cb, ma, mb)


@triton.jit
def _rows_of(ROWS: tl.constexpr):
    return tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)


@triton.jit
def _layer_norm_rows_kernel(x_ptr, w_ptr, b_ptr, q_ptr, s_ptr, n_rows, n_cols, eps,
                            A: tl.constexpr, B: tl.constexpr, ROWS: tl.constexpr):
    row = _rows_of(ROWS)
    ca, cb, ma, mb = _tiles(row, n_rows, n_cols, A, B)
    xa, xb = _load(x_ptr, row, n_cols, ca, ma), _load(x_ptr, row, n_cols, cb, mb)
    _norm_store(q_ptr, s_ptr, w_ptr, b_ptr, row, n_rows, n_cols, eps, xa, xb, ca, cb, ma, mb)


@triton.jit
def _add_layer_norm_rows_kernel(x_ptr, h_ptr, g_ptr, w_ptr, b_ptr, xo_ptr, q_ptr, s_ptr, n_rows, n_cols, eps,
                                A: tl.constexpr, B: tl.constexpr, ROWS: tl.constexpr):
    """xo = x + g * h (the residual add with layer scale, stored in x's dtype), then LayerNorm(xo) as rows."""
    row = _rows_of(ROWS)
    ca, cb, ma, mb = _tiles(row, n_rows, n_cols, A, B)
    ga = tl.load(g_ptr + ca, mask=ca < n_cols, other=0.0).to(tl.float32)[None, :]
    gb = tl.load(g_ptr + cb, mask=cb < n_cols, other=0.0).to(tl.float32)[None, :]
    xa = _load(x_ptr, row, n_cols, ca, ma) + _load(h_ptr, row, n_cols, ca, ma) * ga
    xb = _load(x_ptr, row, n_cols, cb, mb) + _load(h_ptr, row, n_cols, cb, mb) * gb
    xa, xb = xa.to(xo_ptr.dtype.element_ty), xb.to(xo_ptr.dtype.element_ty)
    tl.store(xo_ptr + row[:, None] * n_cols + ca[None, :], xa, mask=ma)
    tl.store(xo_ptr + row[:, None] * n_cols + cb[None, :], xb, mask=mb)
    # normalise the stored (rounded) sum, as the unfused block does
    _norm_store(q_ptr, s_ptr, w_ptr, b_ptr, row, n_rows, n_cols, eps, xa.to(tl.float32), xb.to(tl.float32),
                ca, cb, ma, mb)


@triton.jit
def _swiglu_rows_kernel(h_ptr, q_ptr, s_ptr, n_rows, n_cols, A: tl.constexpr, B: tl.constexpr, ROWS: tl.constexpr):
    """h rows are [gate (n_cols) | up (n_cols)]; y = silu(gate) * up."""
    row = _rows_of(ROWS)
    ca, cb, ma, mb = _tiles(row, n_rows, n_cols, A, B)
    ga, gb = _load(h_ptr, row, 2 * n_cols, ca, ma), _load(h_ptr, row, 2 * n_cols, cb, mb)
    ua, ub = _load(h_ptr + n_cols, row, 2 * n_cols, ca, ma), _load(h_ptr + n_cols, row, 2 * n_cols, cb, mb)
    ya = ga / (1.0 + tl.exp(-ga)) * ua
    yb = gb / (1.0 + tl.exp(-gb)) * ub
    _store_rows(q_ptr, s_ptr, row, n_rows, n_cols, ya, yb, ca, cb, ma, mb)


@triton.jit
def _rows_kernel(x_ptr, q_ptr, s_ptr, n_rows, n_cols, A: tl.constexpr, B: tl.constexpr, ROWS: tl.constexpr):
    row = _rows_of(ROWS)
    ca, cb, ma, mb = _tiles(row, n_rows, n_cols, A, B)
    _store_rows(q_ptr, s_ptr, row, n_rows, n_cols, _load(x_ptr, row, n_cols, ca, ma),
                _load(x_ptr, row, n_cols, cb, mb), ca, cb, ma, mb)


@triton.jit
def _heads_load(x_ptr, rb, rn, sb, sn, sh, sd, head_dim, cols, mask):
    ptr = x_ptr + (rb * sb + rn * sn)[:, None] + ((cols // head_dim) * sh + (cols % head_dim) * sd)[None, :]
    return tl.load(ptr, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _heads_rows_kernel(x_ptr, q_ptr, s_ptr, n_rows, n_tok, head_dim, sb, sh, sn, sd, n_cols,
                       A: tl.constexpr, B: tl.constexpr, ROWS: tl.constexpr):
    """Rows (batch, token) x cols (head, channel) of an attention output [B, heads, N, head_dim] with any
    strides, so the [B, N, heads * head_dim] transpose never has to be materialised."""
    row = _rows_of(ROWS)
    ca, cb, ma, mb = _tiles(row, n_rows, n_cols, A, B)
    rb, rn = row // n_tok, row % n_tok
    ya = _heads_load(x_ptr, rb, rn, sb, sn, sh, sd, head_dim, ca, ma)
    yb = _heads_load(x_ptr, rb, rn, sb, sn, sh, sd, head_dim, cb, mb)
    _store_rows(q_ptr, s_ptr, row, n_rows, n_cols, ya, yb, ca, cb, ma, mb)


Config = tuple[int, int]  # (rows per program, warps per program)


def launch_config(kernel: str, n_cols: int) -> Config:
    """Rows per program and warps per kernel and row width (the fastest of a sweep at the backbone's
    sizes, ``bench/bench_fp8_kernels.py --sweep``; other widths get the same shape)."""
    block = triton.next_power_of_2(n_cols)
    if kernel == "layer_norm":
        return (1, 1) if block <= 2048 else (1, 4 if block <= 8192 else 8)
    if kernel == "swiglu":  # several rows per program spill registers at the backbone's width
        return (max(1, min(4, 2048 // block)), 4 if block <= 8192 else 8)
    return max(1, min(8, 2048 // block)), (4 if block <= 2048 else (8 if block <= 4096 else 16))


def tile_sizes(n_cols: int) -> tuple[int, int]:
    """(A, B): the largest power of two <= n_cols, and the rest rounded up to a power of two (>= 1)."""
    a = 1 << (max(1, n_cols).bit_length() - 1)
    return a, triton.next_power_of_2(max(1, n_cols - a))


def _launch(kernel, name: str, n_rows: int, n_cols: int, config: Config | None, *args) -> None:
    rows, warps = config or launch_config(name, n_cols)
    a, b = tile_sizes(n_cols)
    kernel[(triton.cdiv(n_rows, rows),)](*args, A=a, B=b, ROWS=rows, num_warps=warps)


def _outputs(rows: int, cols: int, like: torch.Tensor, q_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.empty((rows, cols), device=like.device, dtype=q_dtype),
            torch.empty((rows,), device=like.device, dtype=torch.float32))


def layer_norm_rows(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                    q_dtype: torch.dtype = torch.float8_e4m3fn, config: Config | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """LayerNorm of x [M, K] quantised per row: (q [M, K] q_dtype, scale [M] float32)."""
    x = x.contiguous()
    m, k = x.shape
    q, s = _outputs(m, k, x, q_dtype)
    _launch(_layer_norm_rows_kernel, "layer_norm", m, k, config, x, weight.contiguous(), bias.contiguous(), q, s,
            m, k, float(eps))
    return q, s


def swiglu_rows(h: torch.Tensor, q_dtype: torch.dtype = torch.float8_e4m3fn,
                config: Config | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """silu(h[:, :H]) * h[:, H:] of h [M, 2H] quantised per row: (q [M, H], scale [M])."""
    h = h.contiguous()
    m, k2 = h.shape
    q, s = _outputs(m, k2 // 2, h, q_dtype)
    _launch(_swiglu_rows_kernel, "swiglu", m, k2 // 2, config, h, q, s, m, k2 // 2)
    return q, s


def quantize_rows(x: torch.Tensor, q_dtype: torch.dtype = torch.float8_e4m3fn,
                  config: Config | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] quantised per row: (q [M, K], scale [M])."""
    x = x.contiguous()
    m, k = x.shape
    q, s = _outputs(m, k, x, q_dtype)
    _launch(_rows_kernel, "rows", m, k, config, x, q, s, m, k)
    return q, s


def add_layer_norm_rows(x: torch.Tensor, h: torch.Tensor, gamma: torch.Tensor, weight: torch.Tensor,
                        bias: torch.Tensor, eps: float, q_dtype: torch.dtype = torch.float8_e4m3fn,
                        config: Config | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x + gamma * h [M, K] in x's dtype, LayerNorm of that quantised per row: q [M, K], scale [M])."""
    x, h = x.contiguous(), h.contiguous()
    m, k = x.shape
    xo = torch.empty_like(x)
    q, s = _outputs(m, k, x, q_dtype)
    _launch(_add_layer_norm_rows_kernel, "layer_norm", m, k, config, x, h, gamma.contiguous(), weight.contiguous(),
            bias.contiguous(), xo, q, s, m, k, float(eps))
    return xo, q, s


def heads_rows(x: torch.Tensor, q_dtype: torch.dtype = torch.float8_e4m3fn,
               config: Config | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention output x [B, heads, N, head_dim] (any strides) as per-row quantised [B * N, heads * head_dim]."""
    b, nh, n, hd = x.shape
    q, s = _outputs(b * n, nh * hd, x, q_dtype)
    sb, sh, sn, sd = x.stride()
    _launch(_heads_rows_kernel, "rows", b * n, nh * hd, config, x, q, s, b * n, n, hd, sb, sh, sn, sd, nh * hd)
    return q, s
