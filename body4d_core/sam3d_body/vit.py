"""DINOv3 ViT backbone (RoPE, register tokens, layer scale, SwiGLU) with the official key names.

Parameter names follow facebookresearch/dinov3 (``blocks.N.attn.qkv``, ``ls1.gamma``,
``mlp.w1/w2/w3``, ``storage_tokens``, ``rope_embed.periods``) so SAM-3D-Body's
``backbone.encoder.*`` weights load without renaming. Only inference is implemented.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


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

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        b, n, d = x.shape
        bias = self.qkv.bias * self.qkv.bias_mask.to(self.qkv.bias.dtype)
        qkv = F.linear(x, self.qkv.weight, bias).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        sin, cos = rope
        p = sin.shape[0]
        sin, cos = sin.to(q.dtype), cos.to(q.dtype)
        q = torch.cat([q[:, :, : n - p], q[:, :, n - p:] * cos + _rotate_half(q[:, :, n - p:]) * sin], 2)
        k = torch.cat([k[:, :, : n - p], k[:, :, n - p:] * cos + _rotate_half(k[:, :, n - p:]) * sin], 2)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


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


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection."""

    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        gh, gw = h // self.patch_size, w // self.patch_size
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        prefix = torch.cat([self.cls_token, self.storage_tokens], 1).to(tokens.dtype).expand(b, -1, -1)
        tokens = torch.cat([prefix, tokens], 1)
        rope = self.rope_embed(gh, gw, x.device)
        for blk in self.blocks:
            tokens = blk(tokens, rope)
        patches = self.norm(tokens)[:, prefix.shape[1]:]
        return patches.transpose(1, 2).reshape(b, -1, gh, gw)
