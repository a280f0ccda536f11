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
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench.clips import LoopedClip, box_prompts
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
    "all (default)": RunProfile().speed_options(),  # the run profile's sam3_speed fast
}

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
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                    help="speed variants for the frames/s rows (the first is the diff reference)")
    ap.add_argument("--compile", action="store_true", help="also time all speed-ups + a torch.compile'd backbone")
    ap.add_argument("--json", type=str, default="",
                    help="also write the rows to this JSON file (this bench's own form)")
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

    rows: list[dict] = []
    out = RowWriter.from_args("bench_sam3", args, device)

    def add(case: str, path: str, frames: int, r: dict) -> None:
        rows.append({"case": case, "path": path, "frames": frames, **r})
        print(rows[-1], flush=True)
        for metric, unit in (("fps", "frames/s"), ("seconds", "s"), ("peak_gib", "GiB"), ("diff_px", "share")):
            if metric in r:
                out.add(f"{case}, {path}", metric, r[metric], unit, frames=frames, dtype=str(dtype),
                        params_m=round(n_params / 1e6))

    for n_obj in args.objects:
        clip = LoopedClip(args.fps_frames, side, side)
        base = None
        for name in args.variants:
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
    if args.compile:
        try_compiled_backbone(bundle, side, args, device, add)
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


def try_compiled_backbone(bundle: Sam3Bundle, side: int, args: argparse.Namespace, device: torch.device,
                          add) -> None:
    """All speed-ups plus torch.compile of the ViT backbone (static 1008 shape); compile time reported."""
    encoder = bundle.tracker.vision_encoder
    eager = encoder.backbone
    try:
        encoder.backbone = torch.compile(eager)
        t0 = time.perf_counter()
        run_ours(bundle, LoopedClip(4, side, side), 1, device)
        sync(device)
        print(f"torch.compile of the backbone + first frames: {time.perf_counter() - t0:.1f} s", flush=True)
        for n_obj in args.objects:
            r, _ = run_ours(bundle, LoopedClip(args.fps_frames, side, side), n_obj, device)
            add(f"{side}x{side}, {n_obj} obj", "all + compiled backbone", args.fps_frames, r)
    except Exception as err:  # noqa: BLE001 - the compiled variant is optional
        print(f"compiled backbone failed: {type(err).__name__}: {err}", flush=True)
    finally:
        encoder.backbone = eager


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


if __name__ == "__main__":
    main()
