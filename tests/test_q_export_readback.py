"""Exports read back by readers independent of our writers, compared value by value.

The GLB writer uses pygltflib and the mesh writer trimesh, so neither reads its own files
here: GLBs are parsed from the glTF 2.0 binary layout with ``struct`` + ``json`` (and
cross-checked with trimesh's own GLB loader), PLY files from the PLY header, OBJ files line by
line. Positions, face indices, winding (outward normals of a closed mesh stay outward after
the OpenCV -> OpenGL turn), normals and the visibility animation are compared with the bodies.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from body4d_core import export
from body4d_core.data import PARAM_DIMS, Bodies, BodyFlag, Camera
from body4d_core.testing.checkpoints import uv_sphere

GL = np.array([1.0, -1.0, -1.0], np.float32)  # OpenCV camera axes -> OpenGL: 180 degrees about x
T, FPS = 5, 12.5


def _closed_bodies() -> Bodies:
    """Two closed, outward-wound ellipsoids (not symmetric in x/y/z), moving, with gaps; ids out of order."""
    unit, faces = uv_sphere(rows=5, cols=7)
    unit = unit.numpy() * np.array([0.2, 0.5, 0.1], np.float32) + np.array([0.03, -0.05, 0.02], np.float32)
    n = 2
    rng = np.random.default_rng(3)
    params = {k: rng.normal(0, 0.01, (n, T, d)).astype(np.float32) for k, d in PARAM_DIMS.items()}
    params["cam_t"][0] = np.stack([np.linspace(-0.5, 0.5, T), np.full(T, 0.2), np.linspace(3, 4, T)], -1)
    params["cam_t"][1] = np.stack([np.full(T, 0.8), np.linspace(-0.3, 0.1, T), np.full(T, 5.0)], -1)
    verts = np.stack([np.stack([unit * (1 + 0.1 * t + 0.2 * i) for t in range(T)]) for i in range(n)])
    flags = np.full((n, T), BodyFlag.VISIBLE, np.uint8)
    flags[0, 2] = BodyFlag.MISSING  # a gap
    flags[1, :1] = BodyFlag.MISSING  # enters late
    flags[1, 3] = BodyFlag.FILLED
    return Bodies(np.array([11, 4]), flags, params, (48, 80), vertices=verts.astype(np.float32),
                  faces=faces.numpy().astype(np.int32))


def _signed_volume(v: np.ndarray, f: np.ndarray) -> float:
    tri = v[f].astype(np.float64)
    return float(np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6.0)


# ----------------------------------------------------------------- an independent GLB reader

_CTYPES = {5126: np.float32, 5125: np.uint32, 5123: np.uint16, 5121: np.uint8}
_NCOMP = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT4": 16}


def read_glb(path: Path) -> tuple[dict, callable]:
    """glTF JSON and an accessor reader, straight from the GLB container (spec 2.0, section 'GLB File Format')."""
    data = path.read_bytes()
    magic, version, length = struct.unpack_from("<III", data, 0)
    assert magic == 0x46546C67 and version == 2 and length == len(data)
    jlen, jtype = struct.unpack_from("<II", data, 12)
    assert jtype == 0x4E4F534A
    doc = json.loads(data[20:20 + jlen])
    off = 20 + jlen
    blen, btype = struct.unpack_from("<II", data, off)
    assert btype == 0x004E4942
    blob = data[off + 8:off + 8 + blen]

    def accessor(k: int) -> np.ndarray:
        acc = doc["accessors"][k]
        view = doc["bufferViews"][acc["bufferView"]]
        dtype = np.dtype(_CTYPES[acc["componentType"]])
        ncomp = _NCOMP[acc["type"]]
        start = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
        arr = np.frombuffer(blob, dtype, acc["count"] * ncomp, start)
        return arr.reshape(acc["count"], ncomp) if ncomp > 1 else arr

    return doc, accessor


def _step_value(times: np.ndarray, values: np.ndarray, at: float) -> np.ndarray:
    """glTF STEP interpolation: the keyframe at or before ``at`` (the first before the first key)."""
    k = int(np.searchsorted(times, at, side="right")) - 1
    return values[max(k, 0)]


@pytest.fixture(scope="module")
def glbs(tmp_path_factory):
    out = tmp_path_factory.mktemp("glb")
    b = _closed_bodies()
    export.write_glb(b, out, fps=FPS)
    return b, out


@pytest.mark.parametrize("oid", [11, 4])
def test_glb_geometry_faces_and_winding(glbs, oid):
    b, out = glbs
    i = b.index_of(oid)
    doc, acc = read_glb(out / f"body4d_person_{oid}.glb")
    frames = np.flatnonzero(b.present[i])
    assert len(doc["meshes"]) == frames.size
    for mesh in doc["meshes"]:
        t = int(mesh["name"].split("_")[-1])
        prim = mesh["primitives"][0]
        pos = acc(prim["attributes"]["POSITION"])
        want = (b.vertices[i, t] + b.params["cam_t"][i, t]) * GL
        np.testing.assert_allclose(pos, want, atol=1e-6, err_msg=f"id {oid} frame {t}")
        faces = acc(prim["indices"]).reshape(-1, 3)
        np.testing.assert_array_equal(faces, b.faces)  # same triangles, same vertex order: same winding
        # outward winding survives: enclosed volume positive, as in the input (centred on the body)
        assert _signed_volume(pos - pos.mean(0), faces) > 0 < _signed_volume(b.vertices[i, t], b.faces)
        acc_pos = doc["accessors"][prim["attributes"]["POSITION"]]
        np.testing.assert_allclose(acc_pos["min"], pos.min(0), atol=1e-6)
        np.testing.assert_allclose(acc_pos["max"], pos.max(0), atol=1e-6)
        if "NORMAL" in prim["attributes"]:  # vertex normals point out of the closed mesh
            nrm = acc(prim["attributes"]["NORMAL"])
            np.testing.assert_allclose(np.linalg.norm(nrm, axis=1), 1.0, atol=1e-4)
            assert (np.einsum("ij,ij->i", nrm, pos - pos.mean(0)) > 0).mean() > 0.95


@pytest.mark.parametrize("oid", [11, 4])
def test_glb_animation_shows_exactly_the_present_frame(glbs, oid):
    b, out = glbs
    i = b.index_of(oid)
    doc, acc = read_glb(out / f"body4d_person_{oid}.glb")
    node_frame = {k: int(n["name"].split("_")[-1]) for k, n in enumerate(doc["nodes"]) if "mesh" in n}
    tracks = {}
    for ch in doc["animations"][0]["channels"]:
        assert ch["target"]["path"] == "scale"
        s = doc["animations"][0]["samplers"][ch["sampler"]]
        assert s["interpolation"] == "STEP"
        tracks[ch["target"]["node"]] = (acc(s["input"]), acc(s["output"]))
    assert set(tracks) == set(node_frame)
    for t in range(T):
        at = (t + 0.5) / FPS
        shown = [node_frame[k] for k, (tt, vv) in tracks.items() if _step_value(tt, vv, at)[0] > 0.5]
        assert shown == ([t] if b.present[i, t] else []), f"id {oid}: at frame {t} shown {shown}"
    first = int(np.flatnonzero(b.present[i])[0])  # the static scene (no animation) shows the first frame
    still = [node_frame[k] for k in node_frame if doc["nodes"][k].get("scale", [1, 1, 1])[0] > 0.5]
    assert still == [first]


def test_glb_read_by_trimesh_agrees(glbs):
    import trimesh

    b, out = glbs
    i = b.index_of(4)
    scene = trimesh.load(out / "body4d_person_4.glb", force="scene")
    geoms = {name: g for name, g in scene.geometry.items()}
    t = int(np.flatnonzero(b.present[i])[0])
    g = next(g for name, g in geoms.items() if name.startswith(f"frame_{t:06d}"))
    np.testing.assert_allclose(g.vertices, (b.vertices[i, t] + b.params["cam_t"][i, t]) * GL, atol=1e-6)
    np.testing.assert_array_equal(g.faces, b.faces)
    assert g.is_winding_consistent and g.volume > 0


# ----------------------------------------------------------------- PLY / OBJ


_PLY_TYPES = {"float": "<f4", "float32": "<f4", "uchar": "u1", "uint8": "u1", "int": "<i4", "int32": "<i4",
              "uint": "<u4", "uint32": "<u4", "double": "<f8", "short": "<i2", "ushort": "<u2"}


def read_ply(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Vertices, faces and vertex colours of a binary little-endian or ASCII PLY, from its header."""
    data = path.read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode().splitlines()
    fmt = header[1].split()[1]
    elements, cur = [], None
    for line in header:
        parts = line.split()
        if parts[0] == "element":
            cur = (parts[1], int(parts[2]), [])
            elements.append(cur)
        elif parts[0] == "property":
            cur[2].append(parts[1:])
    body = data[end:]
    out = {}
    if fmt == "ascii":
        rows = iter(body.decode().split("\n"))
        for name, count, props in elements:
            out[name] = [list(map(float, next(rows).split())) for _ in range(count)]
        verts = np.array([r[:3] for r in out["vertex"]], np.float32)
        faces = np.array([r[1:4] for r in out["face"]], np.int64)
        return verts, faces, None
    assert fmt == "binary_little_endian"
    pos = 0
    for name, count, props in elements:
        if props[0][0] == "list":
            cnt_t, idx_t = _PLY_TYPES[props[0][1]], _PLY_TYPES[props[0][2]]
            rows = []
            for _ in range(count):
                k = int(np.frombuffer(body, cnt_t, 1, pos)[0])
                pos += np.dtype(cnt_t).itemsize
                rows.append(np.frombuffer(body, idx_t, k, pos))
                pos += k * np.dtype(idx_t).itemsize
            out[name] = np.array(rows)
        else:
            dt = np.dtype([(p[1], _PLY_TYPES[p[0]]) for p in props])
            out[name] = np.frombuffer(body, dt, count, pos)
            pos += count * dt.itemsize
    v = out["vertex"]
    verts = np.stack([v["x"], v["y"], v["z"]], -1)
    colors = np.stack([v[c] for c in ("red", "green", "blue")], -1) if "red" in v.dtype.names else None
    return verts, out["face"].astype(np.int64), colors


def read_obj(path: Path) -> tuple[np.ndarray, np.ndarray]:
    verts, faces = [], []
    for line in path.read_text().splitlines():
        parts = line.split()
        if parts and parts[0] == "v":
            verts.append([float(x) for x in parts[1:4]])
        elif parts and parts[0] == "f":
            faces.append([int(p.split("/")[0]) - 1 for p in parts[1:4]])
    return np.array(verts, np.float32), np.array(faces, np.int64)


@pytest.mark.parametrize("fmt", ["ply", "obj"])
def test_mesh_files_geometry_faces_and_winding(tmp_path, fmt):
    from body4d_core.palette import object_color_float

    b = _closed_bodies()
    export.write_meshes(b, tmp_path, fmt=fmt)
    for oid in (11, 4):
        i = b.index_of(oid)
        files = sorted((tmp_path / f"person_{oid}").glob(f"*.{fmt}"))
        assert [int(f.stem) for f in files] == np.flatnonzero(b.present[i]).tolist()
        for f in files:
            t = int(f.stem)
            verts, faces, *rest = read_ply(f) if fmt == "ply" else read_obj(f)
            np.testing.assert_allclose(verts, (b.vertices[i, t] + b.params["cam_t"][i, t]) * GL, atol=1e-5)
            np.testing.assert_array_equal(faces, b.faces)
            assert _signed_volume(verts - verts.mean(0), faces) > 0
            if fmt == "ply" and rest[0] is not None:  # the person's id colour, as in the overlay
                want = np.round(object_color_float(oid) * 255).astype(np.uint8)
                assert np.abs(rest[0].astype(int) - want.astype(int)).max() <= 1


def test_params_npz_read_with_plain_numpy(tmp_path):
    b = _closed_bodies()
    cam = Camera(np.array([[70.0, 71.0, 40.0, 24.0]] * T, np.float32), (48, 80), "manual")
    export.save_params(b, tmp_path / "params.npz", cam)
    with np.load(tmp_path / "params.npz") as z:
        head = json.loads(str(z["__header__"]))
        assert head["kind"] == "bodies" and head["image_size"] == [48, 80]
        np.testing.assert_array_equal(z["obj_ids"], [11, 4])
        np.testing.assert_array_equal(z["flags"], b.flags)
        for k in PARAM_DIMS:
            np.testing.assert_array_equal(z[f"param.{k}"], b.params[k])
        np.testing.assert_array_equal(z["vertices"], b.vertices)
        np.testing.assert_array_equal(z["faces"], b.faces)
    with np.load(tmp_path / "params_camera.npz") as z:
        np.testing.assert_array_equal(z["intrinsics"], cam.intrinsics)
        assert json.loads(str(z["__header__"]))["source"] == "manual"


def test_mp4_frames_decode_to_what_was_written(tmp_path):
    import av

    rng = np.random.default_rng(0)
    h, w = 48, 80
    frames = np.zeros((4, h, w, 3), np.uint8)
    for t in range(4):  # a bright block moving right on an asymmetric frame
        frames[t, 10:30, 5 + 15 * t:25 + 15 * t] = (220, 40, 90)
    frames += rng.integers(0, 5, frames.shape, dtype=np.uint8)
    export.write_mp4(tmp_path / "v.mp4", frames, 10.0, (h, w))
    with av.open(str(tmp_path / "v.mp4")) as c:
        stream = c.streams.video[0]
        got = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
        assert float(stream.average_rate) == pytest.approx(10.0)
    assert got.shape == frames.shape
    assert np.abs(got.astype(int) - frames.astype(int)).mean() < 6
    for t in range(4):  # the block is where it was written (no H/W swap, no flip)
        cols = np.flatnonzero(got[t, 20, :, 0] > 150)
        assert abs(cols.min() - (5 + 15 * t)) <= 2 and abs(cols.max() - (24 + 15 * t)) <= 2
