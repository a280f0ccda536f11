"""Load Video: a file from the input folder, a core VIDEO or an IMAGE batch -> frames + clip."""

from __future__ import annotations

import os
from fractions import Fraction

import torch
import torch.nn.functional as F

import comfy.model_management as mm
import folder_paths
from comfy_api.latest import io, ui

from ..body4d_core import video as v
from ..body4d_core.data import Clip
from ..body4d_core.errors import VideoError
from . import comfy_glue as glue
from . import sockets as t

NONE_FILE = "(none - use the video or images input)"
# (min, max) of every number input: the schema's limits, enforced again in validate_inputs because ComfyUI
# skips its own range checks for inputs a node's validate_inputs receives
RANGES = {"frame_load_cap": (0, 100000), "skip_first_frames": (0, 1000000), "select_every_nth": (1, 1000),
          "force_rate": (0.0, 240.0), "max_side": (0, 8192), "memory_budget_gb": (0.0, 1024.0),
          "images_fps": (0.1, 240.0)}


def _video_files() -> list[str]:
    try:
        root = folder_paths.get_input_directory()
        files = [f for f in os.listdir(root) if os.path.isfile(os.path.join(root, f))]
        return sorted(folder_paths.filter_files_content_types(files, ["video"]))
    except OSError:
        return []


def _options(frame_load_cap, skip_first_frames, select_every_nth, force_rate, max_side,
             memory_budget_gb, decoder) -> v.LoadOptions:
    budget = int(memory_budget_gb * 2**30) if memory_budget_gb > 0 else None
    return v.LoadOptions(skip_first_frames=skip_first_frames, frame_load_cap=frame_load_cap,
                         select_every_nth=select_every_nth, force_rate=force_rate, max_side=max_side,
                         backend=decoder, memory_budget_bytes=budget)


def _select_tensor(frames: torch.Tensor, fps: float, opts: v.LoadOptions, source: str) -> tuple[torch.Tensor, Clip]:
    """Apply the selection to frames already in memory, resizing in chunks."""
    frames = _as_batch(frames)
    n, h, w = int(frames.shape[0]), int(frames.shape[1]), int(frames.shape[2])
    if n == 0:
        raise VideoError("the input holds zero frames")
    sel = v.select_from_frames(n, fps, h, w, opts)
    idx = torch.from_numpy(sel.indices)
    if (sel.height, sel.width) == (h, w):
        out = frames[idx, ..., :3]
    else:
        v.check_budget(sel, frames.element_size(), opts.memory_budget_bytes)
        out = torch.empty((idx.numel(), sel.height, sel.width, 3), dtype=frames.dtype)
        for s in range(0, idx.numel(), v.CHUNK):
            chunk = frames[idx[s:s + v.CHUNK], ..., :3].movedim(-1, 1).float()
            out[s:s + v.CHUNK] = F.interpolate(chunk, size=(sel.height, sel.width), mode="area").movedim(1, -1)
    clip = Clip(fps=sel.fps, num_frames=int(idx.numel()), image_size=(sel.height, sel.width), source=source,
                source_size=(h, w), frame_indices=sel.indices)
    return out, clip


def _as_batch(frames: torch.Tensor) -> torch.Tensor:
    """An IMAGE as [frames, height, width, 3]: one [H, W, C] image becomes one frame, grey becomes RGB."""
    if frames.ndim == 3 and frames.shape[-1] in (1, 3, 4):
        frames = frames.unsqueeze(0)
    if frames.ndim != 4 or frames.shape[-1] not in (1, 3, 4):
        raise VideoError(f"the images input must be an IMAGE batch [frames, height, width, 3], got shape "
                         f"{list(frames.shape)}")
    return frames.expand(-1, -1, -1, 3) if frames.shape[-1] == 1 else frames


def _ranges(**values) -> str | None:
    """The first number input outside its range, as a message (None when all are in range)."""
    for name, (lo, hi) in RANGES.items():
        value = values.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{name} must be a number, got {value!r}"
        if isinstance(lo, int) and isinstance(value, float) and not value.is_integer():
            return f"{name} must be a whole number, got {value}"
        if not lo <= value <= hi:
            extra = " (0 loads every frame)" if name == "frame_load_cap" else ""
            return f"{name} must be between {lo} and {hi}{extra}, got {value}"
    return None


def _without_server_paths(err: VideoError, file: str) -> VideoError:
    """The same error with the server's folders replaced by the picked file's name (paths stay private)."""
    text = str(err)
    full = None
    try:
        full = folder_paths.get_annotated_filepath(file)
    except Exception:  # noqa: BLE001 - any lookup failure: nothing to replace
        pass
    for path in filter(None, {full, full and os.path.realpath(full)}):
        text = text.replace(path, os.path.basename(file))
    for root in (folder_paths.get_input_directory(), folder_paths.get_output_directory(),
                 folder_paths.get_temp_directory()):
        for form in {root, os.path.realpath(root)}:
            text = text.replace(form + os.sep, "").replace(form, "the input folder")
    return type(err)(text)


def _preview_indices(n: int) -> list[int]:
    return sorted({0, n // 2, n - 1})


class LoadVideo(io.ComfyNode):
    """Decode a video with frame cap / stride / rate / resize and a memory check before decoding."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SAMBody4D_LoadVideo",
            display_name="Load Video (Body4D)",
            category=glue.CATEGORY,
            search_aliases=["load video", "video frames", "body4d video"],
            description="Load a video as frames for the SAM-Body4D pipeline. The memory the frames will take is "
                        "checked before decoding; use the cap, stride or max side to load long videos.",
            inputs=[
                io.Combo.Input("file", options=[NONE_FILE, *_video_files()], upload=io.UploadType.video,
                               tooltip="A video in ComfyUI's input folder (upload with the button)."),
                io.Int.Input("frame_load_cap", default=0, min=RANGES["frame_load_cap"][0], max=RANGES["frame_load_cap"][1],
                             tooltip="Load at most this many frames (0 = all)."),
                io.Int.Input("skip_first_frames", default=0, min=RANGES["skip_first_frames"][0], max=RANGES["skip_first_frames"][1],
                             tooltip="Skip this many frames at the start (after force_rate)."),
                io.Int.Input("select_every_nth", default=1, min=RANGES["select_every_nth"][0], max=RANGES["select_every_nth"][1],
                             tooltip="Keep one frame in every n (1 = every frame)."),
                io.Float.Input("force_rate", default=0.0, min=RANGES["force_rate"][0], max=RANGES["force_rate"][1], step=0.5,
                               tooltip="Resample to this frame rate before the other options (0 = source rate)."),
                io.Int.Input("max_side", default=0, min=RANGES["max_side"][0], max=RANGES["max_side"][1], step=2,
                             tooltip="Downscale so the longer side is at most this many pixels, keeping the "
                                     "aspect ratio (0 = original size)."),
                io.Float.Input("memory_budget_gb", default=0.0, min=RANGES["memory_budget_gb"][0], max=RANGES["memory_budget_gb"][1], step=0.5, advanced=True,
                               tooltip="Refuse to load frames needing more RAM than this (0 = half the RAM "
                                       "available when loading starts)."),
                io.Combo.Input("decoder", options=list(v.BACKENDS), default="auto", advanced=True,
                               tooltip="Video decoder: auto picks PyAV (fastest in bench/bench_decode.py), then decord, then OpenCV."),
                io.Video.Input("video", optional=True,
                               tooltip="A core VIDEO (e.g. from Load Video); used instead of the file."),
                io.Image.Input("images", optional=True,
                               tooltip="An IMAGE batch used as the frames instead of the file."),
                io.Float.Input("images_fps", default=24.0, min=RANGES["images_fps"][0], max=RANGES["images_fps"][1], advanced=True,
                               tooltip="Frame rate of the images input."),
            ],
            outputs=[
                io.Image.Output("frames"),
                io.Float.Output("fps"),
                io.Int.Output("frame_count"),
                t.Clip.Output("clip"),
            ],
        )

    @classmethod
    def execute(cls, file, frame_load_cap, skip_first_frames, select_every_nth, force_rate, max_side,
                memory_budget_gb, decoder, video=None, images=None, images_fps=24.0) -> io.NodeOutput:
        opts = _options(frame_load_cap, skip_first_frames, select_every_nth, force_rate, max_side,
                        memory_budget_gb, decoder)
        if images is not None:
            frames, clip = _select_tensor(images, images_fps, opts, "<images>")
        elif video is not None:
            frames, clip = cls._from_video(video, opts)
        else:
            if file == NONE_FILE:
                raise VideoError("no video: pick a file, or connect a VIDEO or an IMAGE batch")
            try:
                frames, clip = v.load_video_tensor(glue.input_path(file), opts, dtype=mm.intermediate_dtype(),
                                                   hooks=glue.hooks(1))
            except VideoError as err:
                raise _without_server_paths(err, file) from None
        frames = frames.to(mm.intermediate_device())
        preview = ui.PreviewImage(frames[_preview_indices(frames.shape[0])], cls=cls)
        return io.NodeOutput(frames, float(clip.fps), int(clip.num_frames), clip, ui=preview)

    @classmethod
    def _from_video(cls, video, opts: v.LoadOptions) -> tuple[torch.Tensor, Clip]:
        source = video.get_stream_source()
        if isinstance(source, str) and os.path.isfile(source):
            return v.load_video_tensor(source, opts, dtype=mm.intermediate_dtype(), hooks=glue.hooks(1))
        comps = video.get_components()
        fps = float(comps.frame_rate) if isinstance(comps.frame_rate, (Fraction, int, float)) else 24.0
        return _select_tensor(comps.images, fps, opts, "<video>")

    @classmethod
    def fingerprint_inputs(cls, file, **kwargs):
        """Re-run when the file changes: path + size + mtime, never a hash of the content."""
        if not file or file == NONE_FILE:
            return ""
        try:
            path = folder_paths.get_annotated_filepath(file)
            st = os.stat(path)
        except OSError:
            return file
        return f"{path}:{st.st_size}:{st.st_mtime_ns}"

    @classmethod
    def validate_inputs(cls, file, **kwargs):
        problem = _ranges(**kwargs)
        if problem:
            return problem
        if file and file != NONE_FILE and not folder_paths.exists_annotated_filepath(file):
            return f"video file not found in the input folder: {os.path.basename(str(file))}"
        return True


NODES = [LoadVideo]
