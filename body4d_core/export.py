"""Write results to disk: MP4, per-person per-frame PLY/OBJ, one params .npz, animated GLB.

Folders and files are keyed by object id (``person_<id>``), never by list position.
Meshes are written in an OpenGL-style camera frame (x right, y up, z towards the viewer:
the OpenCV camera frame rotated 180 degrees about x), in metres, with ``cam_t`` applied,
so people keep their place and motion in the shot. The animated GLB holds one node per
frame, shown only on its frame by a STEP scale animation: any glTF viewer plays it
(ComfyUI's Load 3D & Animation / Preview 3D, Blender, three.js).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import BinaryIO, Callable, Iterable

import numpy as np

from .atomic import OutputWriteError, atomic_path
from .data import Bodies, Camera
from .errors import InputError
from .palette import object_color_float
from .runtime import NULL_HOOKS, Hooks

log = logging.getLogger(__name__)

CV_TO_GL = np.array([1.0, -1.0, -1.0], np.float32)  # 180 degrees about x
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
NORMALS_BATCH = 64  # frames per GLB vertex-normal call: few OpenMP regions (per-frame calls stall on busy cores)


class ExportError(OutputWriteError):
    """An output folder could not be created or written (path not writable, disk full)."""


def _writable_dir(path: str | Path) -> Path:
    """Create the folder (and parents) or raise one clear error."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ExportError(f"cannot create output folder {path}: {err.strerror or err}") from err
    if not os.access(path, os.W_OK):
        raise ExportError(f"output folder {path} is not writable")
    return path


def _check_bodies(bodies: Bodies, what: str) -> None:
    if not bodies.present.any():
        raise InputError(f"{what}: the bodies hold no frame with a person; nothing to export")


# --------------------------------------------------------------------------- video


def write_mp4(path: str | Path, images: Iterable[np.ndarray] | np.ndarray, fps: float,
              image_size: tuple[int, int] | None = None, crf: int = 18, preset: str = "medium") -> Path:
    """Encode uint8 RGB frames [H, W, 3] to H.264 MP4 (yuv420p; odd sizes padded by one pixel).

    ``crf`` sets the quality; ``preset`` only trades encoding time for file size at that quality
    (x264's "veryfast" encodes 720p ~2.3x faster than "medium" at about the same size).
    """
    if preset not in X264_PRESETS:
        raise InputError(f"unknown x264 preset {preset!r}; choose one of {', '.join(X264_PRESETS)}")
    import av

    if not fps > 0:
        raise InputError(f"fps must be positive, got {fps}")
    path = Path(path)
    _writable_dir(path.parent)
    with atomic_path(path) as tmp:  # PyAV writes the temporary (same suffix: the muxer is picked from it)
        try:
            container = av.open(str(tmp), mode="w")
        except OSError:  # PyAV's OS errors (disk full, permissions) become atomic_path's one sentence
            raise
        except av.error.FFmpegError as err:  # type: ignore[attr-defined]
            raise ExportError(f"cannot write video {path}: {err}") from err
        count = _encode(av, container, images, fps, image_size, crf, preset)
        if count == 0:
            raise InputError("no frames to write to the video")
    return path


def _encode(av, container, images, fps: float, image_size, crf: int, preset: str) -> int:
    """Encode frames into an open PyAV container and close it; returns the frame count."""
    count = 0
    stream = None
    try:
        for frame in images:
            frame = np.asarray(frame)
            if frame.dtype != np.uint8:
                frame = (np.clip(frame, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
            if frame.ndim != 3 or frame.shape[-1] != 3:
                raise InputError(f"video frames must be [H, W, 3], got shape {frame.shape}")
            if image_size is not None and tuple(frame.shape[:2]) != tuple(image_size):
                raise InputError(f"frame {count} is {frame.shape[0]}x{frame.shape[1]}, expected "
                                 f"{image_size[0]}x{image_size[1]}")
            h, w = frame.shape[:2]
            if stream is None:
                from fractions import Fraction

                stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
                stream.width, stream.height = w + (w % 2), h + (h % 2)
                stream.pix_fmt = "yuv420p"
                stream.options = {"crf": str(crf), "preset": preset}
            if (h % 2) or (w % 2):
                frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
            count += 1
        if stream is not None:
            for packet in stream.encode():
                container.mux(packet)
    finally:
        container.close()
    return count


class Mp4Stream:
    """``write_mp4`` on a background thread fed batch by batch, so encoding overlaps the producer's work
    (the next render batch); at most ``depth`` batches wait in the queue (bounded memory).

    ``put`` a uint8 batch [B, H, W, 3] (or one frame [H, W, 3]); ``close`` finishes the file and raises
    the encoder's error; ``abort`` drops it (nothing is left under the final name).
    """

    _END = object()

    def __init__(self, path: str | Path, fps: float, image_size: tuple[int, int] | None = None, crf: int = 18,
                 preset: str = "medium", depth: int = 2) -> None:
        import queue
        import threading

        self.path = Path(path)
        self._q: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._error: BaseException | None = None
        self._aborted = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(fps, image_size, crf, preset),
                                        name="body4d-encode", daemon=True)
        self._thread.start()

    def _frames(self) -> Iterable[np.ndarray]:
        while True:
            item = self._q.get()
            if self._aborted.is_set():
                raise InputError("video encoding aborted")
            if item is self._END:
                return
            yield from (item if item.ndim == 4 else item[None])

    def _run(self, fps: float, image_size: tuple[int, int] | None, crf: int, preset: str) -> None:
        try:
            write_mp4(self.path, self._frames(), fps, image_size, crf, preset)
        except BaseException as err:  # noqa: BLE001 - raised on the producer's thread
            self._error = err
            while True:  # unblock a producer waiting on a full queue
                try:
                    self._q.get_nowait()
                except Exception:  # noqa: BLE001 - queue.Empty
                    break

    def put(self, batch: np.ndarray) -> None:
        """Queue frames for the encoder (waits while ``depth`` batches are queued); raises its error."""
        import queue

        while True:
            if self._error is not None:
                self._raise()
            if not self._thread.is_alive():  # the writer returned without reading on: nothing more to encode
                return
            try:
                self._q.put(np.asarray(batch), timeout=0.1)
                return
            except queue.Full:
                continue

    def _raise(self) -> None:
        self._thread.join()
        raise self._error

    def close(self) -> Path:
        """Finish the file; returns its path or raises the encoder's error."""
        self._send_end()
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self.path

    def abort(self) -> None:
        """Stop encoding and leave no file (the temporary is removed)."""
        self._aborted.set()
        self._send_end()
        self._thread.join()

    def _send_end(self) -> None:
        import queue

        while self._thread.is_alive():
            try:
                self._q.put(self._END, timeout=0.1)
                return
            except queue.Full:
                continue

    def __enter__(self) -> "Mp4Stream":
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# --------------------------------------------------------------------------- params


def save_params(bodies: Bodies, path: str | Path, camera: Camera | None = None) -> Path:
    """All bodies (params, flags, keypoints, optional vertices) in one .npz; the camera beside it."""
    _check_bodies(bodies, "Save params")
    path = Path(path)
    _writable_dir(path.parent)
    out = bodies.save_npz(path)  # each .npz is written atomically (write_npz)
    if camera is not None:
        camera.save_npz(out.with_name(out.stem + "_camera.npz"))
    return out


# --------------------------------------------------------------------------- meshes


def world_vertices(bodies: Bodies, i: int, t: int | np.ndarray, verts: np.ndarray | None = None) -> np.ndarray:
    """Vertices of person index i on frame t (or frames t [k]) with cam_t, in the OpenGL camera frame
    [V, 3] (or [k, V, 3])."""
    v = bodies.vertices[i, t] if verts is None else verts
    return ((v + np.expand_dims(bodies.params["cam_t"][i, t], -2)) * CV_TO_GL).astype(np.float32)


def _need_mesh(bodies: Bodies, what: str) -> np.ndarray:
    if bodies.vertices is None or bodies.faces is None:
        raise InputError(f"{what}: the bodies carry no vertices/faces; run SAM3D Body with vertices on")
    _check_bodies(bodies, what)
    # faces in the OpenGL frame keep their winding: a 180-degree rotation is proper
    return bodies.faces


def _rows(bodies: Bodies, ids: Iterable[int] | None) -> list[int]:
    """Row indices of the given object ids (all rows when None)."""
    return list(range(bodies.num_objects)) if ids is None else [bodies.index_of(int(o)) for o in ids]


def write_meshes(bodies: Bodies, out_dir: str | Path, fmt: str = "ply", hooks: Hooks = NULL_HOOKS,
                 ids: Iterable[int] | None = None) -> Path:
    """One mesh per person per present frame: <out_dir>/person_<id>/<frame:08d>.<fmt>.

    ``ids``: only these object ids.
    """
    import trimesh

    if fmt not in ("ply", "obj"):
        raise InputError(f"mesh format must be 'ply' or 'obj', got {fmt!r}")
    faces = _need_mesh(bodies, "Export meshes")
    rows = _rows(bodies, ids)
    root = _writable_dir(out_dir)
    total = int(bodies.present[rows].sum())
    done = 0
    for i in rows:
        oid = int(bodies.obj_ids[i])
        folder = _writable_dir(root / f"person_{oid}")
        color = (np.append(object_color_float(oid), 1.0) * 255).astype(np.uint8)
        pack = None  # trimesh's PLY bytes without trimesh, once the first frame showed they are the same
        for t in np.flatnonzero(bodies.present[i]):
            hooks.check_interrupt()
            verts = world_vertices(bodies, i, int(t))
            if pack is not None:
                data = pack(verts)
            else:
                mesh = trimesh.Trimesh(verts, faces, process=False,
                                       vertex_colors=np.tile(color, (bodies.vertices.shape[2], 1)))
                data = mesh.export(file_type=fmt)
                pack = _ply_packer(data, verts, faces, color) if fmt == "ply" else None
            with atomic_path(folder / f"{int(t):08d}.{fmt}") as tmp:
                tmp.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
            done += 1
            hooks.progress(done, total)
    return root


def _ply_packer(data: bytes, verts: np.ndarray, faces: np.ndarray, color: np.ndarray
                ) -> Callable[[np.ndarray], bytes] | None:
    """A function writing trimesh's binary PLY of these faces and colour for any vertices [V, 3], or None
    when trimesh's bytes ``data`` of ``verts`` are not the layout it writes (then trimesh writes every
    frame). Only the vertex block changes between frames: header and faces are built once."""
    end = data.find(b"end_header\n")
    if end < 0:
        return None
    header = data[:end + len(b"end_header\n")]
    face_rows = np.zeros(len(faces), np.dtype([("count", "<u1"), ("index", "<i4", (3,))]))
    face_rows["count"], face_rows["index"] = 3, faces
    face_bytes = face_rows.tobytes()
    vertex_dtype = np.dtype([("vertex", "<f4", (3,)), ("rgba", "<u1", (4,))])

    def pack(v: np.ndarray) -> bytes:
        rows = np.empty(len(v), vertex_dtype)
        rows["vertex"], rows["rgba"] = v, color
        return header + rows.tobytes() + face_bytes

    return pack if pack(verts) == data else None


# --------------------------------------------------------------------------- GLB


FALLBACK_NORMAL = np.array([0.0, 0.0, 1.0], np.float32)  # towards the viewer (OpenGL camera frame)


def _normals(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Unit vertex normals float32 [..., V, 3]: the renderer's area-weighted ones, and FALLBACK_NORMAL
    where they are undefined (a vertex no face uses, or only zero-area faces), since glTF requires
    every NORMAL to be of unit length."""
    import torch

    from .render import vertex_normals

    vt = torch.from_numpy(np.ascontiguousarray(v, np.float32))
    n = vertex_normals(vt, torch.from_numpy(np.ascontiguousarray(f, np.int64))).numpy()
    length = np.linalg.norm(n, axis=-1)
    undefined = ~(np.abs(length - 1.0) < 1e-3)  # zero (or NaN) where no face gave a direction
    if undefined.any():
        n[undefined] = FALLBACK_NORMAL
    return n


def _drawn_faces(faces: np.ndarray) -> np.ndarray:
    """Faces without a repeated vertex index (those draw nothing; glTF validators flag them)."""
    keep = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])
    if not keep.any():
        raise InputError("Save GLB: the mesh has no triangle with three distinct vertices")
    return faces[keep]


class _Blob:
    """The GLB's binary chunk as it is built: in memory (``glb_bytes``) or appended to a file (``write_glb``,
    so a long clip's vertices never sit in RAM as one buffer)."""

    def __init__(self, fh: BinaryIO | None = None) -> None:
        self.fh, self.size = fh, 0
        self.data = bytearray() if fh is None else None

    def align(self) -> None:
        self.write(b"\0" * (-self.size % 4))

    def write(self, data: bytes) -> None:
        if self.data is not None:
            self.data.extend(data)
        else:
            self.fh.write(data)
        self.size += len(data)


def glb_bytes(bodies: Bodies, i: int, fps: float, with_normals: bool = True) -> bytes:
    """Animated GLB of person index i: a node per present frame, visible on its frame only."""
    blob = _Blob()
    gltf = _glb_document(bodies, i, fps, with_normals, blob)
    gltf.set_binary_blob(bytes(blob.data))
    return b"".join(gltf.save_to_bytes())


GLB_COPY = 1 << 24  # bytes per read when the binary chunk is copied from its temporary file


def _write_glb_file(bodies: Bodies, i: int, fps: float, path: Path, with_normals: bool = True) -> None:
    """``glb_bytes`` written to ``path`` with the binary chunk built in a temporary file (same bytes)."""
    import struct
    import tempfile

    # every write, the binary chunk's temporary file included, inside atomic_path: a full disk is one
    # sentence naming the GLB and leaves nothing (the temporary file has no name)
    with atomic_path(path) as tmp, tempfile.TemporaryFile(dir=path.parent) as fh:
        blob = _Blob(fh)
        gltf = _glb_document(bodies, i, fps, with_normals, blob)
        doc = gltf.gltf_to_json(separators=(",", ":"), indent=None).encode("utf-8")
        doc += b" " * (-(12 + len(doc)) % gltf.required_alignment())
        with open(tmp, "wb") as out:
            out.write(b"glTF" + struct.pack("<II", 2, 12 + 8 + len(doc) + 8 + blob.size))
            out.write(struct.pack("<I", len(doc)) + b"JSON" + doc)
            out.write(struct.pack("<I", blob.size) + b"BIN\0")
            fh.seek(0)
            while chunk := fh.read(GLB_COPY):
                out.write(chunk)


def _glb_document(bodies: Bodies, i: int, fps: float, with_normals: bool, blob: _Blob):
    """The glTF document of person index i; its binary data is appended to ``blob``."""
    import pygltflib as g

    faces = np.ascontiguousarray(_drawn_faces(_need_mesh(bodies, "Save GLB")), dtype=np.uint32)
    frames = np.flatnonzero(bodies.present[i])
    if frames.size == 0:
        raise InputError(f"Save GLB: person {int(bodies.obj_ids[i])} is on no frame")
    views: list[g.BufferView] = []
    accessors: list[g.Accessor] = []

    def add(arr: np.ndarray, ctype: int, atype: str, target: int | None = None, minmax: bool = False,
            bounds: tuple[np.ndarray, np.ndarray] | None = None) -> int:
        blob.align()
        views.append(g.BufferView(buffer=0, byteOffset=blob.size, byteLength=arr.nbytes, target=target))
        blob.write(np.ascontiguousarray(arr).tobytes())
        acc = g.Accessor(bufferView=len(views) - 1, componentType=ctype, count=int(arr.shape[0]), type=atype)
        if minmax or bounds is not None:
            lo, hi = bounds if bounds is not None else (arr.min(0), arr.max(0))
            acc.min = lo.reshape(-1).tolist()
            acc.max = hi.reshape(-1).tolist()
        accessors.append(acc)
        return len(accessors) - 1

    idx_acc = add(faces.reshape(-1), g.UNSIGNED_INT, g.SCALAR, g.ELEMENT_ARRAY_BUFFER)
    oid = int(bodies.obj_ids[i])
    mat = g.Material(name=f"person_{oid}", doubleSided=True, pbrMetallicRoughness=g.PbrMetallicRoughness(
        baseColorFactor=[*object_color_float(oid).tolist(), 1.0], metallicFactor=0.0, roughnessFactor=0.7))
    meshes, nodes, channels, samplers = [], [], [], []
    faces64 = faces.astype(np.int64)
    for k, t in enumerate(frames.tolist()):
        j = k % NORMALS_BATCH
        if j == 0:  # one batched pass per chunk of frames
            chunk = frames[k:k + NORMALS_BATCH]
            world = world_vertices(bodies, i, chunk)
            lo, hi = world.min(1), world.max(1)
            normals = _normals(world, faces64) if with_normals else None
        attrs = g.Attributes(POSITION=add(world[j], g.FLOAT, g.VEC3, g.ARRAY_BUFFER, bounds=(lo[j], hi[j])))
        if normals is not None:
            attrs.NORMAL = add(normals[j], g.FLOAT, g.VEC3, g.ARRAY_BUFFER)
        meshes.append(g.Mesh(name=f"frame_{t:06d}", primitives=[g.Primitive(attributes=attrs, indices=idx_acc,
                                                                                 material=0)]))
        shown = 1.0 if t == frames[0] else 0.0  # a still viewer shows the first frame
        nodes.append(g.Node(name=f"frame_{t:06d}", mesh=len(meshes) - 1, scale=[shown] * 3))
        # STEP keys: visible on [t, t+1) / fps only
        keys = ([(0.0, 0.0)] if t > 0 else []) + [(t / fps, 1.0)]
        if t + 1 < bodies.num_frames:
            keys.append(((t + 1) / fps, 0.0))
        times, vals = zip(*keys)
        tin = add(np.asarray(times, np.float32), g.FLOAT, g.SCALAR, minmax=True)
        tout = add(np.repeat(np.asarray(vals, np.float32)[:, None], 3, 1), g.FLOAT, g.VEC3)
        samplers.append(g.AnimationSampler(input=tin, output=tout, interpolation="STEP"))
        channels.append(g.AnimationChannel(sampler=len(samplers) - 1,
                                           target=g.AnimationChannelTarget(node=len(nodes) - 1, path="scale")))
    root = g.Node(name=f"person_{oid}", children=list(range(len(nodes))))
    nodes.append(root)
    gltf = g.GLTF2(
        asset=g.Asset(generator="ComfyUI SAM-Body4D", version="2.0"),
        scene=0, scenes=[g.Scene(nodes=[len(nodes) - 1])], nodes=nodes, meshes=meshes, materials=[mat],
        accessors=accessors, bufferViews=views, buffers=[g.Buffer(byteLength=blob.size)],
        animations=[g.Animation(name="body4d", channels=channels, samplers=samplers)],
    )
    return gltf


def write_glb(bodies: Bodies, out_dir: str | Path, fps: float = 30.0, prefix: str = "body4d",
              hooks: Hooks = NULL_HOOKS, ids: Iterable[int] | None = None) -> Path:
    """One animated GLB per person: <out_dir>/<prefix>_person_<id>.glb; returns the folder.

    ``ids``: only these object ids (people on no frame are skipped either way).
    """
    if not fps > 0:
        raise InputError(f"fps must be positive, got {fps}")
    _need_mesh(bodies, "Save GLB")
    rows = _rows(bodies, ids)
    root = _writable_dir(out_dir)
    for k, i in enumerate(r for r in rows if bodies.present[r].any()):
        hooks.check_interrupt()
        path = root / f"{prefix}_person_{int(bodies.obj_ids[i])}.glb"
        _write_glb_file(bodies, int(i), fps, path)
        hooks.progress(k + 1, bodies.num_objects)
    return root
