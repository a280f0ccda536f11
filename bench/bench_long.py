"""Long videos in bounded memory: peak host RSS (anonymous and total) and peak VRAM of a headless run
at several clip lengths; with the frame store and the streamed render they must stay flat.

Each length runs in a fresh child process (its own peaks) on a synthetic 1280x720 H.264 clip written
to a temporary folder. A sampler thread reads /proc/self/status (RssAnon: heap and tensors; VmRSS:
that plus resident file pages such as the frame store's mapping) every few milliseconds; VRAM is
``torch.cuda.max_memory_allocated``. Examples:

    python -m bench.bench_long --models /tmp/tiny --lengths 300 1800 9000            # CPU, tiny models
    python -m bench.bench_long --device cuda --preset real --lengths 300 1800 9000   # GPU, real-size random weights
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.rows import RowWriter, add_rows_args

log = logging.getLogger("bench_long")
BENCH = "bench_long"


def status_kib() -> dict[str, int]:
    """VmRSS, RssAnon and RssFile of this process (KiB) from /proc/self/status."""
    out = {}
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                out[key] = int(rest.split()[0])
    return out


class RssSampler:
    """Peaks of VmRSS / RssAnon / RssFile sampled on a thread every ``every`` seconds."""

    def __init__(self, every: float = 0.005) -> None:
        self.peak = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)

    def _run(self, every: float) -> None:
        while True:
            for k, v in status_kib().items():
                self.peak[k] = max(self.peak[k], v)
            if self._stop.wait(every):
                return

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def write_clip(path: Path, frames: int, width: int = 1280, height: int = 720) -> Path:
    """The synthetic H.264 clip (a panning texture; bench/clips.write_h264), written once per length."""
    from bench.clips import write_h264

    if not path.is_file():
        tmp = path.with_name(path.stem + ".part.mp4")
        write_h264(tmp, width, height, frames)
        os.replace(tmp, path)
    return path


def ensure_models(root: Path, preset: str, device: str) -> Path:
    """Random checkpoints of every model under root (reused when a complete set of the same preset is there)."""
    from body4d_core.errors import Body4DError
    from body4d_core.testing.checkpoints import target_dir, write_checkpoints
    from body4d_core.weights import MODEL_SPECS, verify

    marker = root / ".bench_preset"
    other = marker.is_file() and marker.read_text().strip() != preset
    todo = []
    for name, spec in MODEL_SPECS.items():
        try:
            if other:
                raise Body4DError("another preset")
            verify(name, target_dir(root, spec))
        except Body4DError:
            todo.append(name)
    if todo:
        import torch

        root.mkdir(parents=True, exist_ok=True)
        write_checkpoints(root, todo, seed=0, preset=preset, device=device if device == "cuda" else "cpu",
                          weight_dtype=torch.bfloat16 if preset == "real" else None)
        marker.write_text(preset)
    return root


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One headless run on args.clip; returns its peaks and timings."""
    import resource

    from bench.peak_memory import gpu_peak_gib, reset_gpu_peak
    from body4d_core.pipeline import PipelineOptions, run_pipeline
    from body4d_core.video import LoadOptions

    h, w = args.height, args.width
    points = {"version": 1, "image_size": [h, w],
              "objects": [{"id": 1, "points": [{"frame": 0, "x": w * 0.5, "y": h * 0.5, "label": 1}]}]}
    opts = PipelineOptions(video=LoadOptions(), points_json=json.dumps(points), amodal=not args.no_amodal,
                           fov_mode="none" if args.no_fov else "first", world=not args.no_world,
                           write_anim=not args.no_anim, write_meshes=not args.no_meshes, write_glb=not args.no_glb,
                           models_root=Path(args.models), device=args.device, batch_size=args.batch_size,
                           frames_on_disk=not args.frames_in_ram)
    reset_gpu_peak(args.device, empty_cache=True)
    t0 = time.perf_counter()
    with RssSampler() as rss:
        summary = run_pipeline(args.clip, args.out, opts, overwrite=True)
    wall = time.perf_counter() - t0
    vram = gpu_peak_gib(args.device)
    return {"frames": summary.num_frames, "wall_s": wall, "rss_anon_gib": rss.peak["RssAnon"] / 2**20,
            "rss_gib": rss.peak["VmRSS"] / 2**20, "rss_file_gib": rss.peak["RssFile"] / 2**20,
            "ru_maxrss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "vram_gib": vram,
            "timings": {k: round(v, 2) for k, v in summary.timings.items()}}


def child_store(args: argparse.Namespace) -> dict[str, Any]:
    """The frame path alone (no model): decode args.clip into a frame store (or RAM with --frames-in-ram),
    then read every frame in order (converted to float, as the tracker's preprocessing does) and again per
    render batch; returns the peaks. The pager drops pages every 0.25 s, so what stays resident is what is
    read in that time: a consumer reading faster than real stages would hold more."""
    import numpy as np

    from body4d_core.frame_store import decode_to_store
    from body4d_core.video import LoadOptions, load_video

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    total = 0.0
    with RssSampler() as rss:
        store = None
        if args.frames_in_ram:
            frames, clip = load_video(args.clip, LoadOptions())
        else:
            store, clip = decode_to_store(args.clip, LoadOptions(), out)
            frames = store.frames
        for t in range(len(frames)):  # every pixel converted to float, as a tracker's preprocessing does
            total += float(np.asarray(frames[t], np.float32).mean())
        for s0 in range(0, len(frames), 16):  # render batches
            total += float(np.asarray(frames[s0:s0 + 16], np.float32).mean())
        del frames
        if store is not None:
            store.close()
    return {"frames": clip.num_frames, "wall_s": time.perf_counter() - t0, "rss_anon_gib": rss.peak["RssAnon"] / 2**20,
            "rss_gib": rss.peak["VmRSS"] / 2**20, "rss_file_gib": rss.peak["RssFile"] / 2**20,
            "vram_gib": float("nan"), "timings": {"checksum": total}}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[300, 1800, 9000], help="clip lengths (frames)")
    ap.add_argument("--size", default="720x1280", help="HxW of the synthetic clip (default 720p)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--models", default="", help="checkpoint root (reused when complete, else written)")
    ap.add_argument("--preset", default="", choices=("", "tiny", "real"),
                    help="random checkpoints written when --models lacks them (default: tiny on cpu, real on cuda)")
    ap.add_argument("--work", default="", help="clips and outputs here (default: a temporary folder, deleted)")
    ap.add_argument("--frames-in-ram", action="store_true", help="the in-memory path (frames_on_disk off) to compare")
    ap.add_argument("--no-amodal", action="store_true")
    ap.add_argument("--no-fov", action="store_true", help="no MoGe-2 (default focal)")
    ap.add_argument("--no-world", action="store_true")
    ap.add_argument("--no-anim", action="store_true")
    ap.add_argument("--no-meshes", action="store_true")
    ap.add_argument("--no-glb", action="store_true")
    ap.add_argument("--batch-size", type=int, default=64, help="SAM-3D-Body batch")
    ap.add_argument("--store-only", action="store_true",
                    help="no model: decode into the frame store and read every frame back (the frame path alone)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--clip", default="", help=argparse.SUPPRESS)
    ap.add_argument("--out", default="", help=argparse.SUPPRESS)
    add_rows_args(ap)
    args = ap.parse_args(argv)
    args.preset = args.preset or ("real" if args.device == "cuda" else "tiny")
    try:
        args.height, args.width = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        ap.error(f"--size must be HxW, e.g. 720x1280, got {args.size!r}")
    return args


FORWARD = ("--device", "--models", "--batch-size", "--size")
FLAGS = ("--store-only", "--frames-in-ram", "--no-amodal", "--no-fov", "--no-world", "--no-anim", "--no-meshes",
         "--no-glb")


def child_command(args: argparse.Namespace, clip: Path, out: Path) -> list[str]:
    cmd = [sys.executable, "-m", "bench.bench_long", "--child", "--clip", str(clip), "--out", str(out)]
    for opt in FORWARD:
        cmd += [opt, str(getattr(args, opt[2:].replace("-", "_")))]
    cmd += [f for f in FLAGS if getattr(args, f[2:].replace("-", "_"))]
    return cmd


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.child:
        print("RESULT " + json.dumps(child_store(args) if args.store_only else child(args)), flush=True)
        return 0
    rows = RowWriter.from_args(BENCH, args, device=args.device)
    own = not args.work
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_long_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if not args.store_only:
            args.models = str(ensure_models(Path(args.models) if args.models else work / "models", args.preset,
                                            args.device))
        case = ("store-only-" if args.store_only else "") + ("ram" if args.frames_in_ram else "disk")
        print(f"{args.size} clip, {case} path, {args.preset} checkpoints on {args.device}", flush=True)
        print(f"{'frames':>7} {'RssAnon GiB':>12} {'RSS GiB':>8} {'RssFile GiB':>12} {'VRAM GiB':>9} {'wall s':>8}")
        for n in args.lengths:
            clip = write_clip(work / f"synthetic_{args.size}_{n}.mp4", n, args.width, args.height)
            proc = subprocess.run(child_command(args, clip, work / f"out_{n}"), capture_output=True, text=True)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if proc.returncode or line is None:
                print(proc.stderr[-3000:], file=sys.stderr)
                print(f"{n} frames: the run failed (exit {proc.returncode})")
                return 1
            r = json.loads(line[7:])
            extra = {"frames": n, "size": args.size, "path": case, "timings": r["timings"], "preset": args.preset,
                     "stages_off": [f for f in FLAGS if getattr(args, f[2:].replace("-", "_"))]}
            rows.add(f"{case}-{n}", "peak_rss_anon", r["rss_anon_gib"], "GiB", **extra)
            rows.add(f"{case}-{n}", "peak_rss", r["rss_gib"], "GiB", **extra)
            rows.add(f"{case}-{n}", "peak_rss_file", r["rss_file_gib"], "GiB", **extra)
            rows.add(f"{case}-{n}", "peak_vram", r["vram_gib"], "GiB", **extra)
            rows.add(f"{case}-{n}", "wall", r["wall_s"], "s", **extra)
            print(f"{n:7d} {r['rss_anon_gib']:12.3f} {r['rss_gib']:8.3f} {r['rss_file_gib']:12.3f} "
                  f"{r['vram_gib']:9.3f} {r['wall_s']:8.1f}", flush=True)
            if own:
                import shutil

                shutil.rmtree(work / f"out_{n}", ignore_errors=True)
    finally:
        if own:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
