"""SAM-3 tracking replayed as CUDA graphs: a speed-up only, same kernels, same results.

One tracked frame is about 3,000 kernel launches issued from Python: ~2,300 in the vision
backbone (32 ViT layers, the FPN neck), ~700 in the memory attention and mask decoder. On a fast
GPU the host issues them more slowly than the device runs them, so tracking waits on the CPU.
The backbone is captured once per propagation for its fixed input shape ([1, 3, S, S] after the
processor) and its features are handed to the tracker through the session's own cache; the
memory attention + mask decoder (``tracker_step.decode_group``, a pure function of its tensors)
is captured per input shape once that shape keeps coming back, i.e. once the memory bank is full
(docs/ARCHITECTURE.md, "exact speed-ups"). Captures run in thread-local mode, so the frame
prefetch thread may pin memory meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from typing import Any, Callable, Iterator

import torch

from .tracker_step import Decoded, decode_group

log = logging.getLogger(__name__)

Features = dict[str, list[torch.Tensor]]  # the tracker's cache entry: vision_feats, vision_pos_embeds


class CapturedCall:
    """``fn(*inputs)`` captured once as a CUDA graph on static copies of ``inputs``.

    ``replay(*values)`` copies new values into the static inputs and replays; ``outputs`` then holds the
    results, which the next replay overwrites (callers hand out clones). The warm-up runs first on a side
    stream, the capture under the caller's autocast without its cast cache.
    """

    def __init__(self, fn: Callable[..., Any], inputs: list[torch.Tensor], warmup: int):
        self.inputs = [t.detach().clone() for t in inputs]
        self.device = self.inputs[0].device
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.device(self.device):  # the model's GPU, whichever is current
            _warm_up(self.device, lambda: fn(*self.inputs), warmup)
            with _capture_autocast(), torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
                self.outputs = fn(*self.inputs)

    def replay(self, *values: torch.Tensor) -> None:
        for static, t in zip(self.inputs, values):
            static.copy_(t)
        with torch.cuda.device(self.device):
            self.graph.replay()


class BackboneGraph(CapturedCall):
    """``get_image_features`` of one [1, 3, S, S] frame captured as a CUDA graph; call it per frame.

    Each call returns clones of the graph's outputs, shaped and strided as the eager call returns them.
    """

    def __init__(self, model: Any, example: torch.Tensor, warmup: int = 2):
        frame = example.reshape(1, *example.shape[-3:])
        super().__init__(lambda x: model.get_image_features(x, return_dict=True), [frame], warmup)
        self.feats = list(self.outputs.fpn_hidden_states)
        self.pos = list(self.outputs.fpn_position_encoding)

    def __call__(self, pixels: torch.Tensor) -> Features:
        self.replay(pixels.reshape(self.inputs[0].shape))
        return {"vision_feats": [f.clone() for f in self.feats],
                "vision_pos_embeds": [p.clone() for p in self.pos]}


def _warm_up(device: torch.device, run: Callable[[], Any], times: int) -> None:
    """Run ``run`` on a side stream first: lazy initialisation (cuBLAS handles, cached embeddings) stays out of
    the capture."""
    side = torch.cuda.Stream(device=device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(times):
            run()
    torch.cuda.current_stream(device).wait_stream(side)


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


class DecodeGraph(CapturedCall):
    """``decode_group`` captured for one set of input shapes; call it with tensors of those shapes."""

    def __init__(self, model: Any, feats: list[torch.Tensor], pos: list[torch.Tensor], memory: torch.Tensor,
                 memory_pos: torch.Tensor, n_ptr: int):
        nf, npos = len(feats), len(pos)

        def run(*x: torch.Tensor) -> Decoded:
            return decode_group(model, list(x[:nf]), list(x[nf:nf + npos]), x[-2], x[-1], n_ptr)

        super().__init__(run, [*feats, *pos, memory, memory_pos], 1)

    def __call__(self, feats: list[torch.Tensor], pos: list[torch.Tensor], memory: torch.Tensor,
                 memory_pos: torch.Tensor) -> Decoded:
        self.replay(*feats, *pos, memory, memory_pos)
        return tuple(t.clone() for t in self.outputs)  # type: ignore[return-value]


def _key(feats: list[torch.Tensor], pos: list[torch.Tensor], memory: torch.Tensor, memory_pos: torch.Tensor,
         n_ptr: int) -> tuple:
    """Everything a captured decode depends on besides tensor values: shapes, strides, dtypes, pointer count."""
    return (n_ptr, *((tuple(t.shape), t.stride(), t.dtype) for t in (*feats, *pos, memory, memory_pos)))


class GraphedDecoder:
    """A ``tracker_step`` decoder: ``decode_group`` eagerly for a shape's first use, then from its captured graph.

    The memory bank grows over a pass's first frames (one shape per frame, so each such shape comes
    once per pass, and a clip has at most two passes), then keeps one shape: capturing a shape on its
    third use skips the growing phase of both passes. At most ``keep`` graphs are held
    (their memory pools stay allocated while held). A failed capture turns the graphs off for the
    rest of the propagation; the eager decode gives the same results.
    """

    EAGER_USES = 2  # uses of a shape before it is captured

    def __init__(self, enabled: bool, keep: int = 2):
        self.enabled = enabled
        self.keep = keep
        self.uses: dict[tuple, int] = {}
        self.graphs: OrderedDict[tuple, DecodeGraph] = OrderedDict()

    def __call__(self, model: Any, feats: list[torch.Tensor], pos: list[torch.Tensor], memory: torch.Tensor,
                 memory_pos: torch.Tensor, n_ptr: int) -> Decoded:
        if not (self.enabled and memory.is_cuda):
            return decode_group(model, feats, pos, memory, memory_pos, n_ptr)
        key = _key(feats, pos, memory, memory_pos, n_ptr)
        graph = self.graphs.get(key)
        if graph is None:
            self.uses[key] = self.uses.get(key, 0) + 1
            if self.uses[key] <= self.EAGER_USES:
                return decode_group(model, feats, pos, memory, memory_pos, n_ptr)
            graph = self._capture(key, model, feats, pos, memory, memory_pos, n_ptr)
            if graph is None:
                return decode_group(model, feats, pos, memory, memory_pos, n_ptr)
        self.graphs.move_to_end(key)
        return graph(feats, pos, memory, memory_pos)

    def _capture(self, key: tuple, model: Any, *args: Any) -> DecodeGraph | None:
        try:
            graph = DecodeGraph(model, *args)
        except Exception as err:  # noqa: BLE001 - any capture failure falls back to the eager decode
            log.warning("SAM-3 decoder CUDA graph not used (%s: %s); running it eagerly", type(err).__name__, err)
            self.close()
            self.enabled = False
            return None
        self.graphs[key] = graph
        while len(self.graphs) > self.keep:
            self.graphs.popitem(last=False)
        return graph

    def close(self) -> None:
        """Free the graphs and their memory pools."""
        self.graphs.clear()
