"""Independent readers for the animation exports (tests only): glTF node world transforms from the
file's own accessors and animation samplers, and a minimal BVH parser with forward kinematics."""

from __future__ import annotations

from pathlib import Path

import numpy as np

COMPONENTS = {5126: np.float32, 5125: np.uint32, 5123: np.uint16, 5121: np.uint8}
WIDTH = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT4": 16}


def load_glb(path):
    """(pygltflib.GLTF2, binary blob) of a .glb file (parsed once per path and content)."""
    data = Path(path).read_bytes()
    key = (str(path), hash(data))
    if key not in _LOADED:
        import pygltflib

        g = pygltflib.GLTF2.load_from_bytes(data)
        _LOADED[key] = (g, g.binary_blob())
    return _LOADED[key]


_LOADED: dict = {}


def accessor(g, blob: bytes, index: int) -> np.ndarray:
    """Accessor data as a numpy array [count, width] (tightly packed views only; cached on ``g``)."""
    cache = g.__dict__.setdefault("_test_accessor_cache", {})
    if index not in cache:
        cache[index] = _read_accessor(g, blob, index)
    return cache[index]


def _read_accessor(g, blob: bytes, index: int) -> np.ndarray:
    acc = g.accessors[index]
    if acc.sparse is not None:  # zeros (no bufferView) with the listed rows replaced
        width = WIDTH[acc.type]
        out = np.zeros((acc.count, width), COMPONENTS[acc.componentType])
        sp = acc.sparse
        iv, vv = g.bufferViews[sp.indices.bufferView], g.bufferViews[sp.values.bufferView]
        rows = np.frombuffer(blob, COMPONENTS[sp.indices.componentType], sp.count,
                             (iv.byteOffset or 0) + (sp.indices.byteOffset or 0))
        vals = np.frombuffer(blob, COMPONENTS[acc.componentType], sp.count * width,
                             (vv.byteOffset or 0) + (sp.values.byteOffset or 0)).reshape(sp.count, width)
        out[rows.astype(np.int64)] = vals
        return out
    view = g.bufferViews[acc.bufferView]
    dtype = np.dtype(COMPONENTS[acc.componentType])
    width = WIDTH[acc.type]
    start = (view.byteOffset or 0) + (acc.byteOffset or 0)
    arr = np.frombuffer(blob, dtype=dtype, count=acc.count * width, offset=start)
    return arr.reshape(acc.count, width)


def _quat_to_matrix(q: np.ndarray) -> np.ndarray:
    x, y, z, w = (float(v) for v in q / np.linalg.norm(q))
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def _slerp(a: np.ndarray, b: np.ndarray, u: float) -> np.ndarray:
    d = float(np.dot(a, b))
    if d < 0:
        b, d = -b, -d
    if d > 0.9995:
        out = a + u * (b - a)
    else:
        th = np.arccos(d)
        out = (np.sin((1 - u) * th) * a + np.sin(u * th) * b) / np.sin(th)
    return out / np.linalg.norm(out)


def sample_channels(g, blob: bytes, time: float) -> dict[tuple[int, str], np.ndarray]:
    """(node, path) -> value of every animation channel at ``time`` (LINEAR / STEP, glTF rules)."""
    out = {}
    time = float(np.float32(time))  # key times are stored as float32
    for anim in g.animations or []:
        for ch in anim.channels:
            s = anim.samplers[ch.sampler]
            times = accessor(g, blob, s.input)[:, 0].astype(np.float64)
            vals = accessor(g, blob, s.output).astype(np.float64)
            if ch.target.path == "weights":
                vals = vals.reshape(times.size, -1)
            k = int(np.clip(np.searchsorted(times, time, side="right") - 1, 0, times.size - 1))
            if s.interpolation == "STEP" or k == times.size - 1 or time <= times[0]:
                v = vals[k]
            else:
                u = (time - times[k]) / (times[k + 1] - times[k])
                v = _slerp(vals[k], vals[k + 1], u) if ch.target.path == "rotation" else (1 - u) * vals[k] + u * vals[k + 1]
            out[(ch.target.node, ch.target.path)] = v
    return out


def node_world_matrices(g, blob: bytes, time: float) -> dict[int, np.ndarray]:
    """4x4 world matrix of every node reachable from the scene at ``time``."""
    anim = sample_channels(g, blob, time)
    world: dict[int, np.ndarray] = {}

    def local(i: int) -> np.ndarray:
        n = g.nodes[i]
        if n.matrix is not None and len(n.matrix) == 16:
            return np.array(n.matrix, np.float64).reshape(4, 4).T
        t = anim.get((i, "translation"), np.array(n.translation or [0, 0, 0], np.float64))
        q = anim.get((i, "rotation"), np.array(n.rotation or [0, 0, 0, 1], np.float64))
        s = anim.get((i, "scale"), np.array(n.scale or [1, 1, 1], np.float64))
        m = np.eye(4)
        m[:3, :3] = _quat_to_matrix(np.asarray(q)) * np.asarray(s)[None, :]
        m[:3, 3] = t
        return m

    def walk(i: int, parent: np.ndarray) -> None:
        world[i] = parent @ local(i)
        for c in g.nodes[i].children or []:
            walk(c, world[i])

    for r in g.scenes[g.scene or 0].nodes:
        walk(r, np.eye(4))
    return world


# --------------------------------------------------------------------------- BVH


def _axis_rot(axis: str, deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    if axis == "X":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "Y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def parse_bvh(text: str):
    """(joints, frames [F, C], frame_time): joints = list of dicts name/parent/offset/channels/col."""
    tokens = text.split()
    joints, stack, col, i = [], [], 0, 0
    while tokens[i] != "MOTION":
        tok = tokens[i]
        if tok in ("ROOT", "JOINT"):
            joints.append({"name": tokens[i + 1], "parent": stack[-1] if stack else -1, "offset": None,
                           "channels": [], "col": col})
            i += 2
        elif tok == "End":
            joints.append({"name": None, "parent": stack[-1], "offset": None, "channels": [], "col": col})
            i += 2
        elif tok == "{":
            stack.append(len(joints) - 1)
            i += 1
        elif tok == "}":
            stack.pop()
            i += 1
        elif tok == "OFFSET":
            joints[stack[-1]]["offset"] = np.array([float(x) for x in tokens[i + 1:i + 4]])
            i += 4
        elif tok == "CHANNELS":
            n = int(tokens[i + 1])
            joints[stack[-1]]["channels"] = tokens[i + 2:i + 2 + n]
            joints[stack[-1]]["col"] = col
            col += n
            i += 2 + n
        else:
            i += 1
    nframes = int(tokens[tokens.index("Frames:") + 1])
    ft = float(tokens[tokens.index("Time:") + 1])
    start = tokens.index("Time:") + 2
    data = np.array([float(x) for x in tokens[start:start + nframes * col]]).reshape(nframes, col)
    return joints, data, ft


def bvh_world_positions(joints, frames: np.ndarray, f: int) -> dict[str, np.ndarray]:
    """Joint name -> world position at frame f (position channels replace OFFSET; rotations in listed order)."""
    out, world = {}, {}
    for k, j in enumerate(joints):
        if j["name"] is None:
            continue
        vals = frames[f, j["col"]:j["col"] + len(j["channels"])]
        t = j["offset"].copy()
        rot = np.eye(3)
        pos = {}
        for ch, v in zip(j["channels"], vals):
            if ch.endswith("position"):
                pos[ch[0]] = v
            else:
                rot = rot @ _axis_rot(ch[0], v)
        if pos:
            t = np.array([pos.get("X", 0.0), pos.get("Y", 0.0), pos.get("Z", 0.0)])
        if j["parent"] >= 0:
            pr, pt = world[j["parent"]]
            world[k] = (pr @ rot, pt + pr @ t)
        else:
            world[k] = (rot, t)
        out[j["name"]] = world[k][1]
    return out
