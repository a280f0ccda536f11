"""The decoder's rewritten steps against the formulas they replace: keypoint feature sampling
(gathers instead of grid_sample), rays at the feature grid, and cross-attention keys/values from
shared normalised image tokens (ln2_2 folded into the projections)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from body4d_core.sam3d_body import tiny_config
from body4d_core.sam3d_body.layers import CameraEncoder, DecoderLayer, normalise_context
from body4d_core.sam3d_body.model import CropBatch, sample_tokens
from body4d_core.testing.body import random_model


def _grid_sample_tokens(fmap: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """The reference: what the decoder computed before ([B, C, h, w] map, pts [B, K, 2] -> [B, K, C])."""
    out = F.grid_sample(fmap, pts[:, :, None, :], mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[..., 0].transpose(1, 2)


@pytest.mark.parametrize("hw", [(8, 8), (6, 10)])
def test_sample_tokens_equals_grid_sample_inside_at_edges_and_outside(hw) -> None:
    torch.manual_seed(0)
    h, w = hw
    fmap = torch.randn(3, 5, h, w, dtype=torch.float64)
    ctx = fmap.flatten(2).transpose(1, 2).contiguous()
    pts = torch.rand(3, 40, 2, dtype=torch.float64) * 2.6 - 1.3  # inside, across the border, outside
    pts[0, :4] = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [-1.0 - 0.5 / w, 0.0], [1.0 + 0.999 / w, 0.2]])
    pts[1, :3] = torch.tensor([[50.0, 0.0], [0.0, -1e6], [-3.0, 3.0]])
    got = sample_tokens(ctx, (h, w), pts)
    assert got.shape == (3, 40, 5)
    torch.testing.assert_close(got, _grid_sample_tokens(fmap, pts), atol=1e-12, rtol=0)
    assert float(got[1, :3].abs().max()) == 0.0  # far outside: zeros
    assert float(got[0, 2].abs().max()) > 0  # within half a cell of the border: part of the edge value


def test_sample_tokens_gives_zeros_for_non_finite_points() -> None:
    ctx = torch.randn(2, 16, 4)
    pts = torch.tensor([[[math.nan, 0.0], [0.0, math.inf]], [[-math.inf, 0.5], [0.1, -0.2]]])
    got = sample_tokens(ctx, (4, 4), pts)
    assert torch.isfinite(got).all()
    assert float(got[0].abs().max()) == 0.0 and float(got[1, 0].abs().max()) == 0.0
    ref = _grid_sample_tokens(ctx.transpose(1, 2).reshape(2, 4, 4, 4), pts[1:, 1:].expand(2, -1, -1))
    torch.testing.assert_close(got[1, 1], ref[1, 0])


def test_sample_tokens_detects_a_wrong_weight() -> None:
    """The comparison above can fail: a half-pixel shift of the sample point is caught."""
    torch.manual_seed(1)
    fmap = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    pts = torch.rand(1, 20, 2, dtype=torch.float64) * 1.6 - 0.8
    got = sample_tokens(fmap.flatten(2).transpose(1, 2).contiguous(), (8, 8), pts + 1 / 16)
    assert float((got - _grid_sample_tokens(fmap, pts)).abs().max()) > 1e-3


def test_patch_rays_equal_the_downsampled_crop_rays() -> None:
    model = random_model(tiny_config(), seed=0)
    s = model.cfg.image_size
    n = 5
    g = torch.Generator().manual_seed(0)
    scale = torch.rand(n, generator=g) * 3 + 0.2
    affine = torch.zeros(n, 2, 3)
    affine[:, 0, 0] = scale
    affine[:, 1, 1] = scale * (1 + 0.1 * torch.rand(n, generator=g))
    affine[:, :, 2] = torch.randn(n, 2, generator=g) * 200
    K = torch.zeros(n, 3, 3)
    K[:, 0, 0] = K[:, 1, 1] = torch.rand(n, generator=g) * 900 + 300
    K[:, :2, 2] = torch.rand(n, 2, generator=g) * 600
    K[:, 2, 2] = 1
    batch = CropBatch(img=torch.zeros(n, 3, s, s), mask=None, mask_score=None, affine=affine,
                      center=torch.zeros(n, 2), size=torch.ones(n), K=K, img_wh=torch.ones(n, 2))
    enc = model.ray_cond_emb
    ref = enc.downsample(model.rays(batch))
    got = model.patch_rays(batch, enc)
    assert got.shape == ref.shape == (n, 2, s // model.cfg.patch_size, s // model.cfg.patch_size)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    feats = torch.randn(n, model.cfg.vit_dim, *got.shape[-2:])
    torch.testing.assert_close(enc(feats, got), enc(feats, model.rays(batch)), atol=1e-4, rtol=1e-4)


def test_camera_encoder_output_is_channels_last_and_normalised() -> None:
    torch.manual_seed(0)
    enc = CameraEncoder(16, 4)
    with torch.no_grad():
        enc.norm.weight.normal_()
        enc.norm.bias.normal_()
    feats = torch.randn(2, 16, 3, 5)
    rays = torch.randn(2, 2, 12, 20)
    out = enc(feats, rays)
    assert out.flatten(2).transpose(1, 2).is_contiguous()
    x = F.conv2d(torch.cat([feats, _ray_embedding(enc, rays)], 1), enc.conv.weight)
    u = x.mean(1, keepdim=True)
    ref = (x - u) / torch.sqrt((x - u).pow(2).mean(1, keepdim=True) + enc.norm.eps)
    ref = enc.norm.weight[:, None, None] * ref + enc.norm.bias[:, None, None]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def _ray_embedding(enc: CameraEncoder, rays: torch.Tensor) -> torch.Tensor:
    from body4d_core.sam3d_body.layers import fourier_rays
    r = enc.downsample(rays).permute(0, 2, 3, 1)
    b, h, w, _ = r.shape
    r = torch.cat([r, torch.ones_like(r[..., :1])], -1).reshape(b, h * w, 3)
    return fourier_rays(r).transpose(1, 2).reshape(b, -1, h, w)


@pytest.mark.parametrize("shared_pe", [True, False])
def test_context_kv_equals_projecting_the_normalised_context(shared_pe) -> None:
    torch.manual_seed(0)
    layer = DecoderLayer(dim=24, ctx_dim=20, heads=2, head_dim=6, mlp=16, first=False)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.5)
    ctx = torch.randn(3, 12, 20) * 3 + 1
    pe = torch.randn(1 if shared_pe else 3, 12, 20)
    k, v = layer.context_kv(normalise_context(ctx), pe)
    c = layer.ln2_2(ctx)
    ca = layer.cross_attn
    torch.testing.assert_close(k, ca.k_proj(c + layer.ln_pe_2(pe)), atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(v, ca.v_proj(c), atol=2e-5, rtol=1e-5)
    # the whole layer against its unrolled formula
    x, x_pe = torch.randn(3, 7, 24), torch.randn(3, 7, 24)
    xp = layer.ln_pe_1(x_pe)
    hh = layer.ln1(x)
    ref = x + layer.self_attn(hh + xp, hh + xp, hh)
    ref = ref + ca(layer.ln2_1(ref) + xp, c + layer.ln_pe_2(pe), c)
    ref = ref + layer.ffn(layer.ln3(ref))
    torch.testing.assert_close(layer(x, normalise_context(ctx), x_pe, pe), ref, atol=2e-5, rtol=1e-5)
