"""World-grounded motion on synthetic ground truth: ours vs the camera-space smoother, a gaussian filter and raw.

Each case drives a hand-made MHR70-layout skeleton with planted feet (walk, turn, run,
jump, clap; 1 or 3 people) past a static or moving camera (pan, dolly, handheld shake) with
known intrinsics, renders a textured floor-and-walls room along the same camera path (the
camera solver runs on those pixels; the "MoGe" depth is the true depth with a 2% per-frame
scale error and 1% per-pixel noise), and corrupts per-frame camera-space estimates like a
monocular estimator (depth error along the ray several times the lateral one, jitter,
outlier and dropped frames).

Methods (all compared in the world frame; the baselines are camera-space methods, so they
get OUR estimated camera trajectory and world axes to be placed in the world):
- raw: the estimates, last value held across dropped frames
- gaussian: ComfyUI core's smoother (gaussian window 7, sigma 1.4) on camera-space joints
- current: body4d_core.smoothing.smooth_bodies (camera-space Kalman/RTS, default settings)
- ours: body4d_core.world.world_stage (floor, camera motion, contact-aware world smoother)

Two extra cases run without depth (the pipeline without MoGe): the floor then comes from the
planted feet and a moving camera gets its rotation only.

Every printed figure is also written as a JSON row (bench/rows.py): per case and method the
world metrics, per case the camera and floor errors and the stage's seconds.

Run: python -m bench.bench_world [--frames 90] [--seed 0] [--plot docs/world_trajectory.png]
     python -m bench.bench_world --tiny   (a few small cases, seconds)
"""

from __future__ import annotations

import argparse

import numpy as np

from bench.rows import RowWriter, add_rows_args
from bench.timers import Stopwatch
from body4d_core.data import Bodies, BodyFlag, Camera
from body4d_core.smoothing import smooth_bodies
from body4d_core.world import WorldOptions, world_stage
from body4d_core.world.metrics import camera_metrics, floor_metrics, world_metrics
from body4d_core.testing.world import corrupt, make_scene, noisy_depth

CASES = [("walk", "static", 1), ("turn", "static", 1), ("run", "static", 1), ("jump", "static", 1),
         ("clap", "static", 1), ("walk", "static", 3), ("walk", "pan", 1), ("turn", "dolly", 1),
         ("run", "handheld", 1), ("jump", "pan", 1), ("clap", "handheld", 1), ("walk", "dolly", 3),
         ("walk", "static", 1, "no depth"), ("walk", "pan", 1, "no depth")]
TINY = [("walk", "static", 1), ("clap", "handheld", 1)]
# world_metrics' key, the row's metric and unit
METRICS = [("W-MPJPE", "w_mpjpe", "mm"), ("WA-MPJPE", "wa_mpjpe", "mm"), ("RTE%", "rte", "%"),
           ("skate", "skate", "mm/frame"), ("jitter", "jitter", "mm/frame^2"), ("hands", "hands", "mm")]


def held(bodies: Bodies) -> np.ndarray:
    """Camera-space joints [N, T, K, 3] with the last observed value held across drops."""
    j = bodies.keypoints_3d.astype(np.float64) + bodies.params["cam_t"][:, :, None]
    obs = bodies.flags != BodyFlag.MISSING
    for i in range(j.shape[0]):
        last = None
        for t in range(j.shape[1]):
            if obs[i, t]:
                last = j[i, t]
            elif last is not None:
                j[i, t] = last
    return j


def gaussian(joints: np.ndarray, window: int = 7, sigma: float = 1.4) -> np.ndarray:
    """Symmetric gaussian window along time (edges clamped)."""
    half = window // 2
    x = np.arange(-half, half + 1)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    k /= k.sum()
    t = joints.shape[1]
    idx = np.clip(np.arange(t)[:, None] + x[None], 0, t - 1)
    return np.einsum("ntwkd,w->ntkd", joints[:, idx], k)


def to_world(joints_c: np.ndarray, res) -> np.ndarray:
    """Camera-space joints into the stage's world frame with its estimated camera poses."""
    return np.einsum("tij,ntkj->ntki", res.camera_rotations, joints_c) + res.camera_positions[None, :, None]


def run_case(motion: str, cam: str, people: int, frames: int, seed: int, with_depth: bool = True):
    """One case: the scene, the stage's result, the metrics per method and the camera/floor errors."""
    scene = make_scene(motion, cam, people, frames, seed)
    bodies = corrupt(scene, seed=seed)
    camera = Camera.from_focal(float(scene.K[0, 0]), scene.image_size, frames, "manual")
    depth = noisy_depth(scene, seed=seed) if with_depth else None
    with Stopwatch("cpu") as sw:
        res = world_stage(bodies, camera, scene.frames, scene.people_masks, depth, WorldOptions())
    current = smooth_bodies(bodies)
    methods = {
        "raw": to_world(held(bodies), res),
        "gaussian": to_world(gaussian(held(bodies)), res),
        "current": to_world(held(current), res),
        "ours": res.joints,
    }
    rows = {m: world_metrics(j, scene.joints, scene.contacts, hands=(motion == "clap")) for m, j in methods.items()}
    extra = floor_metrics(res.floor.normal, res.floor.offset, scene.cam_R[0], scene.cam_c[0])
    extra["static_ok"] = res.camera_static == (cam == "static")
    if cam != "static":
        extra.update(camera_metrics(res.camera_rotations, res.camera_positions, scene.cam_R, scene.cam_c))
    extra["seconds"] = sw.seconds
    return scene, res, rows, extra


def camera_rows(out: RowWriter, name: str, e: dict, res, setting: dict) -> None:
    """The second table's figures of one case as rows (the translation error as printed: % of path or mm)."""
    about = {"camera_static": bool(res.camera_static), "camera_source": res.camera_source,
             "floor_source": res.floor.source, **setting}
    out.add(name, "static_detected_ok", bool(e["static_ok"]), "bool", **about)
    if "cam_rot_deg" in e:
        out.add(name, "cam_rot_err", e["cam_rot_deg"], "deg", **about)
    if "cam_trans%" in e:
        if e["cam_path_m"] > 0.2:
            out.add(name, "cam_trans_err", e["cam_trans%"], "% of path", cam_path_m=e["cam_path_m"], **about)
        else:
            out.add(name, "cam_trans_err", e["cam_trans_mm"], "mm", cam_path_m=e["cam_path_m"], **about)
    out.add(name, "floor_normal_err", e["floor_deg"], "deg", **about)
    out.add(name, "floor_height_err", e["floor_mm"], "mm", **about)
    out.add(name, "stage_seconds", e["seconds"], "s", **about)


def main() -> None:
    """Run the cases, print both tables and write every figure as a row."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=90)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--plot", default="", help="write the walk/dolly/3-people trajectory plot here (PNG)")
    add_rows_args(ap)
    args = ap.parse_args()
    cases = TINY if args.tiny else CASES
    frames = 40 if args.tiny else args.frames
    out = RowWriter.from_args("bench_world", args, "cpu")
    print("| case | method | W-MPJPE | WA-MPJPE | RTE % | skate mm/f | jitter mm/f² | hands |")
    print("|---|---|---|---|---|---|---|---|")
    cam_rows = []
    for case in cases:
        motion, cam, people = case[:3]
        scene, res, rows, extra = run_case(motion, cam, people, frames, args.seed, with_depth=len(case) == 3)
        name = f"{motion} {cam} {people}p" + (f" ({case[3]})" if len(case) > 3 else "")
        setting = {"motion": motion, "camera": cam, "people": people, "depth": len(case) == 3, "frames": frames,
                   "seed": args.seed}
        for m, r in rows.items():
            hands = f"{r['hands']:.1f}" if "hands" in r else ""
            print(f"| {name} | {m} | {r['W-MPJPE']:.1f} | {r['WA-MPJPE']:.1f} | {r['RTE%']:.2f} | "
                  f"{r['skate']:.2f} | {r['jitter']:.2f} | {hands} |", flush=True)
            for key, metric, unit in METRICS:
                if key in r:
                    out.add(f"{name}, {m}", metric, r[key], unit, method=m, **setting)
        cam_rows.append((name, extra, res, setting))
        if args.plot and case == ("walk", "dolly", 3):
            import cv2

            cv2.imwrite(args.plot, res.plot[..., ::-1])
    print()
    print("| case | static detected | camera source | cam rot err ° | cam trans err % path | floor normal ° | "
          "floor height mm | floor from | stage s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, e, res, setting in cam_rows:
        rot = f"{e['cam_rot_deg']:.2f}" if "cam_rot_deg" in e else "-"
        tr = "-"
        if "cam_trans%" in e:  # a pan has no path: its translation error is given in mm
            tr = f"{e['cam_trans%']:.2f}" if e["cam_path_m"] > 0.2 else f"({e['cam_trans_mm']:.0f} mm, no path)"
        print(f"| {name} | {'ok' if e['static_ok'] else 'WRONG'} ({'static' if res.camera_static else 'moving'}) | "
              f"{res.camera_source} | {rot} | {tr} | {e['floor_deg']:.2f} | {e['floor_mm']:.0f} | {res.floor.source} | "
              f"{e['seconds']:.1f} |", flush=True)
        camera_rows(out, name, e, res, setting)


if __name__ == "__main__":
    main()
