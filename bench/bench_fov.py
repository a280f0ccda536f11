"""FOV stage timing: MoGe-2 ViT-L (real size, random weights) on a clip, our modes vs upstream's call.

Upstream SAM-Body4D calls ``MoGeModel.infer(frame)`` once on frame 0 (fp16 autocast on CUDA).
This times that call, then our ``estimate_camera`` in each mode (first / every_n / all, batched
with OOM back-off) and the per-frame loop a naive "all frames" would make, plus model load.
Random weights give meaningless focals, so only time and memory are measured.

Needs the moge package (``pip install --no-deps dlr-moge==2.0.0 dlr-utils3d==1.3`` plus
opencv-python-headless); on a machine without internet, install it elsewhere with
``pip install --no-deps --target DIR ...`` and pass ``--deps DIR``.

    python -m bench.bench_fov                      # GPU: ViT-L, 90 frames at 1280x720
    python -m bench.bench_fov --tiny               # CPU smoke test of the script
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from bench.patching import import_path
from bench.peak_memory import gpu_peak_gib, reset_gpu_peak
from bench.printing import aligned_table
from bench.rows import RowWriter, add_rows_args
from bench.timers import median_time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny model, small clip (CPU smoke test)")
    ap.add_argument("--frames", type=int, default=90)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--every-n", type=int, default=30)
    ap.add_argument("--deps", default="", help="extra import folder holding moge/ and utils3d/")
    add_rows_args(ap)
    args = ap.parse_args()
    with import_path(args.deps):
        run(args)


def run(args: argparse.Namespace) -> None:
    """Load, time upstream's call, each of our modes and the naive loop; print the table, write the rows."""
    from body4d_core import fov
    from body4d_core.testing.moge import TINY_MOGE_CONFIG

    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    if args.tiny:
        args.frames, args.height, args.width, args.batch = 6, 120, 160, 2
    config = TINY_MOGE_CONFIG if args.tiny else fov.MOGE2_VITL_CONFIG
    fp16 = device.type == "cuda"
    frames = torch.rand(args.frames, args.height, args.width, 3, generator=torch.Generator().manual_seed(0))

    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        model = fov.build_moge(config, seed=0)
        path = Path(tmp) / "model.pt"
        torch.save({"model_config": config, "model": model.state_dict()}, path)
        del model
        t_load, model = median_time(lambda: fov.load_moge_checkpoint(path, device=device), 1, device, warm=False)
        rows.append(("load model.pt (build without random init + weights)", f"{t_load:.2f} s", ""))
        times = [t_load]
    params = sum(p.numel() for p in model.parameters()) / 1e6

    one = frames[:1].permute(0, 3, 1, 2).to(device)
    fov.estimate_normalized_intrinsics(model, one, use_fp16=fp16)  # warm-up
    reset_gpu_peak(device)
    t_up, _ = median_time(lambda: model.infer(one[0], use_fp16=fp16), 3, device, warm=False)
    rows.append(("upstream: model.infer(frame 0)", f"{t_up * 1000:.0f} ms", "1 frame"))
    times.append(t_up)

    for mode in ("first", "every_n", "all"):
        n = len(fov.sample_frames(args.frames, mode, args.every_n))
        t, cam = median_time(lambda: fov.estimate_camera(model, frames, mode, args.every_n, batch_size=args.batch,
                                                         use_fp16=fp16), 1, device, warm=False)
        rows.append((f"ours: estimate_camera mode={mode} (batch {args.batch})", f"{t:.2f} s",
                     f"{n} frames, {n / t:.1f} frames/s"))
        times.append(t)

    def per_frame_loop():
        return [model.infer(frames[i].permute(2, 0, 1).to(device), use_fp16=fp16) for i in range(args.frames)]

    t_loop, _ = median_time(per_frame_loop, 1, device, warm=False)
    rows.append(("naive: infer() per frame, all frames", f"{t_loop:.2f} s",
                 f"{args.frames} frames, {args.frames / t_loop:.1f} frames/s"))
    times.append(t_loop)
    peak = gpu_peak_gib(device)

    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"\nFOV stage — MoGe-2 {'tiny' if args.tiny else 'ViT-L'} ({params:.0f}M params, random weights), "
          f"{args.frames} frames {args.width}x{args.height}, {name}, {'fp16 autocast' if fp16 else 'fp32'}, "
          f"torch {torch.__version__}")
    width = max(len(r[0]) for r in rows)
    print(aligned_table([["what", f"{'time':>9}", "notes"], ["-" * width, "-" * 9, "------"]]
                        + [[what, f"{t:>9}", note] for what, t, note in rows], sep=" | "))
    print(f"peak VRAM (inference): {peak:.2f} GiB")
    out = RowWriter.from_args("bench_fov", args, device)
    extra = {"frames": args.frames, "size": f"{args.width}x{args.height}", "batch": args.batch,
             "model": "tiny" if args.tiny else "ViT-L", "fp16": fp16}
    for (what, t, note), seconds in zip(rows, times):
        out.add(what, "seconds", seconds, "s", note=note, **extra)
    out.add("inference", "peak_vram", peak, "GiB", **extra)


if __name__ == "__main__":
    main()
