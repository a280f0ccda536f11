"""Render speed of the torch z-buffer renderer at MHR mesh size (CPU, and GPU when present).

Each synthetic person is a capsule with about MHR LOD1's size (~18k vertices, ~37k faces),
standing 3-5 m in front of the camera and moving a little every frame. Prints frames per
second per mode and device for a few resolutions and person counts.

Run: python bench/bench_render.py [--frames 16] [--people 1 5] [--sizes 512x512 1080x1920]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from body4d_core.data import Bodies, BodyFlag, Camera  # noqa: E402
from body4d_core.render import render_bodies  # noqa: E402


def person_mesh() -> tuple[np.ndarray, np.ndarray]:
    """A capsule of ~18k vertices / ~37k faces, 1.7 m tall, in OpenCV axes (y down)."""
    import trimesh

    m = trimesh.creation.capsule(height=1.3, radius=0.2, count=[96, 192])
    v = np.asarray(m.vertices, np.float32)[:, [0, 2, 1]] * np.array([1, -1, 1], np.float32)
    return v, np.asarray(m.faces, np.int32)


def scene(people: int, frames: int, size: tuple[int, int]) -> tuple[Bodies, Camera]:
    v, f = person_mesh()
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--people", type=int, nargs="+", default=[1, 5])
    ap.add_argument("--sizes", nargs="+", default=["512x512", "1080x1920"])
    ap.add_argument("--modes", nargs="+", default=["overlay", "silhouette", "depth"])
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    v, f = person_mesh()
    print(f"mesh: {len(v)} vertices, {len(f)} faces per person; {args.frames} frames per run")
    print(f"{'device':<7}{'size':>11}{'people':>8}{'mode':>12}{'frames/s':>10}")
    for dev in devices:
        for s in args.sizes:
            h, w = (int(x) for x in s.split("x"))
            for n in args.people:
                b, cam = scene(n, args.frames, (h, w))
                bg = np.full((args.frames, h, w, 3), 128, np.uint8)
                for mode in args.modes:
                    one = b.replace(flags=b.flags[:, :1], params={k: x[:, :1] for k, x in b.params.items()},
                                    vertices=b.vertices[:, :1])
                    render_bodies(bg[:1], one, Camera(cam.intrinsics[:1], cam.image_size), mode=mode, device=dev)
                    if dev == "cuda":
                        torch.cuda.synchronize()
                    start = time.perf_counter()
                    render_bodies(bg, b, cam, mode=mode, device=dev)
                    if dev == "cuda":
                        torch.cuda.synchronize()
                    fps = args.frames / (time.perf_counter() - start)
                    print(f"{dev:<7}{s:>11}{n:>8}{mode:>12}{fps:>10.1f}")


if __name__ == "__main__":
    main()
