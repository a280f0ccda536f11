"""DINOv3 ViT backbone (RoPE, register tokens, layer scale, SwiGLU) with the official key names.

Parameter names follow facebookresearch/dinov3 (``blocks.N.attn.qkv``, ``ls1.gamma``,
``mlp.w1/w2/w3``, ``storage_tokens``, ``rope_embed.periods``) so SAM-3D-Body's
``backbone.encoder.*`` weights load without renaming. Only inference is implemented.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from .fp8 import fused_unavailable  # noqa: F401 - enable_fp8 reads it here (tests substitute it)



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


class LinearKMaskedBias(nn.Linear):
    """The fused qkv projection: its ``bias_mask`` buffer zeroes the key bias (kept for strict loading)."""

    def __init__(self, dim: int, out: int) -> None:
        super().__init__(dim, out, bias=True)
        self.register_buffer("bias_mask", torch.cat([torch.ones(dim), torch.zeros(dim), torch.ones(dim)]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias * self.bias_mask.to(self.bias.dtype))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], -1)


def apply_rope(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """RoPE on the last ``len(sin)`` tokens of ``x`` [B, heads, N, head_dim] (the patches; the prefix tokens
    pass unchanged), in ``x``'s dtype."""
    n, p = x.shape[2], sin.shape[0]
    sin, cos = sin.to(x.dtype), cos.to(x.dtype)
    return torch.cat([x[:, :, : n - p], x[:, :, n - p:] * cos + _rotate_half(x[:, :, n - p:]) * sin], 2)


class Attention(nn.Module):
    """Self-attention with a fused qkv (key bias masked out) and RoPE on patch tokens only."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = LinearKMaskedBias(dim, dim * 3)
        self.proj = nn.Linear(dim, dim, bias=True)

    def attend(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """The attention output before the output projection, [B, heads, N, head_dim]."""
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        sin, cos = rope
        return F.scaled_dot_product_attention(apply_rope(q, sin, cos), apply_rope(k, sin, cos), v)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        out = self.attend(x, rope)
        b, nh, n, hd = out.shape
        return self.proj(out.transpose(1, 2).reshape(b, n, nh * hd))


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


class Mlp(nn.Module):
    """fc2(gelu(fc1 x))."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


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
        x = x + self.ls1(self.attn(self.norm1(x), rope))
        return x + self.ls2(self.mlp(self.norm2(x)))


def run_block(blk: Block, x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """One block call as a free function, so one compiled graph serves every (identical) block."""
    return blk(x, (sin, cos))


class BlockStack(nn.ModuleList):
    """The blocks, run in order (a list, so the checkpoint's ``blocks.N.*`` names stay)."""

    compiled = ""  # the torch.compile mode a runner's stand-in stack runs ('' here: eager)
    sdpa = ""  # the attention kernel a runner's stand-in stack pins ('' here: torch's choice)

    def forward(self, tokens: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        for blk in self:
            tokens = run_block(blk, tokens, *rope)
        return tokens


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection (a stride-p conv, run as one matmul over unfolded patches)."""

    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> tokens [B, (H/p)(W/p), D] in row-major patch order (the conv's, flattened).

        The same sums as the conv, but cuDNN runs this conv shape with a slow generic kernel; as a
        matmul it is much faster (BENCHMARKS.md, SAM-3D-Body).
        """
        b, c, h, w = x.shape
        p = self.patch
        gh, gw = h // p, w // p
        patches = x[:, :, :gh * p, :gw * p].reshape(b, c, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5)
        weight = self.proj.weight.reshape(self.proj.out_channels, -1)
        return F.linear(patches.reshape(b, gh * gw, c * p * p), weight, self.proj.bias)


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
        self.blocks = BlockStack(Block(dim, heads, hidden, swiglu) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, C, H/p, W/p]."""
        b, _, h, w = x.shape
        gh, gw = h // self.patch_size, w // self.patch_size
        tokens = self.patch_embed(x)
        prefix = torch.cat([self.cls_token, self.storage_tokens], 1).to(tokens.dtype).expand(b, -1, -1)
        tokens = torch.cat([prefix, tokens], 1)
        tokens = self.blocks(tokens, self.rope_embed(gh, gw, x.device))
        patches = self.norm(tokens)[:, prefix.shape[1]:]
        return patches.transpose(1, 2).reshape(b, -1, gh, gw)

    # Entry points of the former in-model API, kept for its callers: the work is done by module
    # substitution in ``runner`` (compiled block stack) and ``fp8`` (FP8 stand-in modules).

    @property
    def compiled(self) -> str:
        """The compile mode the blocks run ('' = eager)."""
        return self.blocks.compiled

    @property
    def sdpa(self) -> str:
        """The attention kernel pinned in the compiled blocks ('' = torch's choice)."""
        return self.blocks.sdpa

    def compile_blocks(self, mode: str = "default", backend: str = "inductor", bucket: int = 0,
                       sdpa: str = "") -> bool:
        """``runner.compile_blocks`` on this ViT (until ``uncompile``)."""
        from .runner import compile_blocks

        return compile_blocks(self, mode, backend, bucket, sdpa)

    def uncompile(self) -> None:
        """Back to eager blocks (``runner.uncompile_blocks``)."""
        from .runner import uncompile_blocks

        uncompile_blocks(self)

    def enable_fp8(self, on: bool = True, **options) -> None:
        """``fp8.set_fp8`` on this ViT: FP8 stand-ins for the block linears (``on``) or the originals back."""
        from .fp8 import set_fp8

        set_fp8(self, on, why_unfused=fused_unavailable, **options)

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
