"""SAM-3's vision backbone replayed as one CUDA graph: a speed-up only, same kernels, same features.

One frame through the backbone is about 2,300 kernel launches issued from Python (32 ViT
layers, the FPN neck). On a fast GPU the host issues them more slowly than the device runs
them, so tracking waits on the CPU. Captured once per propagation for the fixed input shape
([1, 3, S, S] after the processor), each frame then costs one copy in and one graph launch.
The features are handed to the tracker through its own session cache, so the tracker code is
unchanged (docs/ARCHITECTURE.md, "exact speed-ups").
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable, Iterator

import torch

log = logging.getLogger(__name__)

Features = dict[str, list[torch.Tensor]]  # the tracker's cache entry: vision_feats, vision_pos_embeds


class BackboneGraph:
    """``get_image_features`` of one [1, 3, S, S] frame captured as a CUDA graph; call it per frame.

    Each call copies the frame into the graph's input, replays the graph and returns clones of its
    outputs (the next replay overwrites them), shaped and strided as the eager call returns them.
    """

    def __init__(self, model: Any, example: torch.Tensor, warmup: int = 2):
        device = example.device
        self.static_in = example.detach().reshape(1, *example.shape[-3:]).clone()
        side = torch.cuda.Stream(device=device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # lazy initialisation (cuBLAS handles, cached embeddings) outside the capture
            for _ in range(warmup):
                model.get_image_features(self.static_in, return_dict=True)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with _capture_autocast(), torch.cuda.graph(self.graph):
            out = model.get_image_features(self.static_in, return_dict=True)
        self.feats = list(out.fpn_hidden_states)
        self.pos = list(out.fpn_position_encoding)

    def __call__(self, pixels: torch.Tensor) -> Features:
        self.static_in.copy_(pixels.reshape(self.static_in.shape))
        self.graph.replay()
        return {"vision_feats": [f.clone() for f in self.feats],
                "vision_pos_embeds": [p.clone() for p in self.pos]}


@contextlib.contextmanager
def _capture_autocast() -> Iterator[None]:
    """The caller's autocast, with its cast cache off (a cache filled inside a capture is not allowed)."""
    if not torch.is_autocast_enabled("cuda"):
        yield
        return
    with torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), cache_enabled=False):
        yield


def capture_backbone(model: Any, example: torch.Tensor) -> Callable[[torch.Tensor], Features] | None:
    """A graphed backbone for frames shaped like ``example`` on CUDA, else None (eager is used).

    A capture that fails (an op the graph cannot hold) is logged once and the eager path runs:
    the masks are the same either way.
    """
    if example.device.type != "cuda":
        return None
    try:
        return BackboneGraph(model, example)
    except Exception as err:  # noqa: BLE001 - any capture failure falls back to the eager backbone
        log.warning("SAM-3 backbone CUDA graph not used (%s: %s); running it eagerly", type(err).__name__, err)
        return None


class GraphedFeatures:
    """Per frame, the backbone's features put in the tracker session's cache, where the tracker looks first.

    Captures the graph on the first frame it is given (when ``enabled``); without a graph (off, on
    the CPU, or a failed capture) it does nothing and the tracker runs its backbone itself.
    """

    def __init__(self, model: Any, enabled: bool):
        self.model = model
        self.pending = enabled  # capture still to try
        self.backbone: Callable[[torch.Tensor], Features] | None = None

    def __call__(self, session: Any, frame: int, pixels: torch.Tensor) -> None:
        if self.pending:
            self.pending = False
            self.backbone = capture_backbone(self.model, pixels)
        if self.backbone is None or session.cache.get_vision_features(frame) is not None:
            return
        session.cache.cache_vision_features(frame, self.backbone(pixels))

    def close(self) -> None:
        """Free the graph and its memory pool."""
        self.backbone = None
