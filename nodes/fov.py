"""FOV: the clip's camera intrinsics from MoGe-2, a manual FOV, core MOGE_GEOMETRY or a FOV value."""

from __future__ import annotations

import logging
import os

import numpy as np
import torch

import folder_paths
from comfy_api.latest import io

from ..body4d_core import fov as bf
from ..body4d_core.errors import InputError
from . import comfy_glue as glue
from . import sockets as t

log = logging.getLogger(__name__)


CORE_FOLDER = "geometry_estimation"  # where ComfyUI core keeps its MoGe safetensors


def _core_moge_files() -> list[str]:
    """MoGe-2 safetensors in core's geometry_estimation folder, offered as 'geometry_estimation/<file>'."""
    try:
        names = folder_paths.get_filename_list(CORE_FOLDER)
    except (KeyError, OSError):
        return []
    return [f"{CORE_FOLDER}/{n}" for n in names if n.endswith(".safetensors") and "moge" in n.lower()]


def _checkpoint_path(choice: str) -> str:
    """model.pt inside models/moge/<choice>, or a core safetensors file; never outside the model folders."""
    if choice.startswith(CORE_FOLDER + "/"):
        name = choice[len(CORE_FOLDER) + 1:]
        if os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
            raise InputError(f"{choice!r} is not a file inside models/{CORE_FOLDER}")
        return folder_paths.get_full_path_or_raise(CORE_FOLDER, name)
    return os.path.join(glue.resolve_checkpoint("moge", choice), "model.pt")


class LoadMoGe(io.ComfyNode):
    """Load MoGe-2 (Ruicheng/moge-2-vitl-normal) for FOV estimation."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SAMBody4D_LoadMoGe",
            display_name="Load MoGe-2 (Body4D)",
            category=glue.CATEGORY,
            search_aliases=["moge", "fov model", "camera intrinsics model"],
            description="Load MoGe-2 from models/moge/<folder>/model.pt (download: python -m body4d_core setup "
                        "--models moge). Needs the moge package: pip install --no-deps dlr-moge==2.0.0 "
                        "dlr-utils3d==1.3.",
            inputs=[
                io.Combo.Input("checkpoint", options=[*glue.checkpoint_choices("moge"), *_core_moge_files()],
                               tooltip="A folder inside models/moge holding the official model.pt, or ComfyUI "
                                       "core's MoGe-2 file in models/geometry_estimation (ViT-L)."),
                io.Combo.Input("precision", options=["auto", "bf16", "fp16", "fp32"], default="auto", advanced=True,
                               tooltip="auto/bf16/fp16: MoGe's own fp16 autocast on the GPU (weights stay fp32; "
                                       "MoGe-2 has no bf16 path); fp32: full precision. The CPU always runs fp32."),
            ],
            outputs=[t.MoGeModel.Output("moge_model")],
        )

    @classmethod
    def execute(cls, checkpoint, precision="auto") -> io.NodeOutput:
        precision = glue.node_profile(precision=precision).precision
        path = _checkpoint_path(checkpoint)
        model = bf.load_moge_checkpoint(path, device="cpu")
        dtype = torch.float32 if precision == "fp32" else torch.float16
        return io.NodeOutput(glue.wrap_model(model, dtype, name="moge", path=path))


class FOV(io.ComfyNode):
    """Camera intrinsics for every frame (the vertical focal, principal point at the centre)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SAMBody4D_FOV",
            display_name="FOV (Body4D)",
            category=glue.CATEGORY,
            search_aliases=["fov", "camera intrinsics", "focal length", "moge fov"],
            description="Camera intrinsics for the clip. Priority: manual FOV > FOV input > MoGe geometry > MoGe-2 "
                        "model > fallback f = sqrt(H^2 + W^2). MoGe-2 runs on the first frame (as upstream), every "
                        "n-th frame or all frames; the estimates are combined by their median.",
            inputs=[
                io.Image.Input("frames", tooltip="The clip's frames."),
                t.MoGeModel.Input("moge_model", optional=True, tooltip="MoGe-2 from Load MoGe-2 (Body4D)."),
                io.Combo.Input("mode", options=list(bf.MODES), default="first",
                               tooltip="Frames MoGe-2 runs on: first (upstream), every_n or all."),
                io.Int.Input("every_n", default=30, min=1, max=10000,
                             tooltip="Stride for mode every_n."),
                io.Float.Input("manual_fov", default=0.0, min=0.0, max=179.0, step=0.1,
                               tooltip="Vertical field of view in degrees; overrides everything else (0 = off)."),
                t.MoGeGeometry.Input("moge_geometry", optional=True,
                                     tooltip="Core MoGe Inference output; its normalised intrinsics are used "
                                             "(one geometry for all frames, or one per frame)."),
                io.Float.Input("fov", optional=True, force_input=True,
                               tooltip="A vertical FOV in degrees from another node (e.g. core Get FoV from "
                                       "MoGe Geometry)."),
                io.Boolean.Input("per_frame", default=False, advanced=True,
                                 tooltip="Keep one focal per frame for zooming cameras (running median of 5 "
                                         "estimates, interpolated between sampled frames) instead of one median "
                                         "focal for the clip."),
                io.Int.Input("resolution_level", default=9, min=0, max=9, advanced=True,
                             tooltip="MoGe detail level (0 = fastest, 9 = most tokens, upstream default)."),
                io.Int.Input("batch_size", default=4, min=1, max=64, advanced=True,
                             tooltip="Frames per MoGe call; halved automatically on GPU out-of-memory."),
            ],
            outputs=[
                t.Camera.Output("camera"),
                io.Float.Output("fov_degrees", tooltip="Vertical field of view in degrees (median over frames)."),
            ],
        )

    @classmethod
    def execute(cls, frames, mode="first", every_n=30, manual_fov=0.0, moge_model=None, moge_geometry=None,
                fov=None, per_frame=False, resolution_level=9, batch_size=4) -> io.NodeOutput:
        if frames.ndim != 4 or frames.shape[0] < 1:
            raise InputError(f"frames must be an IMAGE batch [T, H, W, 3], got shape {tuple(frames.shape)}")
        num_frames, size = int(frames.shape[0]), (int(frames.shape[1]), int(frames.shape[2]))

        def estimate():
            model = moge_model.ready()
            n = len(bf.sample_frames(num_frames, mode, every_n))
            fp16 = moge_model.dtype in (torch.float16, torch.bfloat16)
            return bf.estimate_camera(model, frames, mode, every_n, per_frame, batch_size, resolution_level,
                                      use_fp16=fp16, hooks=glue.hooks(n))

        camera = bf.resolve_camera(size, num_frames, manual_fov, fov, moge_geometry,
                                   estimate if moge_model is not None else None, per_frame)
        fovs = [camera.fov_y_deg(i) for i in range(camera.num_frames)]
        return io.NodeOutput(camera, float(np.median(fovs)))


NODES = [LoadMoGe, FOV]
