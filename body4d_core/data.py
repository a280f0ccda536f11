"""Data contracts passed between pipeline stages (docs/ARCHITECTURE.md, Data contracts).

Each type is a small dataclass that validates shapes, dtypes and frame counts when it is
built, and saves to / loads from a single ``.npz`` so any stage's output can be inspected,
cached and fed to the headless runner. Masks are stored bit-packed (``pack_masks``) on the
CPU: a 720p mask costs 115 KB instead of 920 KB as bool.

Conventions: frame indices are 0-based positions in the loaded clip; image sizes are
``(height, width)``; pixel coordinates are ``(x, y)`` with the origin at the top-left pixel
corner; object ids are integers >= 1 and never list positions.
"""

from __future__ import annotations

import json
import math
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from enum import IntFlag
from pathlib import Path
from typing import Any, ClassVar, Iterable

import numpy as np

from .atomic import atomic_path
from .errors import InputError
from .pages import drop_resident

FORMAT_VERSION = 1

# --------------------------------------------------------------------------- masks


def pack_masks(masks: np.ndarray) -> np.ndarray:
    """Bit-pack boolean masks [..., H, W] along the width into uint8 [..., H, ceil(W/8)]."""
    masks = np.asarray(masks)
    if masks.ndim < 2:
        raise InputError(f"masks need at least 2 dims (H, W), got shape {masks.shape}")
    return np.packbits(masks.astype(bool, copy=False), axis=-1)


def unpack_masks(packed: np.ndarray, width: int) -> np.ndarray:
    """Inverse of ``pack_masks``: uint8 [..., H, ceil(W/8)] -> bool [..., H, W]."""
    return np.unpackbits(packed, axis=-1, count=width).astype(bool)


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """Tight xyxy boxes (pixel-corner convention, float32) of bool masks [..., H, W]; NaN if empty."""
    masks = np.asarray(masks, dtype=bool)
    lead = masks.shape[:-2]
    flat = masks.reshape(-1, *masks.shape[-2:])
    out = np.full((flat.shape[0], 4), np.nan, dtype=np.float32)
    rows = flat.any(axis=2)
    cols = flat.any(axis=1)
    for i in range(flat.shape[0]):
        ys = np.flatnonzero(rows[i])
        if ys.size == 0:
            continue
        xs = np.flatnonzero(cols[i])
        out[i] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
    return out.reshape(*lead, 4)


# --------------------------------------------------------------------------- helpers


def _size(value: Iterable[int], what: str) -> tuple[int, int]:
    h, w = (int(v) for v in value)
    if h <= 0 or w <= 0:
        raise InputError(f"{what}: image size must be positive (height, width), got {(h, w)}")
    return h, w


def _check_array(name: str, arr: np.ndarray, shape: tuple, dtype: Any | None = None) -> np.ndarray:
    """Check an array against a shape pattern (None = any) and cast to dtype."""
    arr = np.asarray(arr)
    if arr.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, arr.shape)):
        pattern = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise InputError(f"{name} must have shape {pattern}, got {tuple(arr.shape)}")
    if dtype is not None and arr.dtype != dtype:
        arr = arr.astype(dtype)
    return arr


def _obj_ids(ids: Iterable[int], what: str) -> np.ndarray:
    arr = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64).reshape(-1)
    if arr.size and arr.min() < 1:
        raise InputError(f"{what}: object ids must be >= 1, got {arr.tolist()}")
    if len(set(arr.tolist())) != arr.size:
        raise InputError(f"{what}: object ids must be unique, got {arr.tolist()}")
    return arr


MASK_CHUNK = 256  # frames of packed masks per chunk of a whole-clip pass (``Tracks.present``)
NPZ_LEVEL = 1  # deflate level of compressed members: masks shrink ~100x at level 1 already, 3x faster than 6
NPZ_STORE_RATIO = 0.85  # a member whose sample deflates to more than this is stored (float vertices: ~0.92)
NPZ_SAMPLE = 1 << 18  # bytes per sampled chunk (4 chunks spread over the array)
NPZ_SMALL = 1 << 20  # members below this are always deflated (no sampling)


def npz_member_compressed(arr: np.ndarray) -> bool:
    """Whether an array is worth deflating: small ones always, large ones if a sample shrinks enough."""
    if arr.nbytes < NPZ_SMALL or arr.dtype.hasobject:
        return True
    if arr.flags.c_contiguous:
        raw = arr.reshape(-1).view(np.uint8)
        pieces = [raw[s:s + NPZ_SAMPLE] for s in np.linspace(0, raw.size - NPZ_SAMPLE, 4).astype(np.int64).tolist()]
    else:  # a strided view: sample whole sub-arrays along the first axis instead of copying it all
        rows = np.linspace(0, arr.shape[0] - 1, 4).astype(np.int64).tolist()
        pieces = [np.ascontiguousarray(arr[r]).reshape(-1).view(np.uint8)[:NPZ_SAMPLE] for r in rows]
    packed = sum(len(zlib.compress(p, NPZ_LEVEL)) for p in pieces)
    return packed <= NPZ_STORE_RATIO * sum(p.size for p in pieces)


def write_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write arrays as an .npz that ``np.load`` reads like ``np.savez_compressed``'s: one ``<key>.npy``
    member per array, each deflated at ``NPZ_LEVEL`` or stored when it barely compresses. The file
    appears under its name only once complete (``atomic_path``): a full disk leaves nothing behind.

    Why: deflating float vertices (~100 MB per 5 people x 90 frames) at the default level took ~5 s
    per file to save 8%; stored members also load faster. np.load handles both member types, so
    files written before (all deflated) and after load the same way.
    """
    path = Path(path)
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED,
                                                    compresslevel=NPZ_LEVEL, allowZip64=True) as zf:
        for key, val in arrays.items():
            val = np.asanyarray(val)
            member: str | zipfile.ZipInfo = key + ".npy"
            if not npz_member_compressed(val):
                member = zipfile.ZipInfo(key + ".npy", date_time=time.localtime(time.time())[:6])
                member.compress_type = zipfile.ZIP_STORED
                member.external_attr = 0o600 << 16
            with zf.open(member, "w", force_zip64=True) as fid:  # force_zip64: sizes unknown up front
                np.lib.format.write_array(fid, val, allow_pickle=False)
    return path


class ResultFileError(InputError):
    """A saved stage result that cannot be used (damaged, incomplete, wrong kind, non-finite values)."""


RERUN = "re-run the stage that writes it (headless: add --overwrite)"
# what np.load / zipfile / zlib raise on a damaged or truncated archive
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError, TypeError)


def _finite_problem(arrays: dict[str, np.ndarray], names: Iterable[str], rows: np.ndarray | None = None) -> str | None:
    """The first member of ``names`` holding NaN/inf (on ``rows`` [N, T] when given), as a phrase."""
    for name in names:
        arr = arrays.get(name)
        if arr is None or not np.issubdtype(arr.dtype, np.floating):
            continue
        if rows is not None and arr.shape[:2] == rows.shape:  # per (object, frame), no copy of the values
            ok = np.isfinite(arr).reshape(*rows.shape, -1).all(axis=-1)[rows].all()
        else:
            ok = np.isfinite(arr).all()
        if not ok:
            return f"member {name!r} holds NaN or infinite values"
    return None


class _NpzMixin:
    """Save/load through a flat dict of arrays plus a JSON header."""

    KIND: ClassVar[str] = ""
    REQUIRED: ClassVar[tuple[str, ...]] = ()  # members every file of this kind must hold

    def to_arrays(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], header: dict) -> Any:
        raise NotImplementedError

    @classmethod
    def nonfinite(cls, arrays: dict[str, np.ndarray]) -> str | None:
        """Why the arrays hold unusable NaN/inf values (None when they are fine); per type."""
        return None

    def header(self) -> dict:
        return {}

    def save_npz(self, path: str | Path) -> Path:
        """Write this object to ``path`` (.npz; see ``write_npz``); returns the path."""
        path = Path(path)
        path = path if path.suffix == ".npz" else path.with_name(path.name + ".npz")
        arrays = self.to_arrays()
        head = {"kind": self.KIND, "version": FORMAT_VERSION, **self.header(), "members": sorted(arrays)}
        write_npz(path, {"__header__": np.array(json.dumps(head)), **arrays})
        return path

    @classmethod
    def load_npz(cls, path: str | Path) -> Any:
        """Read an object written by ``save_npz``; a damaged, incomplete or non-finite file is one
        ``ResultFileError`` sentence naming the file (never a zip/JSON/pickle traceback)."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"no such file: {path}")
        what = f"{path} (a saved {cls.KIND or 'result'})"

        def fail(problem: str) -> ResultFileError:
            return ResultFileError(f"{what} {problem}; {RERUN}")

        try:
            with open(path, "rb") as fh:
                magic = fh.read(6)
            if magic.startswith(b"\x93NUMPY"):
                raise fail("is a single array, not a SAM-Body4D .npz")
            if not magic.startswith(b"PK"):
                found = "it is empty" if not magic else f"it starts with {magic[:4]!r}"
                raise fail(f"cannot be read as an .npz (not a zip archive: {found})")
            data = np.load(path, allow_pickle=False)
        except ResultFileError:
            raise
        except _READ_ERRORS as err:
            raise fail(f"cannot be read as an .npz ({_reason(err)})") from err
        with data:
            head = _read_header(data, fail)
            if head.get("kind") != cls.KIND:
                raise fail(f"holds {head.get('kind')!r}, expected {cls.KIND!r}")
            if not isinstance(head.get("version", 0), int) or head.get("version", 0) > FORMAT_VERSION:
                raise InputError(f"{path} was written by a newer version (format {head.get('version')})")
            listed = head.get("members") if isinstance(head.get("members"), list) else []
            missing = sorted((set(cls.REQUIRED) | set(listed)) - set(data.files))
            if missing:
                raise fail(f"is incomplete: member(s) {', '.join(missing)} missing (an interrupted write?)")
            arrays = {}
            for k in data.files:
                if k == "__header__":
                    continue
                try:
                    arrays[k] = data[k]
                except _READ_ERRORS as err:
                    raise fail(f"is damaged: member {k!r} cannot be read ({_reason(err)})") from err
        problem = cls.nonfinite(arrays)
        if problem:
            raise fail(problem)
        try:
            return cls.from_arrays(arrays, head)
        except InputError as err:
            raise fail(f"does not hold valid data ({err})") from err
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise fail(f"does not hold valid data ({_reason(err)})") from err


def _reason(err: BaseException) -> str:
    """A short reason for a read error (pickled members are named as such, not as a pickle problem)."""
    text = str(err).strip() or type(err).__name__
    if "pickled" in text or "allow_pickle" in text:
        return "a member holds Python objects, which SAM-Body4D never writes"
    if isinstance(err, KeyError):
        return f"missing entry {text}"
    return text.splitlines()[0][:200]


def _read_header(data: Any, fail: Any) -> dict:
    """The JSON header of an opened .npz as a dict (errors via ``fail``)."""
    if "__header__" not in data.files:
        raise fail("is not a SAM-Body4D .npz (no header)")
    try:
        head = json.loads(str(data["__header__"]))
    except _READ_ERRORS as err:
        raise fail(f"has a damaged header ({_reason(err)})") from err
    if not isinstance(head, dict):
        raise fail("has a damaged header (not a JSON object)")
    return head


# --------------------------------------------------------------------------- clip


@dataclass
class Clip(_NpzMixin):
    """What was loaded from a video: timing, sizes, which source frames, optional frames.

    ``frames`` (uint8 [T, H, W, 3]) is optional: inside ComfyUI the frames travel as IMAGE.
    """

    fps: float
    num_frames: int
    image_size: tuple[int, int]
    source: str = ""
    source_size: tuple[int, int] | None = None
    frame_indices: np.ndarray | None = None
    frames: np.ndarray | None = None

    KIND: ClassVar[str] = "clip"
    REQUIRED: ClassVar[tuple[str, ...]] = ("frame_indices",)

    def __post_init__(self) -> None:
        self.image_size = _size(self.image_size, "Clip")
        self.source_size = self.image_size if self.source_size is None else _size(self.source_size, "Clip")
        if self.num_frames < 1:
            raise InputError("Clip: a clip needs at least one frame")
        if not (self.fps > 0 and math.isfinite(self.fps)):
            raise InputError(f"Clip: fps must be positive, got {self.fps}")
        if self.frame_indices is None:
            self.frame_indices = np.arange(self.num_frames, dtype=np.int64)
        self.frame_indices = _check_array("Clip.frame_indices", self.frame_indices, (self.num_frames,), np.int64)
        if self.frames is not None:
            h, w = self.image_size
            self.frames = _check_array("Clip.frames", self.frames, (self.num_frames, h, w, 3))
            if self.frames.dtype != np.uint8:
                raise InputError(f"Clip.frames must be uint8, got {self.frames.dtype}")

    def header(self) -> dict:
        return {"fps": self.fps, "num_frames": self.num_frames, "image_size": list(self.image_size),
                "source": self.source, "source_size": list(self.source_size)}

    def to_arrays(self) -> dict[str, np.ndarray]:
        out = {"frame_indices": self.frame_indices}
        if self.frames is not None:
            out["frames"] = self.frames
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], header: dict) -> "Clip":
        return cls(fps=header["fps"], num_frames=header["num_frames"], image_size=tuple(header["image_size"]),
                   source=header.get("source", ""), source_size=tuple(header["source_size"]),
                   frame_indices=arrays["frame_indices"], frames=arrays.get("frames"))


# --------------------------------------------------------------------------- prompts


@dataclass
class ObjectPrompt:
    """Clicks and/or a box for one object on one frame (pixel coordinates)."""

    obj_id: int
    frame: int
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int32))
    box: np.ndarray | None = None  # float32 [4] x0, y0, x1, y1

    def __post_init__(self) -> None:
        self.obj_id = int(self.obj_id)
        self.frame = int(self.frame)
        self.points = _check_array("prompt points", np.asarray(self.points, np.float32).reshape(-1, 2), (None, 2), np.float32)
        self.labels = _check_array("prompt labels", np.asarray(self.labels).reshape(-1), (self.points.shape[0],), np.int32)
        if self.box is not None:
            self.box = _check_array("prompt box", np.asarray(self.box, np.float32).reshape(-1), (4,), np.float32)


@dataclass
class Prompts(_NpzMixin):
    """Per object id, per frame: positive (1) / negative (0) points and an optional box."""

    items: list[ObjectPrompt]
    image_size: tuple[int, int]
    num_frames: int

    KIND: ClassVar[str] = "prompts"
    REQUIRED: ClassVar[tuple[str, ...]] = ("obj_ids", "frames", "counts", "points", "labels", "boxes")

    @classmethod
    def nonfinite(cls, arrays: dict[str, np.ndarray]) -> str | None:
        """Points must be finite; a box row is all-NaN where the prompt has no box, never infinite."""
        if np.isinf(np.asarray(arrays["boxes"], np.float64)).any():
            return "member 'boxes' holds infinite values"
        return _finite_problem(arrays, ("points",))

    def __post_init__(self) -> None:
        self.image_size = _size(self.image_size, "Prompts")
        h, w = self.image_size
        if not self.items:
            raise InputError("Prompts: no prompt given; click at least one point or add a box")
        for it in self.items:
            where = f"object {it.obj_id}, frame {it.frame}"
            if it.obj_id < 1:
                raise InputError(f"Prompts: object ids start at 1, got {it.obj_id}")
            if not 0 <= it.frame < self.num_frames:
                raise InputError(f"Prompts: {where} is past the clip ({self.num_frames} frames, 0..{self.num_frames - 1})")
            if it.points.shape[0] == 0 and it.box is None:
                raise InputError(f"Prompts: {where} has neither points nor a box")
            if it.labels.size and not np.isin(it.labels, (0, 1)).all():
                raise InputError(f"Prompts: {where}: labels must be 1 (positive) or 0 (negative)")
            pts = it.points
            if pts.size and ((pts[:, 0] < 0) | (pts[:, 0] > w) | (pts[:, 1] < 0) | (pts[:, 1] > h)).any():
                bad = pts[((pts[:, 0] < 0) | (pts[:, 0] > w) | (pts[:, 1] < 0) | (pts[:, 1] > h))][0]
                raise InputError(f"Prompts: {where}: point ({bad[0]:g}, {bad[1]:g}) is outside the {w}x{h} frame")
            if it.box is not None:
                x0, y0, x1, y1 = it.box.tolist()
                if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
                    raise InputError(f"Prompts: {where}: box {it.box.tolist()} is empty or outside the {w}x{h} frame")

    @property
    def obj_ids(self) -> list[int]:
        return sorted({it.obj_id for it in self.items})

    @property
    def frames(self) -> list[int]:
        return sorted({it.frame for it in self.items})

    def to_arrays(self) -> dict[str, np.ndarray]:
        boxes = np.stack([it.box if it.box is not None else np.full(4, np.nan, np.float32) for it in self.items])
        return {
            "obj_ids": np.array([it.obj_id for it in self.items], np.int64),
            "frames": np.array([it.frame for it in self.items], np.int64),
            "counts": np.array([it.points.shape[0] for it in self.items], np.int64),
            "points": np.concatenate([it.points for it in self.items]).reshape(-1, 2),
            "labels": np.concatenate([it.labels for it in self.items]).reshape(-1),
            "boxes": boxes,
        }

    def header(self) -> dict:
        return {"image_size": list(self.image_size), "num_frames": self.num_frames}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], header: dict) -> "Prompts":
        if int(np.sum(arrays["counts"])) != len(arrays["points"]) or len(arrays["points"]) != len(arrays["labels"]):
            raise InputError("Prompts: the point counts do not match the points and labels stored")
        splits = np.cumsum(arrays["counts"])[:-1]
        pts = np.split(arrays["points"], splits)
        labs = np.split(arrays["labels"], splits)
        items = [
            ObjectPrompt(int(o), int(f), p, l, None if np.isnan(b).any() else b)
            for o, f, p, l, b in zip(arrays["obj_ids"], arrays["frames"], pts, labs, arrays["boxes"])
        ]
        return cls(items, tuple(header["image_size"]), int(header["num_frames"]))


# --------------------------------------------------------------------------- tracks


@dataclass
class Tracks(_NpzMixin):
    """Per-object, per-frame masks (bit-packed on the CPU), scores and presence."""

    obj_ids: np.ndarray  # int64 [N]
    packed: np.ndarray  # uint8 [N, T, H, ceil(W/8)]
    image_size: tuple[int, int]
    scores: np.ndarray | None = None  # float32 [N, T]

    KIND: ClassVar[str] = "tracks"
    REQUIRED: ClassVar[tuple[str, ...]] = ("obj_ids", "packed", "scores")

    @classmethod
    def nonfinite(cls, arrays: dict[str, np.ndarray]) -> str | None:
        """Scores are finite on every frame (0 where an object is absent)."""
        return _finite_problem(arrays, ("scores",))

    def __post_init__(self) -> None:
        self.image_size = _size(self.image_size, "Tracks")
        self.obj_ids = _obj_ids(self.obj_ids, "Tracks")
        h, w = self.image_size
        n = self.obj_ids.size
        self.packed = _check_array("Tracks.packed", self.packed, (n, None, h, (w + 7) // 8))
        if self.packed.dtype != np.uint8:
            raise InputError(f"Tracks.packed must be uint8 bit-packed masks, got {self.packed.dtype}")
        if self.packed.shape[1] < 1:
            raise InputError("Tracks: no frames")
        if self.scores is None:
            self.scores = self.present.astype(np.float32)
        self.scores = _check_array("Tracks.scores", self.scores, (n, self.num_frames), np.float32)

    @classmethod
    def from_masks(cls, obj_ids: Iterable[int], masks: np.ndarray, scores: np.ndarray | None = None) -> "Tracks":
        """Build from bool masks [N, T, H, W]."""
        masks = np.asarray(masks)
        if masks.ndim != 4:
            raise InputError(f"Tracks.from_masks needs masks [N, T, H, W], got shape {masks.shape}")
        return cls(np.asarray(list(obj_ids), np.int64), pack_masks(masks), masks.shape[2:], scores)

    @property
    def num_objects(self) -> int:
        return int(self.obj_ids.size)

    @property
    def num_frames(self) -> int:
        return int(self.packed.shape[1])

    @property
    def present(self) -> np.ndarray:
        """bool [N, T]: the object has at least one mask pixel on that frame."""
        n, t, h, wb = self.packed.shape
        out = np.zeros((n, t), bool)
        for i in range(n):  # in chunks, each dropped once read: a long clip's masks live in a file (frame store)
            for a in range(0, t, MASK_CHUNK):
                block = self.packed[i, a:a + MASK_CHUNK]
                out[i, a:a + MASK_CHUNK] = block.reshape(len(block), h * wb).any(axis=-1)
                drop_resident(block)
        return out

    def index_of(self, obj_id: int) -> int:
        hits = np.flatnonzero(self.obj_ids == int(obj_id))
        if hits.size == 0:
            raise InputError(f"object id {obj_id} is not in the tracks (ids: {self.obj_ids.tolist()})")
        return int(hits[0])

    def masks_of(self, obj_id: int, frames: slice | np.ndarray | None = None) -> np.ndarray:
        """bool [T', H, W] masks of one object (all frames, or a slice / index array)."""
        sel = self.packed[self.index_of(obj_id)]
        if frames is not None:
            sel = sel[frames]
        return unpack_masks(sel, self.image_size[1])

    def frame_masks(self, t: int) -> np.ndarray:
        """bool [N, H, W]: every object's mask on frame t."""
        return unpack_masks(self.packed[:, t], self.image_size[1])

    def union(self, frames: slice | None = None) -> np.ndarray:
        """bool [T', H, W]: union over objects."""
        packed = self.packed if frames is None else self.packed[:, frames]
        return unpack_masks(np.bitwise_or.reduce(packed, axis=0), self.image_size[1])

    def boxes(self) -> np.ndarray:
        """float32 [N, T, 4] xyxy boxes of each mask, NaN where the object is absent."""
        h, w = self.image_size
        out = np.full((self.num_objects, self.num_frames, 4), np.nan, np.float32)
        for i in range(self.num_objects):
            for t in np.flatnonzero(self.present[i]):
                out[i, t] = mask_boxes(unpack_masks(self.packed[i, t], w))
        return out

    def header(self) -> dict:
        return {"image_size": list(self.image_size)}

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"obj_ids": self.obj_ids, "packed": self.packed, "scores": self.scores}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], header: dict) -> "Tracks":
        return cls(arrays["obj_ids"], arrays["packed"], tuple(header["image_size"]), arrays["scores"])


# --------------------------------------------------------------------------- amodal


@dataclass
class Amodal(_NpzMixin):
    """Per object, per frame: occluded flag, amodal mask, completed RGB where occluded."""

    obj_ids: np.ndarray  # int64 [N]
    occluded: np.ndarray  # bool [N, T]
    packed_amodal: np.ndarray  # uint8 [N, T, H, ceil(W/8)]
    image_size: tuple[int, int]
    iou: np.ndarray | None = None  # float32 [N, T], NaN where not computed
    completed_index: np.ndarray | None = None  # int64 [K, 2] rows of (object index, frame)
    completed_rgb: np.ndarray | None = None  # uint8 [K, H, W, 3]

    KIND: ClassVar[str] = "amodal"
    REQUIRED: ClassVar[tuple[str, ...]] = ("obj_ids", "occluded", "packed_amodal", "iou", "completed_index",
                                           "completed_rgb")

    @classmethod
    def nonfinite(cls, arrays: dict[str, np.ndarray]) -> str | None:
        """IoU is NaN where it was not computed (kept), never infinite."""
        if np.isinf(np.asarray(arrays["iou"], np.float64)).any():
            return "member 'iou' holds infinite values"
        return None

    def __post_init__(self) -> None:
        self.image_size = _size(self.image_size, "Amodal")
        h, w = self.image_size
        self.obj_ids = _obj_ids(self.obj_ids, "Amodal")
        n = self.obj_ids.size
        self.occluded = _check_array("Amodal.occluded", self.occluded, (n, None), bool)
        t = self.occluded.shape[1]
        self.packed_amodal = _check_array("Amodal.packed_amodal", self.packed_amodal, (n, t, h, (w + 7) // 8), np.uint8)
        if self.iou is None:
            self.iou = np.full((n, t), np.nan, np.float32)
        self.iou = _check_array("Amodal.iou", self.iou, (n, t), np.float32)
        if self.completed_index is None:
            self.completed_index = np.zeros((0, 2), np.int64)
            self.completed_rgb = np.zeros((0, h, w, 3), np.uint8)
        self.completed_index = _check_array("Amodal.completed_index", self.completed_index, (None, 2), np.int64)
        k = self.completed_index.shape[0]
        self.completed_rgb = _check_array("Amodal.completed_rgb", self.completed_rgb, (k, h, w, 3))
        if self.completed_rgb.dtype != np.uint8:
            raise InputError("Amodal.completed_rgb must be uint8")
        if k and not self.occluded[self.completed_index[:, 0], self.completed_index[:, 1]].all():
            raise InputError("Amodal: completed frames must be flagged occluded")

    @property
    def num_frames(self) -> int:
        return int(self.occluded.shape[1])

    def index_of(self, obj_id: int) -> int:
        hits = np.flatnonzero(self.obj_ids == int(obj_id))
        if hits.size == 0:
            raise InputError(f"object id {obj_id} has no amodal results (ids: {self.obj_ids.tolist()})")
        return int(hits[0])

    def amodal_mask(self, obj_id: int, t: int) -> np.ndarray:
        return unpack_masks(self.packed_amodal[self.index_of(obj_id), t], self.image_size[1])

    def completed(self, obj_id: int, t: int) -> np.ndarray | None:
        """uint8 [H, W, 3] completed RGB of an occluded person on frame t, or None."""
        i = self.index_of(obj_id)
        rows = np.flatnonzero((self.completed_index[:, 0] == i) & (self.completed_index[:, 1] == t))
        return self.completed_rgb[rows[0]] if rows.size else None

    def header(self) -> dict:
        return {"image_size": list(self.image_size)}

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"obj_ids": self.obj_ids, "occluded": self.occluded, "packed_amodal": self.packed_amodal,
                "iou": self.iou, "completed_index": self.completed_index, "completed_rgb": self.completed_rgb}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], header: dict) -> "Amodal":
        return cls(arrays["obj_ids"], arrays["occluded"], arrays["packed_amodal"], tuple(header["image_size"]),
                   arrays["iou"], arrays["completed_index"], arrays["completed_rgb"])


# --------------------------------------------------------------------------- camera


@dataclass
class Camera(_NpzMixin):
    """Per-frame pinhole intrinsics in pixels: rows of (fx, fy, cx, cy)."""

    intrinsics: np.ndarray  # float32 [T, 4]
    image_size: tuple[int, int]
    source: str = "estimated"  # estimated | manual | default | moge_geometry

    KIND: ClassVar[str] = "camera"
    REQUIRED: ClassVar[tuple[str, ...]] = ("intrinsics",)

    @classmethod
    def nonfinite(cls, arrays: dict[str, np.ndarray]) -> str | None:
        """Intrinsics are finite on every frame."""
        return _finite_problem(arrays, ("intrinsics",))

    def __post_init__(self) -> None:
        self.image_size = _size(self.image_size, "Camera")
        self.intrinsics = _check_array("Camera.intrinsics", self.intrinsics, (None, 4), np.float32)
        if self.intrinsics.shape[0] < 1:
            raise InputError("Camera: no frames")
        if not (np.isfinite(self.intrinsics).all() and (self.intrinsics[:, :2] > 0).all()):
            raise InputError("Camera: focal lengths must be finite and positive")

    @property
    def num_frames(self) -> int:
        return int(self.intrinsics.shape[0])

    @classmethod
    def from_focal(cls, focal: float, image_size: tuple[int, int], num_frames: int, source: str) -> "Camera":
        """Same square-pixel focal for every frame, principal point at the image centre."""
        h, w = _size(image_size, "Camera")
        row = np.array([focal, focal, w / 2.0, h / 2.0], np.float32)
        return cls(np.tile(row, (num_frames, 1)), (h, w), source)

    @classmethod
    def default(cls, image_size: tuple[int, int], num_frames: int) -> "Camera":
        """Upstream's fallback without a FOV model: f = sqrt(H^2 + W^2)."""
        h, w = _size(image_size, "Camera")
        return cls.from_focal(math.hypot(h, w), (h, w), num_frames, "default")

    @classmethod
    def from_fov(cls, fov_y_deg: float, image_size: tuple[int, int], num_frames: int, source: str = "manual") -> "Camera":
        """From a vertical field of view in degrees."""
        if not 0.0 < fov_y_deg < 180.0:
            raise InputError(f"Camera: vertical FOV must be in (0, 180) degrees, got {fov_y_deg}")
        h, _ = _size(image_size, "Camera")
        return cls.from_focal(h / 2.0 / math.tan(math.radians(fov_y_deg) / 2.0), image_size, num_frames, source)

    def K(self, t: int = 0) -> np.ndarray:
        """3x3 intrinsics matrix of frame t."""
        fx, fy, cx, cy = self.intrinsics[t].tolist()
        return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], np.float32)

    def fov_y_deg(self, t: int = 0) -> float:
        return math.degrees(2.0 * math.atan(self.image_size[0] / 2.0 / float(self.intrinsics[t, 1])))

    def check_frames(self, num_frames: int) -> "Camera":
        """This camera for a clip of num_frames: a single-frame camera is broadcast, else counts must match."""
        if self.num_frames == num_frames:
            return self
        if self.num_frames == 1:
            return Camera(np.repeat(self.intrinsics, num_frames, axis=0), self.image_size, self.source)
        raise InputError(f"Camera has {self.num_frames} frames but the clip has {num_frames}")

    def header(self) -> dict:
        return {"image_size": list(self.image_size), "source": self.source}

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"intrinsics": self.intrinsics}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], header: dict) -> "Camera":
        return cls(arrays["intrinsics"], tuple(header["image_size"]), header.get("source", "estimated"))


# --------------------------------------------------------------------------- bodies


class BodyFlag(IntFlag):
    """Per object per frame: where the body came from (stored as uint8 bits)."""

    MISSING = 0
    VISIBLE = 1  # estimated from the visible frame and mask
    OCCLUDED = 2  # estimated from the completed frame and amodal mask
    FILLED = 4  # produced by the smoother across a gap (no observation)


# MHR parameter blocks and their sizes (SAM-3D-Body output).
PARAM_DIMS: dict[str, int] = {
    "global_rot": 3,  # MHR global rotation, Euler angles in radians (model convention)
    "body_pose": 133,
    "hand_pose": 108,
    "shape": 45,
    "scale": 28,
    "expr": 72,
    "cam_t": 3,  # camera-frame translation of the body root, metres
}


@dataclass
class Bodies(_NpzMixin):
    """Per object, per frame MHR bodies keyed by object id.

    ``params[name]`` is float32 [N, T, PARAM_DIMS[name]]; values on MISSING frames are
    undefined (zeros). Optional per-frame geometry: ``keypoints_3d`` [N, T, K, 3] (metres,
    camera axes, root-relative), ``keypoints_2d`` [N, T, K, 2] (pixels), ``vertices``
    [N, T, V, 3] (metres, root-relative; add cam_t), ``faces`` int32 [F, 3]. ``extras``
    holds further [N, T, ...] arrays a stage wants to pass on.
    """

    obj_ids: np.ndarray
    flags: np.ndarray  # uint8 [N, T] of BodyFlag bits
    params: dict[str, np.ndarray]
    image_size: tuple[int, int]
    keypoints_3d: np.ndarray | None = None
    keypoints_2d: np.ndarray | None = None
    vertices: np.ndarray | None = None
    faces: np.ndarray | None = None
    confidence: np.ndarray | None = None  # float32 [N, T] in [0, 1]
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    KIND: ClassVar[str] = "bodies"
    REQUIRED: ClassVar[tuple[str, ...]] = ("obj_ids", "flags", *(f"param.{k}" for k in PARAM_DIMS))
    GEOMETRY: ClassVar[tuple[str, ...]] = ("keypoints_3d", "keypoints_2d", "vertices", "confidence")

    @classmethod
    def nonfinite(cls, arrays: dict[str, np.ndarray]) -> str | None:
        """Parameters and geometry are finite on every frame with a body (MISSING frames are undefined)."""
        flags = np.asarray(arrays["flags"])
        if flags.ndim != 2:
            return None  # the shape check names the problem
        names = [k for k in arrays if k.startswith("param.")] + list(cls.GEOMETRY)
        return _finite_problem(arrays, names, rows=flags != BodyFlag.MISSING)

    def __post_init__(self) -> None:
        self.image_size = _size(self.image_size, "Bodies")
        self.obj_ids = _obj_ids(self.obj_ids, "Bodies")
        n = self.obj_ids.size
        self.flags = _check_array("Bodies.flags", self.flags, (n, None), np.uint8)
        t = self.flags.shape[1]
        if t < 1:
            raise InputError("Bodies: no frames")
        missing = set(PARAM_DIMS) - set(self.params)
        if missing:
            raise InputError(f"Bodies: missing parameter blocks {sorted(missing)}")
        self.params = {k: _check_array(f"Bodies.params[{k!r}]", v, (n, t, PARAM_DIMS.get(k)), np.float32)
                       for k, v in self.params.items()}
        for name in ("keypoints_3d", "keypoints_2d", "vertices"):
            arr = getattr(self, name)
            if arr is not None:
                dim = 2 if name == "keypoints_2d" else 3
                setattr(self, name, _check_array(f"Bodies.{name}", arr, (n, t, None, dim), np.float32))
        if self.faces is not None:
            self.faces = _check_array("Bodies.faces", self.faces, (None, 3), np.int32)
        if self.confidence is not None:
            self.confidence = _check_array("Bodies.confidence", self.confidence, (n, t), np.float32)
        self.extras = {k: _check_array(f"Bodies.extras[{k!r}]", v, (n, t) + (None,) * (np.ndim(v) - 2))
                       for k, v in self.extras.items()}

    @property
    def num_objects(self) -> int:
        return int(self.obj_ids.size)

    @property
    def num_frames(self) -> int:
        return int(self.flags.shape[1])

    @property
    def present(self) -> np.ndarray:
        """bool [N, T]: a body exists on that frame (observed or filled)."""
        return self.flags != BodyFlag.MISSING

    def index_of(self, obj_id: int) -> int:
        hits = np.flatnonzero(self.obj_ids == int(obj_id))
        if hits.size == 0:
            raise InputError(f"object id {obj_id} has no bodies (ids: {self.obj_ids.tolist()})")
        return int(hits[0])

    @classmethod
    def empty(cls, obj_ids: Iterable[int], num_frames: int, image_size: tuple[int, int]) -> "Bodies":
        """All-missing bodies to be filled in by a stage."""
        ids = np.asarray(list(obj_ids), np.int64)
        n = ids.size
        params = {k: np.zeros((n, num_frames, d), np.float32) for k, d in PARAM_DIMS.items()}
        return cls(ids, np.zeros((n, num_frames), np.uint8), params, image_size)

    def replace(self, **changes: Any) -> "Bodies":
        """A copy with some fields replaced (validated again)."""
        fields = {k: getattr(self, k) for k in ("obj_ids", "flags", "params", "image_size", "keypoints_3d",
                                                "keypoints_2d", "vertices", "faces", "confidence", "extras")}
        fields.update(changes)
        return Bodies(**fields)

    def header(self) -> dict:
        return {"image_size": list(self.image_size), "params": sorted(self.params), "extras": sorted(self.extras)}

    def to_arrays(self) -> dict[str, np.ndarray]:
        out = {"obj_ids": self.obj_ids, "flags": self.flags}
        out.update({f"param.{k}": v for k, v in self.params.items()})
        out.update({f"extra.{k}": v for k, v in self.extras.items()})
        for name in ("keypoints_3d", "keypoints_2d", "vertices", "faces", "confidence"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], header: dict) -> "Bodies":
        return cls(
            arrays["obj_ids"], arrays["flags"],
            {k[6:]: v for k, v in arrays.items() if k.startswith("param.")},
            tuple(header["image_size"]),
            keypoints_3d=arrays.get("keypoints_3d"), keypoints_2d=arrays.get("keypoints_2d"),
            vertices=arrays.get("vertices"), faces=arrays.get("faces"), confidence=arrays.get("confidence"),
            extras={k[6:]: v for k, v in arrays.items() if k.startswith("extra.")},
        )


# --------------------------------------------------------------------------- checks across types


def check_same_frames(**counts: int) -> int:
    """All named frame counts must agree; returns the count or raises one clear error."""
    values = {k: int(v) for k, v in counts.items() if v is not None}
    if len(set(values.values())) > 1:
        listing = ", ".join(f"{k}: {v}" for k, v in values.items())
        raise InputError(f"frame counts do not match ({listing}); feed every input from the same clip")
    return next(iter(values.values()))
