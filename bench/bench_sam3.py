"""SAM-3 propagation benchmark: real-size random tracker weights (config defaults), bf16 on CUDA.

Rows: frames/s for 1 and 5 objects on 1008x1008 frames for each speed variant of our
streamed propagate side by side (baseline = per-object loop with synced copies, then each
speed-up alone, then all), beside transformers' own whole-video session
(``init_video_session(video=...)`` + ``propagate_in_video_iterator``); "diff px" is the share
of mask pixels that differ from the baseline's (0 on the CPU; bf16 batching may flip a few).
Then peak VRAM for 720p clips of growing length (should stay flat), and optionally a
torch.compile'd vision backbone (compile time reported).

    python -m bench.bench_sam3                 # the full table on a GPU (~4-5 min on an H200)
    python -m bench.bench_sam3 --tiny          # a CPU smoke run with the tiny test model
    python -m bench.bench_sam3 --lengths 100 500 --reference-max 500 --fps-frames 60
    python -m bench.bench_sam3 --pipeline-path --pipeline-detect   # the pipeline's SAM-3 stage beside the bench

``--pipeline-path`` times, on one 720p clip per object count, the bench's own call (``propagate``,
forward, box prompts) next to the pipeline's SAM-3 stage exactly as ``run_pipeline`` calls it in a
warm process (the model already loaded): ``stage_prompts`` (the points JSON, or people detection
with ``--pipeline-detect``), ``stage_tracks``, the release after it, and the mask overlay video
the run then writes in the background; once more with the garbage collector frozen for the stage
(what ``gc.freeze`` around the run's stages saves in the release's full collection); ``--pipeline-load
DIR`` also times loading a real-size checkpoint (what a run without a model cache pays inside its
"sam3" stage). Both paths run with torch's default TF32 flags, as the pipeline leaves them.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.clips import LoopedClip, box_prompts
from bench.patching import patched
from bench.peak_memory import gpu_peak_gib, reset_gpu_peak
from bench.rows import RowWriter, add_rows_args
from bench.timers import Stopwatch, sync
from body4d_core.sam3 import propagate
from body4d_core.profile import RunProfile
from body4d_core.sam3.loading import Sam3Bundle, build_processor
from body4d_core.sam3.propagate import SpeedOptions
from body4d_core.testing.sam3 import tiny_sam3


def real_size_bundle(device: torch.device, dtype: torch.dtype) -> Sam3Bundle:
    """The facebook/sam3 tracker architecture (config defaults) with random weights."""
    import transformers as tf

    torch.manual_seed(0)
    with torch.device(device):
        tracker = tf.Sam3TrackerVideoModel(tf.Sam3TrackerVideoConfig()).eval()
    with torch.no_grad():
        tracker.mask_decoder.pred_obj_score_head.proj_out.bias.fill_(4.0)  # objects present, like real use
    tracker.to(dtype)
    return Sam3Bundle(tracker, build_processor(int(tracker.config.image_size)), None, None, dtype)


VARIANTS = {
    "baseline (per object, synced)": RunProfile(sam3_speed="reference").speed_options(),
    "batched objects": SpeedOptions(batch_objects=True, async_io=False, prefetch=False),
    "async io (pinned, deferred)": SpeedOptions(batch_objects=False, async_io=True, prefetch=False),
    "async io + prefetch": SpeedOptions(batch_objects=False, async_io=True, prefetch=True),
    "all but CUDA graphs": SpeedOptions(cuda_graphs=False),
    "all but fused backbone": RunProfile(sam3_speed="unfused").speed_options(),
    "all (default)": RunProfile().speed_options(),  # the run profile's sam3_speed fast
    "all + compiled backbone": RunProfile(sam3_speed="compile").speed_options(),  # opt-in, not bit-exact
}
COMPILED = "all + compiled backbone"

_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def diff_share(a: np.ndarray, b: np.ndarray) -> float:
    """Share of mask pixels set in either packed mask stack that differ between the two."""
    if np.array_equal(a, b):
        return 0.0
    union = _POPCOUNT[np.bitwise_or(a, b)].sum(dtype=np.int64)
    return float(_POPCOUNT[np.bitwise_xor(a, b)].sum(dtype=np.int64) / max(union, 1))


def run_ours(bundle: Sam3Bundle, clip: LoopedClip, n_obj: int, device: torch.device,
             speed: SpeedOptions = SpeedOptions()) -> tuple[dict, np.ndarray]:
    prompts = box_prompts(clip, n_obj)
    reset_gpu_peak(device, empty_cache=True)
    with Stopwatch(device) as sw:
        tracks = propagate(bundle, clip, prompts, "forward", speed=speed)
    assert tracks.present.any(), "random weights should still produce masks"
    return {"seconds": sw.seconds, "fps": clip.n / sw.seconds, "peak_gib": gpu_peak_gib(device)}, tracks.packed


def run_reference(bundle: Sam3Bundle, clip: LoopedClip, n_obj: int, device: torch.device) -> dict:
    """transformers' documented whole-video path: every frame preprocessed and kept on the device."""
    proc, model = bundle.processor, bundle.tracker
    prompts = box_prompts(clip, n_obj)
    reset_gpu_peak(device, empty_cache=True)
    sync(device)
    t0 = time.perf_counter()
    video = [clip[i] for i in range(clip.n)]
    session = proc.init_video_session(video=video, inference_device=device, dtype=bundle.dtype)
    del video
    amp = torch.autocast("cuda", dtype=bundle.dtype) if device.type == "cuda" else contextlib.nullcontext()
    with torch.inference_mode(), amp:
        for it in prompts.items:
            proc.add_inputs_to_inference_session(session, frame_idx=0, obj_ids=[it.obj_id],
                                                 input_boxes=[[it.box.tolist()]])
            model(inference_session=session, frame_idx=0)
        for out in model.propagate_in_video_iterator(session, start_frame_idx=0):
            masks = proc.post_process_masks([out.pred_masks], original_sizes=[(clip.h, clip.w)], binarize=True)[0]
            masks.cpu()
    sync(device)
    dt = time.perf_counter() - t0
    result = {"seconds": dt, "fps": clip.n / dt, "peak_gib": gpu_peak_gib(device)}
    del session
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny random model on the CPU (smoke test)")
    ap.add_argument("--fps-frames", type=int, default=100, help="frames for the frames/s rows")
    ap.add_argument("--objects", type=int, nargs="+", default=[1, 5])
    ap.add_argument("--lengths", type=int, nargs="+", default=[100, 1800], help="720p clip lengths")
    ap.add_argument("--reference-max", type=int, default=100, help="longest clip run through the reference path")
    ap.add_argument("--variants", nargs="+", default=[v for v in VARIANTS if v != COMPILED], choices=list(VARIANTS),
                    help="speed variants for the frames/s rows (the first is the diff reference)")
    ap.add_argument("--compile", action="store_true",
                    help="also time the compiled backbone (sam3_speed=compile; its first call, compile included, "
                         "is reported; diff px against the first variant)")
    ap.add_argument("--json", type=str, default="",
                    help="also write the rows to this JSON file (this bench's own form)")
    ap.add_argument("--profile-frames", type=int, default=0, metavar="N",
                    help="only this: torch.profiler around one propagation of N 720p frames per --objects count "
                         "(default speed options): wall time against GPU kernel time, and the top kernels")
    add_pipeline_path_args(ap)
    add_rows_args(ap)
    args = ap.parse_args()

    if args.tiny:
        device, dtype = torch.device("cpu"), torch.float32
        torch.set_num_threads(1)
        bundle = tiny_sam3()
        side, hd = 112, (72, 128)
    else:
        if not torch.cuda.is_available():
            sys.exit("bench_sam3 needs a CUDA GPU (use --tiny for a CPU smoke run)")
        device, dtype = torch.device("cuda"), torch.bfloat16
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        bundle = real_size_bundle(device, dtype)
        side, hd = int(bundle.image_size), (720, 1280)
    n_params = sum(p.numel() for p in bundle.parameters())
    for speed in (VARIANTS["baseline (per object, synced)"], VARIANTS["all (default)"]):  # warm-up (kernels, allocator, pinned host blocks)
        run_ours(bundle, LoopedClip(8, side, side), 2, device, speed)

    if args.pipeline_path:
        pipeline_path_main(bundle, args, device, dtype, hd)
        return
    if args.profile_frames:
        profile_main(bundle, args, device, hd)
        return
    rows: list[dict] = []
    out = RowWriter.from_args("bench_sam3", args, device)

    def add(case: str, path: str, frames: int, r: dict) -> None:
        rows.append({"case": case, "path": path, "frames": frames, **r})
        print(rows[-1], flush=True)
        for metric, unit in (("fps", "frames/s"), ("seconds", "s"), ("peak_gib", "GiB"), ("diff_px", "share")):
            if metric in r:
                out.add(f"{case}, {path}", metric, r[metric], unit, frames=frames, dtype=str(dtype),
                        params_m=round(n_params / 1e6))

    variants = list(args.variants) + ([COMPILED] if args.compile and COMPILED not in args.variants else [])
    if COMPILED in variants:
        with Stopwatch(device) as sw:  # compiles here (or loads the kernels from the compile cache)
            run_ours(bundle, LoopedClip(8, side, side), 2, device, VARIANTS[COMPILED])
        print(f"compiled backbone: first call (8 frames, compile included) {sw.seconds:.1f} s", flush=True)
    for n_obj in args.objects:
        clip = LoopedClip(args.fps_frames, side, side)
        base = None
        for name in variants:
            r, packed = run_ours(bundle, clip, n_obj, device, VARIANTS[name])
            base = packed if base is None else base
            add(f"{side}x{side}, {n_obj} obj", name, clip.n, {**r, "diff_px": diff_share(base, packed)})
        if args.reference_max >= args.fps_frames:
            try_reference(bundle, clip, n_obj, device, f"{side}x{side}, {n_obj} obj", add)
    for n in args.lengths:
        clip = LoopedClip(n, *hd)
        r, _ = run_ours(bundle, clip, 1, device)
        add(f"{hd[1]}x{hd[0]}, 1 obj", "all (default)", n, r)
        if n <= args.reference_max:
            try_reference(bundle, clip, 1, device, f"{hd[1]}x{hd[0]}, 1 obj", add)
    print_table(rows, device, dtype, n_params)
    if args.json:
        gpu = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
        Path(args.json).write_text(json.dumps({"device": gpu, "dtype": str(dtype), "rows": rows}, indent=2))


def try_reference(bundle: Sam3Bundle, clip: LoopedClip, n_obj: int, device: torch.device, case: str,
                  add) -> None:
    """transformers' whole-video session on the same clip; a failure is reported, not fatal."""
    try:
        r = run_reference(bundle, clip, n_obj, device)
    except Exception as err:  # noqa: BLE001 - report the reference's failure, keep our rows
        print(f"reference path failed at {clip.n} frames: {type(err).__name__}: {err}", flush=True)
        return
    add(case, "transformers whole-video", clip.n, r)


def profile_main(bundle: Sam3Bundle, args: argparse.Namespace, device: torch.device, hd: tuple[int, int]) -> None:
    """--profile-frames: is propagation host-bound (wall >> kernel time) or device-bound? Top kernels printed."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for n_obj in args.objects:
        clip = LoopedClip(args.profile_frames, *hd)
        run_ours(bundle, clip, n_obj, device)  # warm-up (graphs, allocator)
        with profile(activities=acts) as prof:
            r, _ = run_ours(bundle, clip, n_obj, device)
        events = prof.key_averages()
        kernel_s = sum(e.self_device_time_total for e in events) / 1e6
        print(f"{n_obj} object(s), {clip.n} frames: wall {r['seconds']:.2f} s (profiler on), "
              f"GPU kernel time {kernel_s:.2f} s", flush=True)
        print(events.table(sort_by="self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total",
                           row_limit=12, max_name_column_width=50), flush=True)


def print_table(rows: list[dict], device: torch.device, dtype: torch.dtype, n_params: int) -> None:
    gpu = torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"\nSAM-3 tracker benchmark: {gpu}, torch {torch.__version__}, dtype {dtype}, "
          f"{n_params / 1e6:.0f}M params (random weights), {time.strftime('%Y-%m-%d')}")
    print(f"{'case':<22} {'path':<31} {'frames':>6} {'seconds':>9} {'frames/s':>9} {'peak VRAM GiB':>14} "
          f"{'diff px %':>10}")
    for r in rows:
        diff = f"{100 * r['diff_px']:.4f}" if "diff_px" in r else "-"
        print(f"{r['case']:<22} {r['path']:<31} {r['frames']:>6} {r['seconds']:>9.2f} {r['fps']:>9.2f} "
              f"{r['peak_gib']:>14.2f} {diff:>10}", flush=True)


# --------------------------------------------------------------------------- the pipeline's SAM-3 stage


def add_pipeline_path_args(ap: argparse.ArgumentParser) -> None:
    """Options of the pipeline-path comparison (the bench's propagate beside run_pipeline's SAM-3 stage)."""
    g = ap.add_argument_group("pipeline path")
    g.add_argument("--pipeline-path", action="store_true",
                   help="time the pipeline's SAM-3 stage as run_pipeline calls it beside the bench's propagate "
                        "on the same 720p clip (--fps-frames frames, each --objects count); only these rows")
    g.add_argument("--pipeline-detect", action="store_true",
                   help="also time the pipeline's default prompts: people detection on the clip (a random "
                        "detector finds nobody at the default threshold, so threshold 0, --objects people)")
    g.add_argument("--pipeline-load", default="", metavar="DIR",
                   help="also time load_sam3 of a real-size checkpoint in DIR (written there first if missing): "
                        "the load a run without a model cache pays inside its sam3 stage")


def pipeline_frames(clip: LoopedClip) -> tuple[np.ndarray, Any]:
    """The clip as the pipeline holds it after decoding: uint8 [T, H, W, 3] in one array, and its Clip."""
    from body4d_core.data import Clip

    frames = np.stack([clip[i] for i in range(clip.n)])
    return frames, Clip(fps=30.0, num_frames=clip.n, image_size=(clip.h, clip.w))


def run_pipeline_path(bundle: Sam3Bundle, clip: LoopedClip, n_obj: int, device: torch.device,
                      detect: bool = False, overlay_dir: Path | None = None,
                      freeze_gc: bool = False) -> tuple[dict, Any]:
    """run_pipeline's sam3 stage on this clip in a warm process (model loaded), each part synchronised.

    Prompts: the bench's box prompts through the points JSON (``detect``: people detection at
    threshold 0, ``n_obj`` people). Parts: prompts (``stage_prompts``), propagate
    (``stage_tracks``), release (the library caches, a full garbage collection and the CUDA cache
    emptied after the stage), overlay (the mask overlay MP4 the run then writes on a background
    thread; skipped without ``overlay_dir``). ``stage`` is what the run's "sam3" timing holds
    (prompts + propagate + release). ``freeze_gc``: the objects alive before the stage (libraries,
    the loaded model) are moved out of the collector's reach for it (``gc.freeze``), so its
    collections only walk what the stage allocated.
    """
    if freeze_gc:
        gc.freeze()
        try:
            return run_pipeline_path(bundle, clip, n_obj, device, detect, overlay_dir)
        finally:
            gc.unfreeze()
    import body4d_core.sam3 as sam3_pkg
    from body4d_core import pipeline as pl
    from body4d_core.prompts import prompts_to_json
    from body4d_core.runtime import NULL_HOOKS

    frames, meta = pipeline_frames(clip)
    points = None if detect else prompts_to_json(box_prompts(clip, n_obj))
    opts = pl.PipelineOptions(points_json=points, detect_threshold=0.0, max_people=n_obj, amodal=False,
                              device=str(device))
    r: dict = {}
    reset_gpu_peak(device, empty_cache=True)
    with patched(sam3_pkg, "load_sam3", lambda **_: bundle):  # warm process: stage_prompts finds it loaded
        with Stopwatch(device) as sw:
            prompts, model = pl.stage_prompts(frames, meta, opts, NULL_HOOKS)
        r["prompts_s"] = sw.seconds
        with Stopwatch(device) as sw:
            tracks = pl.stage_tracks(model, frames, prompts, opts, NULL_HOOKS)
        r["propagate_s"] = sw.seconds
        r["peak_gib"] = gpu_peak_gib(device)
        del model
        with Stopwatch(device) as sw:
            pl.release_library_caches()
            pl._free()
        r["release_s"] = sw.seconds
    r["stage_s"] = r["prompts_s"] + r["propagate_s"] + r["release_s"]
    if overlay_dir is not None:
        with Stopwatch(device) as sw:
            pl._write_mask_overlay(frames, tracks, meta, overlay_dir / "mask_overlay.mp4")
        r["overlay_s"] = sw.seconds
    r.update(objects=len(prompts.items), fps=clip.n / r["propagate_s"],
             stage_fps=clip.n / r["stage_s"])
    return r, tracks


def time_load(root: Path, device: torch.device, dtype: torch.dtype, tiny: bool = False) -> dict:
    """Seconds of load_sam3 (points only, no detector) from a checkpoint under root (real-size, or tiny), written
    there first if missing."""
    from body4d_core.sam3 import load_sam3
    from body4d_core.testing.sam3 import save_real_size_checkpoint, save_tiny_checkpoint

    folder = root / "sam3" / "sam3"
    if not (folder / "model.safetensors").is_file():
        t0 = time.perf_counter()
        save_tiny_checkpoint(folder) if tiny else save_real_size_checkpoint(folder, device=device)
        print(f"SAM-3 checkpoint written to {folder} in {time.perf_counter() - t0:.1f} s (not counted)", flush=True)
    for _ in range(2):  # the first read warms the page cache; the second is a warm process's reload
        with Stopwatch(device) as sw:
            loaded = load_sam3(search_dirs=[root], device=device, dtype=dtype, with_detector=False)
        del loaded
        sync(device)
    return {"seconds": sw.seconds}


def add_detector(bundle: Sam3Bundle, device: torch.device, dtype: torch.dtype, real_size: bool = True) -> None:
    """A random text detector sharing the tracker's backbone (facebook/sam3's sizes, or the tiny test one)."""
    import transformers as tf

    from body4d_core.sam3.loading import share_backbone
    from body4d_core.testing.sam3 import tiny_detector

    tiny, processor = tiny_detector(bundle.image_size)  # its toy tokenizer knows "person"; image sizes as the tracker
    if real_size:
        torch.manual_seed(1)
        with torch.device(device):
            detector = tf.Sam3Model(tf.Sam3Config()).eval()
        detector.to(dtype)
    else:
        detector = tiny.to(device, dtype)
    share_backbone(bundle.tracker, detector)
    bundle.detector, bundle.detector_processor = detector, processor


def pipeline_path_main(bundle: Sam3Bundle, args: argparse.Namespace, device: torch.device, dtype: torch.dtype,
                       hd: tuple[int, int]) -> list[dict]:
    """--pipeline-path: bench propagate vs the pipeline's stage, per object count, printed and written as rows.

    Everything runs with torch's default TF32 flags, as the pipeline leaves them (main() turns TF32
    on for the bench's own table); one bench-path row per object count repeats it with main()'s flags.
    """
    import tempfile

    out = RowWriter.from_args("bench_sam3", args, device)
    rows: list[dict] = []

    def keep(case: str, path: str, frames: int, r: dict) -> None:
        rows.append({"case": case, "path": path, "frames": frames, **r})
        for metric, unit in PIPELINE_METRICS:
            if metric in r:
                out.add(f"{case}, {path}", metric, r[metric], unit, frames=frames, dtype=str(dtype))

    if args.pipeline_detect and bundle.detector is None:
        add_detector(bundle, device, dtype, real_size=not args.tiny)
    bench_flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    with tempfile.TemporaryDirectory() as tmp, pipeline_flags():
        run_pipeline_path(bundle, LoopedClip(8, *hd), 1, device, detect=args.pipeline_detect)  # warm-up
        for n_obj in args.objects:
            clip = LoopedClip(args.fps_frames, *hd)
            case = f"{hd[1]}x{hd[0]}, {n_obj} obj"
            with pipeline_flags(*bench_flags):
                r, _ = run_ours(bundle, clip, n_obj, device)
            keep(case, "bench: propagate, bench's TF32", clip.n, r)
            r, packed = run_ours(bundle, clip, n_obj, device)
            keep(case, "bench: propagate (forward)", clip.n, r)
            r, tracks = run_pipeline_path(bundle, clip, n_obj, device, overlay_dir=Path(tmp))
            keep(case, "pipeline: points JSON", clip.n, {**r, "diff_px": diff_share(packed, tracks.packed)})
            r, tracks = run_pipeline_path(bundle, clip, n_obj, device, freeze_gc=True)
            keep(case, "pipeline: points, gc frozen", clip.n, {**r, "diff_px": diff_share(packed, tracks.packed)})
            if args.pipeline_detect:
                try:
                    r, _ = run_pipeline_path(bundle, clip, n_obj, device, detect=True)
                except Exception as err:  # noqa: BLE001 - random detector weights: report, keep the other rows
                    print(f"pipeline detection path failed: {type(err).__name__}: {err}", flush=True)
                else:
                    keep(case, "pipeline: detection", clip.n, r)
        if args.pipeline_load:
            keep("load", "load_sam3 (points, no detector)", 0,
                 time_load(Path(args.pipeline_load), device, dtype, tiny=args.tiny))
    print_pipeline_table(rows, device, dtype)
    if args.json:
        gpu = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
        Path(args.json).write_text(json.dumps({"device": gpu, "dtype": str(dtype), "rows": rows}, indent=2))
    return rows


@contextlib.contextmanager
def pipeline_flags(matmul_tf32: bool = False, cudnn_tf32: bool = True) -> Any:
    """TF32 flags for the block (default: torch's own defaults, which the pipeline keeps), restored afterwards."""
    with patched(torch.backends.cuda.matmul, "allow_tf32", matmul_tf32), \
            patched(torch.backends.cudnn, "allow_tf32", cudnn_tf32):
        yield


PIPELINE_METRICS = (("fps", "frames/s"), ("seconds", "s"), ("prompts_s", "s"), ("propagate_s", "s"),
                    ("release_s", "s"), ("stage_s", "s"), ("stage_fps", "frames/s"), ("overlay_s", "s"),
                    ("peak_gib", "GiB"), ("diff_px", "share"))


def print_pipeline_table(rows: list[dict], device: torch.device, dtype: torch.dtype) -> None:
    gpu = torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"\nSAM-3: bench propagate vs the pipeline's sam3 stage (warm process): {gpu}, torch {torch.__version__}, "
          f"dtype {dtype}, {time.strftime('%Y-%m-%d')}")
    cols = (("prompts s", "prompts_s", 9), ("propagate s", "propagate_s", 11), ("frames/s", "fps", 8),
            ("release s", "release_s", 9), ("stage s", "stage_s", 7), ("stage f/s", "stage_fps", 9),
            ("overlay s", "overlay_s", 9), ("load s", "seconds", 6), ("diff px %", "diff_px", 9))
    print(f"{'case':<20} {'path':<30} {'frames':>6} " + " ".join(f"{name:>{w}}" for name, _, w in cols))
    for r in rows:
        cells = []
        for _, key, width in cols:
            value = r.get(key)
            if key == "seconds" and r["case"] != "load":
                value = None  # the bench path's seconds are its propagate time
            if key == "propagate_s" and value is None and r["case"] != "load":
                value = r.get("seconds")
            text = "-" if value is None else (f"{100 * value:.4f}" if key == "diff_px" else f"{value:.2f}")
            cells.append(f"{text:>{width}}")
        print(f"{r['case']:<20} {r['path']:<30} {r['frames']:>6} " + " ".join(cells), flush=True)


if __name__ == "__main__":
    main()
