"""Resblock forwards on the fused Triton kernels (``AccelConfig.fused_resblocks`` / ``vae_fused_resblocks``).

Same operations as diffusers' ResnetBlock2D, TemporalResnetBlock and SpatioTemporalResBlock, in the
same order, with the elementwise chains around each GroupNorm (time-embedding add, GroupNorm, SiLU)
and the temporal residual + alpha blend as single passes (``fused_triton``). Convolutions and
linear layers are the modules' own. Inputs that are not on CUDA run the class's own forward, so a
routed module still works after being moved to the CPU (Triton's interpreter excepted, for tests).
"""

from __future__ import annotations

import torch
from torch import nn

from ..runtime import runs_triton

def _kernels(x: torch.Tensor):
    """The Triton module when ``x`` can run it, else None (the caller runs the reference forward)."""
    if not runs_triton(x.device):
        return None
    from . import fused_triton

    return fused_triton


def _gn(k, norm: nn.GroupNorm, x: torch.Tensor, add: torch.Tensor | None = None, silu: bool = True
        ) -> torch.Tensor:
    return k.group_norm_act(x, norm.num_groups, norm.weight, norm.bias, norm.eps, add=add, silu=silu)


def resnet2d_applies(m: nn.Module) -> bool:
    """A ResnetBlock2D the fused forward reproduces: plain SiLU, default time-embedding norm, no resampling."""
    return (type(m).__name__ == "ResnetBlock2D" and type(m.nonlinearity).__name__ == "SiLU"
            and m.upsample is None and m.downsample is None and m.time_embedding_norm == "default"
            and isinstance(m.norm1, nn.GroupNorm) and isinstance(m.norm2, nn.GroupNorm))


def st_resblock_applies(m: nn.Module) -> bool:
    """A SpatioTemporalResBlock whose two halves the fused forwards reproduce."""
    tr = getattr(m, "temporal_res_block", None)
    return (type(m).__name__ == "SpatioTemporalResBlock" and resnet2d_applies(m.spatial_res_block)
            and tr is not None and tr.conv_shortcut is None and type(tr.nonlinearity).__name__ == "SiLU")


def resnet2d(module: nn.Module, input_tensor: torch.Tensor, temb: torch.Tensor | None, *args, **kwargs
             ) -> torch.Tensor:
    """diffusers' ResnetBlock2D.forward (eval) with fused GroupNorm chains."""
    k = _kernels(input_tensor)
    if k is None or args or kwargs:
        return type(module).forward(module, input_tensor, temb, *args, **kwargs)
    h = module.conv1(_gn(k, module.norm1, input_tensor))
    add = None
    if module.time_emb_proj is not None and temb is not None:
        if not module.skip_time_act:
            temb = module.nonlinearity(temb)
        add = module.time_emb_proj(temb)[:, :, None]  # [N, C, 1]
    h = module.conv2(module.dropout(_gn(k, module.norm2, h, add=add)))
    if module.conv_shortcut is not None:
        input_tensor = module.conv_shortcut(input_tensor)
    out = input_tensor + h
    return out if module.output_scale_factor == 1.0 else out / module.output_scale_factor  # x / 1.0 == x


def _mix_weights(mixer: nn.Module, indicator: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """diffusers' AlphaBlender weights (``alpha``, ``1 - alpha``, each rounded to ``dtype`` as it rounds them),
    broadcast to ``shape`` ([B, 1, T, 1, 1] or [B*T, 1, 1]) and flattened to one value per frame."""
    alpha = mixer.get_alpha(indicator, len(shape)).to(dtype)
    if mixer.switch_spatial_to_temporal_mix:
        alpha = 1.0 - alpha
    return alpha.expand(shape).reshape(-1), (1.0 - alpha).expand(shape).reshape(-1)


def _temporal_branch(k, module: nn.Module, x: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
    """TemporalResnetBlock up to (not including) its residual add; x [B, C, T, H, W], any layout."""
    h = module.conv1(_gn(k, module.norm1, x))
    add = None
    if module.time_emb_proj is not None and temb is not None:
        add = module.time_emb_proj(module.nonlinearity(temb)).transpose(1, 2)  # [B, T, C] -> [B, C, T] view
    return module.conv2(module.dropout(_gn(k, module.norm2, h, add=add)))


def st_resblock(module: nn.Module, hidden_states: torch.Tensor, temb: torch.Tensor | None = None,
                image_only_indicator: torch.Tensor | None = None) -> torch.Tensor:
    """diffusers' SpatioTemporalResBlock.forward: the temporal half reads the spatial output in place and
    its residual add and the blend are one pass writing the frame-major output."""
    k = _kernels(hidden_states)
    if k is None:
        return type(module).forward(module, hidden_states, temb, image_only_indicator)
    xs = module.spatial_res_block(hidden_states, temb).contiguous()
    return resblock_temporal(k, module, xs, temb, image_only_indicator)


def resblock_temporal(k, module: nn.Module, xs: torch.Tensor, temb: torch.Tensor | None, indicator: torch.Tensor,
                      out: torch.Tensor | None = None) -> torch.Tensor:
    """A SpatioTemporalResBlock after its spatial half: xs [B*T, C, H, W] contiguous, indicator [B, T]; the
    temporal branch, then its residual add and the blend as one pass (into ``out`` when given)."""
    b, frames = indicator.shape
    _, c, h, w = xs.shape
    view = xs.reshape(b, frames, c, h, w).permute(0, 2, 1, 3, 4)
    if temb is not None:
        temb = temb.reshape(b, frames, -1)
    branch = _temporal_branch(k, module.temporal_res_block, view, temb).contiguous()
    alpha, one_minus = _mix_weights(module.time_mixer, indicator, (b, 1, frames, 1, 1), xs.dtype)
    return k.residual_blend(xs, branch, alpha, one_minus, out=out)


def st_transformer_applies(m: nn.Module) -> bool:
    """A TransformerSpatioTemporalModel whose layout steps the fused forward reproduces."""
    return (type(m).__name__ == "TransformerSpatioTemporalModel" and isinstance(m.norm, nn.GroupNorm)
            and m.norm.affine and all(type(b).__name__ == "TemporalBasicTransformerBlock"
                                      for b in m.temporal_transformer_blocks))


def _temporal_block(block: nn.Module, h: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
    """diffusers' TemporalBasicTransformerBlock.forward between its two reorderings: h [B*S, T, C]."""
    from diffusers.models.attention import _chunked_feed_forward

    def ff(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if block._chunk_size is not None:
            return _chunked_feed_forward(module, x, block._chunk_dim, block._chunk_size)
        return module(x)

    residual = h
    h = ff(block.ff_in, block.norm_in(h))
    if block.is_res:
        h = h + residual
    h = block.attn1(block.norm1(h), encoder_hidden_states=None) + h
    if block.attn2 is not None:
        h = block.attn2(block.norm2(h), encoder_hidden_states=context) + h
    out = ff(block.ff, block.norm3(h))
    return out + h if block.is_res else out


def transformer_temporal(k, temporal: nn.Module, h: torch.Tensor, emb: torch.Tensor, frames: int,
                         time_context: torch.Tensor, alpha: torch.Tensor, one_minus: torch.Tensor,
                         out: torch.Tensor | None = None) -> torch.Tensor:
    """One temporal block of a spatio-temporal transformer after its spatial block: h [B*T, S, C] frame-major;
    the frame-embedding add writing the temporal block's order, the block, and the blend read back frame-major
    (into ``out`` when given)."""
    mixed = _temporal_block(temporal, k.token_major_add(h, emb, frames), time_context).contiguous()
    return k.frame_major_blend(h, mixed, alpha, one_minus, out=out)


def st_transformer(module: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                   image_only_indicator: torch.Tensor | None = None, return_dict: bool = True):
    """diffusers' TransformerSpatioTemporalModel.forward with its layout steps fused: GroupNorm writing tokens,
    the frame embedding add writing the temporal block's [B*S, T, C] order, the blend reading it back, and the
    output reordering with the residual add."""
    k = _kernels(hidden_states)
    if k is None:
        return type(module).forward(module, hidden_states, encoder_hidden_states, image_only_indicator, return_dict)
    bt, _, height, width = hidden_states.shape
    frames = image_only_indicator.shape[-1]
    b = bt // frames
    ctx = encoder_hidden_states
    first = ctx[None, :].reshape(b, frames, -1, ctx.shape[-1])[:, 0]
    time_context = first[:, None].broadcast_to(b, height * width, ctx.shape[-2], ctx.shape[-1])
    time_context = time_context.reshape(b * height * width, -1, ctx.shape[-1])
    residual = hidden_states.contiguous()
    norm = module.norm
    h = module.proj_in(k.group_norm_tokens(residual, norm.num_groups, norm.weight, norm.bias, norm.eps))
    frame_ids = torch.arange(frames, device=h.device).repeat(b, 1).reshape(-1)
    emb = module.time_pos_embed(module.time_proj(frame_ids).to(dtype=h.dtype)).contiguous()
    alpha, one_minus = _mix_weights(module.time_mixer, image_only_indicator, (bt, 1, 1), h.dtype)
    for block, temporal in zip(module.transformer_blocks, module.temporal_transformer_blocks):
        h = block(h, encoder_hidden_states=encoder_hidden_states).contiguous()
        h = transformer_temporal(k, temporal, h, emb, frames, time_context, alpha, one_minus)
    out = k.channels_add(module.proj_out(h).contiguous(), residual)
    if not return_dict:
        return (out,)
    from diffusers.models.transformers.transformer_temporal import TransformerTemporalModelOutput

    return TransformerTemporalModelOutput(sample=out)


# The block forwards above: the low-memory mode (``lowmem.chunked``) suspends them while it chunks.
FORWARDS = (resnet2d, st_resblock, st_transformer)
