"""One UNet call over videos of different lengths (``VASUNet.forward_runs``; opt-in: ``amodal_accel=mixed``).

By default the sampler batches only windows of one length, so a pass whose occluded segments have several
lengths makes one small UNet call per length and step (docs/ARCHITECTURE.md, "exact speed-ups"). Most of the
UNet works on each frame alone (convolutions, spatial attention, cross-attention to the frame's own image
embedding); only the temporal halves of its spatio-temporal resblocks and transformers mix the frames of a
video. Here the per-frame layers run once over the frames of every video, and each temporal half runs once per
run of videos of one length, on its own rows. Same operations as one call per length, so the same numbers up
to the batch-size rounding of the GEMMs (``tests/test_amodal_mixed.py``). Experimental: whether it is faster on
a GPU is not measured yet (BENCHMARKS.md, amodal).
"""

from __future__ import annotations

import contextlib
from functools import partial
from typing import Iterator, Sequence

import torch
from torch import nn

from . import fused_blocks as fb

Run = tuple[int, int]  # (videos, frames): consecutive rows [videos * frames] of the flattened batch


def run_rows(runs: Sequence[Run]) -> list[tuple[int, int, int, int]]:
    """(videos, frames, first row, end row) of each run in the flattened [sum videos*frames, ...] batch."""
    out, row = [], 0
    for videos, frames in runs:
        out.append((videos, frames, row, row + videos * frames))
        row += videos * frames
    return out


def _indicator(videos: int, frames: int, like: torch.Tensor) -> torch.Tensor:
    """diffusers' image_only_indicator of a video batch (all video frames: zeros)."""
    return torch.zeros(videos, frames, dtype=like.dtype, device=like.device)


def _resblock_tail(module: nn.Module, xs: torch.Tensor, temb: torch.Tensor | None, videos: int, frames: int,
                   fused: bool, out: torch.Tensor) -> None:
    """A SpatioTemporalResBlock after its spatial half, for one run: xs [videos*frames, C, H, W] contiguous,
    written into ``out`` (the run's rows of the block's output)."""
    indicator = _indicator(videos, frames, xs)
    k = fb._kernels(xs) if fused else None
    if k is not None:
        fb.resblock_temporal(k, module, xs, temb, indicator, out=out)
        return
    _, c, h, w = xs.shape
    view = xs.reshape(videos, frames, c, h, w).permute(0, 2, 1, 3, 4)
    if temb is not None:
        temb = temb.reshape(videos, frames, -1)
    mixed = module.temporal_res_block(view, temb)
    blended = module.time_mixer(x_spatial=view, x_temporal=mixed, image_only_indicator=indicator)
    out.copy_(blended.permute(0, 2, 1, 3, 4).reshape(videos * frames, c, h, w))


def resblock_runs(module: nn.Module, runs: Sequence[Run], fused: bool, hidden_states: torch.Tensor,
                  temb: torch.Tensor | None = None, image_only_indicator: object = None) -> torch.Tensor:
    """SpatioTemporalResBlock.forward over runs: the spatial half on every row at once, the rest per run."""
    xs = module.spatial_res_block(hidden_states, temb).contiguous()
    y = torch.empty_like(xs)  # each run writes its own rows: no concatenation pass
    for v, f, a, b in run_rows(runs):
        _resblock_tail(module, xs[a:b], None if temb is None else temb[a:b], v, f, fused, y[a:b])
    return y


def _frame_emb(module: nn.Module, videos: int, frames: int, like: torch.Tensor) -> torch.Tensor:
    """The transformer's frame-position embedding of one run's rows [videos*frames, C]."""
    ids = torch.arange(frames, device=like.device).repeat(videos, 1).reshape(-1)
    return module.time_pos_embed(module.time_proj(ids).to(dtype=like.dtype))


def _time_context(ctx: torch.Tensor, videos: int, frames: int, tokens: int) -> torch.Tensor:
    """Each video's first-frame context, repeated over its ``tokens`` spatial positions: [videos*tokens, n, D]."""
    first = ctx.reshape(videos, frames, -1, ctx.shape[-1])[:, 0]
    return first[:, None].broadcast_to(videos, tokens, *first.shape[1:]).reshape(videos * tokens, -1, ctx.shape[-1])


def transformer_runs(module: nn.Module, runs: Sequence[Run], fused: bool, hidden_states: torch.Tensor,
                     encoder_hidden_states: torch.Tensor | None = None, image_only_indicator: object = None,
                     return_dict: bool = True):
    """TransformerSpatioTemporalModel.forward over runs: norm, projections and spatial blocks on every row at
    once; frame embeddings, temporal blocks and the blend per run."""
    k = fb._kernels(hidden_states) if fused else None
    rows = run_rows(runs)
    _, _, height, width = hidden_states.shape
    tokens, ctx = height * width, encoder_hidden_states
    residual = hidden_states.contiguous() if k is not None else hidden_states
    norm = module.norm
    if k is not None:
        h = module.proj_in(k.group_norm_tokens(residual, norm.num_groups, norm.weight, norm.bias, norm.eps))
    else:
        h = norm(hidden_states)
        h = module.proj_in(h.permute(0, 2, 3, 1).reshape(h.shape[0], tokens, h.shape[1]))
    per_run = [(v, f, a, b, _frame_emb(module, v, f, h).contiguous(), _time_context(ctx[a:b], v, f, tokens),
                _indicator(v, f, h)) for v, f, a, b in rows]
    for block, temporal in zip(module.transformer_blocks, module.temporal_transformer_blocks):
        h = block(h, encoder_hidden_states=ctx).contiguous()
        y = torch.empty_like(h)  # each run writes its own rows: no concatenation pass
        for v, f, a, b, emb, tctx, ind in per_run:
            if k is not None:
                alpha, one_minus = fb._mix_weights(module.time_mixer, ind, (v * f, 1, 1), h.dtype)
                fb.transformer_temporal(k, temporal, h[a:b], emb, f, tctx, alpha, one_minus, out=y[a:b])
            else:
                mixed = temporal(h[a:b] + emb[:, None, :], num_frames=f, encoder_hidden_states=tctx)
                y[a:b] = module.time_mixer(x_spatial=h[a:b], x_temporal=mixed, image_only_indicator=ind)
        h = y
    out = module.proj_out(h)
    if k is not None:
        out = k.channels_add(out.contiguous(), residual)
    else:
        out = out.reshape(-1, height, width, out.shape[-1]).permute(0, 3, 1, 2).contiguous() + residual
    if not return_dict:
        return (out,)
    from diffusers.models.transformers.transformer_temporal import TransformerTemporalModelOutput

    return TransformerTemporalModelOutput(sample=out)


@contextlib.contextmanager
def routed_runs(unet: nn.Module, runs: Sequence[Run]) -> Iterator[None]:
    """While the block runs, the UNet's spatio-temporal resblocks and transformers take the flattened batch of
    ``runs``; their own forwards (routed or not) are back afterwards. The fused kernels are used where the UNet's
    AccelConfig fuses those blocks and they apply, as in one call per length."""
    cfg = getattr(unet, "_accel", None)
    fuse_res = bool(cfg and cfg.fused_resblocks and not cfg.compile_blocks)
    fuse_tr = bool(cfg and cfg.fused_transformers and not cfg.compile_blocks)
    saved = []
    try:
        for m in unet.modules():
            name = type(m).__name__
            if name == "SpatioTemporalResBlock":
                fn = partial(resblock_runs, m, tuple(runs), fuse_res and fb.st_resblock_applies(m))
            elif name == "TransformerSpatioTemporalModel":
                fn = partial(transformer_runs, m, tuple(runs), fuse_tr and fb.st_transformer_applies(m))
            else:
                continue
            saved.append((m, m.__dict__.get("forward")))
            m.forward = fn
        yield
    finally:
        for m, old in saved:
            if old is None:
                m.__dict__.pop("forward", None)
            else:
                m.forward = old
