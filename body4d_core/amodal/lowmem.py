"""Low-memory sampling modes of Diffusion-VAS, chosen by the memory plan (not user flags); same numbers.

The options of ``LowMemory`` (memory_plan.py combines them cheapest first):

- ``sequential_cfg``: classifier-free guidance runs the unconditional and conditional halves as two
  UNet calls of B videos instead of one batch of 2B (the rows are independent: equal up to GEMM
  batch rounding). Halves the UNet's activations.
- ``frame_chunk``: the UNet's and the VAE decoder's per-frame work runs over ``frame_chunk`` frames at
  a time: the spatial resnets (GroupNorm per frame), the spatial transformer blocks (attention within
  a frame), the 2-D upsamplers; the temporal transformer blocks run over slices of spatial positions
  (attention over frames per position). All exact: only independent rows are split. The temporal
  resnets are not split (their GroupNorm spans all frames and positions). The feed-forward layers
  inside see only a chunk's rows. The spatial/temporal blends (``AlphaBlender``,
  ``a * spatial + (1 - a) * temporal``) are written into the temporal input slice by slice instead of
  into two new full-size products and their sum: the same elementwise operations on the same values
  (bit-identical); the temporal input is the block's own fresh output, which nothing reads afterwards.
  The fused-kernel block forwards (``fused_blocks``) are suspended while chunking, so this measured path runs.
- ``encode_frames``: frames per VAE encode call (the encoder is per-frame 2-D: exact).
- ``per_network``: UNet, VAE and CLIP encoder stay on the CPU and each moves to the GPU only for its
  own part of a batch (the plan's per-pass offload keeps the whole pipeline there between passes).
- ``depth_frames``: frames per Depth Anything call (0 = the estimator's own batch); its DPT head upsamples
  every frame of a call at once, which a 16-frame batch of 720p frames does not fit under a 12 GB cap.
  Frames are independent: equal up to GEMM batch rounding.
- ``stream_unet``: besides, the UNet's down/mid/up blocks are on the GPU one at a time during a call
  (weights copied in from pinned host memory, dropped after): the UNet's weights on the GPU shrink to
  its largest block, at the price of copying all of them once per UNet call.
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

_TAG = "_body4d_lowmem"


@dataclass(frozen=True)
class LowMemory:
    """How the sampler saves memory (all off = the default path, unchanged)."""

    sequential_cfg: bool = False
    frame_chunk: int = 0  # frames per call of the per-frame blocks (0 = all at once)
    encode_frames: int = 0  # frames per VAE encode call (0 = the AccelConfig's)
    per_network: bool = False  # UNet / VAE / CLIP on the GPU only for their own part
    stream_unet: bool = False  # with per_network: the UNet's large blocks on the GPU one at a time
    depth_frames: int = 0  # frames per depth-estimator call (0 = its own batch)

    def __post_init__(self) -> None:
        for name in ("frame_chunk", "encode_frames", "depth_frames"):
            if getattr(self, name) < 0:
                raise InputError(f"amodal low-memory {name} must be >= 0, got {getattr(self, name)}")
        if self.stream_unet and not self.per_network:
            raise InputError("amodal low-memory stream_unet needs per_network")

    @property
    def active(self) -> bool:
        return self != LowMemory()

    def describe(self) -> str:
        """What is on, as the plan prints it ('default' when nothing is)."""
        parts = [name for name, on in (("sequential CFG", self.sequential_cfg),
                                       (f"blocks over {self.frame_chunk}-frame chunks", self.frame_chunk),
                                       (f"VAE encode {self.encode_frames} frame(s) a call", self.encode_frames),
                                       ("networks on the GPU one at a time", self.per_network),
                                       ("UNet blocks streamed to the GPU", self.stream_unet),
                                       (f"depth {self.depth_frames} frame(s) a call", self.depth_frames)) if on]
        return ", ".join(parts) or "default"


SEQUENTIAL = LowMemory(sequential_cfg=True)


def chunked_mode(frame_chunk: int = 8, per_network: bool = False, stream_unet: bool = False) -> LowMemory:
    """Sequential CFG + per-frame blocks over ``frame_chunk`` frames + one-frame VAE encodes (+ placement)."""
    return LowMemory(sequential_cfg=True, frame_chunk=frame_chunk, encode_frames=1, per_network=per_network,
                     stream_unet=stream_unet)


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


def _blend_in_place(size: int, module: nn.Module, x_spatial: torch.Tensor, x_temporal: torch.Tensor,
                    image_only_indicator: torch.Tensor | None = None) -> torch.Tensor:
    """diffusers' AlphaBlender (``a * spatial + (1 - a) * temporal``) computed into ``x_temporal`` over slices of
    positions (bit-identical elementwise operations); falls back to the module where that is not safe."""
    alpha = module.get_alpha(image_only_indicator, x_spatial.ndim).to(x_spatial.dtype)
    if module.switch_spatial_to_temporal_mix:
        alpha = 1.0 - alpha
    if alpha.ndim < x_spatial.ndim:  # the fixed / learned strategies: one value
        alpha = alpha.reshape((1,) * (x_spatial.ndim - alpha.ndim) + tuple(alpha.shape))
    beta = 1.0 - alpha
    dim = 3 if x_spatial.ndim == 5 else 1  # [B, C, T, H, W]: rows of H; [B*T, S, C]: positions
    safe = (x_temporal.shape == x_spatial.shape and x_temporal.is_contiguous() and x_temporal.ndim in (3, 5)
            and torch.result_type(alpha, x_spatial) == x_temporal.dtype == x_spatial.dtype
            and not torch._C._is_alias_of(x_temporal, x_spatial) and alpha.ndim == x_spatial.ndim
            and alpha.shape[dim] == 1)
    if not safe:
        return type(module).forward(module, x_spatial, x_temporal, image_only_indicator)
    frames = x_spatial.shape[0] * (x_spatial.shape[2] if x_spatial.ndim == 5 else 1)
    n = x_spatial.shape[dim]
    step = -(-n // max(1, -(-frames // size)))
    for s in _chunks(n, step):
        seg = x_temporal.narrow(dim, s.start, s.stop - s.start)
        seg.mul_(beta).add_(alpha * x_spatial.narrow(dim, s.start, s.stop - s.start))
    return x_temporal


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


def _suspend_fused(modules: list[nn.Module]) -> list[tuple[nn.Module, Callable]]:
    """Take the fused-kernel block forwards (``fused_blocks.FORWARDS``) off ``modules`` and return them: they
    run whole tensors past the chunked parts, so the measured low-memory path runs diffusers' blocks instead."""
    from .fused_blocks import FORWARDS

    out = []
    for root in modules:
        for m in root.modules():
            fwd = m.__dict__.get("forward")
            if getattr(fwd, "func", None) in FORWARDS:
                out.append((m, m.__dict__.pop("forward")))
    return out


@contextlib.contextmanager
def chunked(modules: list[nn.Module], mem: LowMemory) -> Iterator[int]:
    """Inside, the per-frame and per-position blocks of ``modules`` run in chunks as ``mem`` says; yields how
    many blocks were routed (0 when ``mem.frame_chunk`` is 0). The fused-kernel forwards are suspended meanwhile
    (``_suspend_fused``). The forwards are restored on exit."""
    if not mem.frame_chunk:
        yield 0
        return
    n = 0
    suspended = _suspend_fused(modules)
    try:
        for root in modules:
            spatial = {id(m) for m in _spatial_parts(root)}
            n += _route(root, lambda m, s=spatial: id(m) in s, _rows_chunked, mem.frame_chunk)
            n += _route(root, _named("Upsample2D"), _rows_chunked, mem.frame_chunk)
            n += _route(root, _named("TemporalBasicTransformerBlock"), _positions_chunked, mem.frame_chunk)
            n += _route(root, _named("AlphaBlender"), _blend_in_place, mem.frame_chunk)
        yield n
    finally:
        for root in modules:
            _unroute(root)
        for m, fwd in suspended:
            m.forward = fwd


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """One weight's device copy (a function of its own so tests can see every copy)."""
    return t.to(device, non_blocking=True)


def _block_tensors(block: nn.Module) -> list[torch.Tensor]:
    return [*block.parameters(), *block.buffers()]


@contextlib.contextmanager
def streamed(unet: nn.Module, device: torch.device) -> Iterator[int]:
    """Inside, the UNet's small parts are on ``device`` and each of its down/mid/up blocks only during its own
    forward (host copies pinned once, kept; the device copies dropped after each block). Yields the blocks."""
    blocks = [*unet.down_blocks, unet.mid_block, *unet.up_blocks]
    inside = {id(t) for b in blocks for t in _block_tensors(b)}
    small = [t for t in [*unet.parameters(), *unet.buffers()] if id(t) not in inside]
    host = {id(t): t.data for t in [*unet.parameters(), *unet.buffers()]}
    if device.type == "cuda" and not getattr(unet, "_body4d_pinned", False):  # once: later copies are async
        for t in [*unet.parameters(), *unet.buffers()]:
            if t.device.type == "cpu":
                t.data = host[id(t)] = t.data.pin_memory()
        unet._body4d_pinned = True

    def swap_in(block: nn.Module, *_: object) -> None:
        for t in _block_tensors(block):
            t.data = _to_device(host[id(t)], device)

    def swap_out(block: nn.Module, *_: object) -> None:
        for t in _block_tensors(block):
            t.data = host[id(t)]

    hooks = [h for b in blocks for h in (b.register_forward_pre_hook(swap_in), b.register_forward_hook(swap_out))]
    for t in small:
        t.data = _to_device(host[id(t)], device)
    try:
        yield len(blocks)
    finally:
        for h in hooks:
            h.remove()
        for b in blocks:
            swap_out(b)
        for t in small:
            t.data = host[id(t)]
        if device.type == "cuda":
            torch.cuda.empty_cache()


@contextlib.contextmanager
def unet_placed(unet: nn.Module, device: torch.device, mem: LowMemory) -> Iterator[None]:
    """The UNet on ``device`` as ``mem`` says: streamed block by block, moved for the pass, or as it is."""
    if mem.stream_unet:
        with streamed(unet, device):
            yield
    else:
        with placed(unet, device, mem.per_network):
            yield


@contextlib.contextmanager
def placed(module: nn.Module, device: torch.device, on: bool) -> Iterator[None]:
    """``on``: ``module``'s weights on ``device`` inside (copies of the host tensors, which stay as they are, so
    nothing is copied back), the host tensors again after and the device copies freed; else nothing."""
    if not on:
        yield
        return
    tensors = [*module.parameters(), *module.buffers()]
    host = [t.data for t in tensors]
    for t, h in zip(tensors, host):
        t.data = _to_device(h, device)
    try:
        yield
    finally:
        for t, h in zip(tensors, host):
            t.data = h
        if device.type == "cuda":
            torch.cuda.empty_cache()
