"""SAM3 Points: point/box prompts per object and frame, edited on the frames in the node (web/points_editor.js).

How the editor gets its frames: every run writes small JPEG thumbnails of (up to
``editor_max_frames``) frames to ComfyUI's temp folder and tells the browser where they are,
both as the node's UI output (key ``sambody4d_editor``, replayed by ComfyUI when the node's
result is cached) and as a ``sambody4d.points.frames`` message sent before the prompts are
parsed (so the first run, with no clicks yet, still shows the frames and then reports
"no prompts given"). No server state is kept between runs.
"""

from __future__ import annotations

import logging
import os
import uuid

import numpy as np
from PIL import Image

import folder_paths
from comfy_api.latest import io

from ..body4d_core import prompts as bp
from ..body4d_core.errors import InputError
from . import comfy_glue as glue
from . import sockets as t

log = logging.getLogger(__name__)

EDITOR_EVENT = "sambody4d.points.frames"
EDITOR_UI_KEY = "sambody4d_editor"
EDITOR_SUBFOLDER = "sambody4d_points"
THUMB_MAX_SIDE = 768

DEFAULT_PROMPTS = '{"version": 1, "objects": []}'


def _node_prefix(node_id: str | None) -> str:
    """File-name prefix of one node's thumbnails (only safe characters)."""
    if node_id is None:
        return "x_"
    return "n" + "".join(c if c.isalnum() else "-" for c in str(node_id)) + "_"


def _remove_old_thumbnails(out_dir: str, prefix: str) -> None:
    """Delete this node's thumbnails from earlier runs so the temp folder does not fill up."""
    if prefix == "x_":
        return
    for name in os.listdir(out_dir):
        if name.startswith(prefix) and name.endswith(".jpg"):
            try:
                os.remove(os.path.join(out_dir, name))
            except OSError:
                pass


def write_editor_frames(frames, max_frames: int, max_side: int = THUMB_MAX_SIDE, node_id: str | None = None) -> dict:
    """Save thumbnails of the editor's frames to the temp folder; returns what the browser needs."""
    num_frames, h, w = int(frames.shape[0]), int(frames.shape[1]), int(frames.shape[2])
    idx = bp.editor_frame_indices(num_frames, max_frames)
    th, tw = bp.editor_size((h, w), max_side)
    out_dir = os.path.join(folder_paths.get_temp_directory(), EDITOR_SUBFOLDER)
    os.makedirs(out_dir, exist_ok=True)
    prefix = _node_prefix(node_id)
    _remove_old_thumbnails(out_dir, prefix)
    run = prefix + uuid.uuid4().hex[:12]
    files = []
    for s in range(0, len(idx), 32):
        chunk = glue.image_to_uint8(frames[idx[s:s + 32]])
        for k, arr in enumerate(chunk):
            name = f"{run}_{idx[s + k]:06d}.jpg"
            img = Image.fromarray(arr)
            if (th, tw) != (h, w):
                img = img.resize((tw, th), Image.BILINEAR)
            img.save(os.path.join(out_dir, name), quality=85)
            files.append(name)
    return {"subfolder": EDITOR_SUBFOLDER, "type": "temp", "files": files, "frame_indices": idx,
            "width": w, "height": h, "num_frames": num_frames}


def _notify_editor(node_id: str | None, info: dict) -> None:
    """Tell the browser where this node's frames are (works even if the run then fails)."""
    if node_id is None:
        return
    try:
        from server import PromptServer

        server = PromptServer.instance
        server.send_sync(EDITOR_EVENT, {"node": str(node_id), **info}, server.client_id)
    except Exception as err:  # noqa: BLE001 - the editor message is best effort, never fatal
        log.debug("could not send editor frames: %s", err)


class SAM3Points(io.ComfyNode):
    """Positive/negative clicks and boxes per person on any frame, for SAM-3 propagation."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SAMBody4D_SAM3Points",
            display_name="SAM3 Points (Body4D)",
            category=glue.CATEGORY,
            search_aliases=["points editor", "sam3 points", "click prompts", "person prompts"],
            description="Click on people in the frames: left click = positive point, right click = negative, "
                        "'New person' starts the next object id. Run once to load the frames into the editor. "
                        "Prompts can be placed on any frame; propagation runs both ways from them.",
            inputs=[
                io.Image.Input("frames", tooltip="The clip's frames (e.g. from Load Video)."),
                io.String.Input("prompts", default=DEFAULT_PROMPTS, multiline=True, advanced=True,
                                tooltip="The editor's JSON (written by the editor; documented in "
                                        "body4d_core/prompts.py): objects with ids and points per frame."),
                io.String.Input("positive_coords", default="", optional=True, advanced=True,
                                tooltip="Core/KJNodes coordinates [{\"x\": .., \"y\": ..}] of positive points "
                                        "(pixels), for API use; placed on 'coords_frame' for 'coords_object_id'."),
                io.String.Input("negative_coords", default="", optional=True, advanced=True,
                                tooltip="Like positive_coords, for negative points."),
                io.Int.Input("coords_frame", default=0, min=0, max=10_000_000, optional=True, advanced=True,
                             tooltip="Frame the coordinate strings apply to."),
                io.Int.Input("coords_object_id", default=1, min=1, max=1000, optional=True, advanced=True,
                             tooltip="Object id the coordinate strings apply to."),
                io.Int.Input("editor_max_frames", default=300, min=1, max=5000, advanced=True,
                             tooltip="At most this many frames (spread over the clip) are offered in the editor."),
            ],
            outputs=[
                t.Prompts.Output("prompts"),
                io.Image.Output("preview", tooltip="The prompted frames with the points drawn per object colour."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, frames, prompts=DEFAULT_PROMPTS, positive_coords="", negative_coords="", coords_frame=0,
                coords_object_id=1, editor_max_frames=300) -> io.NodeOutput:
        if frames.ndim != 4 or frames.shape[0] < 1:
            raise InputError(f"frames must be an IMAGE batch [T, H, W, 3], got shape {tuple(frames.shape)}")
        node_id = getattr(cls.hidden, "unique_id", None) if cls.hidden else None
        editor = write_editor_frames(frames, editor_max_frames, node_id=node_id)
        _notify_editor(node_id, editor)
        size = (int(frames.shape[1]), int(frames.shape[2]))
        result = bp.parse_prompts(prompts, size, int(frames.shape[0]), positive_coords, negative_coords,
                                  coords_frame, coords_object_id)
        shown = result.frames
        drawn = bp.draw_prompts(_FrameView(frames), result, shown)
        return io.NodeOutput(result, glue.uint8_to_image(drawn), ui={EDITOR_UI_KEY: [editor]})


class _FrameView:
    """Index a ComfyUI IMAGE batch frame by frame as uint8 (no full-clip conversion)."""

    def __init__(self, frames) -> None:
        self.frames = frames

    def __getitem__(self, t: int) -> np.ndarray:
        return glue.image_to_uint8(self.frames[t:t + 1])[0]


NODES = [SAM3Points]
