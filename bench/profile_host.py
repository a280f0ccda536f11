"""Host-side (CPU) profile of the world stage and the render stage's exports on one warm-case clip.

The GPU warm case (1 person x 100 frames of 720p, no amodal) spends seconds in host work: the
world stage (camera-motion tracking, depth post-processing, floor, smoothing, plot) and the
exports written on background threads (params, PLY meshes, GLBs, the animation scene, world
files). Their cost depends on the clip size and the mesh size, not on the networks, so this
harness uses tiny networks with a real-size mesh (18439 vertices, 36874 faces: MHR LOD1's
counts) and times each host piece on its own, optionally under cProfile.

    python -m bench.profile_host --work /tmp/host                 # set up once, then time every piece
    python -m bench.profile_host --work /tmp/host --cprofile world # + the top functions of one piece
    python -m bench.profile_host --work /tmp/host --only world,world_save --repeat 3

Setup (first call, cached under --work): tiny SAM-3 and MoGe-2, a tiny-backbone SAM-3D-Body with
the real mesh size, the synthetic clip of bench_pipeline (one person), and one CPU pipeline run
with --no-amodal whose saved stage outputs (tracks, camera, bodies) feed the timed pieces.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import logging
import pstats
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from bench.rows import RowWriter, add_rows_args

log = logging.getLogger("profile_host")
PIECES = ("world", "world_early", "world_save", "world_params", "world_meshes", "world_glb", "anim", "params", "meshes", "glb")


def write_models(root: Path) -> None:
    """Tiny SAM-3 and MoGe-2, and SAM-3D-Body with a tiny backbone but MHR LOD1's mesh size."""
    import dataclasses

    import torch

    from body4d_core.sam3d_body.config import tiny_config
    from body4d_core.testing.body import randomize, save_official_layout
    from body4d_core.testing.checkpoints import MODEL_SPECS, _body_like_rig, target_dir, uv_sphere, write_checkpoints
    from body4d_core.sam3d_body.model import Sam3dBody
    import body4d_core.testing.checkpoints as ck

    write_checkpoints(root, ["sam3", "moge"], preset="tiny")
    cfg = dataclasses.replace(tiny_config(), num_verts=18439, num_faces=36874)
    torch.manual_seed(0)
    model = randomize(Sam3dBody(cfg), 0)
    _, faces = uv_sphere()
    with torch.no_grad():
        for head in (model.head_pose, model.head_pose_hand):
            head.faces.copy_(faces)
    hidden, ck.RIG_HIDDEN_REAL = ck.RIG_HIDDEN_REAL, 16  # the corrective width does not change the host work
    try:
        model.attach_rig(_body_like_rig(cfg, 0))
    finally:
        ck.RIG_HIDDEN_REAL = hidden
    folder = target_dir(root, MODEL_SPECS["sam3d_body"])
    folder.mkdir(parents=True, exist_ok=True)
    save_official_layout(model.eval(), folder)


def pipeline_options(work: Path, clip: Any) -> Any:
    from body4d_core import pipeline as pl
    from body4d_core.video import LoadOptions

    return pl.PipelineOptions(video=LoadOptions(), points_json=json.dumps(clip.prompts), amodal=False,
                              models_root=work / "models", device="cpu")


def setup(work: Path, frames: int, height: int, width: int) -> dict:
    """Models, clip and one pipeline run under ``work`` (reused when there)."""
    from bench.clips import make_clip, write_clip
    from body4d_core import pipeline as pl

    marker = work / "setup.json"
    key = {"frames": frames, "size": [height, width]}
    clip = make_clip(frames, 1, height, width)
    if marker.is_file() and json.loads(marker.read_text()) == key:
        return {"clip": clip}
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t0 = time.perf_counter()
    write_models(work / "models")
    write_clip(clip, work / "clip.mp4")
    summary = pl.run_pipeline(work / "clip.mp4", work / "run", pipeline_options(work, clip), overwrite=True)
    log.info("setup in %.1f s; stage seconds %s", time.perf_counter() - t0,
             {k: round(v, 2) for k, v in summary.timings.items()})
    marker.write_text(json.dumps(key))
    return {"clip": clip}


def inputs(work: Path, clip: Any) -> dict:
    """What the world stage and the exports read, as the pipeline had them."""
    from body4d_core import pipeline as pl
    from body4d_core.data import Bodies, Camera, Tracks
    from body4d_core.video import load_video

    run = work / "run"
    opts = pipeline_options(work, clip)
    frames, vclip = load_video(work / "clip.mp4", opts.video)
    models: dict = {}
    rig = pl.AnimRig(pl._body_model(opts, models))
    tracks = Tracks.load_npz(run / "tracks.npz")  # as bench_pipeline's --occlusion truth: the known masks
    tracks = Tracks(tracks.obj_ids, clip.visible[[i - 1 for i in tracks.obj_ids.tolist()]], tracks.image_size)
    return {"frames": frames, "clip": vclip, "tracks": tracks,
            "camera": Camera.load_npz(run / "camera.npz"), "raw": Bodies.load_npz(run / "bodies_raw.npz"),
            "bodies": Bodies.load_npz(run / "bodies.npz"), "opts": opts, "models": models, "rig": rig}


def pieces(d: dict, out: Path) -> dict[str, Callable[[], Any]]:
    """Each host piece as a call writing under ``out``."""
    from body4d_core import export
    from body4d_core import pipeline as pl
    from body4d_core.anim import write_animation
    from body4d_core.anim.world_input import scene_world_from

    state: dict = {}

    def world() -> Any:
        state["world"] = pl.stage_world(d["frames"], d["tracks"], d["camera"], d["raw"], d["bodies"], d["clip"],
                                        d["opts"], [], d["models"])
        return state["world"]

    def world_early() -> Any:
        """start_world (depth + background camera motion), then, once the thread is done (as when it
        overlapped the bodies stage), the world stage: the time printed is that stage's alone."""
        summary = pl.RunSummary(out)
        prep = pl.start_world(d["frames"], d["tracks"], d["camera"], d["clip"], d["opts"], summary, d["models"])
        prep.close()
        t0 = time.perf_counter()
        state["world"] = pl.stage_world(d["frames"], d["tracks"], d["camera"], d["raw"], d["bodies"], d["clip"],
                                        d["opts"], [], d["models"], prep)
        state["world"].timings["stage_after_prep"] = time.perf_counter() - t0
        return state["world"]

    def wb() -> Any:
        return state.get("world") or world()

    fps = float(d["clip"].fps)
    return {
        "world": world,
        "world_early": world_early,
        "world_save": lambda: wb().save(out / "world"),
        "world_params": lambda: export.save_params(wb().bodies, out / "world" / "params.npz"),
        "world_meshes": lambda: export.write_meshes(wb().bodies, out / "world" / "meshes"),
        "world_glb": lambda: export.write_glb(wb().bodies, out / "world" / "glb", fps=fps),
        "anim": lambda: write_animation(d["bodies"], d["rig"].mhr, d["camera"], out / "anim", fps,
                                        scene_world_from(wb(), d["bodies"]), d["rig"], "body4d",
                                        ("glb", "bvh", "npz"), True, None, d["opts"].anim_fidelity),
        "params": lambda: export.save_params(d["bodies"], out / "params.npz", d["camera"]),
        "meshes": lambda: export.write_meshes(d["bodies"], out / "meshes"),
        "glb": lambda: export.write_glb(d["bodies"], out / "glb", fps=fps),
    }


def world_parts(world: Any) -> str:
    t = getattr(world, "timings", None) or {}
    return ", ".join(f"{k} {v:.3f}" for k, v in t.items())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True, help="folder for the models, the clip and the setup run (reused)")
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--size", default="720x1280")
    ap.add_argument("--only", default="", help=f"comma-separated pieces (default all: {', '.join(PIECES)})")
    ap.add_argument("--repeat", type=int, default=2, help="time each piece this many times (the best counts)")
    ap.add_argument("--out", default="", help="write the pieces' files here (default: WORK/pieces)")
    ap.add_argument("--cprofile", default="", help="comma-separated pieces to profile (top 25 by own+callee time)")
    add_rows_args(ap)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    log.setLevel(logging.INFO)
    h, w = (int(v) for v in args.size.lower().split("x"))
    work = Path(args.work)
    d = setup(work, args.frames, h, w)
    d = inputs(work, d["clip"])
    out = Path(args.out) if args.out else work / "pieces"
    shutil.rmtree(out, ignore_errors=True)
    calls = pieces(d, out)
    names = [n for n in (args.only.split(",") if args.only else PIECES) if n]
    prof = {n for n in args.cprofile.split(",") if n}
    calls["world"]()  # warm: imports, MoGe load
    rows = []
    writer = RowWriter.from_args("profile_host", args, "cpu")
    for name in names:
        best = float("inf")
        for _ in range(max(1, args.repeat)):
            t0 = time.perf_counter()
            res = calls[name]()
            best = min(best, time.perf_counter() - t0)
        extra = world_parts(res) if name.startswith("world") and hasattr(res, "timings") else ""
        rows.append((name, best, extra))
        print(f"{name:14s} {best:7.3f} s  {extra}", flush=True)
        writer.add(name, "best_s", best, "s", frames=args.frames, size=args.size, repeat=args.repeat)
        if name in prof:
            p = cProfile.Profile()
            p.runcall(calls[name])
            s = io.StringIO()
            pstats.Stats(p, stream=s).sort_stats("cumulative").print_stats(25)
            print(s.getvalue(), flush=True)
    print(f"total {sum(r[1] for r in rows):.3f} s over {len(rows)} pieces", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
