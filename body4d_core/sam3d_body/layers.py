"""SAM-3D-Body building blocks: FFNs, the promptable cross-attention decoder, prompt and ray encoders.

Module and parameter names match the official checkpoint layout (e.g. ``ffn.layers.0.0``,
``self_attn.q_proj``, ``ln2_1``, ``mask_downscaling.N``, ``pe_layer.positional_encoding_gaussian_matrix``).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


class LayerNorm32(nn.LayerNorm):
    """LayerNorm computed in float32 and cast back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


class LayerNorm2d(nn.Module):
    """Channel LayerNorm for [B, C, H, W] maps."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class FFN(nn.Module):
    """Linear stack ``layers = [Seq(Linear, act, Dropout)] * (n-1) + [Linear, Dropout]``, optional residual."""

    def __init__(self, dim: int, hidden: int, out: int | None = None, num_fcs: int = 2,
                 act: Callable[[], nn.Module] = nn.ReLU, residual: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = dim
        for _ in range(num_fcs - 1):
            layers.append(nn.Sequential(nn.Linear(cin, hidden), act(), nn.Dropout(0.0)))
            cin = hidden
        layers += [nn.Linear(cin, out or dim), nn.Dropout(0.0)]
        self.layers = nn.Sequential(*layers)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layers(x)
        return x + y if self.residual else y


class MLP(nn.Module):
    """Plain ReLU MLP with ``layers.N`` linears (DETR-style box head)."""

    def __init__(self, dim: int, hidden: int, out: int, num_layers: int) -> None:
        super().__init__()
        dims = [dim] + [hidden] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:] + [out]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class CrossAttention(nn.Module):
    """Multi-head attention with separate q/k/v projections (inner width heads*head_dim)."""

    def __init__(self, heads: int, head_dim: int, q_dim: int, kv_dim: int) -> None:
        super().__init__()
        inner = heads * head_dim
        self.heads, self.head_dim = heads, head_dim
        self.q_proj = nn.Linear(q_dim, inner)
        self.k_proj = nn.Linear(kv_dim, inner)
        self.v_proj = nn.Linear(kv_dim, inner)
        self.proj = nn.Linear(inner, q_dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.attend(q, self.k_proj(k), self.v_proj(v))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention from raw queries to already projected keys and values [B, N, heads*head_dim]."""
        out = F.scaled_dot_product_attention(self._split(self.q_proj(q)), self._split(k), self._split(v))
        return self.proj(out.transpose(1, 2).flatten(2))


class DecoderLayer(nn.Module):
    """Token self-attention, token->image cross-attention, FFN; positional terms re-added each layer."""

    def __init__(self, dim: int, ctx_dim: int, heads: int, head_dim: int, mlp: int, first: bool) -> None:
        super().__init__()
        self.first = first
        self.ln_pe_1 = LayerNorm32(dim, eps=1e-6)
        self.ln_pe_2 = LayerNorm32(ctx_dim, eps=1e-6)
        self.ln1 = LayerNorm32(dim, eps=1e-6)
        self.self_attn = CrossAttention(heads, head_dim, dim, dim)
        self.ln2_1 = LayerNorm32(dim, eps=1e-6)
        self.ln2_2 = LayerNorm32(ctx_dim, eps=1e-6)
        self.cross_attn = CrossAttention(heads, head_dim, dim, ctx_dim)
        self.ln3 = LayerNorm32(dim, eps=1e-6)
        self.ffn = FFN(dim, mlp, dim, 2, nn.GELU, residual=False)

    def forward(self, x: torch.Tensor, ctx_hat: torch.Tensor, x_pe: torch.Tensor, ctx_pe: torch.Tensor) -> torch.Tensor:
        """ctx_hat: the image tokens normalised without affine (``normalise_context``); ctx_pe [1 or B, HW, C]."""
        x_pe = self.ln_pe_1(x_pe)
        h = self.ln1(x)
        qk = h if self.first else h + x_pe
        x = x + self.self_attn(qk, qk, h)
        k, v = self.context_kv(ctx_hat, ctx_pe)
        x = x + self.cross_attn.attend(self.ln2_1(x) + x_pe, k, v)
        return x + self.ffn(self.ln3(x))

    def context_kv(self, ctx_hat: torch.Tensor, ctx_pe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention keys and values of ``c = ln2_2(ctx)``: k = k_proj(c + ln_pe_2(ctx_pe)), v = v_proj(c).

        Every layer normalises the same image tokens, so the statistics are taken once (``ctx_hat``) and
        ln2_2's scale is folded into the projection weights: one matmul for k and v together, and the
        positional part (the same for every crop) projected once for [HW] tokens instead of per crop.
        """
        ca = self.cross_attn
        w, b = self.ln2_2.weight.float(), self.ln2_2.bias.float()
        wk, wv = ca.k_proj.weight.float(), ca.v_proj.weight.float()
        kv = F.linear(ctx_hat, torch.cat([wk * w, wv * w]))
        k_const = F.linear(self.ln_pe_2(ctx_pe).float() + b, wk, ca.k_proj.bias.float())
        v_const = F.linear(b, wv, ca.v_proj.bias.float())
        inner = wk.shape[0]
        return kv[..., :inner] + k_const, kv[..., inner:] + v_const


def normalise_context(ctx: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Image tokens [B, HW, C] normalised over C in float32 without scale or shift (shared by all layers'
    ln2_2); in the autocast dtype when autocast is on, so the layers' matmuls do not cast it again."""
    out = F.layer_norm(ctx.float(), ctx.shape[-1:], eps=eps)
    dev = ctx.device.type
    if torch.is_autocast_enabled(dev):
        out = out.to(torch.get_autocast_dtype(dev))
    return out


def run_layer(layer: DecoderLayer, x: torch.Tensor, ctx_hat: torch.Tensor, x_pe: torch.Tensor,
              ctx_pe: torch.Tensor) -> torch.Tensor:
    """One decoder-layer call as a free function (one compiled graph for all layers of a shape)."""
    return layer(x, ctx_hat, x_pe, ctx_pe)


class PromptableDecoder(nn.Module):
    """Stack of DecoderLayers; calls ``between(layer_idx, normed_tokens, tokens, pe)`` after each but the last."""

    def __init__(self, dim: int, ctx_dim: int, depth: int, heads: int, head_dim: int, mlp: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(dim, ctx_dim, heads, head_dim, mlp, i == 0) for i in range(depth))
        self.norm_final = LayerNorm32(dim, eps=1e-6)
        self.ctx_eps = self.layers[0].ln2_2.eps  # the image tokens' shared normalisation (every layer's ln2_2)

    def forward(self, tokens: torch.Tensor, ctx: torch.Tensor, tok_pe: torch.Tensor, ctx_pe: torch.Tensor,
                between: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
                ) -> torch.Tensor:
        """ctx: image tokens [B, HW, C]; ctx_pe: their positional encoding [1 (shared) or B, HW, C]."""
        ctx_hat = normalise_context(ctx, self.ctx_eps)
        for i, layer in enumerate(self.layers):
            tokens = layer(tokens, ctx_hat, tok_pe, ctx_pe)
            if i < len(self.layers) - 1:
                tokens, tok_pe = between(i, self.norm_final(tokens), tokens, tok_pe)
        return self.norm_final(tokens)


class PositionEmbeddingRandom(nn.Module):
    """Random Fourier features of 2-D points in [0, 1] (SAM style)."""

    def __init__(self, num_feats: int) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, num_feats))

    def encode(self, coords: torch.Tensor) -> torch.Tensor:
        c = (2 * coords - 1) @ self.positional_encoding_gaussian_matrix.to(coords.dtype)
        c = 2 * math.pi * c
        return torch.cat([c.sin(), c.cos()], -1)

    def forward(self, h: int, w: int) -> torch.Tensor:
        """Dense [1, C, h, w] encoding of pixel-centre positions."""
        dev = self.positional_encoding_gaussian_matrix.device
        ys = (torch.arange(h, device=dev, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=dev, dtype=torch.float32) + 0.5) / w
        grid = torch.stack([xs[None, :].expand(h, w), ys[:, None].expand(h, w)], -1)
        return self.encode(grid).permute(2, 0, 1).unsqueeze(0)


def _mask_downscaling(kind: str, dim: int) -> nn.Sequential:
    """Mask -> feature-map encoder (v1: two 4x convs; v2: four 2x convs), output zero-initialised."""
    if kind == "v1":
        chans, k = [1, 4, 16], 4
    elif kind == "v2":
        chans, k = [1, 4, 16, 64, 256], 2
    else:
        raise ValueError(f"unknown mask embedding type {kind!r}")
    mods: list[nn.Module] = []
    for a, b in zip(chans, chans[1:]):
        mods += [nn.Conv2d(a, b, kernel_size=k, stride=k), LayerNorm2d(b), nn.GELU()]
    mods.append(nn.Conv2d(chans[-1], dim, kernel_size=1))
    return nn.Sequential(*mods)


class PromptEncoder(nn.Module):
    """Embeds keypoint prompts (x, y in [0, 1], label) and the person mask."""

    def __init__(self, dim: int, num_joints: int, mask_type: str) -> None:
        super().__init__()
        self.dim = dim
        self.pe_layer = PositionEmbeddingRandom(dim // 2)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, dim) for _ in range(num_joints))
        self.not_a_point_embed = nn.Embedding(1, dim)
        self.invalid_point_embed = nn.Embedding(1, dim)
        self.has_mask = mask_type != "none"
        if self.has_mask:
            self.mask_downscaling = _mask_downscaling(mask_type, dim)
            self.no_mask_embed = nn.Embedding(1, dim)

    def embed_points(self, points: torch.Tensor) -> torch.Tensor:
        """[B, N, 3] -> [B, N, dim]; label -2 = no point, -1 = negative, k = joint k."""
        labels = points[..., 2].round().long()
        emb = self.pe_layer.encode(points[..., :2].float())
        emb = torch.where((labels < 0).unsqueeze(-1), torch.zeros_like(emb), emb)
        table = torch.cat([self.invalid_point_embed.weight, self.not_a_point_embed.weight]
                          + [e.weight for e in self.point_embeddings], 0)
        return emb + table[(labels + 2).clamp(min=0)]

    def embed_mask(self, masks: torch.Tensor, scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Mask features scaled by score where score > 0, else the learnt no-mask embedding."""
        if not self.has_mask:
            raise RuntimeError("this checkpoint has no mask encoder")
        emb = self.mask_downscaling(masks)
        none = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(masks.shape[0], -1, *size).to(emb.dtype)
        s = scores.view(-1, 1, 1, 1).to(emb.dtype)
        return torch.where(s > 0, s * emb, none)


def fourier_rays(rays: torch.Tensor, bands: int = 16, max_res: int = 64) -> torch.Tensor:
    """[B, N, 3] -> [B, N, 3 + 2*3*bands]: the rays, then sin and cos of pi*ray*freq (freq 1..max_res/2)."""
    freq = torch.linspace(1.0, max_res / 2, bands, device=rays.device, dtype=rays.dtype)
    f = (rays[..., None] * freq).flatten(-2)
    return torch.cat([rays, torch.sin(math.pi * f), torch.cos(math.pi * f)], -1)


class CameraEncoder(nn.Module):
    """Conditions image features on per-pixel camera rays ((x-cx)/fx, (y-cy)/fy, 1)."""

    def __init__(self, dim: int, patch: int) -> None:
        super().__init__()
        self.patch = patch
        self.conv = nn.Conv2d(dim + 99, dim, kernel_size=1, bias=False)
        self.norm = LayerNorm2d(dim)

    def downsample(self, rays: torch.Tensor) -> torch.Tensor:
        """Crop-resolution maps [B, 2, S, S] -> the feature grid (antialiased bilinear, as upstream)."""
        return F.interpolate(rays, scale_factor=1 / self.patch, mode="bilinear", align_corners=False, antialias=True)

    def forward(self, feats: torch.Tensor, rays: torch.Tensor) -> torch.Tensor:
        """feats [B, C, h, w]; rays [B, 2, S, S] at crop resolution, or already at the feature grid
        (``Sam3dBody.patch_rays``). Returns [B, C, h, w] in channels-last memory, so its image tokens
        ``flatten(2).transpose(1, 2)`` are contiguous rows."""
        b, _, h, w = feats.shape
        with torch.no_grad():
            r = rays if rays.shape[-2:] == (h, w) else self.downsample(rays)
            r = r.permute(0, 2, 3, 1)
            r = torch.cat([r, torch.ones_like(r[..., :1])], -1).reshape(b, h * w, 3)
            emb = fourier_rays(r).transpose(1, 2).reshape(b, -1, h, w)
        # dim + 99 input channels: zero-padded to a multiple of 8 (exact), else cuDNN falls back to a slow
        # unaligned kernel for bf16
        pad = -(feats.shape[1] + emb.shape[1]) % 8
        x = torch.cat([feats, emb.to(feats.dtype), feats.new_zeros(b, pad, h, w)], 1)
        weight = F.pad(self.conv.weight, (0, 0, 0, 0, 0, pad))
        y = F.conv2d(x, weight).float().permute(0, 2, 3, 1)  # norm in fp32 (autocast), over channels
        y = F.layer_norm(y, y.shape[-1:], self.norm.weight.float(), self.norm.bias.float(), self.norm.eps)
        return y.permute(0, 3, 1, 2)
