"""The DINOv3 backbone's eager blocks on fused kernels (``estimate_bodies(fused_backbone=True)``): same values.

A job whose backbone runs eagerly (``compile=auto`` runs small jobs so, e.g. a short clip's 100 crops) spends
about a fifth of its GPU time on the blocks' rotary embedding and layer-scale adds (BENCHMARKS.md,
SAM-3D-Body). Here ``fused_block`` runs a ``vit.Block`` with the same module calls (LayerNorms, projections,
attention, MLP) in the same order, and the rotary embedding of q and k and the two layer-scale residual adds as
single passes (``fused_triton``), so the features are bit-identical (docs/ARCHITECTURE.md, "exact speed-ups").
Compiled backbones (inductor fuses these itself) and FP8 stand-in blocks keep their own forwards.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..runtime import runs_triton
from .vit import Block, apply_rope

log = logging.getLogger(__name__)


def fused_block(blk: Block, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], k: Any) -> torch.Tensor:
    """``Block.forward`` with the rotary embedding and the layer-scale adds as single passes (``k``: the kernels)."""
    b, n, c = x.shape
    attn = blk.attn
    qkv = attn.qkv(blk.norm1(x))
    sin, cos = (t.to(qkv.dtype) for t in rope)
    q, key = k.rope_qk(qkv, sin, cos, attn.heads)
    v = qkv.view(b, n, 3, attn.heads, c // attn.heads).permute(2, 0, 3, 1, 4)[2]
    out = F.scaled_dot_product_attention(q, key, v)
    x = k.scale_add(x, attn.proj(out.transpose(1, 2).reshape(b, n, c)), blk.ls1.gamma)
    return k.scale_add(x, blk.mlp(blk.norm2(x)), blk.ls2.gamma)


def self_check(k: Any, device: torch.device, dtype: torch.dtype) -> str:
    """Each kernel once on small random inputs against the reference ops, as a block computing in ``dtype``
    calls them (q / k and branches in ``dtype``, an fp32 or ``dtype`` residual stream, fp32 layer scales): ''
    when every output is bit-identical, else what differed. Guards a GPU, driver or Triton version that rounds
    differently (a few small launches per job)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    qkv = torch.randn(2, 7, 3 * 32, generator=g).to(device, dtype)  # 2 heads of 16, 2 prefix + 5 patch tokens
    sin, cos = (torch.randn(5, 16, generator=g).to(device, dtype) for _ in range(2))
    want = qkv.view(2, 7, 3, 2, 16).permute(2, 0, 3, 1, 4)
    got = k.rope_qk(qkv, sin, cos, 2)
    if not all(torch.equal(a, apply_rope(w, sin, cos)) for a, w in zip(got, want[:2])):
        return f"rotary embedding differs in {dtype}"
    gamma = torch.randn(32, generator=g).to(device)
    a = torch.randn(2, 7, 32, generator=g).to(device, dtype)
    for stream in dict.fromkeys((torch.float32, dtype)):
        x = torch.randn(2, 7, 32, generator=g).to(device, stream)
        if not torch.equal(k.scale_add(x, a, gamma), x + a * gamma):
            return f"layer-scale add differs in {dtype} (residual stream {stream})"
    return ""


def kernels_for(device: torch.device, dtype: torch.dtype) -> Any:
    """The kernels' module where they run on ``device`` (CUDA with Triton, or the interpreter) and give, there
    and in ``dtype``, the reference ops' bits; else None (with a warning when they failed)."""
    if not runs_triton(device):
        return None
    try:
        from . import fused_triton

        bad = self_check(fused_triton, device, dtype)
    except Exception as err:  # noqa: BLE001 - no triton (e.g. Windows wheels), a Triton too old: the eager blocks
        bad = f"{type(err).__name__}: {err}"
    if bad:
        log.warning("SAM-3D-Body fused backbone kernels not used (%s); running the blocks as they are", bad)
        return None
    return fused_triton


class FusedBlocks:
    """``with FusedBlocks(encoder, enabled, dtype):`` the encoder's plain ``vit.Block`` s run ``fused_block``.

    ``active`` says, before the block, whether they will (enabled, plain blocks found, kernels available and
    exact on the encoder's device in ``dtype``); the blocks' own forwards are back when the block ends,
    however it ends.
    """

    def __init__(self, encoder: nn.Module, enabled: bool, dtype: torch.dtype):
        blocks = getattr(encoder, "blocks", ())
        self.blocks = [m for m in blocks if type(m) is Block] if enabled else []
        params = next(encoder.parameters(), None)
        device = params.device if params is not None else torch.device("cpu")
        self.kernels = kernels_for(device, dtype) if self.blocks else None
        self.active = self.kernels is not None
        self.undo = contextlib.ExitStack()

    def __enter__(self) -> "FusedBlocks":
        if self.active:
            for blk in self.blocks:
                blk.forward = functools.partial(fused_block, blk, k=self.kernels)
                self.undo.callback(blk.__dict__.pop, "forward", None)
        return self

    def __exit__(self, *exc: object) -> None:
        self.undo.close()
