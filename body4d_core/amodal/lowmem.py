"""Low-memory sampling modes of Diffusion-VAS, chosen by the memory plan (not user flags); same numbers.

Cheapest first (``MODES``; each adds to the one before):

- ``sequential_cfg``: classifier-free guidance runs the unconditional and conditional halves as two
  UNet calls of B videos instead of one batch of 2B (the rows are independent: equal up to GEMM
  batch rounding). Halves the UNet's activations.
- ``chunked``: the UNet's and the VAE decoder's per-frame work runs over ``frame_chunk`` frames at a
  time: the spatial resnets (GroupNorm per frame), the spatial transformer blocks (attention within
  a frame), the 2-D upsamplers; the temporal transformer blocks run over slices of spatial positions
  (attention over frames per position). All exact: only independent rows are split. The temporal
  resnets are not split (their GroupNorm spans all frames and positions). The feed-forward layers
  inside see only a chunk's rows, and the VAE encoder takes ``encode_frames`` frames a call (exact).
- ``per_network``: UNet, VAE and CLIP encoder stay on the CPU and each moves to the GPU only for its
  own part of a batch (with the plan's per-pass offload: one network's weights on the GPU at a time).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from ..errors import InputError

log = logging.getLogger(__name__)

MODES = ("default", "sequential_cfg", "chunked", "per_network")
_TAG = "_body4d_lowmem"


@dataclass(frozen=True)
class LowMemory:
    """How the sampler saves memory (all off = the default path, unchanged)."""

    sequential_cfg: bool = False
    frame_chunk: int = 0  # frames per call of the per-frame blocks (0 = all at once)
    encode_frames: int = 0  # frames per VAE encode call (0 = the AccelConfig's)
    per_network: bool = False  # UNet / VAE / CLIP on the GPU only for their own part

    def __post_init__(self) -> None:
        for name in ("frame_chunk", "encode_frames"):
            if getattr(self, name) < 0:
                raise InputError(f"amodal low-memory {name} must be >= 0, got {getattr(self, name)}")

    @property
    def active(self) -> bool:
        return self != LowMemory()

    def describe(self) -> str:
        """The mode's name as the plan prints it."""
        return mode_name(self)


def low_memory_mode(name: str, frame_chunk: int = 8) -> LowMemory:
    """The ``LowMemory`` of a mode in ``MODES`` (each includes the cheaper ones)."""
    if name not in MODES:
        raise InputError(f"amodal low-memory mode must be one of {', '.join(MODES)}, got {name!r}")
    level = MODES.index(name)
    if level == 0:
        return LowMemory()
    chunk = dict(frame_chunk=frame_chunk, encode_frames=1) if level >= 2 else {}
    return LowMemory(sequential_cfg=True, per_network=level >= 3, **chunk)


def mode_name(mem: LowMemory) -> str:
    """The name of the cheapest mode in ``MODES`` that ``mem`` is (or 'custom')."""
    for name in MODES:
        if low_memory_mode(name, mem.frame_chunk or 8) == mem:
            return name
    return "custom"


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(s, min(n, s + size)) for s in range(0, n, size)]


def _rows_chunked(size: int, module: nn.Module, hidden: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """``module`` over ``size`` rows (frames) of dim 0 at a time; per-row tensor arguments are split alike."""
    n = hidden.shape[0]
    if n <= size:
        return type(module).forward(module, hidden, *args, **kwargs)

    def part(x: object, s: slice) -> object:
        return x[s] if isinstance(x, torch.Tensor) and x.ndim and x.shape[0] == n else x

    outs = [type(module).forward(module, hidden[s], *(part(a, s) for a in args),
                                 **{k: part(v, s) for k, v in kwargs.items()}) for s in _chunks(n, size)]
    return torch.cat(outs)


def _positions_chunked(size: int, module: nn.Module, hidden: torch.Tensor, num_frames: int,
                       encoder_hidden_states: torch.Tensor | None = None) -> torch.Tensor:
    """A temporal transformer block ([B*T, S, C], attention over T per position) over slices of positions."""
    rows, seq = hidden.shape[:2]
    parts = max(1, -(-rows // size))
    if parts == 1 or seq == 1:
        return type(module).forward(module, hidden, num_frames, encoder_hidden_states)
    batch = rows // num_frames
    step = -(-seq // parts)
    outs = []
    for s in _chunks(seq, step):
        ctx = encoder_hidden_states
        if ctx is not None:  # [B*S, tokens, D], batch-major
            ctx = ctx.reshape(batch, seq, *ctx.shape[1:])[:, s].reshape(-1, *ctx.shape[1:])
        outs.append(type(module).forward(module, hidden[:, s], num_frames, ctx))
    return torch.cat(outs, dim=1)


def _route(module: nn.Module, pick: Callable[[nn.Module], bool], fn: Callable[..., torch.Tensor], *args) -> int:
    n = 0
    for m in module.modules():
        if pick(m) and "forward" not in m.__dict__:
            routed = lambda *a, _m=m, **k: fn(*args, _m, *a, **k)  # noqa: E731
            setattr(routed, _TAG, True)
            m.forward = routed
            n += 1
    return n


def _unroute(module: nn.Module) -> None:
    for m in module.modules():
        if getattr(m.__dict__.get("forward"), _TAG, False):
            del m.__dict__["forward"]


def _named(*names: str) -> Callable[[nn.Module], bool]:
    return lambda m: type(m).__name__ in names


def _spatial_parts(module: nn.Module) -> list[nn.Module]:
    """The per-frame halves of diffusers' spatio-temporal blocks (spatial resnets and transformer blocks)."""
    out: list[nn.Module] = []
    for m in module.modules():
        if type(m).__name__ == "SpatioTemporalResBlock":
            out.append(m.spatial_res_block)
        elif type(m).__name__ == "TransformerSpatioTemporalModel":
            out += list(m.transformer_blocks)
    return out


@contextlib.contextmanager
def chunked(modules: list[nn.Module], mem: LowMemory) -> Iterator[int]:
    """Inside, the per-frame and per-position blocks of ``modules`` run in chunks as ``mem`` says; yields how
    many blocks were routed (0 when ``mem.frame_chunk`` is 0). The forwards are restored on exit."""
    if not mem.frame_chunk:
        yield 0
        return
    n = 0
    try:
        for root in modules:
            spatial = {id(m) for m in _spatial_parts(root)}
            n += _route(root, lambda m, s=spatial: id(m) in s, _rows_chunked, mem.frame_chunk)
            n += _route(root, _named("Upsample2D"), _rows_chunked, mem.frame_chunk)
            n += _route(root, _named("TemporalBasicTransformerBlock"), _positions_chunked, mem.frame_chunk)
        yield n
    finally:
        for root in modules:
            _unroute(root)


@contextlib.contextmanager
def placed(module: nn.Module, device: torch.device, on: bool) -> Iterator[None]:
    """``on``: ``module`` on ``device`` inside, back on the CPU after (its cached memory freed); else nothing."""
    if not on:
        yield
        return
    module.to(device)
    try:
        yield
    finally:
        module.to("cpu")
        if device.type == "cuda":
            torch.cuda.empty_cache()
