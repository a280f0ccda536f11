"""One skinned glTF scene (.glb) for a clip: every identity as a skinned MHR rig, the camera, the floor.

Layout (all in metres, y up): per identity a root node ``person_<id>`` (animated translation and,
in a world frame, rotation; scale 0 on frames where the person is missing, STEP) whose children
are the rig's joints (one node per joint, local TRS = MHR's local joint transform, animated:
rotation always, translation / scale where they change), and a skinned mesh node
``person_<id>_mesh`` at the scene root (glTF skinned meshes ignore their own node's transform)
with the identity's rest shape, up to 8 influences per vertex and, when the clip uses them,
expression morph targets with animated weights. A ``camera`` node carries the clip's vertical
field of view (static or posed by the world frame); a ``floor`` quad when a floor is given.
Per-frame flags ride in each person node's ``extras`` as frame arrays (0/1); the clip's fps,
intrinsics and per-frame camera data in the scene's ``extras``.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Sequence

import numpy as np

from ..data import Camera
from ..palette import object_color_float
from .motion import FLAG_NAMES, PersonMotion, frame_flags
from ..rotations import quat_continuous, rotmat_to_quat
from .similarity import similarity_matrix
from .world_input import SceneWorld

STATIC_EPS = 1e-7  # a channel changing less than this (metres / unit scale) is written once, on the node
GENERATOR = "ComfyUI SAM-Body4D"
FLOAT, USHORT, UINT = 5126, 5123, 5125  # glTF component types
ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963
GLB_MAGIC, JSON_CHUNK, BIN_CHUNK = 0x46546C67, 0x4E4F534A, 0x004E4942


class _Blob:
    """Binary chunk + buffer views + accessors under construction (plain glTF JSON dicts)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.views: list[dict] = []
        self.accessors: list[dict] = []

    def add(self, arr: np.ndarray, ctype: int, atype: str, target: int | None = None, minmax: bool = False) -> int:
        """Append an array as one view + accessor; returns the accessor index."""
        while len(self.data) % 4:
            self.data.append(0)
        arr = np.ascontiguousarray(arr)
        view = {"buffer": 0, "byteOffset": len(self.data), "byteLength": arr.nbytes}
        if target is not None:
            view["target"] = target
        self.views.append(view)
        self.data.extend(arr.tobytes())
        count = int(arr.shape[0])
        acc = {"bufferView": len(self.views) - 1, "componentType": ctype, "count": count, "type": atype}
        if minmax:
            flat = arr.reshape(count, -1)
            acc["min"] = [float(x) for x in flat.min(0)]
            acc["max"] = [float(x) for x in flat.max(0)]
        self.accessors.append(acc)
        return len(self.accessors) - 1

    def floats(self, arr: np.ndarray, atype: str, target: int | None = None, minmax: bool = False) -> int:
        return self.add(np.asarray(arr, np.float32), FLOAT, atype, target, minmax)

    def sparse_vec3(self, arr: np.ndarray) -> int:
        """A VEC3 float accessor stored sparsely (only rows that are not zero, e.g. a face-only morph target)
        when that is smaller than dense storage."""
        arr = np.asarray(arr, np.float32)
        rows = np.flatnonzero(np.abs(arr).max(1) > 0).astype(np.uint32)
        if 2 * rows.size > arr.shape[0]:
            return self.add(arr, FLOAT, "VEC3", ARRAY_BUFFER, minmax=True)
        rows = rows if rows.size else np.zeros(1, np.uint32)  # a sparse accessor needs one entry at least
        idx = self.add(rows, UINT, "SCALAR")
        val = self.add(arr[rows], FLOAT, "VEC3")
        acc = {"componentType": FLOAT, "count": int(arr.shape[0]), "type": "VEC3",
               "min": [float(x) for x in arr.min(0)], "max": [float(x) for x in arr.max(0)],
               "sparse": {"count": int(rows.size),
                          "indices": {"bufferView": self.accessors[idx]["bufferView"], "componentType": UINT},
                          "values": {"bufferView": self.accessors[val]["bufferView"]}}}
        del self.accessors[val], self.accessors[idx]  # only their views stay
        self.accessors.append(acc)
        return len(self.accessors) - 1


def _bind_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals of the bind mesh (+y where a vertex is in no face)."""
    n = np.zeros_like(verts)
    tri = verts[faces]
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    for k in range(3):
        np.add.at(n, faces[:, k], fn)
    length = np.linalg.norm(n, axis=1, keepdims=True)
    return np.where(length > 1e-12, n / np.maximum(length, 1e-12), [0.0, 1.0, 0.0]).astype(np.float32)


def _material(name: str, rgba: list[float], roughness: float) -> dict:
    return {"name": name, "doubleSided": True, "pbrMetallicRoughness": {
        "baseColorFactor": rgba, "metallicFactor": 0.0, "roughnessFactor": roughness}}


def glb_container(doc: dict, binary: bytes) -> bytes:
    """A binary glTF file: 12-byte header, JSON chunk (space padded), BIN chunk (zero padded)."""
    text = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 4)
    binary = bytes(binary) + b"\0" * (-len(binary) % 4)
    total = 12 + 8 + len(text) + 8 + len(binary)
    return b"".join([struct.pack("<III", GLB_MAGIC, 2, total), struct.pack("<II", len(text), JSON_CHUNK), text,
                     struct.pack("<II", len(binary), BIN_CHUNK), binary])


class _SceneBuilder:
    """Accumulates nodes, meshes, skins and animation channels."""

    def __init__(self, fps: float, num_frames: int) -> None:
        self.blob = _Blob()
        self.nodes: list[dict] = []
        self.meshes: list[dict] = []
        self.skins: list[dict] = []
        self.materials: list[dict] = []
        self.cameras: list[dict] = []
        self.channels: list[dict] = []
        self.samplers: list[dict] = []
        self.roots: list[int] = []
        self.times = self.blob.floats(np.arange(num_frames) / fps, "SCALAR", minmax=True)
        self.num_frames = num_frames
        self._face_acc: int | None = None

    def node(self, **kw) -> int:
        self.nodes.append(kw)
        return len(self.nodes) - 1

    def animate(self, node: int, path: str, values: np.ndarray, atype: str, interpolation: str = "LINEAR") -> None:
        """One channel over every frame of the clip."""
        out = self.blob.floats(values.reshape(self.num_frames, -1) if atype != "SCALAR" else values.reshape(-1), atype)
        self.samplers.append({"input": self.times, "output": out, "interpolation": interpolation})
        self.channels.append({"sampler": len(self.samplers) - 1, "target": {"node": node, "path": path}})

    def trs(self, node: int, t: np.ndarray, q: np.ndarray, s: np.ndarray | None) -> None:
        """Static value on the node where a channel does not change, an animation channel where it does."""
        n = self.nodes[node]
        for path, vals, rest, atype in (("translation", t, [0.0, 0.0, 0.0], "VEC3"),
                                        ("rotation", q, [0.0, 0.0, 0.0, 1.0], "VEC4"),
                                        ("scale", None if s is None else np.repeat(s, 3, -1), [1.0, 1.0, 1.0], "VEC3")):
            if vals is None:
                continue
            if np.abs(vals - vals[:1]).max() > STATIC_EPS:
                n[path] = [float(x) for x in vals[0]]
                self.animate(node, path, vals, atype)
            elif np.abs(vals[0] - rest).max() > STATIC_EPS:
                n[path] = [float(x) for x in vals[0]]

    def person(self, m: PersonMotion, faces: np.ndarray, flags_extra: dict[str, np.ndarray]) -> None:
        """Root, joints, skin, skinned mesh (+ morph targets) and channels of one identity."""
        blob = self.blob
        root = self.node(name=f"person_{m.obj_id}", extras={
            "obj_id": m.obj_id, "flags": {k: v.astype(int).tolist() for k, v in flags_extra.items()},
            "shape": [float(x) for x in m.shape]})
        self.roots.append(root)
        self.trs(root, m.root_t, m.root_q, None)
        if not m.present.all():  # hidden on missing frames (the node's own scale stays 1: importers build on it)
            self.animate(root, "scale", np.repeat(m.present.astype(np.float32)[:, None], 3, 1), "VEC3", "STEP")
        first = len(self.nodes)
        joint_nodes = [self.node(name=name) for name in m.rig.names]
        for j, p in enumerate(m.rig.parents.tolist()):
            parent = self.nodes[root] if p < 0 else self.nodes[first + p]
            parent.setdefault("children", []).append(first + j)
            self.trs(first + j, m.local_t[:, j], m.local_q[:, j], m.local_s[:, j])
        ibm = similarity_matrix(*m.inverse_bind())
        ibm_acc = blob.floats(np.transpose(ibm, (0, 2, 1)).reshape(-1, 16), "MAT4")  # column-major
        roots = [first + j for j, p in enumerate(m.rig.parents.tolist()) if p < 0]
        self.skins.append({"name": f"person_{m.obj_id}", "inverseBindMatrices": ibm_acc, "joints": joint_nodes,
                           "skeleton": roots[0] if len(roots) == 1 else root})
        attrs = {"POSITION": blob.floats(m.bind_verts, "VEC3", ARRAY_BUFFER, minmax=True),
                 "NORMAL": blob.floats(_bind_normals(m.bind_verts, faces), "VEC3", ARRAY_BUFFER),
                 "JOINTS_0": blob.add(m.skin_joints[:, :4], USHORT, "VEC4", ARRAY_BUFFER),
                 "JOINTS_1": blob.add(m.skin_joints[:, 4:], USHORT, "VEC4", ARRAY_BUFFER),
                 "WEIGHTS_0": blob.floats(m.skin_weights[:, :4], "VEC4", ARRAY_BUFFER),
                 "WEIGHTS_1": blob.floats(m.skin_weights[:, 4:], "VEC4", ARRAY_BUFFER)}
        self.materials.append(_material(f"person_{m.obj_id}", [*object_color_float(m.obj_id).tolist(), 1.0], 0.7))
        prim = {"attributes": attrs, "indices": self._faces(faces), "material": len(self.materials) - 1}
        mesh = {"name": f"person_{m.obj_id}_mesh", "primitives": [prim]}
        if m.expr_index.size:
            prim["targets"] = [{"POSITION": blob.sparse_vec3(d)} for d in m.expr_targets()]
            mesh["weights"] = [float(x) for x in m.expr_weights[0]]
            mesh["extras"] = {"targetNames": [f"expr_{int(k):02d}" for k in m.expr_index]}
        self.meshes.append(mesh)
        mesh_node = self.node(name=f"person_{m.obj_id}_mesh", mesh=len(self.meshes) - 1, skin=len(self.skins) - 1)
        self.roots.append(mesh_node)
        if m.expr_index.size:
            self.animate(mesh_node, "weights", m.expr_weights.astype(np.float32), "SCALAR")

    def _faces(self, faces: np.ndarray) -> int:
        if self._face_acc is None:
            self._face_acc = self.blob.add(np.ascontiguousarray(faces, np.uint32).reshape(-1), UINT, "SCALAR",
                                           ELEMENT_ARRAY_BUFFER)
        return self._face_acc

    def camera(self, camera: Camera, poses: np.ndarray | None) -> None:
        """The clip's camera: vertical FOV of the median focal length, posed per frame in a world frame."""
        h, w = camera.image_size
        fy = float(np.median(camera.intrinsics[:, 1]))
        self.cameras.append({"name": "camera", "type": "perspective", "perspective": {
            "yfov": 2.0 * math.atan(h / 2.0 / fy), "aspectRatio": w / h, "znear": 0.01, "zfar": 1000.0}})
        node = self.node(name="camera", camera=0)
        self.roots.append(node)
        if poses is not None:
            self.trs(node, poses[:, :3, 3], quat_continuous(rotmat_to_quat(poses[:, :3, :3])), None)

    def floor(self, world: SceneWorld) -> None:
        """A square quad on the world's floor plane."""
        blob, f = self.blob, world.floor
        n = f.normal
        a = np.cross(n, [1.0, 0.0, 0.0] if abs(n[0]) < 0.9 else [0.0, 0.0, 1.0])
        a /= np.linalg.norm(a)
        b = np.cross(n, a)
        h = f.size / 2.0
        quad = np.stack([f.point + h * (sa * a + sb * b) for sa, sb in ((-1, -1), (1, -1), (1, 1), (-1, 1))])
        tri = np.array([0, 1, 2, 0, 2, 3], np.uint32) if np.dot(np.cross(quad[1] - quad[0], quad[2] - quad[0]), n) > 0 \
            else np.array([0, 2, 1, 0, 3, 2], np.uint32)
        attrs = {"POSITION": blob.floats(quad, "VEC3", ARRAY_BUFFER, minmax=True),
                 "NORMAL": blob.floats(np.tile(n, (4, 1)), "VEC3", ARRAY_BUFFER)}
        self.materials.append(_material("floor", [0.6, 0.6, 0.6, 1.0], 0.9))
        idx = blob.add(tri, UINT, "SCALAR", ELEMENT_ARRAY_BUFFER)
        self.meshes.append({"name": "floor", "primitives": [{"attributes": attrs, "indices": idx,
                                                             "material": len(self.materials) - 1}]})
        self.roots.append(self.node(name="floor", mesh=len(self.meshes) - 1))

    def build(self, extras: dict) -> bytes:
        doc = {"asset": {"generator": GENERATOR, "version": "2.0"}, "scene": 0,
               "scenes": [{"name": "body4d", "nodes": self.roots, "extras": extras}], "nodes": self.nodes,
               "meshes": self.meshes, "skins": self.skins, "materials": self.materials, "cameras": self.cameras,
               "accessors": self.blob.accessors, "bufferViews": self.blob.views,
               "buffers": [{"byteLength": len(self.blob.data)}]}
        if self.channels:
            doc["animations"] = [{"name": "body4d", "channels": self.channels, "samplers": self.samplers}]
        return glb_container({k: v for k, v in doc.items() if v != []}, self.blob.data)


def scene_glb_bytes(motions: Sequence[PersonMotion], faces: np.ndarray, camera: Camera, fps: float,
                    world: SceneWorld | None = None, contacts: dict[str, np.ndarray] | None = None,
                    fidelity: dict | None = None) -> bytes:
    """The whole clip as one skinned glTF binary (see the module doc); ``contacts`` name -> bool [P, T] by motion;
    ``fidelity``: per-identity error report stored in the scene's extras."""
    num_frames = motions[0].num_frames
    camera = camera.check_frames(num_frames)
    b = _SceneBuilder(fps, num_frames)
    for k, m in enumerate(motions):
        flags = frame_flags(m.flags)
        flags.update({f"contact_{name}": arr[k] for name, arr in (contacts or {}).items()})
        b.person(m, faces, flags)
    poses = world.gl_camera_poses(num_frames) if world is not None else None
    b.camera(camera, poses)
    if world is not None and world.floor is not None:
        b.floor(world)
    extras = {"fps": float(fps), "num_frames": num_frames, "image_size": list(camera.image_size),
              "units": "metres", "up": "+y", "flag_names": list(FLAG_NAMES),
              "intrinsics": np.round(camera.intrinsics.astype(np.float64), 4).tolist(),
              "obj_ids": [m.obj_id for m in motions]}
    if fidelity:
        extras["fidelity"] = fidelity
    return b.build(extras)
