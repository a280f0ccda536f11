"""Render speed of the torch z-buffer renderer at MHR mesh size, new vs the pre-issue-6 baseline.

Each synthetic person is a closed capsule with about MHR LOD1's size (~18k vertices, ~37k
faces), standing 3-5 m in front of the camera and moving a little every frame. For every
device, size, person count and mode it times the variants side by side and prints ONE table
of frames/s, plus how many mask/id pixels each variant differs from the baseline by.

Variants: new (batched, culled), nocull (new without back-face culling), legacy (the
per-frame renderer of commit b85f415, bench/render_legacy.py).

GPU run (about 1.5 min on an H200 host):
    python -m bench.bench_render
Smoke test on a CPU box (seconds):
    python -m bench.bench_render --tiny --devices cpu
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from bench import render_legacy
from bench.patching import patched
from bench.rows import RowWriter, add_rows_args, device_name
from bench.timers import Stopwatch
from body4d_core import render
from body4d_core.data import Bodies, BodyFlag, Camera

VARIANTS = ("new", "nocull", "legacy")


def person_mesh(count: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """A closed capsule (count=96: ~18k vertices / ~37k faces), 1.7 m tall, in OpenCV axes (y down)."""
    import trimesh

    m = trimesh.creation.capsule(height=1.3, radius=0.2, count=[count, 2 * count])
    v = np.asarray(m.vertices, np.float32)[:, [0, 2, 1]] * np.array([1, -1, 1], np.float32)
    return v, np.asarray(m.faces, np.int32)


def scene(people: int, frames: int, size: tuple[int, int], count: int = 96) -> tuple[Bodies, Camera]:
    """People side by side at 3, 3.4, 3.8... m, drifting right 1 cm per frame."""
    v, f = person_mesh(count)
    h, w = size
    b = Bodies.empty(np.arange(1, people + 1), frames, size)
    p = {k: x.copy() for k, x in b.params.items()}
    t = np.arange(frames)
    for i in range(people):
        p["cam_t"][i] = np.stack([(i - (people - 1) / 2) * 0.6 + 0.01 * t, 0.0 * t, 3.0 + 0.4 * i + 0 * t], -1)
    verts = np.broadcast_to(v, (people, frames) + v.shape).copy()
    flags = np.full((people, frames), BodyFlag.VISIBLE, np.uint8)
    return b.replace(params=p, flags=flags, vertices=verts, faces=f), Camera.from_focal(float(np.hypot(h, w)) * 0.8,
                                                                                        size, frames, "manual")


def run_variant(variant: str, bg: np.ndarray, b: Bodies, cam: Camera, mode: str, dev: str,
                batch: int) -> tuple[float, np.ndarray]:
    """Frames/s of one variant (after a one-frame warm-up) and its owner-id maps."""
    fn = render_legacy.render_bodies if variant == "legacy" else render.render_bodies
    is_closed = (lambda faces: False) if variant == "nocull" else render.is_closed  # nocull: no back-face culling
    with patched(render, "is_closed", is_closed):
        one = b.replace(flags=b.flags[:, :1], params={k: x[:, :1] for k, x in b.params.items()},
                        vertices=b.vertices[:, :1])
        fn(bg[:1], one, Camera(cam.intrinsics[:1], cam.image_size), mode=mode, device=dev, batch_size=batch)
        with Stopwatch(dev) as sw:
            _, _, ids = fn(bg, b, cam, mode=mode, device=dev, batch_size=batch, return_ids=True)
        return len(bg) / sw.seconds, ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--batch", type=int, default=16, help="frames per render batch")
    ap.add_argument("--people", type=int, nargs="+", default=[1, 5])
    ap.add_argument("--sizes", nargs="+", default=["512x512", "720x1280", "1080x1920"], help="HxW")
    ap.add_argument("--modes", nargs="+", default=["overlay", "silhouette", "depth"])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--devices", nargs="+", default=None, help="default: cuda if present, else cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--tiny", action="store_true", help="smoke test: 2 frames, 48x64 and 72x96, small meshes")
    add_rows_args(ap)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    count = 96
    if args.tiny:
        args.frames, args.sizes, args.people, count = 2, ["48x64", "72x96"], [1, 2], 12
    devices = args.devices or (["cuda"] if torch.cuda.is_available() else ["cpu"])
    v, f = person_mesh(count)
    print(f"mesh: {len(v)} vertices, {len(f)} faces per person (closed: {render.is_closed(f)}); "
          f"{args.frames} frames per run, batch {args.batch}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads" + (f", {torch.cuda.get_device_name()}" if "cuda" in devices else ""))
    rows = []
    out = RowWriter.from_args("bench_render", args)
    t0 = time.perf_counter()
    for dev in devices:
        for s in args.sizes:
            h, w = (int(x) for x in s.split("x"))
            for n in args.people:
                b, cam = scene(n, args.frames, (h, w), count)
                bg = np.full((args.frames, h, w, 3), 128, np.uint8)
                for mode in args.modes:
                    res = {var: run_variant(var, bg, b, cam, mode, dev, args.batch) for var in args.variants}
                    ref = res[args.variants[-1]][1]
                    rows.append((dev, s, n, mode, {var: fps for var, (fps, _) in res.items()},
                                 {var: int((ids != ref).sum()) for var, (_, ids) in res.items()}))
                    out.device = device_name(dev)
                    for var, (fps, _) in res.items():
                        out.add(f"{dev} {s} {n} people {mode} {var}", "frames_per_s", fps, "frames/s",
                                diff_px=rows[-1][5][var], frames=args.frames, batch=args.batch,
                                vertices=len(v), faces=len(f))
                    print(f"  done {dev} {s} {n} {mode} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    head = "".join(f"{v + ' fps':>13}" for v in args.variants) + "".join(f"{v + ' diff':>13}" for v in args.variants)
    print(f"{'device':<7}{'size (HxW)':>11}{'people':>8}{'mode':>12}{head}")
    for dev, s, n, mode, fps, diff in rows:
        vals = "".join(f"{fps[v]:>13.1f}" for v in args.variants) + "".join(f"{diff[v]:>13d}" for v in args.variants)
        print(f"{dev:<7}{s:>11}{n:>8}{mode:>12}{vals}")
    print(f"diff = owner-id pixels that differ from the {args.variants[-1]} variant; total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
