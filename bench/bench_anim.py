"""Animation exports at real MHR size: file sizes and write times of the scene GLB, BVH and flags.

A random rig with MHR's sizes (127 joints, LOD1's 18439 vertices / 36874 faces, two skin
influences per vertex) drives random motions; the numbers measure the writers, not the rig
(no real MHR weights are needed). Also prints the fidelity of the skinned export against the
full rig on the first person (vertex error from the pose correctives LBS cannot carry: with a
random rig this shows the measurement works, its size says nothing about real MHR; joints exact).

    python -m bench.bench_anim                        # 5 people x 90 frames and 1 person x 1800 frames
    python -m bench.bench_anim --cases 2x30 --tiny    # smoke test (seconds)
    python -m bench.bench_anim --picture docs/animation_skinned.png   # the README picture (a demo humanoid)

Prints one markdown table: per case, seconds to build the files in memory (without the fidelity report),
to measure the fidelity report the writer adds by default (4 frames per person), to write, and the
size of each file kind. Every figure (and the fidelity line's three errors) is also written as a
JSON row (bench/rows.py); the picture mode measures nothing and writes no rows.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench.rows import RowWriter, add_rows_args
from bench.timers import Stopwatch
from body4d_core.anim import animation_files, scene_motions
from body4d_core.anim.fidelity import measure
from body4d_core.anim.writer import fidelity_report
from body4d_core.atomic import write_bytes_atomic
from body4d_core.data import Bodies, BodyFlag, Camera
from body4d_core.sam3d_body.mhr_rig import MhrRig
from body4d_core.testing.body import random_rig_tensors
from body4d_core.testing.checkpoints import uv_sphere

# the file kinds run_case sizes, in the table's column order, with their rows' metric names
SIZE_KINDS = [("glb", "scene_glb_size"), ("bvh (all)", "bvh_all_size"),
              ("bvh (per person, sum)", "bvh_per_person_size"), ("csv (sum)", "flag_csv_size"), ("npz", "npz_size")]


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
    with Stopwatch("cpu") as build:
        files = animation_files(bodies, rig, cam, fps, fidelity=False)
    motions = scene_motions(rig, bodies, bodies.extras["model_params"].astype(np.float64))
    with Stopwatch("cpu") as fid:
        fidelity_report(rig, motions, bodies, bodies.extras["model_params"].astype(np.float64))
    with Stopwatch("cpu") as write:
        for name, data in files.items():
            write_bytes_atomic(out / name, data)
    kinds: dict[str, int] = {}
    for name, data in files.items():
        kind = "glb" if name.endswith(".glb") else "bvh (all)" if name.endswith("_all.bvh") else \
            "bvh (per person, sum)" if name.endswith(".bvh") else "csv (sum)" if name.endswith(".csv") else "npz"
        kinds[kind] = kinds.get(kind, 0) + len(data)
    return {"build_s": build.seconds, "write_s": write.seconds, "fidelity_s": fid.seconds, "sizes": kinds}


# --------------------------------------------------------------------------- the README picture

# name, parent, offset from the parent (cm, y up): a humanoid stand-in for MHR's 127 joints
DEMO_SKELETON = [
    ("root", -1, (0, 0, 0)), ("pelvis", 0, (0, 95, 0)), ("spine", 1, (0, 18, 0)), ("chest", 2, (0, 20, 0)),
    ("neck", 3, (0, 17, 0)), ("head", 4, (0, 12, 0)), ("head_top", 5, (0, 16, 0)),
    ("l_shoulder", 3, (17, 14, 0)), ("l_elbow", 7, (27, 0, 0)), ("l_wrist", 8, (24, 0, 0)), ("l_hand", 9, (9, 0, 0)),
    ("r_shoulder", 3, (-17, 14, 0)), ("r_elbow", 11, (-27, 0, 0)), ("r_wrist", 12, (-24, 0, 0)), ("r_hand", 13, (-9, 0, 0)),
    ("l_hip", 1, (10, -6, 0)), ("l_knee", 15, (0, -42, 0)), ("l_ankle", 16, (0, -42, 0)), ("l_toe", 17, (0, -6, 14)),
    ("r_hip", 1, (-10, -6, 0)), ("r_knee", 19, (0, -42, 0)), ("r_ankle", 20, (0, -42, 0)), ("r_toe", 21, (0, -6, 14)),
]
DEMO_RADIUS = {"spine": 13, "chest": 14, "neck": 15, "head": 6, "head_top": 9, "pelvis": 0}


def demo_rig_tensors(rings: int = 8, sides: int = 12) -> tuple[dict[str, torch.Tensor], np.ndarray, list[str]]:
    """MHR rig tensors of a capsule humanoid (one tube per bone, skinned to its two joints), faces, joint names."""
    names = [n for n, _, _ in DEMO_SKELETON]
    parents = np.array([p for _, p, _ in DEMO_SKELETON])
    offsets = np.array([o for _, _, o in DEMO_SKELETON], np.float64)
    rest = offsets.copy()
    for j, p in enumerate(parents):
        if p >= 0:
            rest[j] += rest[p]
    verts, faces, trip = [], [], []
    for j, p in enumerate(parents):
        if p <= 0:
            continue
        a, b = rest[p], rest[j]
        axis = (b - a) / np.linalg.norm(b - a)
        u = np.cross(axis, [0.0, 0.0, 1.0] if abs(axis[2]) < 0.9 else [1.0, 0.0, 0.0])
        u /= np.linalg.norm(u)
        w = np.cross(axis, u)
        radius = DEMO_RADIUS.get(names[j], 5.5 if "knee" in names[j] or "hip" in names[j] else 4.5)
        base = len(verts)
        for r in range(rings + 1):
            f = r / rings
            for k in range(sides):
                ang = 2 * np.pi * k / sides
                taper = 0.75 + 0.25 * np.sin(np.pi * f)
                verts.append(a + f * (b - a) + radius * taper * (np.cos(ang) * u + np.sin(ang) * w))
                trip += [(len(verts) - 1, p, 1.0 - f), (len(verts) - 1, j, f)]
        for r in range(rings):
            for k in range(sides):
                i0, i1 = base + r * sides + k, base + r * sides + (k + 1) % sides
                faces += [(i0, i1, i0 + sides), (i1, i1 + sides, i0 + sides)]
    v = np.array(verts)
    nj, nv = len(names), len(verts)
    pt = np.zeros((7 * nj, 249))
    for j in range(1, nj):  # model parameters 3j..3j+2 drive joint j's Euler angles
        pt[7 * j + 3:7 * j + 6, 3 * j:3 * j + 3] = np.eye(3)
    levels = sorted({int(d) for d in _depths(parents)} - {0})
    pairs = [(j, p) for d in levels for j, p in enumerate(parents) if _depths(parents)[j] == d]
    tv, tj, tw = (np.array(x) for x in zip(*[t for t in trip if t[2] > 0]))
    tensors = {
        "base_shape": torch.tensor(v, dtype=torch.float32), "identity_basis": torch.zeros(45, nv, 3),
        "expr_basis": torch.zeros(72, nv, 3), "param_transform": torch.tensor(pt, dtype=torch.float32),
        "skel_joint_translation_offsets": torch.tensor(offsets, dtype=torch.float32),
        "skel_joint_prerotations": torch.tensor([[0.0, 0.0, 0.0, 1.0]] * nj),
        "skel_joint_parents": torch.tensor(parents, dtype=torch.int32),
        "skel_pmi": torch.tensor(pairs, dtype=torch.int64).t().contiguous(),
        "skel_pmi_buffer_sizes": torch.tensor([sum(1 for d in _depths(parents) if d == lv) for lv in levels]),
        "lbs_inverse_bind_pose": torch.tensor(np.concatenate([-rest, np.tile([0.0, 0, 0, 1, 1], (nj, 1))], 1),
                                              dtype=torch.float32),
        "lbs_skin_weights": torch.tensor(tw, dtype=torch.float32), "lbs_skin_indices": torch.tensor(tj, dtype=torch.int32),
        "lbs_vert_indices": torch.tensor(tv, dtype=torch.int64),
        "pose_corr_sparse_indices": torch.zeros(2, 1, dtype=torch.int64), "pose_corr_sparse_weight": torch.zeros(1),
        "pose_corr_sparse_shape": torch.tensor([1, 6 * (nj - 2)]), "pose_corr_weight": torch.zeros(3 * nv, 1),
    }
    return tensors, np.array(faces, np.int32), names


def _depths(parents: np.ndarray) -> list[int]:
    d = []
    for j, p in enumerate(parents):
        d.append(0 if p < 0 else d[p] + 1)
    return d


def demo_motion(names: list[str], frames: int, wave: bool) -> np.ndarray:
    """Model parameters [T, 204] of a walk in place (and a wave of the right arm)."""
    mp = np.zeros((frames, 204))
    ph = np.linspace(0, 2 * np.pi, frames, endpoint=False)
    j = {n: k for k, n in enumerate(names)}

    def rot(name: str, axis: int, values: np.ndarray) -> None:
        mp[:, 3 * j[name] + axis] = values

    rot("l_hip", 0, -0.5 * np.sin(ph))
    rot("r_hip", 0, 0.5 * np.sin(ph))
    rot("l_knee", 0, 0.6 * np.clip(np.sin(ph + 1.2), 0, None))
    rot("r_knee", 0, 0.6 * np.clip(-np.sin(ph + 1.2), 0, None))
    rot("l_shoulder", 2, -1.2 + 0.0 * ph)
    rot("l_shoulder", 1, 0.4 * np.sin(ph))
    rot("r_shoulder", 2, (-1.05 + 0.15 * np.sin(3 * ph)) if wave else 1.2 + 0.0 * ph)
    rot("r_shoulder", 1, 0.0 * ph if wave else 0.4 * np.sin(ph))
    rot("r_elbow", 2, -0.6 + 0.5 * np.sin(3 * ph) if wave else 0.3 + 0.0 * ph)
    rot("l_elbow", 2, 0.3 + 0.0 * ph)
    rot("spine", 1, 0.15 * np.sin(ph))
    rot("pelvis", 1, -0.35 + 0.0 * ph if wave else 0.5 + 0.0 * ph)  # turned, so the picture shows depth
    return mp


def _skin_from_file(path: Path, time: float) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(name, skinned vertices, faces, joint positions) of every skinned mesh in a GLB at ``time``, computed from
    the file alone with the glTF skinning formula (pygltflib parses the file)."""
    import pygltflib

    g = pygltflib.GLTF2.load(str(path))
    blob = g.binary_blob()

    def acc(i: int) -> np.ndarray:
        a = g.accessors[i]
        v = g.bufferViews[a.bufferView]
        dt = {5126: np.float32, 5125: np.uint32, 5123: np.uint16}[a.componentType]
        w = {"SCALAR": 1, "VEC3": 3, "VEC4": 4, "MAT4": 16}[a.type]
        return np.frombuffer(blob, dt, a.count * w, v.byteOffset + (a.byteOffset or 0)).reshape(a.count, w)

    now = {}
    for ch in g.animations[0].channels:
        s = g.animations[0].samplers[ch.sampler]
        times, vals = acc(s.input)[:, 0], acc(s.output)
        now[(ch.target.node, ch.target.path)] = vals[int(np.argmin(np.abs(times - time)))].astype(np.float64)
    world: dict[int, np.ndarray] = {}

    def walk(i: int, parent: np.ndarray) -> None:
        n = g.nodes[i]
        x, y, z, w = now.get((i, "rotation"), n.rotation or [0, 0, 0, 1])
        r = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                      [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                      [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
        m = np.eye(4)
        m[:3, :3] = r * np.asarray(now.get((i, "scale"), n.scale or [1, 1, 1]))
        m[:3, 3] = now.get((i, "translation"), n.translation or [0, 0, 0])
        world[i] = parent @ m
        for c in n.children or []:
            walk(c, world[i])

    for r in g.scenes[0].nodes:
        walk(r, np.eye(4))
    out = []
    for k, n in enumerate(g.nodes):
        if n.skin is None:
            continue
        skin, prim = g.skins[n.skin], g.meshes[n.mesh].primitives[0]
        ibm = acc(skin.inverseBindMatrices).reshape(-1, 4, 4).transpose(0, 2, 1)
        mats = np.stack([np.linalg.inv(world[k]) @ world[j] @ ibm[q] for q, j in enumerate(skin.joints)])
        pos = np.concatenate([acc(prim.attributes.POSITION), np.ones((acc(prim.attributes.POSITION).shape[0], 1))], 1)
        jo = np.concatenate([acc(prim.attributes.JOINTS_0), acc(prim.attributes.JOINTS_1)], 1).astype(int)
        we = np.concatenate([acc(prim.attributes.WEIGHTS_0), acc(prim.attributes.WEIGHTS_1)], 1)
        v = sum(we[:, q:q + 1] * np.einsum("vij,vj->vi", mats[jo[:, q]], pos)[:, :3] for q in range(jo.shape[1]))
        joints = np.stack([world[j][:3, 3] for j in skin.joints])
        out.append((n.name, v, acc(prim.indices).reshape(-1, 3).astype(int), joints, skin.joints))
    return out, g


def picture(path: Path, frames: int = 48, fps: float = 24.0) -> None:
    """Export two demo people as the scene GLB, read it back, skin it from the file and draw three frames."""
    import cv2

    from body4d_core.palette import object_color

    tensors, faces, names = demo_rig_tensors()
    rig = MhrRig(tensors).eval()
    h, w = 360, 640
    b = Bodies.empty([1, 2], frames, (h, w))
    params = {k: v.copy() for k, v in b.params.items()}
    params["cam_t"][0] = [-0.5, 0.85, 3.0]
    params["cam_t"][1] = [0.5, 0.9, 3.4]
    mp = np.stack([demo_motion(names, frames, False), demo_motion(names, frames, True)]).astype(np.float32)
    b = b.replace(params=params, flags=np.full((2, frames), BodyFlag.VISIBLE, np.uint8), faces=faces,
                  extras={"model_params": mp})
    cam = Camera.from_fov(50.0, (h, w), frames)
    with tempfile.TemporaryDirectory() as tmp:
        glb = Path(tmp) / "demo_scene.glb"
        glb.write_bytes(animation_files(b, rig, cam, fps, formats=("glb",), joint_names=names)["body4d_scene.glb"])
        shots = [(t, _skin_from_file(glb, t / fps)) for t in (0, frames // 4, frames // 2)]
    f = float(cam.intrinsics[0, 1])
    light = np.array([0.3, 0.5, 0.8]) / np.linalg.norm([0.3, 0.5, 0.8])
    project = lambda p: np.stack([f * p[..., 0] / -p[..., 2] + w / 2, h / 2 - f * p[..., 1] / -p[..., 2]], -1)  # noqa: E731
    panels = []
    for t, (meshes, _) in shots:
        img = np.full((h, w, 3), 245, np.uint8)
        tris, cols, depth = [], [], []
        for name, v, fc, _, _ in meshes:
            tri = v[fc]
            n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
            n /= np.linalg.norm(n, axis=1, keepdims=True) + 1e-12
            shade = 0.35 + 0.65 * np.abs(n @ light)
            tris.append(project(tri))
            cols.append(np.asarray(object_color(int(name.split("_")[1])))[None] * shade[:, None])
            depth.append(tri[..., 2].mean(1))
        tris, cols, depth = np.concatenate(tris), np.concatenate(cols), np.concatenate(depth)
        for k in np.argsort(depth):  # far to near
            cv2.fillConvexPoly(img, np.round(tris[k] * 16).astype(np.int32), tuple(int(c) for c in cols[k]),
                               cv2.LINE_AA, 4)
        for _, _, _, joints, _ in meshes:
            uv = project(joints)
            for j, p in enumerate(p for _, p, _ in DEMO_SKELETON):
                if p > 0:
                    cv2.line(img, tuple(int(x) for x in uv[p]), tuple(int(x) for x in uv[j]), (20, 20, 20), 1, cv2.LINE_AA)
        cv2.putText(img, f"frame {t}", (int(w * 0.22) + 8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (40, 40, 40), 1, cv2.LINE_AA)
        panels.append(img)
    x0, x1 = int(w * 0.22), int(w * 0.78)
    strip = np.concatenate([p[:, x0:x1] for p in panels], 1)
    strip = cv2.resize(strip, (strip.shape[1] * 2 // 3, strip.shape[0] * 2 // 3), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(path), cv2.cvtColor(strip, cv2.COLOR_RGB2BGR))
    print(f"wrote {path}")


def case_rows(out: RowWriter, case: str, r: dict, **extra: object) -> None:
    """One table line's figures as rows: the three timings (s) and each file kind's size (MB, 1e6 bytes)."""
    for key, metric in (("build_s", "build"), ("fidelity_s", "fidelity_report"), ("write_s", "write")):
        out.add(case, metric, r[key], "s", **extra)
    for kind, metric in SIZE_KINDS:
        size = r["sizes"].get(kind, 0)
        out.add(case, metric, size / 1e6, "MB", bytes=size, **extra)


def main() -> None:
    """Time and size the exports of each case (or draw the README picture); print the table, write the rows."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", nargs="+", default=["5x90", "1x1800"], help="PEOPLExFRAMES")
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--tiny", action="store_true", help="small rig (smoke test)")
    ap.add_argument("--picture", type=Path, help="write the README picture (PNG) instead of timing")
    add_rows_args(ap)
    args = ap.parse_args()
    if args.picture:
        picture(args.picture)
        return
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    if args.tiny:
        nv, nj = 200, 20
        faces = np.random.default_rng(0).integers(0, nv, (300, 3)).astype(np.int32)
    else:
        verts, tri = uv_sphere()
        nv, nj, faces = int(verts.shape[0]), 127, tri.numpy().astype(np.int32)
    rig = MhrRig(random_rig_tensors(nv, nj, seed=0)).eval()
    out = RowWriter.from_args("bench_anim", args, "cpu")
    setting = {"joints": nj, "vertices": nv, "fps": args.fps, "threads": torch.get_num_threads()}
    print(f"# bench_anim: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, rig {nj} joints / "
          f"{nv} vertices, fps {args.fps}\n")
    print("| case | build s | fidelity report s | write s | scene GLB | BVH (all) | BVH (per person, sum) | flag CSVs | NPZ |")
    print("|---|---|---|---|---|---|---|---|---|")
    fid = None
    for case in args.cases:
        people, frames = (int(x) for x in case.split("x"))
        bodies = make_case(people, frames, nv, nj, faces)
        with tempfile.TemporaryDirectory() as tmp:
            r = run_case(rig, bodies, Path(tmp), args.fps)
        s = r["sizes"]
        mb = lambda k: f"{s.get(k, 0) / 1e6:.2f} MB"  # noqa: E731
        print(f"| {people} x {frames} | {r['build_s']:.2f} | {r['fidelity_s']:.2f} | {r['write_s']:.2f} | {mb('glb')} | "
              f"{mb('bvh (all)')} | "
              f"{mb('bvh (per person, sum)')} | {mb('csv (sum)')} | {mb('npz')} |")
        case_rows(out, f"{people} x {frames}", r, people=people, frames=frames, **setting)
        if fid is None:
            m = scene_motions(rig, bodies, bodies.extras["model_params"].astype(np.float64))[0]
            i = bodies.index_of(m.obj_id)
            sel = np.flatnonzero(m.present)[:: max(1, frames // 30)]
            fid = measure(rig, m, bodies.extras["model_params"][i], bodies.params["expr"][i], sel)
            fid_case = f"fidelity, {people} x {frames}, person {m.obj_id}"
            for metric in ("vertex_mean_mm", "vertex_max_mm", "joint_max_mm"):
                out.add(fid_case, metric.removesuffix("_mm"), getattr(fid, metric), "mm", measured_frames=fid.frames,
                        people=people, frames=frames, random_rig=True, **setting)
    print(f"\nfidelity (random rig, first case, person 1): {fid.line() if fid is not None else ''}")


if __name__ == "__main__":
    main()
