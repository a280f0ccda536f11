"""SAM-3's ViT layers on the fused kernels (``SpeedOptions.fused_backbone``): same values, fewer passes.

The same operations as transformers' ``Sam3ViTLayer`` in the same order; the rotary embedding of q and k,
the window partition (with the one cast to the projections' precision that autocast would make three
times) and the window merge + residual add run as single passes (``fused_triton``), and each layer's
rotary cos/sin tables are computed once per propagation instead of every frame. GEMMs, attention, the
LayerNorms and the MLP are the modules' own calls on the same inputs, so the features are bit-identical
(docs/ARCHITECTURE.md, "exact speed-ups"). Inputs that are not on CUDA run the class's own forward (Triton's
interpreter excepted, for tests).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
from typing import Any

import torch
from torch import nn

from ..runtime import runs_triton

log = logging.getLogger(__name__)

def _kernels(x: torch.Tensor):
    """The Triton module when ``x`` can run it, else None (the caller runs the reference forward)."""
    if not runs_triton(x.device):
        return None
    from . import fused_triton

    return fused_triton


def kernels_available(device: torch.device, dtype: torch.dtype, reference: Any) -> bool:
    """Whether the fused layers can run for weights on ``device`` (CUDA with Triton, or the interpreter) and
    give, there and in ``dtype``, the bits of ``reference`` (the transformers module whose functions they
    replace)."""
    if not runs_triton(device):
        return False
    try:
        from . import fused_triton

        bad = self_check(fused_triton, reference, device, dtype)
    except Exception as err:  # noqa: BLE001 - no triton (e.g. Windows wheels), a Triton too old: transformers' layers
        bad = f"{type(err).__name__}: {err}"
    if bad:
        log.warning("SAM-3 fused backbone kernels not used (%s); using transformers' layers", bad)
    return not bad


def self_check(k, reference: Any, device: torch.device, dtype: torch.dtype) -> str:
    """Run each kernel once on small random inputs against transformers' own function, as a layer computing
    in ``dtype`` calls it (fp32 LayerNorm output and residual stream, q / k / windows in ``dtype``): '' when
    every output is bit-identical, else what differed. Guards a GPU, driver or Triton version that rounds
    differently (a few small launches per propagation)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    cos, sin = (torch.randn(1, 12, 8, generator=g).to(device) for _ in range(2))
    x = torch.randn(2, 5, 7, 16, generator=g).to(device)
    q, key = (torch.randn(3, 12, 32, generator=g).to(device, dtype) for _ in range(2))
    want = reference.apply_rotary_pos_emb_2d(q.view(3, 12, 4, 8).transpose(1, 2),
                                             key.view(3, 12, 4, 8).transpose(1, 2), cos=cos, sin=sin)
    got = k.rope_qk(q, key, cos, sin, 4)
    if not all(torch.equal(a, b) and a.stride() == b.stride() for a, b in zip(got, want)):
        return f"rotary embedding differs in {dtype}"
    windows, padded = reference.window_partition(x, 3)
    if not torch.equal(k.window_partition(x, 3, dtype)[0], windows.to(dtype)):
        return f"window partition differs in {dtype}"
    win = windows.to(dtype)
    want = x + reference.window_unpartition(win, 3, padded, (5, 7))
    if not torch.equal(k.merge_add(x, win, 3), want):
        return f"window merge differs in {dtype}"
    return ""


def layer_applies(m: nn.Module) -> bool:
    """A transformers ``Sam3ViTLayer`` (eval) whose forward ``vit_layer`` reproduces."""
    attn = getattr(m, "attention", None)
    return (type(m).__name__ == "Sam3ViTLayer" and type(attn).__name__ == "Sam3ViTRoPEAttention"
            and not m.training and hasattr(m, "rotary_emb") and hasattr(m, "position_ids"))


def _projection_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a linear layer computes ``x`` in: autocast's where it is on (it casts floating inputs),
    else ``x``'s own."""
    kind = x.device.type
    if torch.is_autocast_enabled(kind) and x.is_floating_point() and x.dtype != torch.float64:
        return torch.get_autocast_dtype(kind)
    return x.dtype


def _attention(k, attn: nn.Module, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], **kwargs: Any
               ) -> torch.Tensor:
    """``Sam3ViTRoPEAttention.forward`` with the rotary embedding fused; ``x`` [B, H, W, C]."""
    b, h, w, _ = x.shape
    n, heads = h * w, attn.num_attention_heads
    q = attn.q_proj(x).view(b, n, -1)
    key = attn.k_proj(x).view(b, n, -1)
    value = attn.v_proj(x).view(b, n, heads, attn.head_dim).transpose(1, 2)
    q, key = k.rope_qk(q, key, rope[0], rope[1], heads)
    module = sys.modules[type(attn).__module__]  # the attention functions of the transformers in use
    interface = module.ALL_ATTENTION_FUNCTIONS.get_interface(attn.config._attn_implementation,
                                                             module.eager_attention_forward)
    out, _ = interface(attn, q, key, value, attention_mask=None, dropout=0.0, scaling=attn.scaling,
                       is_causal=attn.is_causal, **kwargs)
    return attn.o_proj(out.reshape(b, h, w, -1).contiguous())


def vit_layer(layer: nn.Module, hidden_states: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
              **kwargs: Any) -> torch.Tensor:
    """``Sam3ViTLayer.forward`` (eval) on the fused kernels; ``rope``: the layer's (cos, sin) tables."""
    k = _kernels(hidden_states)
    ws = layer.window_size
    tokens = ws * ws if ws > 0 else hidden_states.shape[1] * hidden_states.shape[2]
    if k is None or rope is None or rope[0].shape[-2] != tokens or not hidden_states.is_contiguous():
        return type(layer).forward(layer, hidden_states, **kwargs)
    residual = hidden_states
    x = layer.layer_norm1(hidden_states)
    dtype = _projection_dtype(x)
    x = k.window_partition(x.contiguous(), ws, dtype)[0] if ws > 0 else x.to(dtype)
    x = _attention(k, layer.attention, x, rope, **kwargs)
    hidden_states = k.merge_add(residual, x.contiguous(), ws) if ws > 0 else residual + x
    residual = hidden_states
    x = layer.mlp(layer.layer_norm2(hidden_states))
    return residual + layer.dropout(x)


def _rope(layer: nn.Module, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's rotary (cos, sin), exactly as its forward computes them each call."""
    with torch.inference_mode():
        cos, sin = layer.rotary_emb(torch.empty(0, device=device), layer.position_ids)
    return cos.contiguous(), sin.contiguous()


class FusedBackbone:
    """``with FusedBackbone(tracker, enabled):`` the vision backbone's ViT layers run ``vit_layer``.

    ``active`` says, before the block, whether they will (enabled, kernels available, layers found); the
    class forwards are back when the block ends, however it ends.
    """

    def __init__(self, tracker: Any, enabled: bool, dtype: torch.dtype | None = None):
        self.layers = [m for m in tracker.modules() if layer_applies(m)] if enabled else []
        params = next(tracker.parameters(), None)
        self.device = params.device if params is not None else torch.device("cpu")
        dtype = dtype or (params.dtype if params is not None else torch.float32)  # what the layers compute in
        self.active = bool(self.layers) and kernels_available(
            self.device, dtype, sys.modules[type(self.layers[0].attention).__module__])
        self.undo = contextlib.ExitStack()

    def __enter__(self) -> "FusedBackbone":
        if not self.active:
            return self
        for layer in self.layers:
            layer.forward = functools.partial(vit_layer, layer, rope=_rope(layer, self.device))
            self.undo.callback(layer.__dict__.pop, "forward", None)
        return self

    def __exit__(self, *exc: object) -> None:
        self.undo.close()
