"""BVH motion files (y up, centimetres, the clip's frame rate) from the rig animation, plus a flag CSV.

BVH has no scale: each joint's position channels hold its full translation in its parent's frame
with the parents' accumulated MHR scale already applied, so every joint's world position is exact;
rotations are the local ones (ZYX Euler, degrees). Position channels are absolute (they replace the
OFFSET, as Blender reads them); OFFSET is the first present frame's translation. Every identity is
a ``ROOT person_<id>`` (its placement in the world) whose children are the rig's joints, named
``p<id>_<joint>`` so several identities can share one file (one ROOT each).
"""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np

from .motion import FLAG_NAMES, PersonMotion, frame_flags
from ..rotations import quat_xyzw_to_rotmat, rotmat_to_euler_ZYX
from .similarity import topological_order

CM_PER_M = 100.0
CHANNELS = "Xposition Yposition Zposition Zrotation Yrotation Xrotation"


def euler_zyx_degrees(q: np.ndarray) -> np.ndarray:
    """Angles (z, y, x) in degrees [..., 3] with R(q) = Rz Ry Rx, unwrapped along the first axis."""
    ang = np.degrees(rotmat_to_euler_ZYX(quat_xyzw_to_rotmat(q)))
    return np.unwrap(ang, period=360.0, axis=0) if ang.shape[0] > 1 else ang


def bvh_channels(m: PersonMotion) -> tuple[list[int], np.ndarray, np.ndarray]:
    """(joint order, translations cm [T, 1+J, 3], ZYX degrees [T, 1+J, 3]) with the person root first."""
    _, _, gs = m.rig_globals()
    parents = m.rig.parents
    parent_scale = np.where(parents[None, :, None] >= 0, gs[:, np.maximum(parents, 0)], 1.0)
    t = np.concatenate([m.root_t[:, None], m.local_t * parent_scale], 1) * CM_PER_M
    r = euler_zyx_degrees(np.concatenate([m.root_q[:, None], m.local_q], 1))
    return topological_order(parents), t, r


def _hierarchy(out: io.StringIO, m: PersonMotion, t0: np.ndarray) -> None:
    """One ROOT block (the person) with the rig's joints, depth first."""
    kids: dict[int, list[int]] = {}
    for j, p in enumerate(m.rig.parents.tolist()):
        kids.setdefault(int(p), []).append(j)

    def joint(j: int, depth: int) -> None:
        pad = "  " * depth
        out.write(f"{pad}JOINT p{m.obj_id}_{m.rig.names[j]}\n{pad}{{\n")
        out.write(f"{pad}  OFFSET {t0[1 + j, 0]:.6f} {t0[1 + j, 1]:.6f} {t0[1 + j, 2]:.6f}\n")
        out.write(f"{pad}  CHANNELS 6 {CHANNELS}\n")
        for c in kids.get(j, []):
            joint(c, depth + 1)
        if not kids.get(j):
            out.write(f"{pad}  End Site\n{pad}  {{\n{pad}    OFFSET 0.000000 0.000000 0.000000\n{pad}  }}\n")
        out.write(f"{pad}}}\n")

    out.write(f"ROOT person_{m.obj_id}\n{{\n  OFFSET {t0[0, 0]:.6f} {t0[0, 1]:.6f} {t0[0, 2]:.6f}\n")
    out.write(f"  CHANNELS 6 {CHANNELS}\n")
    for c in kids.get(-1, []):
        joint(c, 1)
    out.write("}\n")


def _motion_block(m: PersonMotion) -> tuple[str, list[str]]:
    """(hierarchy text, one formatted channel line per frame) of one identity."""
    order, t, r = bvh_channels(m)
    rows = [0] + [1 + j for j in order]
    head = io.StringIO()
    _hierarchy(head, m, t[int(np.argmax(m.present))])
    values = np.concatenate([t[:, rows], r[:, rows]], -1).reshape(t.shape[0], -1)
    lines = io.StringIO()
    np.savetxt(lines, values, fmt="%.6f")
    return head.getvalue(), lines.getvalue().splitlines()


def bvh_texts(motions: Sequence[PersonMotion], fps: float) -> tuple[str, list[str]]:
    """(all identities in one file, one file per identity); each identity's channels are formatted once."""
    blocks = [_motion_block(m) for m in motions]
    frames = motions[0].num_frames

    def text(parts: list[tuple[str, list[str]]]) -> str:
        lines = [" ".join(cols) for cols in zip(*(p[1] for p in parts))]
        return ("HIERARCHY\n" + "".join(p[0] for p in parts) + f"MOTION\nFrames: {frames}\n"
                f"Frame Time: {1.0 / fps:.8f}\n" + "\n".join(lines) + "\n")

    single = [text([b]) for b in blocks]
    return (single[0] if len(blocks) == 1 else text(blocks)), single


def bvh_text(motions: Sequence[PersonMotion], fps: float) -> str:
    """A BVH file holding the given identities (one ROOT each), every frame of the clip."""
    return bvh_texts(motions, fps)[0]


def flags_csv(motions: Sequence[PersonMotion], fps: float, contacts: dict[str, np.ndarray] | None = None,
              rows: Sequence[int] | None = None) -> str:
    """One line per identity per frame: frame, time_s, obj_id, then 0/1 per flag (contacts when present);
    ``rows`` picks which of ``contacts``' rows belong to ``motions`` (default: the same order)."""
    names = list(FLAG_NAMES) + [f"contact_{k}" for k in (contacts or {})]
    lines = [",".join(["frame", "time_s", "obj_id", *names])]
    for k, m in enumerate(motions):
        r = k if rows is None else rows[k]
        flags = frame_flags(m.flags)
        cols = [flags[n] for n in FLAG_NAMES] + [np.asarray(v[r], bool) for v in (contacts or {}).values()]
        for t in range(m.num_frames):
            lines.append(",".join([str(t), f"{t / fps:.6f}", str(m.obj_id), *(str(int(c[t])) for c in cols)]))
    return "\n".join(lines) + "\n"
