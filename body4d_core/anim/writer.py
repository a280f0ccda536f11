"""Write a clip's animation: one skinned scene GLB, BVH (all identities + one per identity) with flag
CSVs, and an NPZ of per-frame flags and joint world positions. Contents are built in memory first,
then each file is written atomically, so a failure leaves no partial file."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..atomic import write_bytes_atomic
from ..data import Bodies, Camera
from ..errors import InputError
from ..runtime import NULL_HOOKS, Hooks
from .bvh import bvh_texts, flags_csv
from .gltf_scene import scene_glb_bytes
from .fidelity import measure
from .motion import FLAG_NAMES, PersonMotion, RigData, frame_flags, model_params, scene_motions
from .world_input import SceneWorld

log = logging.getLogger(__name__)
FORMATS = ("glb", "bvh", "npz")
FIDELITY_FRAMES = 4  # frames per identity the fidelity report measures (the full rig is slow on a CPU)


def _faces(bodies: Bodies, model: Any) -> np.ndarray:
    if bodies.faces is not None:
        return bodies.faces
    faces = getattr(getattr(model, "head_pose", None), "faces", None)
    if faces is None:
        raise InputError("the bodies carry no mesh faces; pass the SAM 3D Body model or bodies with faces")
    return np.asarray(faces.detach().cpu().numpy() if hasattr(faces, "detach") else faces, np.int32)


def fidelity_report(rig: Any, motions: Sequence[PersonMotion], bodies: Bodies, params: np.ndarray,
                    max_frames: int = FIDELITY_FRAMES) -> dict[str, dict]:
    """Per identity: vertex error (mean / max mm) of the skinned export vs the full rig and the joint error,
    on up to ``max_frames`` present frames spread over the clip; logged. Empty for rigs that cannot be run."""
    if not callable(rig) or isinstance(rig, RigData):
        return {}
    out = {}
    for m in motions:
        i = bodies.index_of(m.obj_id)
        present = np.flatnonzero(m.present)
        frames = present[np.linspace(0, present.size - 1, min(max_frames, present.size)).round().astype(int)]
        fid = measure(rig, m, params[i], bodies.params["expr"][i].astype(np.float64), frames)
        log.info("person %d: %s", m.obj_id, fid.line())
        out[str(m.obj_id)] = {"vertex_mean_mm": round(fid.vertex_mean_mm, 4), "vertex_max_mm": round(fid.vertex_max_mm, 4),
                              "joint_max_mm": round(fid.joint_max_mm, 6), "frames": fid.frames}
    return out


def anim_npz_arrays(motions: Sequence[PersonMotion], fps: float, contacts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-frame flags [P, T] and joint world positions [P, T, J, 3] (metres) of every identity."""
    flags = [frame_flags(m.flags) for m in motions]
    out = {"obj_ids": np.array([m.obj_id for m in motions], np.int64),
           "times": np.arange(motions[0].num_frames) / fps, "fps": np.array(fps),
           "joint_parents": motions[0].rig.parents, "joint_names": np.array(motions[0].rig.names),
           "joint_world": np.stack([m.global_joints()[0] for m in motions]).astype(np.float32)}
    out.update({f"flag_{n}": np.stack([f[n] for f in flags]) for n in FLAG_NAMES})
    out.update({f"flag_contact_{k}": v for k, v in contacts.items()})
    return out


def animation_files(bodies: Bodies, rig: Any, camera: Camera, fps: float, world: SceneWorld | None = None,
                    model: Any = None, prefix: str = "body4d", formats: Sequence[str] = FORMATS,
                    expressions: bool = True, joint_names: Sequence[str] | None = None,
                    fidelity: bool = True) -> dict[str, bytes]:
    """File name -> contents of every requested animation export (nothing written); ``fidelity``: measure
    the skinned export against the full rig (logged, and stored in the scene's extras)."""
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise InputError(f"animation formats must be some of {', '.join(FORMATS)}, got {list(formats)}")
    if not fps > 0:
        raise InputError(f"fps must be positive, got {fps}")
    camera = camera.check_frames(bodies.num_frames)
    params = model_params(bodies, model)
    motions = scene_motions(rig, bodies, params, world, expressions, joint_names)
    rows = [bodies.index_of(m.obj_id) for m in motions]
    contacts = {k: v[rows] for k, v in (world.check_contacts(bodies.num_objects, bodies.num_frames)
                                        if world is not None else {}).items()}
    files: dict[str, bytes] = {}
    if "glb" in formats:
        fid = fidelity_report(rig, motions, bodies, params) if fidelity else {}
        files[f"{prefix}_scene.glb"] = scene_glb_bytes(motions, _faces(bodies, model), camera, fps, world, contacts,
                                                       fid)
    if "bvh" in formats:
        every, single = bvh_texts(motions, fps)
        files[f"{prefix}_all.bvh"] = every.encode()
        files[f"{prefix}_all_flags.csv"] = flags_csv(motions, fps, contacts).encode()
        for k, m in enumerate(motions):
            files[f"{prefix}_person_{m.obj_id}.bvh"] = single[k].encode()
            files[f"{prefix}_person_{m.obj_id}_flags.csv"] = flags_csv([m], fps, contacts, [k]).encode()
    if "npz" in formats:
        buf = io.BytesIO()
        np.savez_compressed(buf, **anim_npz_arrays(motions, fps, contacts))
        files[f"{prefix}_anim.npz"] = buf.getvalue()
    return files


def write_animation(bodies: Bodies, rig: Any, camera: Camera, out_dir: str | Path, fps: float,
                    world: SceneWorld | None = None, model: Any = None, prefix: str = "body4d",
                    formats: Sequence[str] = FORMATS, expressions: bool = True,
                    joint_names: Sequence[str] | None = None, fidelity: bool = True,
                    hooks: Hooks = NULL_HOOKS) -> list[Path]:
    """Write the scene GLB, BVH files + flag CSVs and the flags NPZ into ``out_dir``; returns their paths."""
    files = animation_files(bodies, rig, camera, fps, world, model, prefix, formats, expressions, joint_names,
                            fidelity)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, (name, data) in enumerate(files.items()):
        hooks.check_interrupt()
        paths.append(write_bytes_atomic(out / name, data))
        hooks.progress(k + 1, len(files))
    log.info("wrote %d animation files to %s", len(paths), out)
    return paths
