"""Long videos in bounded memory: peak host RSS (anonymous and total) and peak VRAM of a headless run
at several clip lengths; with the frame store and the streamed render they must stay flat.

Each length runs in a fresh child process (its own peaks) on a synthetic 1280x720 H.264 clip written
to a temporary folder. A sampler thread reads /proc/self/status (RssAnon: heap and tensors; VmRSS:
that plus resident file pages such as the frame store's mapping) every few milliseconds; VRAM is
``torch.cuda.max_memory_allocated``. Each peak is also kept per pipeline stage (the stage running when
it was sampled; "after <stage>" is the time between stages, e.g. the final wait for the writes), printed
as a second table. ``--max-seconds`` bounds the whole invocation: a length that would run past it is
stopped and reported, the lengths done so far stay. ``--resume`` (with ``--work``) reuses the finished stages of
an earlier, stopped run of the same length in the work folder, so one long GPU run can span two device calls
(each call's peaks are its own; the reused stages are named). Examples:

    python -m bench.bench_long --models /tmp/tiny --lengths 300 1800 9000            # CPU, tiny models
    python -m bench.bench_long --device cuda --preset real --lengths 300 1800 9000   # GPU, real-size random weights
    python -m bench.bench_long --device cuda --models /tmp/models --work /tmp/long --lengths 9000 --max-seconds 560 \
        --resume ...   # the same command again in a second call on the warm machine: the run goes on where it stopped
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

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


class _Sampler:
    """Calls ``sample()`` on a daemon thread every ``every`` seconds while the ``with`` block runs."""

    def __init__(self, every: float) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)

    def sample(self) -> None:
        raise NotImplementedError

    def _run(self, every: float) -> None:
        while True:
            self.sample()
            if self._stop.wait(every):
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class RssSampler(_Sampler):
    """Peaks of VmRSS / RssAnon / RssFile sampled on a thread every ``every`` seconds, overall and per
    ``stage`` (the label set by whoever drives the run, see ``stage_labels``)."""

    def __init__(self, every: float = 0.005) -> None:
        self.peak = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0}
        self.stage = "start"
        self.by_stage: dict[str, dict[str, int]] = {}
        super().__init__(every)

    def sample(self) -> None:
        here = self.by_stage.setdefault(self.stage, {"VmRSS": 0, "RssAnon": 0, "RssFile": 0})
        for k, v in status_kib().items():
            self.peak[k] = max(self.peak[k], v)
            here[k] = max(here[k], v)


def smaps_groups() -> dict[str, int]:
    """Resident KiB of this process's file mappings from /proc/self/smaps, grouped: the frame store's frames
    file, its other files (per-frame outputs), shared libraries, other files."""
    out = {"store frames": 0, "store outputs": 0, "libraries": 0, "other files": 0}
    group = None
    with open("/proc/self/smaps", encoding="ascii", errors="replace") as f:
        for line in f:
            head = line.split(None, 5)
            if len(head) >= 5 and "-" in head[0] and not line.startswith(("Rss", "Pss")) and head[0][0] in "0123456789abcdef":
                path = head[5].strip() if len(head) > 5 else ""
                if not path.startswith("/"):
                    group = None
                elif ".frames." in path:
                    group = "store frames" if path.endswith("frames.u8") else "store outputs"
                else:
                    group = "libraries" if ".so" in Path(path).name else "other files"
            elif group is not None and line.startswith("Rss:"):
                out[group] += int(line.split()[1])
    return out


class SmapsSampler(_Sampler):
    """Per stage of ``rss`` (an ``RssSampler``), the peak resident KiB of each ``smaps_groups`` group, read every
    ``every`` seconds (smaps is slow to read: a diagnostic, --smaps)."""

    def __init__(self, rss: RssSampler, every: float = 0.2) -> None:
        self.rss, self.by_stage = rss, {}
        super().__init__(every)

    def sample(self) -> None:
        here = self.by_stage.setdefault(self.rss.stage, {})
        for k, v in smaps_groups().items():
            here[k] = max(here.get(k, 0), v)


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


@contextlib.contextmanager
def stage_labels(rss: RssSampler, device: str, vram: dict[str, float]) -> Iterator[None]:
    """Inside, every pipeline stage (``pipeline._Stage``) labels the sampler while it runs and, on CUDA, records
    its own VRAM peak in ``vram`` (the allocator's peak window is restarted at each stage's start)."""
    from bench.patching import patched
    from bench.peak_memory import gpu_peak_gib, reset_gpu_peak
    from body4d_core import pipeline

    enter, leave = pipeline._Stage.__enter__, pipeline._Stage.__exit__

    def on_enter(stage: Any) -> None:
        rss.stage = stage.name
        reset_gpu_peak(device)
        enter(stage)

    def on_exit(stage: Any, *exc: object) -> None:
        leave(stage, *exc)
        if device == "cuda":  # off CUDA the table shows nan, not a zero peak
            vram[stage.name] = max(vram.get(stage.name, 0.0), gpu_peak_gib(device))
        rss.stage = f"after {stage.name}"
        reset_gpu_peak(device)

    with patched(pipeline._Stage, "__enter__", on_enter), patched(pipeline._Stage, "__exit__", on_exit):
        yield


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One headless run on args.clip; returns its peaks (overall and per stage) and timings."""
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
                           frames_on_disk=not args.frames_in_ram, render_mode=args.render_mode)
    reset_gpu_peak(args.device, empty_cache=True)
    stage_vram: dict[str, float] = {}
    t0 = time.perf_counter()
    with RssSampler() as rss, stage_labels(rss, args.device, stage_vram), \
            (SmapsSampler(rss) if args.smaps else contextlib.nullcontext()) as smaps:
        summary = run_pipeline(args.clip, args.out, opts, overwrite=not args.resume, resume=args.resume)
    wall = time.perf_counter() - t0
    vram = max([gpu_peak_gib(args.device), *stage_vram.values()]) if stage_vram else gpu_peak_gib(args.device)
    stages = {name: {"rss_anon_gib": p["RssAnon"] / 2**20, "rss_gib": p["VmRSS"] / 2**20,
                     "rss_file_gib": p["RssFile"] / 2**20, "vram_gib": stage_vram.get(name, float("nan")),
                     **({"file_mib": {k: v / 2**10 for k, v in smaps.by_stage.get(name, {}).items()}}
                        if smaps is not None else {})} for name, p in rss.by_stage.items()}
    return {"frames": summary.num_frames, "wall_s": wall, "rss_anon_gib": rss.peak["RssAnon"] / 2**20,
            "rss_gib": rss.peak["VmRSS"] / 2**20, "rss_file_gib": rss.peak["RssFile"] / 2**20,
            "ru_maxrss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "vram_gib": vram, "stages": stages, "reused": list(summary.reused),
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
    ap.add_argument("--render-mode", default="overlay",
                    help="the overlay video's render mode (openpose: no mesh rasteriser, for long CPU runs)")
    ap.add_argument("--max-seconds", type=float, default=0.0,
                    help="stop the invocation after this many seconds in all (a length still running is killed "
                         "and reported; 0: no limit)")
    ap.add_argument("--store-only", action="store_true",
                    help="no model: decode into the frame store and read every frame back (the frame path alone)")
    ap.add_argument("--smaps", action="store_true",
                    help="also the peak resident file pages per stage and mapping group (store frames, store "
                         "outputs, libraries, other files) from /proc/self/smaps every 0.2 s (a diagnostic)")
    ap.add_argument("--resume", action="store_true",
                    help="reuse the finished stages of an earlier (stopped) run of each length in --work/out_N, "
                         "e.g. a 9000-frame GPU run over two device calls; needs --work")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--clip", default="", help=argparse.SUPPRESS)
    ap.add_argument("--out", default="", help=argparse.SUPPRESS)
    add_rows_args(ap)
    args = ap.parse_args(argv)
    if args.resume and not (args.work or args.child):
        ap.error("--resume needs --work (the folder whose earlier runs are resumed)")
    args.preset = args.preset or ("real" if args.device == "cuda" else "tiny")
    try:
        args.height, args.width = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        ap.error(f"--size must be HxW, e.g. 720x1280, got {args.size!r}")
    return args


FORWARD = ("--device", "--models", "--batch-size", "--size", "--render-mode")
FLAGS = ("--store-only", "--frames-in-ram", "--no-amodal", "--no-fov", "--no-world", "--no-anim", "--no-meshes",
         "--no-glb", "--smaps", "--resume")


def child_command(args: argparse.Namespace, clip: Path, out: Path) -> list[str]:
    cmd = [sys.executable, "-m", "bench.bench_long", "--child", "--clip", str(clip), "--out", str(out)]
    for opt in FORWARD:
        cmd += [opt, str(getattr(args, opt[2:].replace("-", "_")))]
    cmd += [f for f in FLAGS if getattr(args, f[2:].replace("-", "_"))]
    return cmd


def run_length(args: argparse.Namespace, work: Path, n: int, deadline: float | None) -> dict[str, Any] | str:
    """One length in a child process: its result, or a one-line reason it has none (failed, out of time).
    ``deadline`` (``time.perf_counter()`` seconds) also counts the time spent writing the clip."""
    clip = write_clip(work / f"synthetic_{args.size}_{n}.mp4", n, args.width, args.height)
    budget = None if deadline is None else deadline - time.perf_counter()
    if budget is not None and budget <= 0:
        return f"{n} frames: not started, --max-seconds reached while writing its clip"
    try:
        proc = subprocess.run(child_command(args, clip, work / f"out_{n}"), capture_output=True, text=True,
                              timeout=budget)
    except subprocess.TimeoutExpired:
        return f"{n} frames: stopped, the run went past --max-seconds"
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        print(proc.stderr[-3000:], file=sys.stderr)
        return f"{n} frames: the run failed (exit {proc.returncode})"
    return json.loads(line[7:])


STAGE_ORDER = ("start", "decode", "sam3", "amodal", "camera", "bodies", "smooth", "world", "render")


def _stage_order(name: str) -> tuple[int, int, str]:
    """Pipeline order: each stage, then the gap after it ("after <stage>"); unknown labels last."""
    base = name.removeprefix("after ")
    pos = STAGE_ORDER.index(base) if base in STAGE_ORDER else len(STAGE_ORDER)
    return pos, int(base != name), name


def print_stages(results: dict[int, dict[str, Any]], device: str) -> None:
    """Peak RssAnon / RSS (and VRAM on CUDA) per stage and length, stages in the order they ran."""
    names = sorted({k for r in results.values() for k in r.get("stages", {})}, key=_stage_order)
    if not names:
        return
    cols = [f"{n} fr" for n in results]
    print("\nper-stage peaks, GiB: RssAnon / RSS" + (" / VRAM" if device == "cuda" else ""))
    print(f"{'stage':>16} " + " ".join(f"{c:>22}" for c in cols))
    for name in names:
        cells = []
        for r in results.values():
            p = r.get("stages", {}).get(name)
            cell = "-" if p is None else f"{p['rss_anon_gib']:.3f} / {p['rss_gib']:.3f}" + (
                f" / {p['vram_gib']:.2f}" if device == "cuda" else "")
            cells.append(f"{cell:>22}")
        print(f"{name:>16} " + " ".join(cells))


def print_files(results: dict[int, dict[str, Any]]) -> None:
    """With --smaps: peak RssFile per stage and, per mapping group, its peak resident MiB."""
    names = sorted({k for r in results.values() for k, p in r.get("stages", {}).items() if "file_mib" in p},
                   key=_stage_order)
    if not names:
        return
    groups = ("store frames", "store outputs", "libraries", "other files")
    print("\nper-stage peak RssFile GiB, then peak resident MiB per mapping group: " + ", ".join(groups))
    for n, r in results.items():
        for name in names:
            p = r["stages"].get(name)
            if p is not None:  # a stage shorter than the smaps interval has no sample: "-"
                cells = " ".join(f"{p['file_mib'][g]:9.1f}" if g in p["file_mib"] else f"{'-':>9}" for g in groups)
                print(f"{n:>6} fr {name:>16} {p['rss_file_gib']:7.3f}  {cells}")


def add_rows(rows: RowWriter, args: argparse.Namespace, case: str, n: int, r: dict[str, Any]) -> None:
    extra = {"frames": n, "size": args.size, "path": case, "timings": r["timings"], "preset": args.preset,
             "render_mode": args.render_mode,
             "stages_off": [f for f in FLAGS if getattr(args, f[2:].replace("-", "_"))],
             "stages": r.get("stages", {})}
    rows.add(f"{case}-{n}", "peak_rss_anon", r["rss_anon_gib"], "GiB", **extra)
    rows.add(f"{case}-{n}", "peak_rss", r["rss_gib"], "GiB", **extra)
    rows.add(f"{case}-{n}", "peak_rss_file", r["rss_file_gib"], "GiB", **extra)
    rows.add(f"{case}-{n}", "peak_vram", r["vram_gib"], "GiB", **extra)
    rows.add(f"{case}-{n}", "wall", r["wall_s"], "s", **extra)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.child:
        print("RESULT " + json.dumps(child_store(args) if args.store_only else child(args)), flush=True)
        return 0
    t0 = time.perf_counter()
    rows = RowWriter.from_args(BENCH, args, device=args.device)
    own = not args.work
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_long_"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict[int, dict[str, Any]] = {}
    status = 0
    try:
        if not args.store_only:
            args.models = str(ensure_models(Path(args.models) if args.models else work / "models", args.preset,
                                            args.device))
        case = ("store-only-" if args.store_only else "") + ("ram" if args.frames_in_ram else "disk")
        off = " ".join(f for f in FLAGS if getattr(args, f[2:].replace("-", "_")))
        print(f"{args.size} clip, {case} path, {args.preset} checkpoints on {args.device}, render {args.render_mode}"
              + (f", {off}" if off else ""), flush=True)
        print(f"{'frames':>7} {'RssAnon GiB':>12} {'RSS GiB':>8} {'RssFile GiB':>12} {'VRAM GiB':>9} {'wall s':>8}")
        deadline = t0 + args.max_seconds if args.max_seconds > 0 else None
        for n in args.lengths:
            r = run_length(args, work, n, deadline) if deadline is None or deadline > time.perf_counter() else \
                f"{n} frames: not started, --max-seconds reached"
            if isinstance(r, str):
                print(r, flush=True)
                status = 0 if "max-seconds" in r else 1
                break
            results[n] = r
            add_rows(rows, args, case, n, r)
            print(f"{n:7d} {r['rss_anon_gib']:12.3f} {r['rss_gib']:8.3f} {r['rss_file_gib']:12.3f} "
                  f"{r['vram_gib']:9.3f} {r['wall_s']:8.1f}", flush=True)
            if r.get("reused"):
                print(f"{'':7} reused from the earlier run: {', '.join(r['reused'])} (peaks are this run's only)",
                      flush=True)
            if own:
                shutil.rmtree(work / f"out_{n}", ignore_errors=True)
        print_stages(results, args.device)
        print_files(results)
        print(f"\ntotal {time.perf_counter() - t0:.1f} s for {len(results)} length(s)", flush=True)
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
