"""SAM-3 propagation benchmark: real-size random tracker weights (config defaults), bf16 on CUDA.

Rows: frames/s for 1 and 5 objects on 1008x1008 frames for each speed variant of our
streamed propagate side by side (baseline = per-object loop with synced copies, then each
speed-up alone, then all), beside transformers' own whole-video session
(``init_video_session(video=...)`` + ``propagate_in_video_iterator``); "diff px" is the share
of mask pixels that differ from the baseline's (0 on the CPU; bf16 batching may flip a few).
Then peak VRAM for 720p clips of growing length (should stay flat), and optionally a
torch.compile'd vision backbone (compile time reported).

    python bench/bench_sam3.py                 # the full table on a GPU (~4-5 min on an H200)
    python bench/bench_sam3.py --tiny          # a CPU smoke run with the tiny test model
    python bench/bench_sam3.py --lengths 100 500 --reference-max 500 --fps-frames 60
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from body4d_core.data import ObjectPrompt, Prompts  # noqa: E402
from body4d_core.sam3 import propagate  # noqa: E402
from body4d_core.sam3.propagate import BASELINE, SpeedOptions  # noqa: E402
from body4d_core.sam3.loading import Sam3Bundle, build_processor, tiny_sam3  # noqa: E402


class SyntheticClip:
    """A clip of any length cycling through a small pool of generated frames (a panning texture
    with a moving blob), so neither RAM nor frame generation time grows with the length."""

    POOL = 48

    def __init__(self, num_frames: int, height: int, width: int):
        self.n, self.h, self.w = num_frames, height, width
        self.shape = (num_frames, height, width, 3)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        base = (np.stack([xx / width, yy / height, 0.5 + 0.5 * np.sin(xx / 37.0) * np.cos(yy / 23.0)], -1)
                * 255).astype(np.uint8)
        self.pool = []
        for i in range(min(self.POOL, num_frames)):
            img = np.roll(base, shift=(i * 3, i * 2), axis=(0, 1))
            cx, cy = width * (0.3 + 0.4 * i / self.POOL), height * 0.5
            img[(xx - cx) ** 2 + (yy - cy) ** 2 < (0.12 * height) ** 2] = (220, 40, 40)
            self.pool.append(np.ascontiguousarray(img))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> np.ndarray:
        k = i % (2 * len(self.pool) - 2) if len(self.pool) > 1 else 0  # ping-pong: smooth motion
        return self.pool[k if k < len(self.pool) else 2 * len(self.pool) - 2 - k]


def prompts_for(clip: SyntheticClip, n_obj: int) -> Prompts:
    """n_obj box prompts on frame 0, spread across the frame."""
    items = []
    for k in range(n_obj):
        x0 = clip.w * (0.05 + 0.9 * k / max(n_obj, 1))
        items.append(ObjectPrompt(k + 1, 0, box=[x0, clip.h * 0.3, min(clip.w, x0 + clip.w * 0.15), clip.h * 0.8]))
    return Prompts(items, (clip.h, clip.w), clip.n)


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


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")


VARIANTS = {
    "baseline (per object, synced)": BASELINE,
    "batched objects": SpeedOptions(batch_objects=True, async_io=False, prefetch=False),
    "async io (pinned, deferred)": SpeedOptions(batch_objects=False, async_io=True, prefetch=False),
    "async io + prefetch": SpeedOptions(batch_objects=False, async_io=True, prefetch=True),
    "all (default)": SpeedOptions(),
}

_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def diff_share(a: np.ndarray, b: np.ndarray) -> float:
    """Share of mask pixels set in either packed mask stack that differ between the two."""
    if np.array_equal(a, b):
        return 0.0
    union = _POPCOUNT[np.bitwise_or(a, b)].sum(dtype=np.int64)
    return float(_POPCOUNT[np.bitwise_xor(a, b)].sum(dtype=np.int64) / max(union, 1))


def run_ours(bundle: Sam3Bundle, clip: SyntheticClip, n_obj: int, device: torch.device,
             speed: SpeedOptions = SpeedOptions()) -> tuple[dict, np.ndarray]:
    prompts = prompts_for(clip, n_obj)
    peak_reset(device)
    sync(device)
    t0 = time.perf_counter()
    tracks = propagate(bundle, clip, prompts, "forward", speed=speed)
    sync(device)
    dt = time.perf_counter() - t0
    assert tracks.present.any(), "random weights should still produce masks"
    return {"seconds": dt, "fps": clip.n / dt, "peak_gib": peak_gib(device)}, tracks.packed


def run_reference(bundle: Sam3Bundle, clip: SyntheticClip, n_obj: int, device: torch.device) -> dict:
    """transformers' documented whole-video path: every frame preprocessed and kept on the device."""
    proc, model = bundle.processor, bundle.tracker
    prompts = prompts_for(clip, n_obj)
    peak_reset(device)
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
    result = {"seconds": dt, "fps": clip.n / dt, "peak_gib": peak_gib(device)}
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
    ap.add_argument("--json", type=str, default="", help="also write the rows to this JSON file")
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
    for speed in (BASELINE, SpeedOptions()):  # warm-up (kernels, allocator, pinned host blocks)
        run_ours(bundle, SyntheticClip(8, side, side), 2, device, speed)

    rows: list[dict] = []

    def add(case: str, path: str, frames: int, r: dict) -> None:
        rows.append({"case": case, "path": path, "frames": frames, **r})
        print(rows[-1], flush=True)

    for n_obj in args.objects:
        clip = SyntheticClip(args.fps_frames, side, side)
        base = None
        for name in args.variants:
            r, packed = run_ours(bundle, clip, n_obj, device, VARIANTS[name])
            base = packed if base is None else base
            add(f"{side}x{side}, {n_obj} obj", name, clip.n, {**r, "diff_px": diff_share(base, packed)})
        if args.reference_max >= args.fps_frames:
            try_reference(bundle, clip, n_obj, device, f"{side}x{side}, {n_obj} obj", add)
    for n in args.lengths:
        clip = SyntheticClip(n, *hd)
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


def try_reference(bundle: Sam3Bundle, clip: SyntheticClip, n_obj: int, device: torch.device, case: str,
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
        run_ours(bundle, SyntheticClip(4, side, side), 1, device)
        sync(device)
        print(f"torch.compile of the backbone + first frames: {time.perf_counter() - t0:.1f} s", flush=True)
        for n_obj in args.objects:
            r, _ = run_ours(bundle, SyntheticClip(args.fps_frames, side, side), n_obj, device)
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
