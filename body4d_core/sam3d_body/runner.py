"""How a SAM-3D-Body network is run: compiled graphs, padded batch buckets, OOM retry, compile cache.

The networks (``vit``, ``layers``) are plain modules. A ``BodyRunner`` holds the compile policy
and the compiled call functions, and for the duration of a job substitutes stand-in modules that
call them: a ``CompiledBlocks`` stack for the ViT blocks (one graph serves every block; batches
run in chunks padded to the bucket, which follows the batch size of each attempt, so an
out-of-memory halving also halves the bucket) and ``CompiledLayer`` wrappers for the decoder
layers. While a runner compiles, inductor's on-disk caches (FX graph / AOT autograd) are pointed
at a persistent folder, so a second process reuses the first one's compiled kernels.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import torch
import torch.nn as nn

from ..compile_cache import compile_cache, compile_call, default_cache_dir
from ..runtime import NULL_HOOKS, Hooks, is_oom, run_with_oom_retry
from .layers import run_layer

log = logging.getLogger(__name__)
T = TypeVar("T")

# compile='auto': person crops from which torch.compile wins back its own first-call time within one
# job (break-even points measured by bench/bench_body_coldstart.py; figures in BENCHMARKS.md).
AUTO_COMPILE_MIN_CROPS = {"body": 15000, "full": 4000}
SDPA_BACKENDS = {"flash": "FLASH_ATTENTION", "cudnn": "CUDNN_ATTENTION", "efficient": "EFFICIENT_ATTENTION",
                 "math": "MATH"}


# ------------------------------------------------------------------ torch.compile helpers


def _sdpa_only(name: str) -> contextlib.AbstractContextManager:
    """Context allowing only one SDPA kernel ('' = no restriction)."""
    if not name:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([getattr(SDPBackend, SDPA_BACKENDS[name])])


def _check_sdpa(sdpa: str) -> None:
    if sdpa and sdpa not in SDPA_BACKENDS:
        raise ValueError(f"sdpa must be '' or one of {sorted(SDPA_BACKENDS)}, got {sdpa!r}")


# ------------------------------------------------------------------ stand-in modules


def run_block(blk: nn.Module, x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """One ViT block call as a free function, so one compiled graph serves every (identical) block."""
    return blk(x, (sin, cos))


class CompiledBlocks(nn.ModuleList):
    """Stands in for a ViT's ``vit.BlockStack`` (same blocks, same ``blocks.N`` names): runs them through one
    compiled call function, in chunks of exactly ``bucket`` token rows (the last padded), so a partial
    batch reuses the graph."""

    def __init__(self, plain: nn.ModuleList, fn: Callable[..., torch.Tensor], compiled: str, bucket: int = 0,
                 sdpa: str = "") -> None:
        super().__init__(list(plain))
        self.__dict__["plain"] = plain
        self.fn, self.compiled, self.bucket, self.sdpa = fn, compiled, int(bucket), sdpa

    def forward(self, tokens: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        b, n = tokens.shape[0], self.bucket
        if not self.compiled or n <= 0 or b == n:
            return self._run(tokens, rope)
        outs = []
        for i in range(0, b, n):
            chunk = tokens[i:i + n]
            k = chunk.shape[0]
            if k < n:  # pad so a partial batch reuses the compiled graph instead of recompiling
                chunk = torch.cat([chunk, chunk.new_zeros((n - k,) + tuple(chunk.shape[1:]))])
            outs.append(self._run(chunk, rope)[:k].clone())  # clone: CUDA graphs reuse their output buffers
        return torch.cat(outs)

    def _run(self, tokens: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """All blocks; a compiled call that fails (no compiler, triton) is dropped and the pass rerun eager."""
        if self.compiled:
            try:
                if self.compiled.endswith("reduce-overhead"):  # CUDA graphs: a new pass may reuse the last's buffers
                    torch.compiler.cudagraph_mark_step_begin()
                with _sdpa_only(self.sdpa):
                    return self._blocks(self.fn, tokens, rope)
            except Exception as err:  # noqa: BLE001 - compile failures fall back; OOM is the caller's
                if is_oom(err):
                    raise
                log.warning("compiled ViT blocks failed (%s: %s); falling back to eager", type(err).__name__, err)
                self.fn, self.compiled, self.sdpa = run_block, "", ""
        return self._blocks(run_block, tokens, rope)

    def _blocks(self, fn: Callable[..., torch.Tensor], tokens: torch.Tensor,
                rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        for blk in self:
            tokens = fn(blk, tokens, *rope)
        return tokens


def mark_dynamic_sizes(tokens: torch.Tensor, ctx: torch.Tensor, tok_pe: torch.Tensor, ctx_pe: torch.Tensor) -> None:
    """Let a compiled layer call treat the crop batch and the token count as symbolic sizes.

    Body, hand and partial batches, and the prompt tokens the full-mode re-run adds, then share one
    graph per layer kind instead of recompiling each (a 90-frame clip hit torch's recompile limit).
    Tensors broadcast over the batch (dim 0 of 1) stay static; a batch of 1 is specialised by torch.
    """
    batch = tokens.shape[0]
    for t in (tokens, tok_pe):
        torch._dynamo.maybe_mark_dynamic(t, 1)
    if batch < 2:
        return
    for t in (tokens, ctx, tok_pe, ctx_pe):
        if t.shape[0] == batch:
            torch._dynamo.maybe_mark_dynamic(t, 0)


class CompiledLayer(nn.Module):
    """Stands in for a decoder layer: calls it through a compiled ``run_layer`` (sizes marked dynamic)."""

    def __init__(self, layer: nn.Module, fn: Callable[..., torch.Tensor], dynamic: bool) -> None:
        super().__init__()
        self.layer, self.fn, self.dynamic = layer, fn, dynamic

    def forward(self, x: torch.Tensor, ctx_hat: torch.Tensor, x_pe: torch.Tensor, ctx_pe: torch.Tensor) -> torch.Tensor:
        if self.dynamic:
            mark_dynamic_sizes(x, ctx_hat, x_pe, ctx_pe)
        return self.fn(self.layer, x, ctx_hat, x_pe, ctx_pe)


def plain_blocks(vit: nn.Module) -> nn.ModuleList:
    """The ViT's own block stack (under a compiled stand-in, if one is in place)."""
    return vit.blocks.__dict__.get("plain", vit.blocks)


def compile_blocks(vit: nn.Module, mode: str = "default", backend: Any = "inductor", bucket: int = 0,
                   sdpa: str = "", compiler: Callable[..., Callable] | None = None) -> bool:
    """Compile the block call once (dynamic=False) and put a ``CompiledBlocks`` stand-in in ``vit.blocks``:
    the identical blocks share one graph. sdpa: '' or one of SDPA_BACKENDS; the graph is traced with only
    that attention kernel allowed (chosen at trace time, so baked into the graph). Returns False (and stays
    eager, with a log line) where compile is unavailable. Undone by ``uncompile_blocks``.
    """
    _check_sdpa(sdpa)
    fn = (compiler or compile_call)(run_block, vit.cls_token.device, mode, backend, "ViT blocks stay eager")
    if fn is None:
        return False
    vit.blocks = CompiledBlocks(plain_blocks(vit), fn, f"{backend}:{mode}", bucket, sdpa)
    return True


def uncompile_blocks(vit: nn.Module) -> None:
    """Back to the ViT's own (eager) block stack."""
    vit.blocks = plain_blocks(vit)


# ------------------------------------------------------------------ persistent compile cache


# ------------------------------------------------------------------ the runner


@dataclass
class BodyRunner:
    """Compile policy and compiled call functions for a Sam3dBody, applied for the duration of a job.

    backbone / decoder: torch.compile mode of the ViT blocks / the decoder layers ('' = eager).
    bucket: compiled backbone: run chunks of at most this many crops, padded (0 = no padding); each
    attempt uses min(bucket, its batch size), so after an OOM halving the chunks shrink with the batch.
    sdpa: attention kernel baked into the compiled backbone ('' = torch's choice; see SDPA_BACKENDS).
    decoder_dynamic: the compiled decoder layers take any batch size in one graph; False = one static
    graph per batch size. cache_dir: persistent compile cache ('' = ``default_cache_dir()``, None = torch's
    own). compiler: ``compile_call``'s signature (tests substitute a recording one).
    """

    backbone: str = ""
    decoder: str = ""
    bucket: int = 0
    backend: Any = "inductor"
    sdpa: str = ""
    decoder_dynamic: bool = True
    cache_dir: str | os.PathLike | None = ""
    compiler: Callable[..., Callable | None] = compile_call
    block_fn: Callable[..., torch.Tensor] | None = field(default=None, repr=False)
    layer_fn: Callable[..., torch.Tensor] | None = field(default=None, repr=False)
    device: torch.device | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        _check_sdpa(self.sdpa)

    # ---------------------------------------------------------------- policy

    def prepared(self, device: torch.device) -> "BodyRunner":
        """Make the compiled call functions for ``device`` (cheap: torch compiles on the first call); a mode
        that cannot compile there is logged and dropped (see ``in_effect``)."""
        if self.device == device:
            return self
        self.device = device
        self.block_fn = self.compiler(run_block, device, self.backbone, self.backend,
                                      "ViT blocks stay eager") if self.backbone else None
        self.layer_fn = self.compiler(run_layer, device, self.decoder, self.backend, "decoder stays eager",
                                      dynamic=None if self.decoder_dynamic else False) if self.decoder else None
        return self

    def in_effect(self) -> dict[str, str]:
        """{'backbone': mode or '', 'decoder': mode or ''} as they will run."""
        return {"backbone": self.backbone if self.block_fn is not None else "",
                "decoder": self.decoder if self.layer_fn is not None else ""}

    @property
    def compiled_for(self) -> tuple[str, int]:
        """(mode, bucket) where both networks compile in one default way (what ``compile_for`` compares),
        ('', 0) eager, ('custom', -1) for anything else."""
        if not self.backbone and not self.decoder:
            return "", 0
        plain = self.backbone == self.decoder and self.backend == "inductor" and not self.sdpa and self.decoder_dynamic
        return (self.backbone, self.bucket) if plain else ("custom", -1)

    def auto_mode(self, batch_size: int, crops: int | None, body_mode: str) -> str:
        """'default' where compiling pays for this job (already compiled for this batch size, or enough
        crops: ``AUTO_COMPILE_MIN_CROPS``), else ''."""
        if self.compiled_for == ("default", batch_size):
            return "default"
        need = AUTO_COMPILE_MIN_CROPS.get(body_mode, AUTO_COMPILE_MIN_CROPS["body"])
        if crops is None or crops >= need:
            return "default"
        log.info("SAM 3D Body: %d crops in %s mode run eager (compiling pays from ~%d crops; compile=always "
                 "forces it)", crops, body_mode, need)
        return ""

    def for_job(self, mode: str, batch_size: int, device: torch.device, crops: int | None = None,
                body_mode: str = "body") -> "BodyRunner":
        """The runner for a job: this one when it already runs ``mode`` at ``batch_size``, else a new one.

        ``mode`` '' (or a device other than CUDA) = eager; 'auto' = compile only where it pays (see
        ``auto_mode``); another mode compiles backbone blocks and decoder layers, bucket = batch_size.
        """
        on_cuda = device.type == "cuda"
        if mode == "auto":
            mode = self.auto_mode(int(batch_size), crops, body_mode) if on_cuda else ""
        want = (mode, int(batch_size)) if mode and on_cuda else ("", 0)
        if self.compiled_for == want:
            return self
        return BodyRunner(want[0], want[0], bucket=want[1], cache_dir=self.cache_dir, compiler=self.compiler)

    # ---------------------------------------------------------------- running

    def chunk_size(self, batch: int) -> int:
        """The compiled backbone's padded chunk for an attempt of ``batch`` crops (0 = unpadded)."""
        return min(self.bucket, batch) if self.bucket > 0 else 0

    def run(self, model: nn.Module, fn: Callable[[int, int], T], n_items: int, batch_size: int,
            hooks: Hooks = NULL_HOOKS) -> list[T]:
        """fn(start, stop) over [0, n_items) in batches with this runner's modules in ``model``, halving the
        batch (and the backbone's bucket with it) on out-of-memory; per-batch results in order."""
        with self.applied(model) as stack:
            def size_bucket(bs: int) -> None:  # the bucket follows the batch in force, also after a halving
                if stack is not None:
                    stack.bucket = self.chunk_size(bs)

            return run_with_oom_retry(fn, n_items, int(batch_size), hooks, before_batch=size_bucket)

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[CompiledBlocks | None]:
        """The compiled stand-ins in ``model`` (backbone blocks, decoder layers) inside the block, the plain
        modules back afterwards; yields the compiled block stack (None when the backbone runs eager)."""
        self.prepared(next(model.parameters()).device)
        enc = model.backbone.encoder
        stack = None
        decoders = [m for m in (getattr(model, "decoder", None), getattr(model, "decoder_hand", None)) if m is not None]
        saved = [(dec, [m.layer if isinstance(m, CompiledLayer) else m for m in dec.layers])
                 for dec in decoders] if self.layer_fn is not None else []
        if self.block_fn is not None:
            stack = CompiledBlocks(plain_blocks(enc), self.block_fn, f"{self.backend}:{self.backbone}",
                                   self.bucket, self.sdpa)
            enc.blocks = stack
        for dec, layers in saved:
            for i, layer in enumerate(layers):
                dec.layers[i] = CompiledLayer(layer, self.layer_fn, self.decoder_dynamic)
        try:
            with compile_cache(self._cache_folder()):
                yield stack
        finally:
            if stack is not None:
                enc.blocks = stack.plain
                if not stack.compiled:  # it fell back to eager: do not compile again
                    self.block_fn = None
            for dec, layers in saved:
                for i, layer in enumerate(layers):
                    dec.layers[i] = layer

    def _cache_folder(self) -> Path | None:
        if self.block_fn is None and self.layer_fn is None or self.backend != "inductor":
            return None  # nothing of inductor's runs: leave its setting alone
        return default_cache_dir() if self.cache_dir == "" else (Path(self.cache_dir) if self.cache_dir else None)

    def with_options(self, **changes: Any) -> "BodyRunner":
        """A copy with other policy fields (compiled functions made anew)."""
        return replace(self, block_fn=None, layer_fn=None, device=None, **changes)
