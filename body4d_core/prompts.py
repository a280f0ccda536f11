"""Point/box prompts: parse the points editor's JSON (and core's coordinate strings) into ``Prompts``.

The editor (``web/points_editor.js``) stores its state as JSON in the node's ``prompts``
widget, so workflows save and reload the clicks. Format, version 1::

    {
      "version": 1,
      "image_size": [H, W],                 # optional: frame size the clicks were made on
      "objects": [
        {
          "id": 1,                          # object id, integer >= 1
          "points": [
            {"frame": 12, "x": 100.5, "y": 80, "label": 1},   # 1 = positive, 0 = negative
            ...
          ],
          "boxes": [                        # optional, at most one per frame
            {"frame": 0, "x0": 10, "y0": 20, "x1": 110, "y1": 220}
          ]
        },
        ...
      ]
    }

Coordinates are pixels of the full-size frame, origin at the top-left pixel corner
(docs/ARCHITECTURE.md, Data contracts); frames are 0-based positions in the clip. When
``image_size`` is given and differs from the frames' size with the same aspect ratio
(the clip was resized after clicking), the clicks are rescaled; a different aspect ratio
is an error. An object with no points and no boxes is dropped (the editor's "New person"
button creates one before the first click).

API users can also pass ComfyUI core's coordinate strings (``SAM3_Detect``'s
``positive_coords`` / ``negative_coords``, the KJNodes Points Editor format):
``[{"x": 100, "y": 80}, ...]`` (``[[x, y], ...]`` is accepted too); they are applied to
one frame and one object id and merged with the JSON.
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from typing import Any, Iterable, Sequence

import numpy as np

from .data import ObjectPrompt, Prompts
from .errors import InputError
from .palette import OBJECT_COLORS, object_color  # the editor (web/points_state.js) holds the same list

log = logging.getLogger(__name__)

PROMPT_FORMAT_VERSION = 1

__all__ = ["OBJECT_COLORS", "object_color", "parse_prompts", "parse_coordinate_string", "prompts_to_json",
           "draw_prompts", "editor_frame_indices", "editor_size"]


# --------------------------------------------------------------------------- small readers


def _number(value: Any, what: str) -> float:
    """A finite float from a JSON number (bools and strings rejected)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{what} must be a number, got {value!r}")
    if isinstance(value, int) and abs(value) > 2**63 - 1:  # beyond int64 (and possibly beyond float)
        raise InputError(f"{what} is too large ({str(value)[:24]}...)")
    if not math.isfinite(value):
        raise InputError(f"{what} must be finite, got {value!r}")
    return float(value)


def _integer(value: Any, what: str) -> int:
    """An int from a JSON integer (or an integral float like 3.0)."""
    num = _number(value, what)
    if num != int(num):
        raise InputError(f"{what} must be a whole number, got {value!r}")
    return int(num)


def _load_json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{what} is not valid JSON ({err.msg} at line {err.lineno} column {err.colno}); "
                         f"clear it in the points editor or fix the text") from err


# --------------------------------------------------------------------------- collection


class _Collector:
    """Accumulates points/boxes per (object id, frame) and builds ``Prompts``."""

    def __init__(self) -> None:
        self.points: dict[tuple[int, int], list[tuple[float, float, int]]] = defaultdict(list)
        self.boxes: dict[tuple[int, int], tuple[float, float, float, float]] = {}

    def add_point(self, obj_id: int, frame: int, x: float, y: float, label: int) -> None:
        self.points[(obj_id, frame)].append((x, y, label))

    def add_box(self, obj_id: int, frame: int, box: tuple[float, float, float, float]) -> None:
        if (obj_id, frame) in self.boxes:
            raise InputError(f"object {obj_id} has two boxes on frame {frame}; keep one box per object and frame")
        self.boxes[(obj_id, frame)] = box

    def build(self, image_size: tuple[int, int], num_frames: int) -> Prompts:
        keys = sorted(set(self.points) | set(self.boxes))
        if not keys:
            raise InputError("no prompts given: click at least one point on a person in the points editor "
                             "(left click = positive, right click = negative) or pass positive coordinates")
        items = []
        for obj_id, frame in keys:
            pts = self.points.get((obj_id, frame), [])
            arr = np.array([(x, y) for x, y, _ in pts], np.float32).reshape(-1, 2)
            labels = np.array([lab for _, _, lab in pts], np.int32)
            box = self.boxes.get((obj_id, frame))
            items.append(ObjectPrompt(obj_id, frame, arr, labels, None if box is None else np.array(box, np.float32)))
        return Prompts(items, image_size, num_frames)


MAX_OBJECT_ID = 2**31 - 1  # ids travel as int32/int64 arrays and JavaScript numbers; this fits all of them


def _check_obj_id(value: Any, what: str) -> int:
    """An object id: a whole number from 1 to MAX_OBJECT_ID."""
    if isinstance(value, float) and math.isfinite(value) and value > MAX_OBJECT_ID:
        raise InputError(f"{what}: object ids go up to {MAX_OBJECT_ID}, got {value!r}")
    obj_id = _integer(value, what)
    if obj_id < 1:
        raise InputError(f"{what}: object ids start at 1, got {obj_id}")
    if obj_id > MAX_OBJECT_ID:
        raise InputError(f"{what}: object ids go up to {MAX_OBJECT_ID}, got {obj_id}")
    return obj_id


def _check_frame(value: Any, what: str, num_frames: int) -> int:
    frame = _integer(value, what)
    if not 0 <= frame < num_frames:
        raise InputError(f"{what}: frame {frame} is past the clip ({num_frames} frames, 0..{num_frames - 1})")
    return frame


def _check_xy(x: float, y: float, what: str, image_size: tuple[int, int]) -> None:
    h, w = image_size
    if not (0.0 <= x <= w and 0.0 <= y <= h):
        raise InputError(f"{what}: point ({x:g}, {y:g}) is outside the {w}x{h} frame")


def _scale_factors(saved: Any, image_size: tuple[int, int]) -> tuple[float, float]:
    """(sx, sy) mapping the editor's frame size onto the clip's; errors on a different aspect ratio."""
    if saved is None:
        return 1.0, 1.0
    if not isinstance(saved, (list, tuple)) or len(saved) != 2:
        raise InputError(f"prompt JSON: image_size must be [height, width], got {saved!r}")
    sh, sw = (_number(v, "prompt JSON image_size") for v in saved)
    if sh <= 0 or sw <= 0:
        raise InputError(f"prompt JSON: image_size must be positive, got {saved!r}")
    h, w = image_size
    if (sh, sw) == (h, w):
        return 1.0, 1.0
    if abs((sw / sh) / (w / h) - 1.0) > 0.01:
        raise InputError(f"the points were clicked on {int(sw)}x{int(sh)} frames but the clip is {w}x{h} "
                         f"(another aspect ratio); open the points editor and click again")
    log.warning("points were clicked on %dx%d frames; rescaling them to the %dx%d clip", sw, sh, w, h)
    return w / sw, h / sh


# --------------------------------------------------------------------------- editor JSON


def _read_objects(doc: Any, col: _Collector, image_size: tuple[int, int], num_frames: int) -> None:
    """Add every object of an editor document to the collector."""
    if not isinstance(doc, dict):
        raise InputError(f"prompt JSON must be an object with an 'objects' list, got {type(doc).__name__}")
    version = doc.get("version", PROMPT_FORMAT_VERSION)
    if _integer(version, "prompt JSON version") > PROMPT_FORMAT_VERSION:
        raise InputError(f"prompt JSON version {version} is newer than this node understands "
                         f"({PROMPT_FORMAT_VERSION}); update the node pack")
    objects = doc.get("objects", [])
    if not isinstance(objects, list):
        raise InputError("prompt JSON: 'objects' must be a list")
    sx, sy = _scale_factors(doc.get("image_size"), image_size)
    seen: set[int] = set()
    for i, obj in enumerate(objects):
        if not isinstance(obj, dict):
            raise InputError(f"prompt JSON: objects[{i}] must be an object with 'id' and 'points'")
        obj_id = _check_obj_id(obj.get("id"), f"objects[{i}].id")
        if obj_id in seen:
            raise InputError(f"prompt JSON: object id {obj_id} appears twice; merge its points into one entry")
        seen.add(obj_id)
        _read_points(obj, obj_id, col, image_size, num_frames, (sx, sy))
        _read_boxes(obj, obj_id, col, image_size, num_frames, (sx, sy))


def _read_points(obj: dict, obj_id: int, col: _Collector, image_size: tuple[int, int], num_frames: int,
                 scale: tuple[float, float]) -> None:
    points = obj.get("points", [])
    if not isinstance(points, list):
        raise InputError(f"object {obj_id}: 'points' must be a list")
    for j, pt in enumerate(points):
        what = f"object {obj_id} point {j}"
        if not isinstance(pt, dict):
            raise InputError(f"{what} must be an object like {{\"frame\": 0, \"x\": 10, \"y\": 20, \"label\": 1}}")
        frame = _check_frame(pt.get("frame", 0), what, num_frames)
        x = _number(pt.get("x"), f"{what} x") * scale[0]
        y = _number(pt.get("y"), f"{what} y") * scale[1]
        label = pt.get("label", 1)
        if isinstance(label, bool):
            label = int(label)
        if label not in (0, 1):
            raise InputError(f"{what}: label must be 1 (positive) or 0 (negative), got {label!r}")
        _check_xy(x, y, f"{what} on frame {frame}", image_size)
        col.add_point(obj_id, frame, x, y, int(label))


def _read_boxes(obj: dict, obj_id: int, col: _Collector, image_size: tuple[int, int], num_frames: int,
                scale: tuple[float, float]) -> None:
    boxes = obj.get("boxes", [])
    if not isinstance(boxes, list):
        raise InputError(f"object {obj_id}: 'boxes' must be a list")
    h, w = image_size
    for j, bx in enumerate(boxes):
        what = f"object {obj_id} box {j}"
        if not isinstance(bx, dict):
            raise InputError(f"{what} must be an object like {{\"frame\": 0, \"x0\": 1, \"y0\": 2, \"x1\": 3, \"y1\": 4}}")
        frame = _check_frame(bx.get("frame", 0), what, num_frames)
        x0, x1 = (_number(bx.get(k), f"{what} {k}") * scale[0] for k in ("x0", "x1"))
        y0, y1 = (_number(bx.get(k), f"{what} {k}") * scale[1] for k in ("y0", "y1"))
        x0, x1 = min(x0, x1), max(x0, x1)
        y0, y1 = min(y0, y1), max(y0, y1)
        if not (0 <= x0 and x1 <= w and 0 <= y0 and y1 <= h):
            raise InputError(f"{what} on frame {frame}: box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is outside the {w}x{h} frame")
        if x1 - x0 <= 0 or y1 - y0 <= 0:
            raise InputError(f"{what} on frame {frame}: box has zero area")
        col.add_box(obj_id, frame, (x0, y0, x1, y1))


# --------------------------------------------------------------------------- core coordinate strings


def parse_coordinate_string(text: str | None, what: str = "coordinates") -> list[tuple[float, float]]:
    """Core/KJNodes coordinate JSON ``[{"x": .., "y": ..}, ...]`` (or ``[[x, y], ...]``) -> [(x, y)]."""
    if text is None or not text.strip():
        return []
    data = _load_json(text, what)
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise InputError(f"{what} must be a JSON list like [{{\"x\": 10, \"y\": 20}}], got {type(data).__name__}")
    out = []
    for i, item in enumerate(data):
        if isinstance(item, dict):
            x, y = item.get("x"), item.get("y")
        elif isinstance(item, (list, tuple)) and len(item) == 2:
            x, y = item
        else:
            raise InputError(f"{what}[{i}] must be {{\"x\": .., \"y\": ..}} or [x, y], got {item!r}")
        out.append((_number(x, f"{what}[{i}].x"), _number(y, f"{what}[{i}].y")))
    return out


def _read_coordinates(col: _Collector, positive: str | None, negative: str | None, frame: int, obj_id: int,
                      image_size: tuple[int, int], num_frames: int) -> None:
    pos = parse_coordinate_string(positive, "positive coordinates")
    neg = parse_coordinate_string(negative, "negative coordinates")
    if not pos and not neg:
        return
    obj_id = _check_obj_id(obj_id, "coordinate object id")
    frame = _check_frame(frame, "coordinate frame", num_frames)
    for label, pts, name in ((1, pos, "positive"), (0, neg, "negative")):
        for i, (x, y) in enumerate(pts):
            _check_xy(x, y, f"{name} coordinate {i} on frame {frame}", image_size)
            col.add_point(obj_id, frame, x, y, label)


# --------------------------------------------------------------------------- entry points


def parse_prompts(
    text: str | None,
    image_size: Sequence[int],
    num_frames: int,
    positive: str | None = None,
    negative: str | None = None,
    frame: int = 0,
    obj_id: int = 1,
) -> Prompts:
    """Editor JSON plus optional core coordinate strings -> validated ``Prompts``.

    ``image_size`` is (height, width) of the clip; ``frame``/``obj_id`` place the
    coordinate strings. Raises InputError with one clear message for any bad input.
    """
    h, w = (int(v) for v in image_size)
    if num_frames < 1:
        raise InputError("the clip has no frames")
    col = _Collector()
    if text is not None and text.strip():
        _read_objects(_load_json(text, "prompt JSON"), col, (h, w), num_frames)
    _read_coordinates(col, positive, negative, frame, obj_id, (h, w), num_frames)
    return col.build((h, w), num_frames)


def prompts_to_json(prompts: Prompts) -> str:
    """``Prompts`` -> editor JSON (version 1), so prompts made in code open in the editor."""
    objects: dict[int, dict[str, list]] = {}
    for it in sorted(prompts.items, key=lambda p: (p.obj_id, p.frame)):
        obj = objects.setdefault(it.obj_id, {"id": it.obj_id, "points": [], "boxes": []})
        for (x, y), lab in zip(it.points.tolist(), it.labels.tolist()):
            obj["points"].append({"frame": it.frame, "x": x, "y": y, "label": int(lab)})
        if it.box is not None:
            x0, y0, x1, y1 = it.box.tolist()
            obj["boxes"].append({"frame": it.frame, "x0": x0, "y0": y0, "x1": x1, "y1": y1})
    doc = {"version": PROMPT_FORMAT_VERSION, "image_size": list(prompts.image_size),
           "objects": list(objects.values())}
    return json.dumps(doc)


# --------------------------------------------------------------------------- preview drawing


def _radius(image_size: tuple[int, int]) -> int:
    return max(3, int(round(min(image_size) / 80)))


def _draw_point(img: np.ndarray, x: float, y: float, color: tuple[int, int, int], positive: bool, r: int) -> None:
    """Positive: filled disc with a white rim; negative: the same disc with a white cross."""
    import cv2

    c = (int(round(x)), int(round(y)))
    cv2.circle(img, c, r + max(1, r // 3), (255, 255, 255), -1, cv2.LINE_AA)
    cv2.circle(img, c, r, color, -1, cv2.LINE_AA)
    if not positive:
        d = max(2, int(r * 0.7))
        th = max(1, r // 3)
        cv2.line(img, (c[0] - d, c[1] - d), (c[0] + d, c[1] + d), (255, 255, 255), th, cv2.LINE_AA)
        cv2.line(img, (c[0] - d, c[1] + d), (c[0] + d, c[1] - d), (255, 255, 255), th, cv2.LINE_AA)


def draw_prompts(frames: np.ndarray, prompts: Prompts, frame_indices: Iterable[int] | None = None) -> np.ndarray:
    """uint8 [K, H, W, 3]: the prompted frames (or ``frame_indices``) with points and boxes drawn.

    ``frames`` is any array indexable by frame (uint8 [T, H, W, 3]); each object gets its
    palette colour, positives a filled disc, negatives a disc with a cross.
    """
    import cv2

    idx = list(prompts.frames if frame_indices is None else frame_indices)
    out = np.stack([np.ascontiguousarray(frames[t], dtype=np.uint8).copy() for t in idx]) if idx else \
        np.zeros((0, *prompts.image_size, 3), np.uint8)
    r = _radius(prompts.image_size)
    pos_of = {t: k for k, t in enumerate(idx)}
    for it in prompts.items:
        k = pos_of.get(it.frame)
        if k is None:
            continue
        color = object_color(it.obj_id)
        if it.box is not None:
            x0, y0, x1, y1 = (int(round(v)) for v in it.box.tolist())
            cv2.rectangle(out[k], (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), color, max(1, r // 2), cv2.LINE_8)
        for (x, y), lab in zip(it.points.tolist(), it.labels.tolist()):
            _draw_point(out[k], x, y, color, bool(lab), r)
    return out


# --------------------------------------------------------------------------- editor frames


def editor_frame_indices(num_frames: int, max_frames: int) -> list[int]:
    """Frames the points editor can show: all, or ``max_frames`` spread evenly (first and last kept)."""
    if num_frames < 1:
        raise InputError("the clip has no frames")
    if max_frames < 1 or num_frames <= max_frames:
        return list(range(num_frames))
    if max_frames == 1:
        return [0]
    return sorted({int(round(i * (num_frames - 1) / (max_frames - 1))) for i in range(max_frames)})


def editor_size(image_size: Sequence[int], max_side: int) -> tuple[int, int]:
    """(height, width) of an editor thumbnail: the frame scaled so its longer side is <= max_side."""
    h, w = (int(v) for v in image_size)
    scale = min(1.0, max_side / max(h, w)) if max_side > 0 else 1.0
    return max(1, int(round(h * scale))), max(1, int(round(w * scale)))
