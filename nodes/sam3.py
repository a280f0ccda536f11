"""SAM-3 nodes: load the model, detect people, propagate prompts, convert to/from core SAM3 track data."""

from __future__ import annotations

import logging

import numpy as np
import torch

import comfy.model_management as mm
from comfy_api.latest import io

from ..body4d_core.data import Tracks, unpack_masks
from ..body4d_core.errors import InputError, MemoryBudgetError
from ..body4d_core.overlay import overlay_masks
from ..body4d_core.sam3 import DIRECTIONS, SCAN, detect_people, load_sam3, propagate
from ..body4d_core.interop.sam3_track_data import tracks_from_core, tracks_to_core
from ..body4d_core.video import available_ram
from . import comfy_glue as glue
from . import sockets as t

log = logging.getLogger(__name__)


def _check_frames(frames: torch.Tensor) -> None:
    if frames is None or frames.ndim != 4 or frames.shape[0] < 1:
        shape = None if frames is None else tuple(frames.shape)
        raise InputError(f"frames must be an IMAGE batch [T, H, W, 3] with at least one frame, got {shape}")


def parse_ids(text: str, tracks: Tracks) -> list[int]:
    """Object ids from '1, 3' (empty = all); unknown ids get one clear error."""
    if not text.strip():
        return [int(i) for i in tracks.obj_ids]
    try:
        ids = [int(p) for p in text.replace(";", ",").split(",") if p.strip()]
    except ValueError as err:
        raise InputError(f"object ids must be comma-separated integers like '1, 3', got {text!r}") from err
    known = set(int(i) for i in tracks.obj_ids)
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise InputError(f"object id(s) {unknown} are not in the tracks (ids: {sorted(known)})")
    return list(dict.fromkeys(ids))


def object_masks(tracks: Tracks, ids: list[int]) -> torch.Tensor:
    """MASK [len(ids) * T, H, W], object-major (all frames of the first id, then the next)."""
    h, w = tracks.image_size
    out = np.empty((len(ids) * tracks.num_frames, h, w), bool)
    for k, oid in enumerate(ids):
        out[k * tracks.num_frames:(k + 1) * tracks.num_frames] = tracks.masks_of(oid)
    return glue.masks_to_tensor(out)


def union_mask(tracks: Tracks) -> torch.Tensor:
    """MASK [T, H, W]: every object together."""
    if tracks.num_objects == 0:
        return glue.masks_to_tensor(np.zeros((tracks.num_frames, *tracks.image_size), bool))
    return glue.masks_to_tensor(tracks.union())


def overlay_preview(frames: torch.Tensor, tracks: Tracks, chunk: int = 32) -> torch.Tensor:
    """IMAGE [T, H, W, 3]: the frames with each object tinted in its id colour."""
    out = []
    w = tracks.image_size[1]
    ids = tracks.obj_ids.tolist()
    for s in range(0, tracks.num_frames, chunk):
        rgb = glue.image_to_uint8(frames[s:s + chunk])
        for k in range(rgb.shape[0]):
            rgb[k] = overlay_masks(rgb[k], unpack_masks(tracks.packed[:, s + k], w), ids)
        out.append(glue.uint8_to_image(rgb))
    return torch.cat(out, 0)


def check_output_memory(num_frames: int, size: tuple[int, int], channels: int) -> None:
    """Refuse image outputs that would not fit in RAM, with the way out."""
    need = num_frames * size[0] * size[1] * channels * 4
    free = available_ram()
    if need > 0.5 * free:
        raise MemoryBudgetError(f"the mask/preview outputs need {need / 2**30:.1f} GiB but only {free / 2**30:.1f} "
                                f"GiB RAM is free; turn off 'image outputs' (tracks stay available) or use "
                                f"Tracks To Mask for the objects you need")


class LoadSAM3(io.ComfyNode):
    """Load SAM-3 (facebook/sam3, transformers format) for prompting, tracking and people detection."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SAMBody4D_LoadSAM3",
            display_name="Load SAM3 (Body4D)",
            category=glue.CATEGORY,
            search_aliases=["sam3", "segment anything 3", "sam3 tracker", "load sam3"],
            description="Load SAM-3 from models/sam3/<folder> holding the transformers-format facebook/sam3 files "
                        "(config.json, model.safetensors, processor and tokenizer files). Download: python -m "
                        "body4d_core setup --models sam3 (gated: request access, then set HF_TOKEN).",
            inputs=[
                io.Combo.Input("checkpoint", options=glue.checkpoint_choices("sam3"),
                               tooltip="Folder inside models/sam3 with the facebook/sam3 files."),
                io.Combo.Input("precision", options=["auto", "bf16", "fp16", "fp32"], default="auto", advanced=True,
                               tooltip="Weight precision on the GPU (auto: bf16 where supported). "
                                       "The CPU always runs fp32."),
                io.Boolean.Input("people_detector", default=True, advanced=True,
                                 tooltip="Also load the text detector (needed by Detect People); it shares the "
                                         "tracker's image encoder, adding ~0.4 GB in bf16."),
                glue.profile_input("loader"),
                glue.profile_input("sam3_speed"),
            ],
            outputs=[t.Sam3Model.Output("sam3_model")],
        )

    @classmethod
    def execute(cls, checkpoint, precision="auto", people_detector=True, loader="fast",
                sam3_speed="fast") -> io.NodeOutput:
        profile = glue.node_profile(precision=precision, loader=loader, sam3_speed=sam3_speed)
        model_dir = glue.resolve_checkpoint("sam3", checkpoint)
        device = mm.get_torch_device()
        dtype = glue.choose_dtype(profile.precision, device)
        with profile.loading():
            bundle = load_sam3(model_dir, device=device, dtype=dtype, with_detector=people_detector, move=False,
                               **profile.loader_kwargs())
        handle = glue.wrap_model(bundle, dtype, name="sam3", path=model_dir)
        if profile.sam3_speed != "fast":  # read by Propagate
            handle.info["speed"] = profile.speed_options()
        return io.NodeOutput(handle)


class DetectPeople(io.ComfyNode):
    """Find people with SAM-3's text prompt "person" and turn them into box prompts (ids 1..N)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SAMBody4D_DetectPeople",
            display_name="Detect People (Body4D)",
            category=glue.CATEGORY,
            search_aliases=["detect people", "person detection", "auto prompt", "sam3 person"],
            description="Automatic prompts: SAM-3 looks for 'person' on one frame (or scans from the first frame "
                        "until it finds someone) and gives every person found a box prompt, ids 1..N from left "
                        "to right. Feed the prompts to Propagate (Body4D).",
            inputs=[
                io.Image.Input("frames", tooltip="The clip's frames."),
                t.Sam3Model.Input("sam3_model", tooltip="From Load SAM3 (Body4D) with the people detector on."),
                io.Int.Input("frame_index", default=SCAN, min=SCAN, max=1_000_000,
                             tooltip="Frame to detect on; -1 scans from the first frame until someone is found."),
                io.Float.Input("score_threshold", default=0.5, min=0.0, max=1.0, step=0.01,
                               tooltip="Minimum detection score."),
                io.Int.Input("max_people", default=5, min=1, max=64,
                             tooltip="Keep at most this many people (highest scores)."),
                io.Float.Input("nms_iou", default=0.5, min=0.0, max=1.0, step=0.01, advanced=True,
                               tooltip="Boxes overlapping more than this are duplicates (1 = keep all)."),
                io.Int.Input("scan_step", default=1, min=1, max=10000, advanced=True,
                             tooltip="When scanning, test every n-th frame."),
            ],
            outputs=[t.Prompts.Output("prompts")],
        )

    @classmethod
    def execute(cls, frames, sam3_model, frame_index=SCAN, score_threshold=0.5, max_people=5, nms_iou=0.5,
                scan_step=1) -> io.NodeOutput:
        _check_frames(frames)
        bundle = sam3_model.ready()
        n = int(frames.shape[0]) if frame_index == SCAN else 1
        prompts = detect_people(bundle, frames, frame_index, score_threshold, max_people, nms_iou, scan_step,
                                hooks=glue.hooks(max(1, n // max(1, scan_step))))
        return io.NodeOutput(prompts)


class Propagate(io.ComfyNode):
    """Track every prompted object through the clip with SAM-3, forward, backward or both."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SAMBody4D_Propagate",
            display_name="Propagate (Body4D)",
            category=glue.CATEGORY,
            search_aliases=["propagate", "sam3 track", "video segmentation", "masklets", "track objects"],
            description="SAM-3 mask tracking from the prompts (any frames, any number of objects). Frames stream to "
                        "the GPU one at a time and the tracker's memory is bounded, so VRAM stays flat for long "
                        "clips. Object ids are the prompts' ids.",
            inputs=[
                io.Image.Input("frames", tooltip="The clip's frames (the ones the prompts were placed on)."),
                t.Sam3Model.Input("sam3_model", tooltip="From Load SAM3 (Body4D)."),
                t.Prompts.Input("prompts", tooltip="From SAM3 Points or Detect People (Body4D)."),
                io.Combo.Input("direction", options=list(DIRECTIONS), default="both",
                               tooltip="both: whole clip; forward: from each object's first prompt to the end; "
                                       "backward: from its last prompt to the start."),
                io.String.Input("object_ids", default="", advanced=True,
                                tooltip="Objects in the per-object masks output, e.g. '1, 3' (empty = all)."),
                io.Boolean.Input("image_outputs", default=True, advanced=True,
                                 tooltip="Build the MASK and preview outputs (off for very long clips: the tracks "
                                         "stay bit-packed, 1/32 of a float mask)."),
            ],
            outputs=[
                t.Tracks.Output("tracks"),
                io.Mask.Output("object_masks", tooltip="Per-object masks, object-major: all frames of the "
                                                        "first id, then the next."),
                io.Mask.Output("union_mask", tooltip="All objects together, one mask per frame."),
                io.Image.Output("preview", tooltip="The frames with each object in its id colour."),
            ],
        )

    @classmethod
    def execute(cls, frames, sam3_model, prompts, direction="both", object_ids="",
                image_outputs=True) -> io.NodeOutput:
        _check_frames(frames)
        n, size = int(frames.shape[0]), (int(frames.shape[1]), int(frames.shape[2]))
        bundle = sam3_model.ready()
        steps = len(prompts.items) + n * (2 if direction == "both" else 1)
        speed = getattr(sam3_model, "info", {}).get("speed")  # the loader's sam3_speed (absent: the default)
        tracks = propagate(bundle, frames, prompts, direction, hooks=glue.hooks(steps),
                           **({"speed": speed} if speed is not None else {}))
        ids = parse_ids(object_ids, tracks)
        if not image_outputs:
            empty = glue.masks_to_tensor(np.zeros((1, *size), bool))
            return io.NodeOutput(tracks, empty, empty, frames[:1, ..., :3])
        check_output_memory(n, size, len(ids) + 1 + 3)
        return io.NodeOutput(tracks, object_masks(tracks, ids), union_mask(tracks), overlay_preview(frames, tracks))


class TracksToMask(io.ComfyNode):
    """Masks of chosen objects from tracks (per object, or their union)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SAMBody4D_TracksToMask",
            display_name="Tracks To Mask (Body4D)",
            category=glue.CATEGORY,
            search_aliases=["tracks to mask", "object mask", "select object"],
            inputs=[
                t.Tracks.Input("tracks"),
                io.String.Input("object_ids", default="", tooltip="e.g. '1, 3' (empty = all objects)."),
                io.Boolean.Input("union", default=False,
                                 tooltip="One mask per frame for the chosen objects together, instead of "
                                         "per-object masks (object-major)."),
            ],
            outputs=[io.Mask.Output("masks")],
        )

    @classmethod
    def execute(cls, tracks, object_ids="", union=False) -> io.NodeOutput:
        ids = parse_ids(object_ids, tracks)
        if not union:
            return io.NodeOutput(object_masks(tracks, ids))
        rows = [tracks.index_of(i) for i in ids]
        packed = np.bitwise_or.reduce(tracks.packed[rows], axis=0)
        return io.NodeOutput(glue.masks_to_tensor(unpack_masks(packed, tracks.image_size[1])))


class TracksToCoreTrack(io.ComfyNode):
    """Our tracks as core SAM3_TRACK_DATA (for core SAM3 Track Preview / Track to Mask / SAM3D Body)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SAMBody4D_TracksToCoreTrack",
            display_name="Tracks To SAM3 Track Data (Body4D)",
            category=glue.CATEGORY,
            search_aliases=["sam3 track data", "core sam3", "convert tracks"],
            description="Core objects are positional: our i-th id (sorted) becomes core index i.",
            inputs=[t.Tracks.Input("tracks")],
            outputs=[t.Sam3TrackData.Output("sam3_track_data")],
        )

    @classmethod
    def execute(cls, tracks) -> io.NodeOutput:
        return io.NodeOutput(tracks_to_core(tracks))


class CoreTrackToTracks(io.ComfyNode):
    """Core SAM3_TRACK_DATA (SAM3 Video Track) as our tracks."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SAMBody4D_CoreTrackToTracks",
            display_name="SAM3 Track Data To Tracks (Body4D)",
            category=glue.CATEGORY,
            search_aliases=["sam3 track data", "core sam3", "convert tracks"],
            description="Core object index k becomes id k + 1 (ids written by Tracks To SAM3 Track Data are kept); "
                        "masks are resized to the video size.",
            inputs=[t.Sam3TrackData.Input("sam3_track_data")],
            outputs=[t.Tracks.Output("tracks")],
        )

    @classmethod
    def execute(cls, sam3_track_data) -> io.NodeOutput:
        return io.NodeOutput(tracks_from_core(sam3_track_data))


NODES = [LoadSAM3, DetectPeople, Propagate, TracksToMask, TracksToCoreTrack, CoreTrackToTracks]
