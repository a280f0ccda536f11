"""Diffusion-VAS UNet: diffusers' spatio-temporal UNet with a 12-channel input conv.

The released checkpoints keep SVD's 8-channel ``conv_in`` (unused) and add ``conv_in2``
(noisy latents + two condition latents, 3 x 4 channels), which the forward pass uses
instead. The image embeddings arrive already per frame ([batch*frames, tokens, dim]), so
unlike diffusers' class they are not repeated over frames.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from diffusers import UNetSpatioTemporalConditionModel

CONV_IN2_CHANNELS = 12


class VASUNet(UNetSpatioTemporalConditionModel):
    """UNetSpatioTemporalConditionModel + ``conv_in2`` and per-frame cross-attention context."""

    def __init__(self, **config) -> None:
        super().__init__(**config)
        self.conv_in2 = nn.Conv2d(CONV_IN2_CHANNELS, self.conv_in.out_channels, kernel_size=3, padding=1)

    def _embed_time(self, sample: torch.Tensor, timestep: torch.Tensor | float, added_time_ids: torch.Tensor
                    ) -> torch.Tensor:
        """Timestep + (fps, motion bucket, noise aug) embedding, one row per video."""
        batch = sample.shape[0]
        t = torch.as_tensor(timestep, device=sample.device)
        if t.ndim == 0:
            t = t[None]
        t_emb = self.time_proj(t.expand(batch)).to(dtype=sample.dtype)
        emb = self.time_embedding(t_emb)
        extra = self.add_time_proj(added_time_ids.flatten()).reshape(batch, -1).to(emb.dtype)
        return emb + self.add_embedding(extra)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float, encoder_hidden_states: torch.Tensor,
                added_time_ids: torch.Tensor, return_dict: bool = False) -> tuple[torch.Tensor]:
        """sample [B, T, 12, h, w], context [B*T, tokens, dim], added_time_ids [B, 3] -> ([B, T, 4, h, w],)."""
        batch, frames = sample.shape[:2]
        emb = self._embed_time(sample, timestep, added_time_ids).repeat_interleave(frames, dim=0)
        if encoder_hidden_states.shape[0] != batch * frames:
            raise ValueError(f"context has {encoder_hidden_states.shape[0]} rows, expected batch*frames="
                             f"{batch * frames}")
        h = self.conv_in2(sample.flatten(0, 1))
        indicator = torch.zeros(batch, frames, dtype=h.dtype, device=h.device)
        h = self._blocks(h, emb, encoder_hidden_states, indicator)
        return (h.reshape(batch, frames, *h.shape[1:]),)

    def forward_runs(self, samples: Sequence[torch.Tensor], timestep: torch.Tensor | float,
                     contexts: Sequence[torch.Tensor], added_time_ids: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Videos of several lengths in one call: ``samples[i]`` [B_i, T_i, 12, h, w], ``contexts[i]``
        [B_i*T_i, tokens, dim], ``added_time_ids[i]`` [B_i, 3] -> [B_i, T_i, 4, h, w] each. The per-frame
        layers run once over every frame, the temporal ones once per entry (amodal/mixed.py); the same
        numbers as ``forward`` on each entry, up to the GEMMs' batch-size rounding."""
        from .mixed import routed_runs

        runs = [(s.shape[0], s.shape[1]) for s in samples]
        for (b, t), ctx in zip(runs, contexts):
            if ctx.shape[0] != b * t:
                raise ValueError(f"context has {ctx.shape[0]} rows, expected batch*frames={b * t}")
        emb = torch.cat([self._embed_time(s, timestep, ids).repeat_interleave(s.shape[1], dim=0)
                         for s, ids in zip(samples, added_time_ids)])
        h = self.conv_in2(torch.cat([s.flatten(0, 1) for s in samples]))
        with routed_runs(self, runs):
            h = self._blocks(h, emb, torch.cat(list(contexts)), None)
        return [o.reshape(b, t, *o.shape[1:]) for o, (b, t) in zip(h.split([b * t for b, t in runs]), runs)]

    def _blocks(self, h: torch.Tensor, emb: torch.Tensor, context: torch.Tensor,
                indicator: torch.Tensor | None) -> torch.Tensor:
        """conv_in2's output [frames, C, h, w] through the down, mid and up blocks and the output conv."""
        skips: tuple[torch.Tensor, ...] = (h,)
        for block in self.down_blocks:
            kw = {"encoder_hidden_states": context} if getattr(block, "has_cross_attention", False) else {}
            h, res = block(hidden_states=h, temb=emb, image_only_indicator=indicator, **kw)
            skips += res
        h = self.mid_block(hidden_states=h, temb=emb, encoder_hidden_states=context,
                           image_only_indicator=indicator)
        for block in self.up_blocks:
            res, skips = skips[-len(block.resnets):], skips[:-len(block.resnets)]
            kw = {"encoder_hidden_states": context} if getattr(block, "has_cross_attention", False) else {}
            h = block(hidden_states=h, temb=emb, res_hidden_states_tuple=res, image_only_indicator=indicator, **kw)
        return self.conv_out(self.conv_act(self.conv_norm_out(h)))
