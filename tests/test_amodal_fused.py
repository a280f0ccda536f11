"""Fused resblock kernels (``fused_resblocks`` / ``vae_fused_resblocks``): same values as diffusers' blocks.

The kernels run in Triton's CPU interpreter (a subprocess: the mode is read at import). bf16 rounding
is done by the kernels' own bit arithmetic, so the interpreter reproduces the GPU's rounding.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from body4d_core.amodal.accel import AccelConfig
from body4d_core.amodal.config import SamplerConfig
from body4d_core.amodal.sampler import VASPipeline
from body4d_core.testing.amodal import build_vas_parts

from .triton_interpreter import run_interpreted

BLOCKS_CHECK = r"""
import torch, torch.nn.functional as F
from diffusers.models.resnet import SpatioTemporalResBlock
from body4d_core.amodal import fused_blocks as fb, fused_triton as ft
from body4d_core.testing.amodal import randomise

torch.manual_seed(0)

# (in, out, temb channels, merge strategy, switch): UNet-style with and without a channel change, VAE-style
cases = ((32, 32, 16, "learned_with_images", False), (32, 64, 16, "learned_with_images", False),
         (64, 64, None, "learned", True))
for dtype in (torch.float32, torch.bfloat16):
    for cin, cout, temb_ch, strategy, switch in cases:
        b, t, h, w = 2, 3, 5, 7
        m = randomise(SpatioTemporalResBlock(cin, cout, temb_channels=temb_ch, merge_strategy=strategy,
                                             switch_spatial_to_temporal_mix=switch)).to(dtype).eval()
        x = torch.randn(b * t, cin, h, w, dtype=dtype)
        temb = None if temb_ch is None else torch.randn(b * t, temb_ch, dtype=dtype)
        ind = torch.zeros(b, t, dtype=dtype)
        with torch.no_grad():
            pairs = ((fb.st_resblock(m, x, temb, ind), m(x, temb, ind)),
                     (fb.resnet2d(m.spatial_res_block, x, temb), m.spatial_res_block(x, temb)))
        for got, ref in pairs:
            assert got.shape == ref.shape and got.dtype == ref.dtype and got.is_contiguous()
            dev = (got.float() - ref.float()).abs()
            scale = float(ref.float().abs().max())
            if dtype == torch.float32:
                assert float(dev.max()) < 1e-5 * scale, (cin, cout, float(dev.max()))
            else:  # one-ulp flips where the statistics' last bit differs, and nowhere a larger error
                assert float((dev > 0).float().mean()) < 0.05, (cin, cout, float((dev > 0).float().mean()))
                assert float(dev.max()) <= scale * 2 ** -6, (cin, cout, float(dev.max()))

# the spatio-temporal transformer: its layout steps fused; diffusers feeds proj_in a transposed view where
# the fused forward feeds a contiguous copy, so the GEMM may round differently (as with split_geglu)
from diffusers.models.transformers.transformer_temporal import TransformerSpatioTemporalModel

for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2 ** -5)):
    m = randomise(TransformerSpatioTemporalModel(num_attention_heads=2, attention_head_dim=16, in_channels=32,
                                                 num_layers=1, cross_attention_dim=24)).to(dtype).eval()
    x, ctx = torch.randn(6, 32, 4, 5, dtype=dtype), torch.randn(6, 1, 24, dtype=dtype)
    ind = torch.zeros(2, 3, dtype=dtype)
    with torch.no_grad():
        got, ref = fb.st_transformer(m, x, ctx, ind, return_dict=False)[0], m(x, ctx, ind, return_dict=False)[0]
    assert got.shape == ref.shape and got.is_contiguous()
    dev = float((got.float() - ref.float()).abs().max())
    assert dev < tol * float(ref.float().abs().max()), (dtype, dev)
print("blocks ok")

# GroupNorm + add on a permuted 5-D view (read in place), affine and not, silu and not
x = torch.randn(12, 64, 9, 11) * 3 + 20.0
view = x.reshape(3, 4, 64, 9, 11).permute(0, 2, 1, 3, 4)
add = torch.randn(3, 4, 64).transpose(1, 2)
w, bias = torch.randn(64), torch.randn(64)
for weight, shift, silu in ((w, bias, False), (None, None, True)):
    y = ft.group_norm_act(view, 8, weight, shift, 1e-5, add=add, silu=silu)
    ref = F.group_norm((view + add[..., None, None]).double(), 8, None if weight is None else weight.double(),
                       None if shift is None else shift.double(), 1e-5)
    ref = F.silu(ref) if silu else ref
    assert y.is_contiguous() and y.shape == view.shape
    assert float((y.double() - ref).abs().max()) < 1e-4, float((y.double() - ref).abs().max())

# the blend in bf16: every product and sum rounded as the separate ops round them -> bit-identical
xs = torch.randn(6, 32, 4, 5).bfloat16()
temporal = torch.randn(2, 32, 3, 4, 5).bfloat16()
alpha = torch.rand(2, 3).bfloat16()
one_minus = 1.0 - alpha
got = ft.residual_blend(xs, temporal, alpha, one_minus)
view = xs.reshape(2, 3, 32, 4, 5).permute(0, 2, 1, 3, 4)
ref = alpha[:, None, :, None, None] * view + one_minus[:, None, :, None, None] * (view + temporal)
assert torch.equal(got, ref.permute(0, 2, 1, 3, 4).reshape(6, 32, 4, 5))

# a layout whose spatial block is not contiguous (channels_last) is copied once, same values
nhwc = torch.randn(2, 32, 4, 6).contiguous(memory_format=torch.channels_last)
assert torch.allclose(ft.group_norm_act(nhwc, 8, None, None, 1e-5, silu=False),
                      F.group_norm(nhwc, 8, None, None, 1e-5), atol=1e-5)
try:
    ft.group_norm_act(torch.randn(2, 30, 4, 4), 8, None, None, 1e-5)
except ValueError as err:
    print("refused:", err)
else:
    raise AssertionError("channels that do not split into groups were accepted")
# GEGLU: value * gelu(gate) in one pass, bit-identical to the two ops in bf16 except where 1 + erf(gate)
# cancels (gate < -3: GELU below 4e-3, where the interpreter's erf and PyTorch's differ in the last fp32 bit)
value, gate = (torch.randn(37, 50) * 3).bfloat16(), (torch.randn(37, 50) * 3).bfloat16()
ref = value * F.gelu(gate)
got = ft.geglu_(value.clone(), gate)
tail = gate < -3
assert torch.equal(got[~tail], ref[~tail]) and int((~tail).sum()) > 1000
assert float((got[tail].float() - ref[tail].float()).abs().max()) < 1e-3 * float(value.float().abs().max())
# the transformer's reorderings, each bit-identical to the ops it replaces (bf16)
w, bias = torch.randn(32).bfloat16(), torch.randn(32).bfloat16()
x = (torch.randn(6, 32, 4, 5) * 2 + 1).bfloat16()
assert torch.equal(ft.group_norm_tokens(x, 8, w, bias, 1e-6),
                   ft.group_norm_act(x, 8, w, bias, 1e-6, silu=False).permute(0, 2, 3, 1).reshape(6, 20, 32))
h, emb = torch.randn(6, 20, 32).bfloat16(), torch.randn(6, 32).bfloat16()
mixed = ft.token_major_add(h, emb, 3)
assert torch.equal(mixed, (h + emb[:, None]).reshape(2, 3, 20, 32).permute(0, 2, 1, 3).reshape(40, 3, 32))
alpha = torch.rand(6).bfloat16()
back = mixed.reshape(2, 20, 3, 32).permute(0, 2, 1, 3).reshape(6, 20, 32)
assert torch.equal(ft.frame_major_blend(h, mixed, alpha, 1.0 - alpha),
                   alpha[:, None, None] * h + (1.0 - alpha)[:, None, None] * back)
res = torch.randn(6, 32, 4, 5).bfloat16()
assert torch.equal(ft.channels_add(h, res), h.reshape(6, 4, 5, 32).permute(0, 3, 1, 2) + res)
print("kernels ok")
"""

PIPELINE_CHECK = r"""
import torch
from body4d_core.amodal.accel import AccelConfig
from body4d_core.amodal.config import SamplerConfig
from body4d_core.amodal.sampler import VASPipeline
from body4d_core.testing.amodal import build_vas_parts

p = build_vas_parts("tiny", seed=4)
pipe = VASPipeline(p["unet"], p["vae"], p["image_encoder"], p["scheduler"])
g = torch.Generator().manual_seed(9)
a, b = torch.rand(1, 2, 1, 16, 16, generator=g) * 2 - 1, torch.rand(1, 2, 3, 16, 16, generator=g) * 2 - 1
cfg = SamplerConfig(steps=1, decode_chunk_size=2)
ref = pipe.generate(a, b, [11], cfg)
pipe.accelerate(AccelConfig(fused_resblocks=True, vae_fused_resblocks=True, split_geglu=True, fused_geglu=True,
                               fused_transformers=True))
assert all(m.forward.func.__name__ == "_split_geglu_fused" for m in pipe.unet.modules() if type(m).__name__ == "GEGLU")
routed = sum("forward" in m.__dict__ for m in list(pipe.unet.modules()) + list(pipe.vae.modules()))
got = pipe.generate(a, b, [11], cfg)
pipe.accelerate(None)
assert not any("forward" in m.__dict__ for m in list(pipe.unet.modules()) + list(pipe.vae.modules()))
dev = float((got - ref).abs().max())
print("routed", routed, "dev", dev)
assert routed > 0 and dev < 1e-3, (routed, dev)
"""

UNET_ERROR_CHECK = r"""
import copy, torch
from body4d_core.amodal.accel import AccelConfig, apply_accel
from body4d_core.testing.amodal import build_vas_parts

unet = build_vas_parts("tiny", seed=3)["unet"].bfloat16().eval()
base = dict(unet.attn_processors)
u64 = copy.deepcopy(unet).double()
g = torch.Generator().manual_seed(0)
x = torch.randn(1, 3, 12, 16, 16, generator=g)
ctx = torch.randn(3, 1, unet.config.cross_attention_dim, generator=g)
ids = torch.tensor([[7.0, 127.0, 0.02]])
with torch.inference_mode():
    truth = u64(x.double(), torch.tensor(500.0), ctx.double(), ids.double())[0]


def error(cfg):
    apply_accel(unet, cfg, base)
    with torch.inference_mode():
        out = unet(x.bfloat16(), torch.tensor(500.0), ctx.bfloat16(), ids.bfloat16())[0].double()
    d = (out - truth).abs()
    return float(d.mean() / truth.abs().mean()), float(d.max() / truth.abs().max())


plain = error(AccelConfig(split_geglu=True))
fused = error(AccelConfig(split_geglu=True, fused_geglu=True, fused_resblocks=True, fused_transformers=True))
print("plain", plain, "fused", fused)
assert 0 < plain[0] < 0.05 and fused[0] < 1.1 * plain[0] and fused[1] < 1.25 * plain[1], (plain, fused)
"""


def test_fused_kernels_match_diffusers_blocks_in_the_interpreter():
    """Fused UNet/VAE-style resblocks and the spatio-temporal transformer against diffusers' own (resblocks:
    fp32 within 1e-5, bf16 one-ulp flips only; transformer: up to GEMM rounding), the reorderings bit-identical,
    GroupNorm + add on a permuted view against fp64, the blend and GEGLU bit-identical in bf16, channels_last copied, bad channel counts refused."""
    out = run_interpreted(BLOCKS_CHECK)
    assert "blocks ok" in out and "kernels ok" in out and out.count("refused:") == 1


def test_fused_resblocks_in_the_whole_pipeline_in_the_interpreter():
    """With the fused options the tiny pipeline routes its resblocks and GEGLUs to the kernels and gives the
    reference output (fp32); ``accelerate(None)`` undoes the routing."""
    assert "routed" in run_interpreted(PIPELINE_CHECK)


def test_fused_unet_in_bf16_is_as_close_to_fp64_as_diffusers():
    """The whole (tiny) UNet in bf16 with every fused option: its error against the fp64 UNet is no larger
    than diffusers' own bf16 forward's (mean within 10%, max within 25%) - within bf16 tolerance."""
    assert "fused" in run_interpreted(UNET_ERROR_CHECK)


def test_fused_options_on_cpu_route_but_give_diffusers_results():
    """Weights on the CPU at accelerate time are still routed (they may run on the GPU later), and CPU
    inputs take diffusers' own forwards: output bit-identical to split_geglu's alone."""
    pytest.importorskip("triton")
    p = build_vas_parts("tiny", seed=4)
    pipe = VASPipeline(p["unet"], p["vae"], p["image_encoder"], p["scheduler"])
    g = torch.Generator().manual_seed(9)
    a, b = torch.rand(1, 2, 1, 16, 16, generator=g) * 2 - 1, torch.rand(1, 2, 3, 16, 16, generator=g) * 2 - 1
    cfg = SamplerConfig(steps=1, decode_chunk_size=2)
    ref = pipe.accelerate(AccelConfig(split_geglu=True)).generate(a, b, [11], cfg)
    pipe.accelerate(AccelConfig(fused_resblocks=True, vae_fused_resblocks=True, split_geglu=True, fused_geglu=True,
                               fused_transformers=True))
    names = {m.forward.func.__name__ for m in list(pipe.unet.modules()) + list(pipe.vae.modules())
             if "forward" in m.__dict__}
    got = pipe.generate(a, b, [11], cfg)
    pipe.accelerate(None)
    assert {"resnet2d", "st_resblock", "st_transformer", "_split_geglu_fused"} <= names
    assert torch.equal(got, ref)


def _bf16_errors(module: nn.Module, fused, reference, *inputs: torch.Tensor) -> tuple[float, float]:
    """(error of the fused forward, error of diffusers' forward), both bf16, each as the mean absolute
    deviation from the fp64 module's output over its mean absolute value."""
    import copy

    m64 = copy.deepcopy(module).double()
    with torch.no_grad():
        truth = reference(m64, *(t.double() for t in inputs))
        got, ref = fused(module, *inputs), reference(module, *inputs)
    scale = truth.abs().mean()
    return float((got.double() - truth).abs().mean() / scale), float((ref.double() - truth).abs().mean() / scale)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fused_resblocks_on_cuda_within_bf16_error():
    """On the GPU (bf16): the fused spatio-temporal resblock is as close to the fp64 result as diffusers'
    bf16 forward is (the kernels' exp and statistics differ from PyTorch's in the last fp32 bits, so the
    outputs are not bit-identical there)."""
    from diffusers.models.resnet import SpatioTemporalResBlock

    from body4d_core.amodal import fused_blocks as fb

    torch.manual_seed(0)
    m = SpatioTemporalResBlock(320, 320, temb_channels=1280).cuda().bfloat16().eval()
    x = torch.randn(2 * 16, 320, 32, 64, device="cuda", dtype=torch.bfloat16)
    temb = torch.randn(2 * 16, 1280, device="cuda", dtype=torch.bfloat16)
    ind = torch.zeros(2, 16, device="cuda", dtype=torch.bfloat16)
    fused, plain = _bf16_errors(m, fb.st_resblock, lambda mod, *a: mod(*a), x, temb, ind)
    assert 0 < plain < 1e-2 and fused < 1.25 * plain, (fused, plain)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fused_transformer_on_cuda_within_bf16_error():
    """On the GPU (bf16): the fused spatio-temporal transformer is as close to the fp64 result as diffusers'."""
    from diffusers.models.transformers.transformer_temporal import TransformerSpatioTemporalModel

    from body4d_core.amodal import fused_blocks as fb

    torch.manual_seed(0)
    m = TransformerSpatioTemporalModel(num_attention_heads=5, attention_head_dim=64, in_channels=320,
                                       num_layers=1, cross_attention_dim=1024).cuda().bfloat16().eval()
    x = torch.randn(2 * 16, 320, 32, 64, device="cuda", dtype=torch.bfloat16)
    ctx = torch.randn(2 * 16, 1, 1024, device="cuda", dtype=torch.bfloat16)
    ind = torch.zeros(2, 16, device="cuda", dtype=torch.bfloat16)
    fused, plain = _bf16_errors(m, lambda mod, *a: fb.st_transformer(mod, *a, return_dict=False)[0],
                                lambda mod, *a: mod(*a, return_dict=False)[0], x, ctx, ind)
    assert 0 < plain < 1e-2 and fused < 1.25 * plain, (fused, plain)
