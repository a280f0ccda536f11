"""Speed and memory options of the Diffusion-VAS UNet; every default leaves results untouched.

- ``cross_attn_shortcut`` (exact): Diffusion-VAS cross-attends to ONE context token (the
  per-frame CLIP embedding), so softmax over a single key is 1 and the attention output is
  ``to_out(to_v(context))`` for every query. Skipping ``to_q`` and the attention kernel and
  projecting one row instead of all tokens gives the same numbers (up to GEMM rounding).
- ``channels_last``: NHWC weights for the convolutions (cuDNN's fast layout).
- ``compile_blocks``: regional ``torch.compile`` of the repeated blocks (spatio-temporal
  resnets and transformers); the shapes of the three passes compile once each.
- ``temporal_2d`` / ``vae_temporal_2d`` (exact up to conv rounding): the temporal convolutions
  (Conv3d with a (k, 1, 1) kernel, in every spatio-temporal resnet of the UNet / VAE decoder) run
  as 2-D convolutions with a (k, 1) kernel on [B, C, T, H*W] - the same sums, but cuDNN's 2-D
  kernels instead of its 3-D ones.
- ``ff_rows``: feed-forward layers run over at most this many token rows at a time (exact;
  bounds the GEGLU intermediate, which is the UNet's largest activation).
- ``split_geglu`` (exact up to GEMM rounding): each GEGLU projects its value and gate halves as two
  matmuls into contiguous tensors, then GELU and the product run in place on them. diffusers
  chunks one projection into two strided halves, which sends GELU and the product to PyTorch's
  slow non-contiguous kernels and allocates two more GEGLU-sized tensors.
- ``contiguous_temporal`` (exact): diffusers' SpatioTemporalResBlock (UNet and VAE decoder) hands
  its temporal resnet and the spatial/temporal blend a permuted [B, C, T, H, W] view of the spatial
  output, so GroupNorm copies it anyway and the residual add and the blend run on mixed layouts
  through PyTorch's non-vectorised kernels. This copies it once and runs the temporal half on the
  contiguous copy (same operations, same order). ``vae_contiguous_temporal``: the same in the VAE
  decoder. It speeds up the VAE decoder and not the UNet (BENCHMARKS.md, Amodal completion), so only
  the VAE option is on by default.
- ``fused_resblocks`` (close, not exact: the GroupNorm statistics are summed in another order and on the GPU
  Triton's ``exp`` differs from PyTorch's in the last fp32 bits; the bf16 error against an fp64 network is
  diffusers' own, tests/test_amodal_fused.py): the UNet's resblocks
  (ResnetBlock2D, and SpatioTemporalResBlock with its temporal half) run on fused Triton kernels
  (``fused_blocks``): time-embedding add + GroupNorm + SiLU in one pass, the temporal half read in
  place from the spatial output, its residual add and the alpha blend one pass writing the
  frame-major output. Each elementwise step rounds where diffusers' separate op did. CUDA only (the
  CPU keeps diffusers' forwards); not with ``compile_blocks``. ``vae_fused_resblocks``: the same in the
  VAE (encoder and temporal decoder).
- ``fused_transformers`` (exact up to GEMM rounding: ``proj_in`` reads a contiguous copy where diffusers
  hands it a transposed view): the UNet's spatio-temporal transformers with their reorderings fused
  into the neighbouring passes - GroupNorm writes tokens, the frame-embedding add writes the temporal
  block's [B*S, T, C] order, the alpha blend reads it back, the output reordering carries the residual
  add. CUDA only; not with ``compile_blocks``.
- ``fused_geglu`` (with ``split_geglu``; the same roundings: bit-identical in Triton's CPU interpreter except
  where ``1 + erf`` cancels, GELU below 4e-3): GEGLU's GELU and product as one
  Triton pass over the two halves, with no GELU-sized temporary. CUDA only; not with ``compile_blocks``.
- ``native_dtype`` (close, not exact): UNet, VAE and CLIP run in their weights' dtype with no
  autocast, as the released diffusers pipeline runs its fp16 weights. Under autocast every
  GroupNorm/LayerNorm writes fp32 (and SiLU then runs in fp32) before the next conv casts back,
  which doubles the traffic of the memory-bound parts (VAE at full resolution above all).

VAE options (the step-independent cost; exact for every frame the caller reads):

- ``skip_unkept`` (exact for kept frames): the temporal VAE decodes independent chunks of
  ``decode_chunk_size`` frames, so chunks holding no frame a job keeps (``VideoJob.keep``) are
  not decoded (they come back as zeros) and windows with no kept frame are not denoised.
- ``decode_px`` (exact up to batch rounding): one ``vae.decode`` call takes the same chunk of
  several videos (``num_frames`` = chunk length, so each video still sees only its own frames),
  up to this many output frame-pixels per call (0 = one chunk of one video per call, upstream).
- ``encode_px`` (exact up to batch rounding; the encoder is per-frame 2-D): frames per
  ``vae.encode`` call = this many frame-pixels (0 = chunks of 8 frames, as before).
- ``vae_channels_last``: NHWC weights for the VAE's 2-D convolutions.
- ``vae_native`` (close, not exact): the VAE alone runs in its weights' dtype without autocast
  (as the released diffusers pipeline runs its fp16 VAE): bf16 GroupNorm/SiLU outputs instead
  of fp32 ones, half the traffic of the VAE's memory-bound layers at full resolution.
- ``fast_groupnorm`` (close: fp32 partial statistics combined exactly (Chan) instead of PyTorch's
  one-block Welford): GroupNorm of CUDA tensors outside autocast (native dtype) runs as our
  Triton kernels (``fused_triton``), which spread each group's statistics over many programs;
  UNet and VAE. Not with the compile options (inductor fuses its own GroupNorm there).
- ``compile_vae``: ``torch.compile`` of the VAE decoder (``compile_backend``, mode default, static
  shapes) for full ``decode_chunk_size`` chunks; the short last chunk of a window runs eagerly, so
  a clip compiles about one graph per resolution (dynamic shapes retrace far more slowly).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError

log = logging.getLogger(__name__)

COMPILED_BLOCKS = ("SpatioTemporalResBlock", "TransformerSpatioTemporalModel")


@dataclass(frozen=True)
class AccelConfig:
    """How the UNet runs (not what it computes): all off = the reference path."""

    cross_attn_shortcut: bool = False
    channels_last: bool = False
    compile_blocks: bool = False
    compile_backend: str = "inductor"
    ff_rows: int = 0  # 0 = feed-forward over all rows at once
    split_geglu: bool = False  # GEGLU as two contiguous matmuls + in-place GELU and product
    contiguous_temporal: bool = False  # UNet spatio-temporal resblocks: temporal half on one contiguous copy
    fused_resblocks: bool = False  # UNet resblocks on fused Triton GroupNorm/SiLU/blend kernels (CUDA)
    vae_fused_resblocks: bool = False  # the same in the VAE
    fused_geglu: bool = False  # with split_geglu: GELU and product as one Triton pass (CUDA)
    fused_transformers: bool = False  # UNet spatio-temporal transformers: reorderings fused with adds/blend (CUDA)
    vae_contiguous_temporal: bool = False  # the same in the VAE decoder
    native_dtype: bool = False  # no autocast: networks compute in their weights' dtype (bf16 norms)
    skip_unkept: bool = False  # decode/denoise only chunks/windows holding a kept frame
    decode_px: int = 0  # output frame-pixels per vae.decode call across videos (0 = per video and chunk)
    encode_px: int = 0  # frame-pixels per vae.encode call (0 = chunks of 8 frames)
    temporal_2d: bool = False  # UNet temporal (k, 1, 1) Conv3d as 2-D convolutions
    vae_temporal_2d: bool = False  # the same in the VAE decoder
    vae_channels_last: bool = False
    vae_native: bool = False  # no autocast in the VAE: it computes in its weights' dtype (close, not exact)
    compile_vae: bool = False
    fast_groupnorm: bool = False  # Triton GroupNorm statistics for large groups (UNet and VAE, native dtype)
    mixed_lengths: bool = False  # windows of different lengths share a UNet call (amodal/mixed.py; experimental)

    def __post_init__(self) -> None:
        for name in ("ff_rows", "decode_px", "encode_px"):
            if getattr(self, name) < 0:
                raise InputError(f"amodal {name} must be >= 0, got {getattr(self, name)}")


class SingleTokenCrossAttention:
    """Attention processor: exact shortcut for cross-attention to a single context token."""

    def __init__(self, fallback) -> None:
        self.fallback = fallback

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args, **kwargs
                 ) -> torch.Tensor:
        if not _shortcut_applies(attn, hidden_states, encoder_hidden_states, attention_mask):
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        out = attn.to_out[1](attn.to_out[0](attn.to_v(encoder_hidden_states)))  # [N, 1, C]
        if attn.rescale_output_factor != 1.0:
            out = out / attn.rescale_output_factor
        return out.expand(-1, hidden_states.shape[1], -1)


def _shortcut_applies(attn, hidden: torch.Tensor, context: torch.Tensor | None, mask: torch.Tensor | None) -> bool:
    """Only plain cross-attention to exactly one token with nothing that reads the queries' inputs."""
    return (context is not None and context.ndim == 3 and context.shape[1] == 1 and hidden.ndim == 3
            and context.shape[0] == hidden.shape[0] and mask is None and attn.spatial_norm is None
            and attn.group_norm is None and not attn.norm_cross and not attn.residual_connection)


def _chunked_ff(module: nn.Module, rows: int, hidden: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """FeedForward over ``rows`` token rows at a time (rows are independent: exact)."""
    flat = hidden.reshape(-1, hidden.shape[-1])
    if flat.shape[0] <= rows:
        return type(module).forward(module, hidden, *args, **kwargs)
    parts = [type(module).forward(module, flat[s:s + rows], *args, **kwargs) for s in range(0, flat.shape[0], rows)]
    return torch.cat(parts).reshape(*hidden.shape[:-1], parts[0].shape[-1])


def _geglu_halves(module: nn.Module, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """GEGLU's value and gate projections as two matmuls into contiguous tensors."""
    weight, bias = module.proj.weight, module.proj.bias
    half = weight.shape[0] // 2
    return (F.linear(hidden, weight[:half], None if bias is None else bias[:half]),
            F.linear(hidden, weight[half:], None if bias is None else bias[half:]))


def _split_geglu(module: nn.Module, hidden: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """diffusers' GEGLU (``value * gelu(gate)`` of one projection's two halves) on contiguous halves."""
    value, gate = _geglu_halves(module, hidden)
    return value.mul_(F.gelu(gate))


def _split_geglu_fused(module: nn.Module, hidden: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """``_split_geglu`` with GELU and the product as one Triton pass (``fused_triton.geglu_``) where it runs."""
    from .fused_blocks import _kernels

    k = _kernels(hidden)
    if k is None:
        return _split_geglu(module, hidden, *args, **kwargs)
    return k.geglu_(*_geglu_halves(module, hidden))


def _contiguous_st_resblock(module: nn.Module, hidden_states: torch.Tensor, temb: torch.Tensor | None = None,
                            image_only_indicator: torch.Tensor | None = None) -> torch.Tensor:
    """diffusers' SpatioTemporalResBlock.forward with its temporal half on a contiguous [B, C, T, H, W] copy."""
    num_frames = image_only_indicator.shape[-1]
    hidden_states = module.spatial_res_block(hidden_states, temb)
    batch_frames, channels, height, width = hidden_states.shape
    batch = batch_frames // num_frames
    x = hidden_states.reshape(batch, num_frames, channels, height, width).permute(0, 2, 1, 3, 4).contiguous()
    del hidden_states  # only the copy is read from here on: free the spatial output early (peak memory)
    if temb is not None:
        temb = temb.reshape(batch, num_frames, -1)
    mixed = module.temporal_res_block(x, temb)
    out = module.time_mixer(x_spatial=x, x_temporal=mixed, image_only_indicator=image_only_indicator)
    return out.permute(0, 2, 1, 3, 4).reshape(batch_frames, channels, height, width)


def _route_forward(module: nn.Module, pick: Callable[[nn.Module], bool], fn: Callable[..., torch.Tensor],
                   *args: object) -> int:
    """Every submodule ``pick`` accepts runs ``fn(submodule, *args, inputs...)`` as its forward (a tagged
    instance attribute, which ``_unroute`` deletes again); returns how many."""
    n = 0
    for m in module.modules():
        if pick(m):
            routed = partial(fn, m, *args)
            routed._body4d_accel = True
            m.forward = routed
            n += 1
    return n


def _unroute(module: nn.Module) -> None:
    """Drop the forwards ``_route_forward`` set; instance forwards set by anyone else (wrappers) stay."""
    for m in module.modules():
        if getattr(m.__dict__.get("forward"), "_body4d_accel", False):
            del m.__dict__["forward"]


def _named(name: str) -> Callable[[nn.Module], bool]:
    """A ``pick`` for ``_route_forward``: modules whose class is called ``name`` (diffusers' classes)."""
    return lambda m: type(m).__name__ == name


def apply_accel(unet: nn.Module, cfg: AccelConfig, base_processors: dict | None = None) -> None:
    """Put ``unet`` in the state ``cfg`` describes, undoing earlier options first (idempotent)."""
    _reset(unet, base_processors)
    if cfg.cross_attn_shortcut:
        procs = unet.attn_processors
        unet.set_attn_processor({name: SingleTokenCrossAttention(p) if name.endswith("attn2.processor") else p
                                 for name, p in procs.items()})
    if cfg.ff_rows:
        _route_forward(unet, _named("FeedForward"), _chunked_ff, cfg.ff_rows)
    if cfg.split_geglu:
        fused = cfg.fused_geglu and not cfg.compile_blocks and _fused_ready()
        _route_forward(unet, _named("GEGLU"), _split_geglu_fused if fused else _split_geglu)
    if cfg.contiguous_temporal:
        _route_forward(unet, _named("SpatioTemporalResBlock"), _contiguous_st_resblock)
    if cfg.temporal_2d:
        _temporal_as_2d(unet)
    if cfg.fused_resblocks and not cfg.compile_blocks:
        _fused_resblocks(unet)
    if cfg.fused_transformers and not cfg.compile_blocks:
        _fused_transformers(unet)
    if cfg.fast_groupnorm and not cfg.compile_blocks:
        _fast_group_norms(unet)
    if cfg.channels_last:
        _conv_layout(unet, torch.channels_last)
    if cfg.compile_blocks:
        _raise_recompile_limit()
        for m in unet.modules():
            if type(m).__name__ in COMPILED_BLOCKS:
                m.compile(backend=cfg.compile_backend)
    unet._accel = cfg


def apply_vae_accel(vae: nn.Module, cfg: AccelConfig) -> None:
    """Put the VAE in the state ``cfg`` describes (layout, compiled decoder), undoing earlier options."""
    old = getattr(vae, "_accel", AccelConfig())
    vae.__dict__.pop("compiled_decoder", None)
    _unroute(vae)
    if cfg.vae_contiguous_temporal:
        _route_forward(vae, _named("SpatioTemporalResBlock"), _contiguous_st_resblock)
    if cfg.vae_temporal_2d:
        _temporal_as_2d(vae)
    if cfg.vae_fused_resblocks and not cfg.compile_vae:
        _fused_resblocks(vae)
    if cfg.fast_groupnorm and not cfg.compile_vae:
        _fast_group_norms(vae)
    if old.vae_channels_last:
        _conv_layout(vae, torch.contiguous_format)
    if cfg.vae_channels_last:
        _conv_layout(vae, torch.channels_last)
    if cfg.compile_vae:
        _raise_recompile_limit()
        # a plain attribute, not a registered submodule (state_dict and module lists stay as they were)
        object.__setattr__(vae, "compiled_decoder", torch.compile(vae.decoder, backend=cfg.compile_backend,
                                                                  dynamic=False))
    vae._accel = cfg


def _reset(unet: nn.Module, base_processors: dict | None) -> None:
    """Back to the reference state: original processors, plain FF, NCHW, no compiled blocks."""
    if base_processors is not None:
        unet.set_attn_processor(dict(base_processors))
    _unroute(unet)
    for m in unet.modules():
        if getattr(m, "_compiled_call_impl", None) is not None:
            m._compiled_call_impl = None
    if getattr(unet, "_accel", AccelConfig()).channels_last:
        _conv_layout(unet, torch.contiguous_format)
    unet._accel = AccelConfig()


def _conv3d_as_2d(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """A (k, 1, 1) Conv3d on [B, C, T, H, W] as a (k, 1) Conv2d on [B, C, T, H*W] (same sums)."""
    b, c, t, h, w = x.shape
    y = torch.nn.functional.conv2d(x.reshape(b, c, t, h * w), conv.weight[..., 0], conv.bias,
                                   stride=(conv.stride[0], 1), padding=(conv.padding[0], 0),
                                   dilation=(conv.dilation[0], 1), groups=conv.groups)
    return y.reshape(b, y.shape[1], y.shape[2], h, w)


def _temporal_only(m: nn.Module) -> bool:
    """A Conv3d that mixes frames only: (k, 1, 1) kernel, no spatial stride, padding or dilation."""
    return (isinstance(m, nn.Conv3d) and tuple(m.kernel_size[1:]) == (1, 1) and tuple(m.stride[1:]) == (1, 1)
            and tuple(m.padding[1:]) == (0, 0) and tuple(m.dilation[1:]) == (1, 1) and m.padding_mode == "zeros")


def _temporal_as_2d(module: nn.Module) -> int:
    """Route every temporal-only Conv3d of ``module`` through ``_conv3d_as_2d``; returns how many."""
    return _route_forward(module, _temporal_only, _conv3d_as_2d)


def _group_norm(m: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """``m(x)``; CUDA input outside autocast through the Triton statistics kernels (``fused_triton``)."""
    if x.is_cuda and x.dim() >= 3 and not torch.is_autocast_enabled(x.device.type):
        from .fused_triton import group_norm_act

        return group_norm_act(x, m.num_groups, m.weight, m.bias, m.eps, silu=False)
    return torch.nn.functional.group_norm(x, m.num_groups, m.weight, m.bias, m.eps)


def _fast_group_norms(module: nn.Module) -> int:
    """Route every GroupNorm of ``module`` through ``_group_norm`` (where triton imports); returns how many."""
    if next(module.parameters()).is_cuda and not _fused_ready():
        return 0
    return _route_forward(module, lambda m: isinstance(m, nn.GroupNorm), _group_norm)


def _fused_ready() -> bool:
    """Can ``fused_triton`` be imported (triton present)? Where it runs is decided per call: the fused
    forwards take CUDA inputs (or Triton's interpreter) and give anything else diffusers' own forwards, so
    weights placed on the CPU first (ComfyUI's model management, offloading) still get them on the GPU."""
    try:
        from . import fused_triton  # noqa: F401
    except Exception as err:  # noqa: BLE001 - no triton (e.g. Windows wheels): keep diffusers' forwards
        level = logging.WARNING if torch.cuda.is_available() else logging.DEBUG  # CPU-only: nothing is lost
        log.log(level, "amodal: the fused kernels need triton (%s: %s); diffusers' forwards stay",
                type(err).__name__, err)
        return False
    return True


def _fused_resblocks(module: nn.Module) -> int:
    """Route the resblocks ``fused_blocks`` reproduces through its forwards where ``_fused_ready``; how many."""
    from . import fused_blocks as fb

    if not _fused_ready():
        return 0
    return (_route_forward(module, fb.resnet2d_applies, fb.resnet2d)
            + _route_forward(module, fb.st_resblock_applies, fb.st_resblock))


def _fused_transformers(module: nn.Module) -> int:
    """Route the spatio-temporal transformers through ``fused_blocks.st_transformer`` where ``_fused_ready``."""
    from . import fused_blocks as fb

    return _route_forward(module, fb.st_transformer_applies, fb.st_transformer) if _fused_ready() else 0


def _conv_layout(module: nn.Module, fmt: torch.memory_format) -> None:
    """2-D convolution weights to ``fmt`` (the temporal 3-D convolutions keep theirs)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            m.weight.data = m.weight.data.contiguous(memory_format=fmt)


def _raise_recompile_limit(limit: int = 64) -> None:
    """Each block instance meets 3 passes x a few widths; dynamo's default limit (8) would fall back to eager."""
    import torch._dynamo

    cfg = torch._dynamo.config
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    if getattr(cfg, name) < limit:
        log.info("amodal: raising torch._dynamo.config.%s to %d for regional compilation", name, limit)
        setattr(cfg, name, limit)
