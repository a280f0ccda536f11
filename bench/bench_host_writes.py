"""Host-side (CPU) writes of the headless pipeline, timed item by item without any model.

Builds stage outputs of realistic size (default: 5 people x 90 frames at 720x1280, ~88
completed amodal person-frames, bodies with MHR LOD1 meshes of 18439 vertices), then times
what ``run_pipeline`` does outside its GPU stages: every ``.npz`` save, the per-id mask overlay
video, and the render stage's exports (MP4 of the rendered frames, params.npz, PLY meshes,
GLB). The render itself is a GPU stage: ``render_stage`` runs the pipeline's render stage with
the render stood in by a ``--render-s`` sleep (as on a GPU host: the exports overlap it), and
``--render`` adds the real stage with the CPU rasteriser (slow).

    python -m bench.bench_host_writes                     # full size (~1-2 min on 2 cores)
    python -m bench.bench_host_writes --tiny              # smoke test (seconds)
    python -m bench.bench_host_writes --profile tracks    # cProfile of one item (top 25 by cumulative)

Prints one markdown table: seconds and file size per item.
"""

from __future__ import annotations

import argparse
import cProfile
import inspect
import io
import json
import os
import platform
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from bench.clips import make_clip
from bench.patching import patched
from bench.printing import markdown_table
from bench.rows import RowWriter, add_rows_args
from body4d_core import export, pipeline as pl
from body4d_core.data import PARAM_DIMS, Amodal, Bodies, BodyFlag, Camera, Clip, Tracks
from body4d_core.prompts import parse_prompts

ITEMS = ("clip", "prompts", "tracks", "mask_overlay", "amodal", "camera", "bodies_raw", "bodies",
         "render_mp4", "params", "meshes", "glb", "render_stage", "render")


def build(args: argparse.Namespace) -> dict:
    """Frames and every stage output at the requested size (deterministic)."""
    from body4d_core.testing.checkpoints import uv_sphere

    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    sc = make_clip(args.frames, args.people, args.height, args.width)
    h, w, n, t = args.height, args.width, args.people, args.frames
    clip = Clip(30.0, t, (h, w), source="synthetic.mp4")
    prompts = parse_prompts(json.dumps(sc.prompts), (h, w), t)
    tracks = Tracks(np.arange(1, n + 1), sc.visible, (h, w))
    differs = (sc.visible != sc.amodal).reshape(n, t, -1).any(-1)
    cand = np.argwhere(differs)
    rows = cand[:args.completed] if len(cand) else np.zeros((0, 2), np.int64)
    occluded = np.zeros((n, t), bool)
    occluded[rows[:, 0], rows[:, 1]] = True
    # completion outputs are upsampled (bilinear, 2x) network images: smooth noise, like random weights give
    small = rng.integers(0, 256, (len(rows), (h + 1) // 2, (w + 1) // 2, 3), dtype=np.uint8)
    rgb = np.repeat(np.repeat(small, 2, 1), 2, 2)[:, :h, :w]
    iou = np.where(occluded, rng.random((n, t)), np.nan).astype(np.float32)
    amodal = Amodal(np.arange(1, n + 1), occluded, sc.amodal, (h, w), iou, rows.astype(np.int64), rgb)
    camera = Camera.default((h, w), t)
    sphere, faces = uv_sphere() if args.verts == 18439 else uv_sphere(rows=max(args.verts // 64, 2), cols=64)
    base = sphere.numpy() * np.array([0.25, 0.85, 0.2], np.float32)
    verts = base[None, None] + rng.normal(0, 0.01, (n, t) + base.shape).astype(np.float32)
    params = {k: rng.normal(0, 0.3, (n, t, d)).astype(np.float32) for k, d in PARAM_DIMS.items()}
    params["cam_t"] = np.stack(np.broadcast_arrays(
        (np.arange(n)[:, None] - n / 2) * 0.8, np.zeros((n, t)), np.full((n, t), 6.0)), -1).astype(np.float32)
    extras = {"model_params": rng.normal(0, 1, (n, t, 204)).astype(np.float32),
              "joint_coords": rng.normal(0, 1, (n, t, 127, 3)).astype(np.float32),
              "joint_rots": rng.normal(0, 1, (n, t, 127, 3, 3)).astype(np.float32)}
    bodies = Bodies(np.arange(1, n + 1), np.where(occluded, BodyFlag.OCCLUDED, BodyFlag.VISIBLE).astype(np.uint8),
                    params, (h, w), keypoints_3d=rng.normal(0, 1, (n, t, 70, 3)).astype(np.float32),
                    keypoints_2d=rng.uniform(0, w, (n, t, 70, 2)).astype(np.float32), vertices=verts,
                    faces=faces.numpy().astype(np.int32), confidence=np.ones((n, t), np.float32), extras=extras)
    print(f"built inputs in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return {"frames": sc.frames, "clip": clip, "prompts": prompts, "tracks": tracks, "amodal": amodal,
            "camera": camera, "bodies": bodies}


def tasks(d: dict, out: Path, args: argparse.Namespace) -> dict[str, Callable[[], Path | None]]:
    """One callable per timed item, writing into out (the same calls run_pipeline makes)."""
    summary = pl.RunSummary(out)
    video_preset = {"preset": pl.VIDEO_PRESET} if hasattr(pl, "VIDEO_PRESET") else {}  # as the pipeline encodes
    opts = pl.PipelineOptions(write_meshes=True, write_glb=True)

    def mask_overlay() -> Path:
        path = out / "mask_overlay.mp4"
        if len(inspect.signature(pl._write_mask_overlay).parameters) == 5:  # before the fifth session
            pl._write_mask_overlay(d["frames"], d["tracks"], d["clip"], out, summary)
        else:
            pl._write_mask_overlay(d["frames"], d["tracks"], d["clip"], path)
        return path

    def render_stage() -> Path:
        """The render stage as on a GPU host: the render is a stand-in taking --render-s seconds."""
        import torch

        from body4d_core import render as rd

        def gpu_render(frames, bodies, camera, mode="overlay", hooks=None):  # noqa: ANN001, ARG001
            time.sleep(args.render_s)
            return frames, np.zeros(frames.shape[:3], np.float32)

        with patched(rd, "render_bodies", gpu_render), patched(torch.cuda, "is_available", lambda: True):
            pl._render_and_export(d["frames"], d["clip"], d["bodies"], d["camera"], opts, out / "stage", summary,
                                  pl.NULL_HOOKS)
        return out / "stage"

    def render() -> Path:
        pl._render_and_export(d["frames"], d["clip"], d["bodies"], d["camera"], opts, out, summary,
                              pl.NULL_HOOKS)
        return out / "render_4d.mp4"

    return {
        "clip": lambda: d["clip"].save_npz(out / "clip.npz"),
        "prompts": lambda: d["prompts"].save_npz(out / "prompts.npz"),
        "tracks": lambda: d["tracks"].save_npz(out / "tracks.npz"),
        "mask_overlay": mask_overlay,
        "amodal": lambda: d["amodal"].save_npz(out / "amodal.npz"),
        "camera": lambda: d["camera"].save_npz(out / "camera.npz"),
        "bodies_raw": lambda: d["bodies"].save_npz(out / "bodies_raw.npz"),
        "bodies": lambda: d["bodies"].save_npz(out / "bodies.npz"),
        # render stage without the (GPU) render: the rendered frames are stood in for by the clip's frames
        "render_mp4": lambda: export.write_mp4(out / "render_4d.mp4", d["frames"], d["clip"].fps, d["clip"].image_size,
                                               **video_preset),
        "params": lambda: export.save_params(d["bodies"], out / "params.npz", d["camera"]),
        "meshes": lambda: export.write_meshes(d["bodies"], out / "meshes"),
        "glb": lambda: export.write_glb(d["bodies"], out / "glb", fps=d["clip"].fps),
        "render_stage": render_stage,
        "render": render,
    }


def size_of(path: Path | None) -> int:
    if path is None or not Path(path).exists():
        return 0
    p = Path(path)
    return p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="6 frames, 2 people, 96x128, small meshes")
    ap.add_argument("--frames", type=int, default=None)
    ap.add_argument("--people", type=int, default=None)
    ap.add_argument("--size", default=None, help="HxW (default 720x1280)")
    ap.add_argument("--completed", type=int, default=None, help="completed amodal person-frames (default 88)")
    ap.add_argument("--verts", type=int, default=None, help="mesh vertices (default 18439 = MHR LOD1)")
    ap.add_argument("--render", action="store_true", help="also time the whole render stage (CPU rasteriser)")
    ap.add_argument("--render-s", type=float, default=1.0,
                    help="seconds the stand-in GPU render takes in the render_stage item (default 1.0)")
    ap.add_argument("--only", default="", help="comma-separated items to time (default all but render)")
    ap.add_argument("--profile", default="", help="cProfile this item and print the top functions")
    ap.add_argument("--out", default="", help="keep the files here (default: temporary)")
    add_rows_args(ap)
    args = ap.parse_args(argv)
    args.frames = args.frames or (6 if args.tiny else 90)
    args.people = args.people or (2 if args.tiny else 5)
    args.height, args.width = (int(v) for v in (args.size or ("96x128" if args.tiny else "720x1280")).split("x"))
    args.completed = args.completed if args.completed is not None else (3 if args.tiny else 88)
    args.verts = args.verts or (258 if args.tiny else 18439)
    names = [s for s in args.only.split(",") if s] or [i for i in ITEMS if i != "render" or args.render]
    bad = [s for s in names + ([args.profile] if args.profile else []) if s not in ITEMS]
    if bad:
        ap.error(f"unknown items {bad}; choose from {', '.join(ITEMS)}")
    args.items = names
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    d = build(args)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench_host_writes_"))
    out.mkdir(parents=True, exist_ok=True)
    jobs = tasks(d, out, args)
    rows = []
    for name in args.items:
        prof = cProfile.Profile() if name == args.profile else None
        t0 = time.perf_counter()
        if prof:
            prof.enable()
        path = jobs[name]()
        if prof:
            prof.disable()
        dt = time.perf_counter() - t0
        rows.append((name, dt, size_of(path)))
        if prof:
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(25)
            print(s.getvalue(), file=sys.stderr)
    saves = sum(dt for n, dt, _ in rows if n in ITEMS[:8])
    lines = ["", f"## Host-side writes ({args.people} people x {args.frames} frames, {args.height}x{args.width}, "
             f"{len(d['amodal'].completed_index)} completed, {d['bodies'].vertices.shape[2]} vertices)", ""]
    table = [(n, f"{dt:.2f}", f"{b / 1e6:.1f}") for n, dt, b in rows]
    table.append(("**untimed part of run_pipeline (first 8 rows)**", f"**{saves:.2f}**", ""))
    lines.append(markdown_table(["item", "seconds", "MB"], table, align="lrr"))
    lines.append(f"\nMachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
                 f"python {platform.python_version()}, numpy {np.__version__}.")
    print("\n".join(lines), flush=True)
    out_rows = RowWriter.from_args("bench_host_writes", args, "cpu")
    extra = {"people": args.people, "frames": args.frames, "size": f"{args.height}x{args.width}",
             "completed": len(d["amodal"].completed_index), "vertices": int(d["bodies"].vertices.shape[2])}
    for n, dt, b in rows:
        out_rows.add(n, "seconds", dt, "s", mb=b / 1e6, **extra)
    out_rows.add("untimed part of run_pipeline (first 8 rows)", "seconds", saves, "s", **extra)
    if not args.out:
        import shutil

        shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
