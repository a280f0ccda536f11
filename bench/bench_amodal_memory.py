"""Working memory of one Diffusion-VAS completion window per low-memory mode (amodal/lowmem.py).

Real-size random networks (body4d_core/testing/amodal.py ``real``), default speed options, bf16, one
video of ``--frames`` frames at ``--size`` (the completion resolution). Three parts are measured: one
UNet step (the CFG batch as the mode runs it), the VAE encode of the window's conditions, the VAE decode
of one ``decode_chunk_size`` chunk. Weights are not counted: only what the part allocates on top.

``--device meta`` (default, the CPU in seconds): every tensor is a shape without data; a dispatch mode
adds up the bytes of the storages alive at once (attention counted as a flash kernel: its output only).
That is the activation size, a lower bound of what the CUDA allocator reserves.
``--device cuda``: the same calls with real random weights, ``torch.cuda.max_memory_allocated`` above
the weights (the number memory_plan's estimates are calibrated against).

    python -m bench.bench_amodal_memory                       # CPU, meta tensors, seconds
    python -m bench.bench_amodal_memory --device cuda         # GPU, measured peaks and seconds (about a minute)

The rows are memory_plan.AMODAL_PARTS (meta figures); the CUDA figures check them.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import time
import weakref
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from body4d_core.amodal.lowmem import SEQUENTIAL, LowMemory, chunked, chunked_mode
from body4d_core.amodal.models import DEFAULT_ACCEL
from body4d_core.amodal.sampler import VASPipeline
from body4d_core.testing.amodal import build_vas_parts

from bench.rows import RowWriter, add_rows_args

log = logging.getLogger("bench_amodal_memory")
GIB = 2**30


class LiveBytes(TorchDispatchMode):
    """Bytes of the tensor storages created inside and still alive; ``peak`` = the most at once."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self.sizes: dict[int, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                key = id(st)
                if key not in self.sizes:  # views and in-place results share a storage: counted once
                    self.sizes[key] = st.nbytes()
                    self.live += st.nbytes()
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(st, self._free, key)
        return out

    def _free(self, key: int) -> None:
        self.live -= self.sizes.pop(key, 0)


@contextlib.contextmanager
def flash_attention_sizes() -> Iterator[None]:
    """Inside, scaled_dot_product_attention allocates only its output (as flash / memory-efficient kernels)."""
    real = F.scaled_dot_product_attention

    def sized(q, k, v, *args, **kwargs):
        return q.new_empty(*q.shape[:-1], v.shape[-1])

    F.scaled_dot_product_attention = sized
    try:
        yield
    finally:
        F.scaled_dot_product_attention = real


SECONDS: dict[str, float] = {}  # CUDA: seconds of the last call of each part (second of two calls)


def peak_gib(fn: Callable[[], object], device: torch.device, part: str = "") -> float:
    """GiB allocated by ``fn`` at its peak, above what was allocated before (CUDA: also its seconds)."""
    if device.type == "cuda":
        fn()  # warm-up: cuDNN algorithm choice and lazy inits out of the figure
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        SECONDS[part] = time.perf_counter() - t0
        return (torch.cuda.max_memory_allocated() - base) / GIB
    with flash_attention_sizes(), LiveBytes() as track:
        fn()
    return track.peak / GIB


def build(device: torch.device) -> VASPipeline:
    """Real-size random Diffusion-VAS in bf16 with the default speed options."""
    parts = build_vas_parts("real", seed=0, device=device)
    for k in ("unet", "vae", "image_encoder"):
        parts[k].to(device=device, dtype=torch.bfloat16)
    pipe = VASPipeline(parts["unet"], parts["vae"], parts["image_encoder"], parts["scheduler"], dtype=torch.bfloat16)
    return pipe.accelerate(DEFAULT_ACCEL)


def measure(pipe: VASPipeline, mem: LowMemory, frames: int, size: tuple[int, int], chunk: int,
            device: torch.device) -> dict[str, float]:
    """GiB of one UNet step, the window's VAE encode and one decode chunk under ``mem``."""
    h, w = size[0] // 8, size[1] // 8
    bf = torch.bfloat16
    inp = torch.zeros(2, frames, 12, h, w, device=device, dtype=bf)
    ctx = torch.zeros(2 * frames, 1, pipe.unet.config.cross_attention_dim, device=device, dtype=bf)
    ids = torch.zeros(2, 3, device=device, dtype=bf)
    t = torch.tensor(500.0, device=device)
    img = torch.zeros(frames, 3, *size, device=device)
    lat = torch.zeros(1, chunk, 4, h, w, device=device)
    halves = 2 if mem.sequential_cfg else 1
    out = {}
    with torch.no_grad():
        with chunked([pipe.unet], mem):
            out["unet"] = peak_gib(lambda: pipe._unet_cfg(inp, t, ctx, ids, halves), device, "unet")
        out["encode"] = peak_gib(lambda: pipe._encode(img, mem.encode_frames or None), device, "encode")
        with chunked([pipe.vae.decoder], mem):
            out["decode"] = peak_gib(lambda: pipe._decode(lat, chunk), device, "decode")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="meta", choices=("meta", "cuda"))
    ap.add_argument("--frames", type=int, default=64, help="window length (default 64)")
    ap.add_argument("--size", default="512x1024", help="HxW of the completion resolution")
    ap.add_argument("--decode-chunk", type=int, default=8)
    ap.add_argument("--frame-chunk", type=int, default=8, help="frames per call of the chunked modes")
    add_rows_args(ap)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    dev = torch.device(args.device)
    size = tuple(int(v) for v in args.size.lower().split("x"))
    t0 = time.perf_counter()
    pipe = build(dev)
    rows = []
    # per_network / stream_unet move weights, not activations: the same working set as without them
    for name, mode in (("default", LowMemory()), ("sequential", SEQUENTIAL), ("chunked", chunked_mode(args.frame_chunk))):
        r = measure(pipe, mode, args.frames, size, args.decode_chunk, dev)
        rows.append((name, r, dict(SECONDS)))
    what = "activation bytes alive at once (meta tensors)" if dev.type == "meta" else "max_memory_allocated"
    print(f"\nOne {args.frames}-frame window at {size[1]}x{size[0]}, bf16, default speed options; {what}, GiB "
          f"above the weights; frame chunk {args.frame_chunk}, decode chunk {args.decode_chunk}:\n")
    print("| mode | UNet step | VAE encode | VAE decode chunk | max | seconds UNet / encode / decode |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for name, r, sec in rows:
        secs = " / ".join(f"{sec[k]:.3f}" for k in ("unet", "encode", "decode")) if sec else "-"
        print(f"| {name} | {r['unet']:.2f} | {r['encode']:.2f} | {r['decode']:.2f} | {max(r.values()):.2f} | {secs} |")
    print(f"\n({time.perf_counter() - t0:.1f} s)")
    if dev.type == "cuda":  # meta figures are estimates without a device: printed, not recorded as measurements
        out = RowWriter.from_args("bench_amodal_memory", args, dev)
        for name, r, sec in rows:
            for part in ("unet", "encode", "decode"):
                out.add(name, f"{part}_gib", r[part], "GiB", frames=args.frames, size=args.size,
                        frame_chunk=args.frame_chunk, decode_chunk=args.decode_chunk)
                if sec:
                    out.add(name, f"{part}_s", sec[part], "s", frames=args.frames, size=args.size)


if __name__ == "__main__":
    main()
