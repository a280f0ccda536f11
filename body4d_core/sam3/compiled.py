"""SAM-3's vision backbone under torch.compile (opt-in: ``sam3_speed=compile``): faster, not bit-exact.

Once its launches are graphed, the backbone's GPU time is dominated by elementwise work (the fp32
rotary embeddings of 32 layers, casts, norms) that inductor fuses. Fused arithmetic rounds
differently, so masks may differ from the eager backbone's in a few pixels; the default stays
eager. The first use in a process compiles (tens of seconds); the kernels persist on disk in the
shared compile cache (``compile_cache.py``), so a later process mostly loads them. The compiled
module stands in for the backbone only while a propagation runs (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch

from ..compile_cache import compile_available, compile_cache, compile_call, default_cache_dir

log = logging.getLogger(__name__)


def _compilable(device: torch.device) -> bool:
    """Whether the backbone is compiled on this device: CUDA with inductor available."""
    if device.type != "cuda":
        return False
    why = compile_available(device)
    if why:
        log.warning("SAM-3 backbone runs eagerly: %s", why)
    return not why


class CompiledBackbone:
    """``with CompiledBackbone(tracker, enabled):`` the tracker's vision backbone is a compiled stand-in.

    ``active`` says, before the block, whether it will be (enabled, on CUDA, inductor present); the
    eager module is put back when the block ends, however it ends.
    """

    def __init__(self, tracker: Any, enabled: bool):
        self.encoder = tracker.vision_encoder
        device = next(tracker.parameters()).device
        self.active = bool(enabled) and _compilable(device)
        self.eager: Any = None  # the eager backbone while the compiled one stands in
        self.undo = contextlib.ExitStack()

    def __enter__(self) -> "CompiledBackbone":
        if not self.active:
            return self
        eager = self.encoder.backbone
        compiled = compile_call(eager, next(eager.parameters()).device, "default", "inductor", "SAM-3 backbone")
        if compiled is None:
            self.active = False
            return self
        self.undo.enter_context(compile_cache(default_cache_dir()))
        self.undo.callback(setattr, self.encoder, "backbone", eager)
        self.undo.callback(setattr, self, "eager", None)
        self.encoder.backbone, self.eager = compiled, eager
        return self

    def __exit__(self, *exc: object) -> None:
        self.undo.close()
