"""FP8 (E4M3) matmuls for the backbone's linear layers, and the activation quantisers they need.

Weights are quantised once per call (per output channel or per tensor); activations per token
row or per tensor. Row quantisation can be *fused* into the op that produces the activation
(LayerNorm, the SwiGLU product): on CUDA those run as our Triton kernels (``fp8_triton``) behind
``torch.library`` ops, so a compiled block keeps them as single kernels; elsewhere the same ops
run the plain torch formula, which is also the reference the kernels are tested against.

FP8 reaches the backbone by module substitution (``set_fp8``): for the duration of an FP8 call the
blocks' ``nn.Linear``s are replaced by ``Fp8Linear`` stand-ins (weights quantised on entry, dropped
on exit) and, where the fused kernels change how a block is wired, the block, its attention, its
first norm and its MLP by FP8 subclasses of the same modules. The network code stays plain.
"""

from __future__ import annotations

import logging
from typing import Callable, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

log = logging.getLogger(__name__)

FP8_MAX = 448.0  # largest finite float8_e4m3fn
MIN_AMAX = 1e-12  # an all-zero row or tensor gets this amax, so its scale stays finite


def _to_e4m3(x: torch.Tensor, amax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q float8_e4m3fn, float32 scale) with x ~= q * scale, for an amax that broadcasts against x."""
    scale = amax.float().clamp(min=MIN_AMAX) / FP8_MAX
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), scale


def fp8_quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise E4M3 quantisation: (q [M, K] float8_e4m3fn, scale [M, 1] float32) with x ~= q * scale."""
    return _to_e4m3(x, x.abs().amax(-1, keepdim=True))


def fp8_quantize_tensor(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor E4M3 quantisation: (q float8_e4m3fn, scale 0-dim float32) with x ~= q * scale."""
    return _to_e4m3(x, x.abs().amax())


FP8_SCALINGS = {"row": fp8_quantize_rows, "tensor": fp8_quantize_tensor}  # enable_fp8(scaling=...)


class Fp8Rows(NamedTuple):
    """An activation already quantised per row: x ~= q * scale (q [..., K] E4M3, scale [..., 1] fp32)."""

    q: torch.Tensor
    scale: torch.Tensor

    @property
    def shape(self) -> torch.Size:
        return self.q.shape


# ------------------------------------------------------------ fused quantisers (torch.library ops)

OPS = ("fp8_layer_norm_rows", "fp8_add_layer_norm_rows", "fp8_swiglu_rows", "fp8_rows", "fp8_heads_rows")


def _rows_out(like: torch.Tensor, rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Empty (q [rows, cols] E4M3, scale [rows] fp32) on ``like``'s device: the ops' fake outputs."""
    return like.new_empty((rows, cols), dtype=torch.float8_e4m3fn), like.new_empty((rows,), dtype=torch.float32)


def _reference_rows(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    q, s = fp8_quantize_rows(y.float())
    return q, s[:, 0]


def _layer_norm_rows(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> tuple[
        torch.Tensor, torch.Tensor]:
    if x.is_cuda:
        from .fp8_triton import layer_norm_rows
        return layer_norm_rows(x, weight, bias, eps)
    return _reference_rows(F.layer_norm(x.float(), (x.shape[-1],), weight.float(), bias.float(), eps))


def _add_layer_norm_rows(x: torch.Tensor, h: torch.Tensor, gamma: torch.Tensor, weight: torch.Tensor,
                         bias: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if x.is_cuda:
        from .fp8_triton import add_layer_norm_rows
        return add_layer_norm_rows(x, h, gamma, weight, bias, eps)
    xo = (x.float() + h.float() * gamma.float()).to(x.dtype)
    return (xo,) + _reference_rows(F.layer_norm(xo.float(), (x.shape[-1],), weight.float(), bias.float(), eps))


def _swiglu_rows(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if h.is_cuda:
        from .fp8_triton import swiglu_rows
        return swiglu_rows(h)
    gate, up = h.float().chunk(2, dim=-1)
    return _reference_rows(F.silu(gate) * up)


def _rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if x.is_cuda:
        from .fp8_triton import quantize_rows
        return quantize_rows(x)
    return _reference_rows(x)


def _heads_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if x.is_cuda:
        from .fp8_triton import heads_rows
        return heads_rows(x)
    b, nh, n, hd = x.shape
    return _reference_rows(x.transpose(1, 2).reshape(b * n, nh * hd))


def register_ops() -> None:
    """Define the ``torch.ops.body4d`` quantiser ops once per process (a second copy of this package,
    imported under another name, finds them defined and uses them: same code)."""
    if all(hasattr(torch.ops.body4d, name) for name in OPS):
        return
    lib = "body4d::"
    ln = torch.library.custom_op(lib + "fp8_layer_norm_rows", _layer_norm_rows, mutates_args=())
    ln.register_fake(lambda x, weight, bias, eps: _rows_out(x, *x.shape))
    sw = torch.library.custom_op(lib + "fp8_swiglu_rows", _swiglu_rows, mutates_args=())
    sw.register_fake(lambda h: _rows_out(h, h.shape[0], h.shape[1] // 2))
    rows = torch.library.custom_op(lib + "fp8_rows", _rows, mutates_args=())
    rows.register_fake(lambda x: _rows_out(x, *x.shape))
    add_ln = torch.library.custom_op(lib + "fp8_add_layer_norm_rows", _add_layer_norm_rows, mutates_args=())
    add_ln.register_fake(lambda x, h, gamma, weight, bias, eps: (torch.empty_like(x),) + _rows_out(x, *x.shape))
    heads = torch.library.custom_op(lib + "fp8_heads_rows", _heads_rows, mutates_args=())
    heads.register_fake(lambda x: _rows_out(x, x.shape[0] * x.shape[2], x.shape[1] * x.shape[3]))


def _as_rows(q: torch.Tensor, s: torch.Tensor, shape: torch.Size) -> Fp8Rows:
    return Fp8Rows(q.reshape(shape), s.reshape(*shape[:-1], 1))


def layer_norm_fp8(norm: torch.nn.LayerNorm, x: torch.Tensor) -> Fp8Rows:
    """``norm(x)`` quantised per row in the same kernel (the normalised values never hit memory in bf16)."""
    q, s = torch.ops.body4d.fp8_layer_norm_rows(x.reshape(-1, x.shape[-1]), norm.weight, norm.bias, norm.eps)
    return _as_rows(q, s, x.shape)


def add_layer_norm_fp8(x: torch.Tensor, h: torch.Tensor, gamma: torch.Tensor,
                      norm: torch.nn.LayerNorm) -> tuple[torch.Tensor, Fp8Rows]:
    """(x + gamma * h, ``norm`` of that as FP8 rows): a block's residual add and its next norm in one kernel."""
    flat = x.reshape(-1, x.shape[-1])
    xo, q, s = torch.ops.body4d.fp8_add_layer_norm_rows(flat, h.reshape(flat.shape), gamma, norm.weight, norm.bias,
                                                        norm.eps)
    return xo.reshape(x.shape), _as_rows(q, s, x.shape)


def heads_fp8(out: torch.Tensor) -> Fp8Rows:
    """Attention output [B, heads, N, head_dim] as FP8 rows of [B, N, heads * head_dim], read in place."""
    b, nh, n, hd = out.shape
    q, s = torch.ops.body4d.fp8_heads_rows(out)
    return _as_rows(q, s, torch.Size((b, n, nh * hd)))


def swiglu_fp8(h: torch.Tensor) -> Fp8Rows:
    """silu(gate) * up of h = [gate | up] (last dim), quantised per row in the same kernel."""
    q, s = torch.ops.body4d.fp8_swiglu_rows(h.reshape(-1, h.shape[-1]))
    return _as_rows(q, s, h.shape[:-1] + (h.shape[-1] // 2,))


def rows_fp8(x: torch.Tensor) -> Fp8Rows:
    """x quantised per row, in one kernel on CUDA."""
    q, s = torch.ops.body4d.fp8_rows(x.reshape(-1, x.shape[-1]))
    return _as_rows(q, s, x.shape)


# ------------------------------------------------------------------------------- matmuls


def fp8_matmul(x: Fp8Rows | tuple[torch.Tensor, torch.Tensor], w8: torch.Tensor, w_scale: torch.Tensor,
               bias: torch.Tensor | None, fast_accum: bool = False) -> torch.Tensor:
    """y = x W^T + b for an already quantised x (q [..., K], scale [..., 1] or 0-dim), bf16 out."""
    xq, xs = x
    shape = xq.shape
    xq = xq.reshape(-1, shape[-1])
    xs = xs if xs.ndim == 0 else xs.reshape(-1, 1)
    b = None if bias is None else bias.to(torch.bfloat16)
    if xq.is_cuda:
        y = torch._scaled_mm(xq, w8.t(), scale_a=xs, scale_b=w_scale.t(), bias=b, out_dtype=torch.bfloat16,
                             use_fast_accum=fast_accum)
    else:  # reference path (CPU tests): the same quantised operands, dequantised
        y = ((xq.float() * xs) @ (w8.float() * w_scale).t()).to(torch.bfloat16)
        y = y if b is None else y + b
    return y.reshape(*shape[:-1], -1)


def fp8_linear(x: torch.Tensor, w8: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None,
               fast_accum: bool = False, fused: bool = False) -> torch.Tensor:
    """y = x W^T + b with both operands in E4M3, bf16 out.

    A 0-dim ``w_scale`` means per-tensor scales (the activation gets one too); a [N, 1] one means
    per-output-channel weight scales and per-token activation scales (``fused``: quantised by one
    ``fp8_rows`` kernel). fast_accum: Hopper's faster FP8 accumulation (fewer fp32 promotions of
    the partial sums; slightly less accurate).
    """
    if w_scale.ndim == 0:
        xq = fp8_quantize_tensor(x)
    elif fused:
        xq = rows_fp8(x)
    else:
        q, s = fp8_quantize_rows(x.reshape(-1, x.shape[-1]))
        xq = _as_rows(q, s, x.shape)
    return fp8_matmul(xq, w8, w_scale, bias, fast_accum)


def fused_unavailable(device: torch.device) -> str:
    """'' when the fused quantisers can run on ``device`` (CPU: torch formula; CUDA: Triton kernels), else why not."""
    if device.type != "cuda":
        return ""
    try:
        from . import fp8_triton  # noqa: F401
    except Exception as err:  # noqa: BLE001 - e.g. torch wheels without triton (Windows): any failure means no kernels
        return f"the fused FP8 kernels need triton ({type(err).__name__}: {err})"
    return ""


def fp8_unavailable(device: torch.device) -> str:
    """'' when ``device`` runs FP8 (E4M3) matmuls, else why not (they need CUDA compute capability 8.9+)."""
    if device.type != "cuda":
        return "FP8 matmuls need a CUDA GPU"
    cap = torch.cuda.get_device_capability(device)
    if cap < (8, 9):
        return f"FP8 matmuls need compute capability 8.9+ (Ada, Hopper or newer); this GPU is {cap[0]}.{cap[1]}"
    return ""



# ------------------------------------------------------------------------ stand-in modules

FP8_LINEAR_ATTRS = ("w_fp8", "w_scale", "fp8_fast_accum", "fp8_fused")  # what an Fp8Linear holds while on
FP8_BLOCK_ATTRS = ("fp8_rows_in", "w12_fp8", "w12_scale", "w12_bias")  # what the fused stand-ins hold while on


def _stand_in(mod: nn.Module, cls: type | None = None, **children: nn.Module) -> nn.Module:
    """A shallow copy of ``mod`` (same attributes, parameters, buffers and children; of class ``cls`` if
    given, whose forward replaces the module's) with some children replaced; ``mod`` itself is left
    untouched and kept as ``fp8_source``."""
    new = (cls or type(mod)).__new__(cls or type(mod))
    new.__dict__.update(mod.__dict__)
    new._parameters, new._buffers = dict(mod._parameters), dict(mod._buffers)
    new._modules = {**mod._modules, **children}
    new.__dict__["fp8_source"] = mod
    return new


class Fp8Linear(nn.Module):
    """Stands in for an ``nn.Linear`` (same weight and bias, and the qkv's ``bias_mask``) while FP8 is on:
    E4M3 weights quantised from the linear's; takes a plain activation or one already in FP8 rows."""

    def __init__(self, lin: nn.Linear) -> None:
        super().__init__()
        self.__dict__["fp8_source"] = lin
        self.in_features, self.out_features = lin.in_features, lin.out_features
        self.weight, self.bias = lin.weight, lin.bias
        self.masked = "bias_mask" in lin._buffers
        if self.masked:
            self.register_buffer("bias_mask", lin.bias_mask)

    @torch.no_grad()
    def configure(self, quant: Callable, fast_accum: bool, fused: bool, rows_in: bool = False) -> None:
        """(Re)quantise the weights with ``quant`` and set the matmul options."""
        self.release()
        self.w_fp8, self.w_scale = quant(self.weight)
        self.fp8_fast_accum, self.fp8_fused = bool(fast_accum), bool(fused)
        if rows_in:
            self.fp8_rows_in = True

    def release(self) -> None:
        """Drop the FP8 weights and options (the stand-in is out of the model)."""
        for attr in FP8_LINEAR_ATTRS + ("fp8_rows_in",):
            self.__dict__.pop(attr, None)

    def forward(self, x: torch.Tensor | Fp8Rows) -> torch.Tensor:
        b = self.bias * self.bias_mask.to(self.bias.dtype) if self.masked else self.bias
        if isinstance(x, Fp8Rows):
            return fp8_matmul(x, self.w_fp8, self.w_scale, b, self.fp8_fast_accum)
        return fp8_linear(x, self.w_fp8, self.w_scale, b, self.fp8_fast_accum, self.fp8_fused)


class Fp8LayerNorm(nn.LayerNorm):
    """The LayerNorm with its output quantised per row in the same kernel (``layer_norm_fp8``)."""

    def forward(self, x: torch.Tensor) -> Fp8Rows:
        return layer_norm_fp8(self, x)


class Fp8Attention(nn.Module):
    """Stands in for the ViT's Attention (same children): its output is quantised straight from SDPA's
    layout (no transpose copy) for the FP8 output projection."""

    def forward(self, x: torch.Tensor | Fp8Rows, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return self.proj(heads_fp8(type(self.fp8_source).attend(self, x, rope)))


class Fp8SwiGLU(nn.Module):
    """Stands in for SwiGLU: one FP8 matmul for [w1; w2], then the product quantised by one kernel for w3."""

    def forward(self, x: Fp8Rows) -> torch.Tensor:
        h = fp8_matmul(x, self.w12_fp8, self.w12_scale, self.w12_bias, self.w3.fp8_fast_accum)
        return self.w3(swiglu_fp8(h))


class Fp8RowsMlp(nn.Module):
    """Stands in for the GELU MLP (same forward), fed FP8 rows by the block's fused norm."""

    def forward(self, x: Fp8Rows) -> torch.Tensor:
        return type(self.fp8_source).forward(self, x)


class Fp8Block(nn.Module):
    """Stands in for a ViT block (same children): the residual add, the second norm and the quantisation
    for the MLP run as one kernel."""

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        h = self.attn(self.norm1(x), rope)
        x, xq = add_layer_norm_fp8(x, h, self.ls1.gamma, self.norm2)
        return x + self.ls2(self.mlp(xq))


class _Fp8Options(NamedTuple):
    parts: str
    quant: Callable
    fast_accum: bool
    fused: bool


def _linear(lin: nn.Linear, opt: _Fp8Options, reuse: dict[int, Fp8Linear], rows_in: bool = False) -> Fp8Linear:
    """The Fp8Linear for ``lin`` (the one it already had, if any, so callers holding it see the new options)."""
    fp8 = reuse.pop(id(lin), None) or Fp8Linear(lin)
    fp8.configure(opt.quant, opt.fast_accum, opt.fused, rows_in)
    return fp8


def _linears(mod: nn.Module, opt: _Fp8Options, reuse: dict[int, Fp8Linear], skip: tuple[str, ...] = ()
             ) -> dict[str, nn.Module]:
    return {n: _linear(c, opt, reuse) for n, c in mod.named_children() if isinstance(c, nn.Linear) and n not in skip}


def _fp8_block(blk: nn.Module, opt: _Fp8Options, reuse: dict[int, Fp8Linear]) -> nn.Module:
    """An FP8 stand-in for the plain block ``blk`` (``blk`` and its modules are left as they are)."""
    cls = {"attn": Fp8Attention, "block": Fp8Block} if opt.fused else {}
    attn, mlp = blk.attn, blk.mlp
    children: dict[str, nn.Module] = {}
    if opt.parts == "all":
        qkv = _linear(attn.qkv, opt, reuse, rows_in=opt.fused)
        children["attn"] = _stand_in(attn, cls.get("attn"), qkv=qkv, proj=_linear(attn.proj, opt, reuse))
        if opt.fused:
            norm = blk.norm1
            children["norm1"] = _stand_in(norm, Fp8LayerNorm)
    if opt.fused and hasattr(mlp, "w3"):  # SwiGLU: rows per output channel, so [w1; w2] is w1's rows then w2's
        fp8 = _stand_in(mlp, Fp8SwiGLU, w3=_linear(mlp.w3, opt, reuse))
        (q1, s1), (q2, s2) = opt.quant(mlp.w1.weight), opt.quant(mlp.w2.weight)
        fp8.w12_fp8, fp8.w12_scale = torch.cat([q1, q2]), torch.cat([s1, s2])
        fp8.w12_bias = torch.cat([mlp.w1.bias, mlp.w2.bias])
        fp8.fp8_rows_in = True
    elif opt.fused:
        fp8 = _stand_in(mlp, Fp8RowsMlp, **_linears(mlp, opt, reuse))
        fp8.fp8_rows_in = True
    else:
        fp8 = _stand_in(mlp, None, **_linears(mlp, opt, reuse))
    children["mlp"] = fp8
    return _stand_in(blk, cls.get("block"), **children)


@torch.no_grad()
def set_fp8(vit: nn.Module, on: bool = True, parts: str = "all", scaling: str = "row", fast_accum: bool = False,
            fused: bool = True, why_unfused: Callable[[torch.device], str] = fused_unavailable) -> None:
    """Opt-in: the ViT's block linears run E4M3 matmuls through stand-in modules; the originals are kept.

    parts: 'all' (attention projections and MLP) or 'mlp' (MLP only; qkv/proj stay bf16).
    scaling: 'row' (per-token x per-output-channel scales) or 'tensor' (one scale per operand).
    fast_accum: Hopper's fast FP8 accumulation (see ``fp8_linear``).
    fused (row scaling): each activation is quantised by the kernel that makes it (LayerNorm,
    SwiGLU product, a plain row kernel for the attention output) and the MLP's w1/w2 run as one
    matmul; off: the quantisation is left to torch ops (inductor fuses what it can).
    ``on`` again with other options replaces the first (an Fp8Linear already in place is requantised);
    off puts the original blocks back and drops every FP8 weight.
    why_unfused: '' where the fused kernels can run on a device, else why not (then unfused, logged).
    """
    if parts not in ("all", "mlp"):
        raise ValueError(f"fp8 parts must be 'all' or 'mlp', got {parts!r}")
    if scaling not in FP8_SCALINGS:
        raise ValueError(f"fp8 scaling must be one of {tuple(FP8_SCALINGS)}, got {scaling!r}")
    fused = bool(fused) and scaling == "row"
    if on and fused:
        why = why_unfused(vit.cls_token.device)
        if why:
            log.warning("FP8 backbone: %s; quantising activations with plain torch ops instead", why)
            fused = False
        else:
            register_ops()
    opt = _Fp8Options(parts, FP8_SCALINGS[scaling], bool(fast_accum), fused)
    for i, blk in enumerate(vit.blocks):
        plain = blk.__dict__.get("fp8_source", blk)
        reuse = {id(m.fp8_source): m for m in blk.modules() if isinstance(m, Fp8Linear)}
        vit.blocks[i] = _fp8_block(plain, opt, reuse) if on else plain
        for m in reuse.values():  # stand-ins not carried over (all of them when off): drop their weights
            m.release()
