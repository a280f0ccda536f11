"""Animation exports at real MHR size: file sizes and write times of the scene GLB, BVH and flags.

A random rig with MHR's sizes (127 joints, LOD1's 18439 vertices / 36874 faces, two skin
influences per vertex) drives random motions; the numbers measure the writers, not the rig
(no real MHR weights are needed). Also prints the fidelity of the skinned export against the
full rig on the first person (vertex error from the pose correctives LBS cannot carry: with a
random rig this shows the measurement works, its size says nothing about real MHR; joints exact).

    python3 bench/bench_anim.py                        # 5 people x 90 frames and 1 person x 1800 frames
    python3 bench/bench_anim.py --cases 2x30 --tiny    # smoke test (seconds)

Prints one markdown table: per case, seconds to build and to write, and the size of each file kind.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from body4d_core.anim import animation_files, scene_motions  # noqa: E402
from body4d_core.anim.fidelity import measure  # noqa: E402
from body4d_core.atomic import write_bytes_atomic  # noqa: E402
from body4d_core.data import Bodies, BodyFlag, Camera  # noqa: E402
from body4d_core.sam3d_body.mhr_rig import MhrRig, random_rig_tensors  # noqa: E402
from body4d_core.tiny import uv_sphere  # noqa: E402


def make_case(people: int, frames: int, num_verts: int, num_joints: int, faces: np.ndarray, seed: int = 0) -> Bodies:
    """Random bodies with a smooth random motion, a few missing / filled / completed frames."""
    g = np.random.default_rng(seed)
    b = Bodies.empty(list(range(1, people + 1)), frames, (720, 1280))
    t = np.linspace(0, 2 * np.pi, frames)[None, :, None]
    params = {k: (0.2 * np.sin(t * (1 + g.random(v.shape[2])) + g.random(v.shape[2]))).astype(np.float32)
              .repeat(people, 0) for k, v in b.params.items()}
    params["cam_t"][..., 2] += 4.0
    params["shape"][:] = g.standard_normal((people, 1, 45)).astype(np.float32) * 0.3
    params["expr"][:] = 0.0
    flags = np.full((people, frames), BodyFlag.VISIBLE, np.uint8)
    flags[:, frames // 3:frames // 3 + 3] = BodyFlag.OCCLUDED
    if people > 1:
        flags[1, : frames // 10] = BodyFlag.MISSING
        flags[1, frames // 2] = BodyFlag.FILLED
    mp = (0.3 * np.sin(t * (1 + g.random(204)) + g.random(204))).astype(np.float32).repeat(people, 0)
    return b.replace(params=params, flags=flags, faces=faces, extras={"model_params": mp})


def run_case(rig: MhrRig, bodies: Bodies, out: Path, fps: float) -> dict:
    """Build every file in memory, then write them (atomically); sizes by kind."""
    cam = Camera.default(bodies.image_size, bodies.num_frames)
    t0 = time.perf_counter()
    files = animation_files(bodies, rig, cam, fps)
    t1 = time.perf_counter()
    for name, data in files.items():
        write_bytes_atomic(out / name, data)
    t2 = time.perf_counter()
    kinds: dict[str, int] = {}
    for name, data in files.items():
        kind = "glb" if name.endswith(".glb") else "bvh (all)" if name.endswith("_all.bvh") else \
            "bvh (per person, sum)" if name.endswith(".bvh") else "csv (sum)" if name.endswith(".csv") else "npz"
        kinds[kind] = kinds.get(kind, 0) + len(data)
    return {"build_s": t1 - t0, "write_s": t2 - t1, "sizes": kinds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", nargs="+", default=["5x90", "1x1800"], help="PEOPLExFRAMES")
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--tiny", action="store_true", help="small rig (smoke test)")
    args = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    if args.tiny:
        nv, nj = 200, 20
        faces = np.random.default_rng(0).integers(0, nv, (300, 3)).astype(np.int32)
    else:
        verts, tri = uv_sphere()
        nv, nj, faces = int(verts.shape[0]), 127, tri.numpy().astype(np.int32)
    rig = MhrRig(random_rig_tensors(nv, nj, seed=0)).eval()
    print(f"# bench_anim: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, rig {nj} joints / "
          f"{nv} vertices, fps {args.fps}\n")
    print("| case | build s | write s | scene GLB | BVH (all) | BVH (per person, sum) | flag CSVs | NPZ |")
    print("|---|---|---|---|---|---|---|---|")
    fid_line = ""
    for case in args.cases:
        people, frames = (int(x) for x in case.split("x"))
        bodies = make_case(people, frames, nv, nj, faces)
        with tempfile.TemporaryDirectory() as tmp:
            r = run_case(rig, bodies, Path(tmp), args.fps)
        s = r["sizes"]
        mb = lambda k: f"{s.get(k, 0) / 1e6:.2f} MB"  # noqa: E731
        print(f"| {people} x {frames} | {r['build_s']:.2f} | {r['write_s']:.2f} | {mb('glb')} | {mb('bvh (all)')} | "
              f"{mb('bvh (per person, sum)')} | {mb('csv (sum)')} | {mb('npz')} |")
        if not fid_line:
            m = scene_motions(rig, bodies, bodies.extras["model_params"].astype(np.float64))[0]
            i = bodies.index_of(m.obj_id)
            sel = np.flatnonzero(m.present)[:: max(1, frames // 30)]
            fid_line = measure(rig, m, bodies.extras["model_params"][i], bodies.params["expr"][i], sel).line()
    print(f"\nfidelity (random rig, first case, person 1): {fid_line}")


if __name__ == "__main__":
    main()
