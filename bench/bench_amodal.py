"""Amodal Complete on a GPU: real-size random networks, 5 people x 90 frames with occlusion.

Networks at the released sizes with random weights: two Diffusion-VAS pipelines (SVD-XT UNet
+ conv_in2, SVD temporal VAE, CLIP ViT-H/14) and Depth Anything V2 Large. Random weights do
not segment anything, so the amodal-mask sampler runs for real (its time counts) but its
output is replaced by known amodal masks: each person is hidden behind a moving bar for 14
frames, which fixes how much refinement and completion work follows, as in a real clip.

Prints one table: depth, amodal masks (detection pass), refinement and completion times,
total, peak VRAM, plus the no-occlusion fast path. Targets: total < 60 s, peak < 24 GB.

    python bench/bench_amodal.py                # H200, bf16, 5 people x 90 frames at 720p
    python bench/bench_amodal.py --upstream-style   # + SAM-Body4D's orchestration, same networks
    python bench/bench_amodal.py --tiny         # CPU smoke test of the script
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from body4d_core.amodal.config import OcclusionConfig, SamplerConfig  # noqa: E402
from body4d_core.amodal.models import AmodalModels, DepthEstimator  # noqa: E402
from body4d_core.amodal.stage import run_amodal  # noqa: E402
from body4d_core.amodal.synthetic import build_depth_model, build_vas_pipeline  # noqa: E402
from body4d_core.data import Tracks  # noqa: E402


class ComputeThenTruth:
    """Runs the real sampler (timed work) and returns the known amodal masks instead."""

    def __init__(self, pipe, truth: dict[int, np.ndarray]) -> None:
        self.pipe, self.truth = pipe, truth

    def run_jobs(self, jobs, sampler, hooks=None, budget_px=1 << 20):
        self.pipe.run_jobs(jobs, sampler, budget_px=budget_px)
        out = []
        for j in jobs:
            m = torch.from_numpy(self.truth[j.obj_id][j.frames]).float()[:, None]
            out.append(F.interpolate(m, size=tuple(j.cond_a.shape[-2:]), mode="area").expand(-1, 3, -1, -1))
        return out


def upstream_style(models: AmodalModels, mask_pipe, content_pipe, rgb: torch.Tensor, tracks: Tracks,
                   segments: dict[int, list[tuple[int, int]]], occ: OcclusionConfig, smp: SamplerConfig,
                   budget_px: int) -> float:
    """Seconds for SAM-Body4D's orchestration of the same networks and the same occluded windows:
    people one at a time in consecutive 64-frame batches, and for every occluded person the
    depth of the whole clip recomputed before its refinement and completion."""
    from body4d_core.amodal.depth import normalize_depth, resize_depth
    from body4d_core.amodal.job import VideoJob
    from body4d_core.amodal.occlusion import detection_size

    one = SamplerConfig(steps=smp.steps, window=64, overlap=0, people_batch=1, decode_chunk_size=smp.decode_chunk_size)
    h, w = rgb.shape[1:3]
    det = detection_size((h, w), occ.detection_resolution)
    comp = detection_size((h, w), occ.completion_resolution)
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    t0 = time.perf_counter()
    depth = resize_depth(normalize_depth(models.depth(rgb)), det)
    for k, o in enumerate(tracks.obj_ids.tolist()):
        m = F.interpolate(torch.from_numpy(tracks.masks_of(o)).float()[:, None], size=det, mode="area") * 2 - 1
        for s in range(0, tracks.num_frames, 64):
            mask_pipe.run_jobs([VideoJob(m[s:s + 64], depth[s:s + 64], o, np.arange(s, min(s + 64, len(m))), o)],
                               one, budget_px=budget_px)
    for o, segs in segments.items():
        if not segs:
            continue
        a, b = segs[0][0], segs[-1][1]
        dcomp = resize_depth(normalize_depth(models.depth(rgb)), comp)[a:b]
        m = F.interpolate(torch.from_numpy(tracks.masks_of(o, slice(a, b))).float()[:, None], size=comp,
                          mode="area") * 2 - 1
        mask_pipe.run_jobs([VideoJob(m, dcomp, o, np.arange(a, b), o)], one, budget_px=budget_px)
        content_pipe.run_jobs([VideoJob(m.expand(-1, 3, -1, -1), m, o, np.arange(a, b), o)], one, budget_px=budget_px)
    sync()
    return time.perf_counter() - t0


def make_clip(people: int, frames: int, h: int, w: int, hide: int = 14, occluded: bool = True):
    """Frames, amodal truth per id and visible tracks: ellipse people, each hidden by a bar once."""
    rng = np.random.default_rng(0)
    rgb = torch.from_numpy(rng.integers(0, 255, (frames, h, w, 3), dtype=np.uint8))
    yy, xx = np.mgrid[0:h, 0:w]
    truth, visible = {}, []
    for p in range(people):
        masks = np.zeros((frames, h, w), bool)
        vis = np.zeros_like(masks)
        cx0 = (p + 0.5) * w / people
        start = 8 + p * ((frames - 8 - hide) // max(1, people))
        for t in range(frames):
            cx = cx0 + 0.02 * w * np.sin(t / 10 + p)
            m = ((xx - cx) / (0.05 * w)) ** 2 + ((yy - 0.55 * h) / (0.3 * h)) ** 2 <= 1
            masks[t] = m
            bar = np.zeros((h, w), bool)
            if occluded and start <= t < start + hide:
                bar[:, int(cx - 0.06 * w):int(cx + 0.03 * w)] = True
            vis[t] = m & ~bar
        truth[p + 1] = masks
        visible.append(vis)
    return rgb, truth, Tracks.from_masks(range(1, people + 1), np.stack(visible))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--people", type=int, default=5)
    ap.add_argument("--frames", type=int, default=90)
    ap.add_argument("--size", default="720x1280", help="clip height x width")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--people-batch", type=int, default=4)
    ap.add_argument("--budget-px", type=int, default=1 << 20, help="latent pixels x frames x 2 per UNet call")
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--upstream-style", action="store_true",
                    help="also time SAM-Body4D's orchestration of the same networks (adds ~1.5x the run)")
    ap.add_argument("--no-refine", action="store_true", help="reuse detection masks instead of the 512x1024 pass")
    ap.add_argument("--tiny", action="store_true", help="tiny networks on the CPU (smoke test)")
    a = ap.parse_args()

    dev = torch.device("cpu" if a.tiny or not torch.cuda.is_available() else "cuda")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[a.dtype] if dev.type == "cuda" \
        else torch.float32
    preset = "tiny" if a.tiny else "real"
    h, w = (int(v) for v in a.size.split("x"))
    occ = OcclusionConfig(refine=not a.no_refine)
    smp = SamplerConfig(steps=a.steps, people_batch=a.people_batch, window=a.window)
    if a.tiny:
        h, w, a.frames, a.people = 64, 96, min(a.frames, 20), min(a.people, 2)
        occ = OcclusionConfig(detection_resolution=(32, 48), completion_resolution=(64, 96), refine=not a.no_refine)
        smp = SamplerConfig(steps=2, people_batch=a.people_batch, window=a.window)

    t0 = time.perf_counter()
    mask_pipe = build_vas_pipeline(preset, 0, dev, dtype)
    content_pipe = build_vas_pipeline(preset, 1, dev, dtype)
    dmodel, prep = build_depth_model(preset, 2, dev)
    dmodel.to(dtype if dev.type == "cuda" else torch.float32)
    build_s = time.perf_counter() - t0
    params = {n: sum(p.numel() for p in m.parameters()) / 1e6
              for n, m in zip(("unet", "vae", "clip"), mask_pipe.models())}
    params["depth"] = sum(p.numel() for p in dmodel.parameters()) / 1e6

    rgb, truth, tracks = make_clip(a.people, a.frames, h, w)
    models = AmodalModels(ComputeThenTruth(mask_pipe, truth), content_pipe, DepthEstimator(dmodel, prep, dtype),
                          dev, dtype)
    # warm-up (kernel selection, lazy init) on a short slice
    wt = min(6, a.frames)
    wclip = Tracks.from_masks(tracks.obj_ids[:1], tracks.masks_of(1, slice(0, wt))[None])
    run_amodal(rgb[:wt], wclip, AmodalModels(mask_pipe, content_pipe, models.depth, dev, dtype), occ,
               SamplerConfig(steps=1, window=a.window), budget_px=a.budget_px)

    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    amodal, stats = run_amodal(rgb, tracks, models, occ, smp, budget_px=a.budget_px)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    total = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else float("nan")

    rgb2, truth2, tracks2 = make_clip(a.people, a.frames, h, w, occluded=False)
    fast_models = AmodalModels(ComputeThenTruth(mask_pipe, truth2), content_pipe, models.depth, dev, dtype)
    t1 = time.perf_counter()
    fast, fstats = run_amodal(rgb2, tracks2, fast_models, occ, smp, budget_px=a.budget_px)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    fast_total = time.perf_counter() - t1

    up_s = upstream_style(models, mask_pipe, content_pipe, rgb, tracks, stats.segments, occ, smp, a.budget_px) \
        if a.upstream_style else None

    det = occ.detection_resolution
    comp = occ.completion_resolution
    seg_frames = sum(b - s for segs in stats.segments.values() for s, b in segs)
    n_seg = sum(len(v) for v in stats.segments.values())
    name = torch.cuda.get_device_name() if dev.type == "cuda" else "CPU"
    print(f"\nAmodal Complete benchmark - {name}, {a.dtype if dev.type == 'cuda' else 'fp32'}, {preset} networks "
          f"(M params: UNet {params['unet']:.0f}, VAE {params['vae']:.0f}, CLIP {params['clip']:.0f}, "
          f"depth {params['depth']:.0f}; built in {build_s:.1f} s)")
    print(f"clip: {a.people} people x {a.frames} frames at {h}x{w}; {smp.steps} steps, guidance {smp.guidance}, "
          f"window {smp.window}/{smp.overlap}, people batch {smp.people_batch}, budget {a.budget_px} px\n")
    rows = [
        ("depth (once per clip)", stats.timings["depth"], f"{a.frames} frames"),
        (f"amodal masks @{det[0]}x{det[1]}", stats.timings["detect"], f"{a.people * a.frames} person-frames"),
        (f"refine @{comp[0]}x{comp[1]}", stats.timings["refine"], f"{seg_frames} person-frames in {n_seg} segments"),
        (f"completion @{comp[0]}x{comp[1]}", stats.timings["complete"],
         f"{stats.completed_frames} occluded person-frames kept"),
        ("total", total, "target < 60 s: " + ("PASS" if total < 60 else "FAIL")),
        ("no-occlusion clip (fast path)", fast_total,
         f"refine {fstats.timings['refine']:.2f} s, completion {fstats.timings['complete']:.2f} s"),
    ]
    if up_s is not None:
        rows.append(("upstream-style orchestration", up_s, f"same networks and windows; ours is {up_s / total:.1f}x "
                                                            "faster"))
    print(f"| {'stage':34s} | {'seconds':>8s} | notes")
    print(f"|{'-' * 36}|{'-' * 10}|{'-' * 40}")
    for label, sec, note in rows:
        print(f"| {label:34s} | {sec:8.2f} | {note}")
    verdict = "n/a" if dev.type != "cuda" else ("PASS" if peak < 24 else "FAIL")
    print(f"| {'peak VRAM (GiB)':34s} | {peak:8.2f} | target < 24 GiB: {verdict}")
    print(f"\noccluded person-frames flagged: {int(amodal.occluded.sum())} (fast path: {int(fast.occluded.sum())})")


if __name__ == "__main__":
    main()
