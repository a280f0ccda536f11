"""FOV stage timing: MoGe-2 ViT-L (real size, random weights) on a clip, our modes vs upstream's call.

Upstream SAM-Body4D calls ``MoGeModel.infer(frame)`` once on frame 0 (fp16 autocast on CUDA).
This times that call, then our ``estimate_camera`` in each mode (first / every_n / all, batched
with OOM back-off) and the per-frame loop a naive "all frames" would make, plus model load.
Random weights give meaningless focals, so only time and memory are measured.

Needs the moge package (``pip install --no-deps dlr-moge==2.0.0 dlr-utils3d==1.3`` plus
opencv-python-headless); on a machine without internet, install it elsewhere with
``pip install --no-deps --target DIR ...`` and pass ``--deps DIR``.

    python bench/bench_fov.py                      # GPU: ViT-L, 90 frames at 1280x720
    python bench/bench_fov.py --tiny               # CPU smoke test of the script
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device: torch.device, repeat: int = 1) -> tuple[float, object]:
    """Median wall time of fn() over `repeat` runs (after the caller's warm-up)."""
    times, out = [], None
    for _ in range(repeat):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny model, small clip (CPU smoke test)")
    ap.add_argument("--frames", type=int, default=90)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--every-n", type=int, default=30)
    ap.add_argument("--deps", default="", help="extra sys.path entry holding moge/ and utils3d/")
    args = ap.parse_args()
    if args.deps:
        sys.path.insert(0, args.deps)

    from body4d_core import fov

    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    if args.tiny:
        args.frames, args.height, args.width, args.batch = 6, 120, 160, 2
    config = fov.TINY_MOGE_CONFIG if args.tiny else fov.MOGE2_VITL_CONFIG
    fp16 = device.type == "cuda"
    frames = torch.rand(args.frames, args.height, args.width, 3, generator=torch.Generator().manual_seed(0))

    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        model = fov.build_moge(config, seed=0)
        path = Path(tmp) / "model.pt"
        torch.save({"model_config": config, "model": model.state_dict()}, path)
        del model
        t_load, model = _timed(lambda: fov.load_moge_checkpoint(path, device=device), device)
        rows.append(("load model.pt (build without random init + weights)", f"{t_load:.2f} s", ""))
    params = sum(p.numel() for p in model.parameters()) / 1e6

    one = frames[:1].permute(0, 3, 1, 2).to(device)
    fov.estimate_normalized_intrinsics(model, one, use_fp16=fp16)  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t_up, _ = _timed(lambda: model.infer(one[0], use_fp16=fp16), device, repeat=3)
    rows.append(("upstream: model.infer(frame 0)", f"{t_up * 1000:.0f} ms", "1 frame"))

    for mode in ("first", "every_n", "all"):
        n = len(fov.sample_frames(args.frames, mode, args.every_n))
        t, cam = _timed(lambda: fov.estimate_camera(model, frames, mode, args.every_n, batch_size=args.batch,
                                                    use_fp16=fp16), device)
        rows.append((f"ours: estimate_camera mode={mode} (batch {args.batch})", f"{t:.2f} s",
                     f"{n} frames, {n / t:.1f} frames/s"))

    def per_frame_loop():
        return [model.infer(frames[i].permute(2, 0, 1).to(device), use_fp16=fp16) for i in range(args.frames)]

    t_loop, _ = _timed(per_frame_loop, device)
    rows.append(("naive: infer() per frame, all frames", f"{t_loop:.2f} s",
                 f"{args.frames} frames, {args.frames / t_loop:.1f} frames/s"))
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")

    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"\nFOV stage — MoGe-2 {'tiny' if args.tiny else 'ViT-L'} ({params:.0f}M params, random weights), "
          f"{args.frames} frames {args.width}x{args.height}, {name}, {'fp16 autocast' if fp16 else 'fp32'}, "
          f"torch {torch.__version__}")
    width = max(len(r[0]) for r in rows)
    print(f"{'what'.ljust(width)} | {'time':>9} | notes")
    print(f"{'-' * width}-|-{'-' * 9}-|------")
    for what, t, note in rows:
        print(f"{what.ljust(width)} | {t:>9} | {note}")
    print(f"peak VRAM (inference): {peak:.2f} GiB")


if __name__ == "__main__":
    main()
