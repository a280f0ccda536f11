"""DINOv3 ViT backbone (RoPE, register tokens, layer scale, SwiGLU) with the official key names.

Parameter names follow facebookresearch/dinov3 (``blocks.N.attn.qkv``, ``ls1.gamma``,
``mlp.w1/w2/w3``, ``storage_tokens``, ``rope_embed.periods``) so SAM-3D-Body's
``backbone.encoder.*`` weights load without renaming. Only inference is implemented.
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from .fp8 import (FP8_SCALINGS, Fp8Rows, add_layer_norm_fp8, fp8_linear, fp8_matmul, fp8_quantize_rows,  # noqa: F401
                  fp8_quantize_tensor, fp8_unavailable, fused_unavailable, heads_fp8, layer_norm_fp8, register_ops,
                  swiglu_fp8)

log = logging.getLogger(__name__)


class RopeEmbed(nn.Module):
    """2-D rotary position angles for a patch grid (coords in [-1, 1], separate per axis)."""

    def __init__(self, head_dim: int, base: float) -> None:
        super().__init__()
        d4 = head_dim // 4
        self.register_buffer("periods", base ** (2 * torch.arange(d4, dtype=torch.float32) / (head_dim // 2)))

    def forward(self, h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        ch = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
        cw = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
        coords = torch.stack(torch.meshgrid(ch, cw, indexing="ij"), -1).flatten(0, 1) * 2 - 1  # [HW, 2] (y, x)
        angles = 2 * math.pi * coords[:, :, None] / self.periods.float().to(device)[None, None, :]
        angles = angles.flatten(1, 2).tile(2)  # [HW, head_dim]
        return angles.sin(), angles.cos()


def linear(layer: nn.Linear, x: torch.Tensor | Fp8Rows, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``layer(x)`` (optionally with a replacement bias), through FP8 weights when ``enable_fp8`` set them;
    x may arrive already quantised (``Fp8Rows``, from a fused norm or SwiGLU kernel)."""
    b = layer.bias if bias is None else bias
    w8 = getattr(layer, "w_fp8", None)
    if isinstance(x, Fp8Rows):
        return fp8_matmul(x, w8, layer.w_scale, b, layer.fp8_fast_accum)
    if w8 is not None:
        return fp8_linear(x, w8, layer.w_scale, b, layer.fp8_fast_accum, layer.fp8_fused)
    return F.linear(x, layer.weight, b)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], -1)


class Attention(nn.Module):
    """Self-attention with a fused qkv (key bias masked out) and RoPE on patch tokens only."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.qkv.register_buffer("bias_mask", torch.cat([torch.ones(dim), torch.zeros(dim), torch.ones(dim)]))
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x: torch.Tensor | Fp8Rows, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        b, n, d = x.shape
        bias = self.qkv.bias * self.qkv.bias_mask.to(self.qkv.bias.dtype)
        qkv = linear(self.qkv, x, bias).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        sin, cos = rope
        p = sin.shape[0]
        sin, cos = sin.to(q.dtype), cos.to(q.dtype)
        q = torch.cat([q[:, :, : n - p], q[:, :, n - p:] * cos + _rotate_half(q[:, :, n - p:]) * sin], 2)
        k = torch.cat([k[:, :, : n - p], k[:, :, n - p:] * cos + _rotate_half(k[:, :, n - p:]) * sin], 2)
        out = F.scaled_dot_product_attention(q, k, v)
        if getattr(self.proj, "fp8_fused", False):  # quantised straight from SDPA's layout (no transpose copy)
            return linear(self.proj, heads_fp8(out))
        return linear(self.proj, out.transpose(1, 2).reshape(b, n, d))


class LayerScale(nn.Module):
    """Per-channel residual scale."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class SwiGLU(nn.Module):
    """w3(silu(w1 x) * w2 x)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden)
        self.w2 = nn.Linear(dim, hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor | Fp8Rows) -> torch.Tensor:
        w12 = getattr(self, "w12_fp8", None)
        if w12 is not None:  # fused FP8: one matmul for [w1; w2], then SwiGLU + row quantisation in one kernel
            h = fp8_matmul(x, w12, self.w12_scale, self.w12_bias, self.w3.fp8_fast_accum)
            return linear(self.w3, swiglu_fp8(h))
        return linear(self.w3, F.silu(linear(self.w1, x)) * linear(self.w2, x))


class Mlp(nn.Module):
    """fc2(gelu(fc1 x))."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor | Fp8Rows) -> torch.Tensor:
        return linear(self.fc2, F.gelu(linear(self.fc1, x)))


class Block(nn.Module):
    """Pre-norm transformer block with layer scale."""

    def __init__(self, dim: int, heads: int, hidden: int, swiglu: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn = Attention(dim, heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.mlp = SwiGLU(dim, hidden) if swiglu else Mlp(dim, hidden)
        self.ls2 = LayerScale(dim)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        h = self.attn(self._norm(self.norm1, self.attn.qkv, x), rope)
        if getattr(self.mlp, "fp8_rows_in", False):  # fused FP8: residual add + norm2 + quantisation, one kernel
            x, xq = add_layer_norm_fp8(x, h, self.ls1.gamma, self.norm2)
            return x + self.ls2(self.mlp(xq))
        x = x + self.ls1(h)
        return x + self.ls2(self.mlp(self.norm2(x)))

    @staticmethod
    def _norm(norm: nn.LayerNorm, consumer: nn.Module, x: torch.Tensor) -> torch.Tensor | Fp8Rows:
        """``norm(x)``, or its FP8 rows straight from one fused kernel when the consumer takes them."""
        return layer_norm_fp8(norm, x) if getattr(consumer, "fp8_rows_in", False) else norm(x)


def run_block(blk: Block, x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """One block call as a free function, so one compiled graph serves every (identical) block."""
    return blk(x, (sin, cos))


def compile_available(device: torch.device) -> str:
    """'' when torch.compile (inductor) can run on ``device``, else the reason it cannot."""
    if not hasattr(torch, "compile"):
        return "this torch has no torch.compile"
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except Exception as err:  # noqa: BLE001 - any import failure means no inductor on GPU
            return f"triton is not importable ({type(err).__name__})"
    return ""


def compile_call(fn: Callable[..., torch.Tensor], device: torch.device, mode: str, backend: str,
                 what: str, dynamic: bool | None = False) -> Callable[..., torch.Tensor] | None:
    """torch.compile(fn) (``mode`` under inductor), or None with a log line where it cannot run.

    dynamic: False = static shapes (one graph per shape); None = torch's automatic dynamic shapes,
    which also honours ``torch._dynamo.maybe_mark_dynamic`` on the inputs.
    """
    why = compile_available(device) if backend == "inductor" else ""
    if why:
        log.warning("%s: %s", what, why)
        return None
    kw = {} if mode == "default" or backend != "inductor" else {"mode": mode}
    return torch.compile(fn, dynamic=dynamic, backend=backend, **kw)


SDPA_BACKENDS = {"flash": "FLASH_ATTENTION", "cudnn": "CUDNN_ATTENTION", "efficient": "EFFICIENT_ATTENTION",
                 "math": "MATH"}


def _sdpa_only(name: str) -> contextlib.AbstractContextManager:
    """Context allowing only one SDPA kernel ('' = no restriction)."""
    if not name:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([getattr(SDPBackend, SDPA_BACKENDS[name])])


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection (a stride-p conv, run as one matmul over unfolded patches)."""

    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> tokens [B, (H/p)(W/p), D] in row-major patch order (the conv's, flattened).

        The same sums as the conv, but cuDNN runs this conv shape with a slow generic kernel
        (9 ms per batch of 64 at 512 px on an H200); as a matmul it takes well under 1 ms.
        """
        b, c, h, w = x.shape
        p = self.patch
        gh, gw = h // p, w // p
        patches = x[:, :, :gh * p, :gw * p].reshape(b, c, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5)
        weight = self.proj.weight.reshape(self.proj.out_channels, -1)
        return F.linear(patches.reshape(b, gh * gw, c * p * p), weight, self.proj.bias)


FP8_LINEAR_ATTRS = ("w_fp8", "w_scale", "fp8_fast_accum", "fp8_fused")
FP8_BLOCK_ATTRS = ("fp8_rows_in", "w12_fp8", "w12_scale", "w12_bias")


def _fp8_off(blk: Block) -> None:
    """Drop every FP8 attribute ``enable_fp8`` may have set on a block's modules."""
    for mod in blk.modules():
        for attr in FP8_LINEAR_ATTRS + FP8_BLOCK_ATTRS:
            if attr in mod.__dict__:
                delattr(mod, attr)


def _fuse_fp8_block(blk: Block, parts: str) -> None:
    """Route the block's norms through fused LayerNorm+quantise kernels and merge SwiGLU's w1/w2."""
    if parts == "all":
        blk.attn.qkv.fp8_rows_in = True
    blk.mlp.fp8_rows_in = True
    if isinstance(blk.mlp, SwiGLU):  # rows quantised per output channel: [w1; w2] is w1's rows then w2's
        w1, w2 = blk.mlp.w1, blk.mlp.w2
        blk.mlp.w12_fp8 = torch.cat([w1.w_fp8, w2.w_fp8])
        blk.mlp.w12_scale = torch.cat([w1.w_scale, w2.w_scale])
        blk.mlp.w12_bias = torch.cat([w1.bias, w2.bias])
        for lin in (w1, w2):
            del lin.w_fp8, lin.w_scale


class DinoV3ViT(nn.Module):
    """Returns the final-normed patch tokens as a [B, C, H/p, W/p] feature map."""

    def __init__(self, dim: int, depth: int, heads: int, hidden: int, swiglu: bool, patch: int,
                 registers: int = 4, rope_base: float = 100.0) -> None:
        super().__init__()
        self.patch_size = patch
        self.embed_dim = dim
        self.patch_embed = PatchEmbed(patch, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.storage_tokens = nn.Parameter(torch.zeros(1, registers, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))  # training only; kept for strict loading
        self.rope_embed = RopeEmbed(dim // heads, rope_base)
        self.blocks = nn.ModuleList(Block(dim, heads, hidden, swiglu) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-5)
        self.block_fn: Callable[..., torch.Tensor] = run_block
        self.compiled = ""  # '' = eager, else the torch.compile mode in use
        self.bucket = 0  # compiled: run batches in chunks of exactly this size (last one padded)
        self.sdpa = ""  # compiled: attention kernel pinned while tracing ('' = torch's own choice)

    def compile_blocks(self, mode: str = "default", backend: str = "inductor", bucket: int = 0,
                       sdpa: str = "") -> bool:
        """Compile the block call once (dynamic=False): the 32 identical blocks share one graph.

        sdpa: '' or one of SDPA_BACKENDS; the graph is traced with only that attention kernel
        allowed (the kernel is chosen at trace time, so it is baked into the graph).
        Returns False (and stays eager, with a log line) where compile is unavailable.
        """
        if sdpa and sdpa not in SDPA_BACKENDS:
            raise ValueError(f"sdpa must be '' or one of {sorted(SDPA_BACKENDS)}, got {sdpa!r}")
        fn = compile_call(run_block, self.cls_token.device, mode, backend, "ViT blocks stay eager")
        if fn is None:
            return False
        self.block_fn = fn
        self.compiled = f"{backend}:{mode}"
        self.bucket = int(bucket)
        self.sdpa = sdpa
        return True

    @torch.no_grad()
    def enable_fp8(self, on: bool = True, parts: str = "all", scaling: str = "row", fast_accum: bool = False,
                   fused: bool = True) -> None:
        """Opt-in: blocks' linear layers run E4M3 matmuls; the original weights are kept.

        parts: 'all' (attention projections and MLP) or 'mlp' (MLP only; qkv/proj stay bf16).
        scaling: 'row' (per-token x per-output-channel scales) or 'tensor' (one scale per operand).
        fast_accum: Hopper's fast FP8 accumulation (see ``fp8.fp8_linear``).
        fused (row scaling): each activation is quantised by the kernel that makes it (LayerNorm,
        SwiGLU product, a plain row kernel for the attention output) and the MLP's w1/w2 run as one
        matmul; off: the quantisation is left to torch ops (inductor fuses what it can).
        Switching on always starts from all-off, so a second call with other options replaces the first.
        """
        if parts not in ("all", "mlp"):
            raise ValueError(f"fp8 parts must be 'all' or 'mlp', got {parts!r}")
        if scaling not in FP8_SCALINGS:
            raise ValueError(f"fp8 scaling must be one of {tuple(FP8_SCALINGS)}, got {scaling!r}")
        quant = FP8_SCALINGS[scaling]
        fused = bool(fused) and scaling == "row"
        if on and fused:
            why = fused_unavailable(self.cls_token.device)
            if why:
                log.warning("FP8 backbone: %s; quantising activations with plain torch ops instead", why)
                fused = False
            else:
                register_ops()
        for blk in self.blocks:
            _fp8_off(blk)
            if not on:
                continue
            for name, mod in blk.named_modules():
                if isinstance(mod, nn.Linear) and (parts == "all" or name.startswith("mlp.")):
                    # row scale [N, 1]: its transpose is the [1, N] row-wise scale_b; tensor scale: 0-dim
                    mod.w_fp8, mod.w_scale = quant(mod.weight)
                    mod.fp8_fast_accum, mod.fp8_fused = bool(fast_accum), fused
            if fused:
                _fuse_fp8_block(blk, parts)

    @contextlib.contextmanager
    def fp8_scope(self, on: bool = True, **options) -> Iterator[None]:
        """FP8 block linears (``enable_fp8`` options) inside the block, quantised from the weights where
        they are now; off again afterwards, so no FP8 copy outlives the call (or follows an offload)."""
        if not on:
            yield
            return
        self.enable_fp8(True, **options)
        try:
            yield
        finally:
            self.enable_fp8(False)

    def uncompile(self) -> None:
        """Back to eager blocks."""
        self.block_fn, self.compiled, self.sdpa = run_block, "", ""

    def _blocks(self, tokens: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
        """All blocks; a compiled path that fails (no compiler, triton) is dropped and the pass rerun eager."""
        if self.compiled:
            try:
                with _sdpa_only(self.sdpa):
                    return self._run_blocks(self.block_fn, tokens, sin, cos)
            except Exception as err:  # noqa: BLE001 - compile failures fall back; OOM is the caller's
                if isinstance(err, torch.OutOfMemoryError):
                    raise
                log.warning("compiled ViT blocks failed (%s: %s); falling back to eager", type(err).__name__, err)
                self.uncompile()
        return self._run_blocks(run_block, tokens, sin, cos)

    def _run_blocks(self, fn: Callable[..., torch.Tensor], tokens: torch.Tensor, sin: torch.Tensor,
                    cos: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            tokens = fn(blk, tokens, sin, cos)
        return tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, C, H/p, W/p]; compiled with a bucket, in fixed-size padded chunks."""
        b, n = x.shape[0], self.bucket
        if not self.compiled or n <= 0 or b == n:
            return self._forward(x)
        outs = []
        for i in range(0, b, n):
            chunk = x[i:i + n]
            k = chunk.shape[0]
            if k < n:  # pad so a partial batch reuses the compiled graph instead of recompiling
                chunk = torch.cat([chunk, chunk.new_zeros((n - k,) + tuple(chunk.shape[1:]))])
            outs.append(self._forward(chunk)[:k])
        return torch.cat(outs)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled.endswith("reduce-overhead"):  # CUDA graphs: a new pass may reuse the last one's buffers
            torch.compiler.cudagraph_mark_step_begin()
        b, _, h, w = x.shape
        gh, gw = h // self.patch_size, w // self.patch_size
        tokens = self.patch_embed(x)
        prefix = torch.cat([self.cls_token, self.storage_tokens], 1).to(tokens.dtype).expand(b, -1, -1)
        tokens = torch.cat([prefix, tokens], 1)
        sin, cos = self.rope_embed(gh, gw, x.device)
        tokens = self._blocks(tokens, sin, cos)
        patches = self.norm(tokens)[:, prefix.shape[1]:]
        return patches.transpose(1, 2).reshape(b, -1, gh, gw)
