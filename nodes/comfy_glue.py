"""What every node shares: model folders, model management, progress/interrupt, tensor conversion.

Nodes stay thin: they convert ComfyUI types with these helpers, call ``body4d_core`` and
wrap models so ComfyUI's model management loads and frees them.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

import comfy.model_management as mm
import comfy.model_patcher
import comfy.utils
import folder_paths

from ..body4d_core import weights
from ..body4d_core.errors import InputError, MissingWeightsError, VideoError
from ..body4d_core.profile import FIELDS, RunProfile
from ..body4d_core.runtime import CallbackHooks, pick_dtype

log = logging.getLogger(__name__)
CATEGORY = "SAM-Body4D"


# --------------------------------------------------------------------------- model folders


def register_model_folders() -> None:
    """Register models/<folder> for every model family (sam3, sam3d_body, ...) with ComfyUI."""
    for folder in weights.MODEL_FOLDERS:
        folder_paths.add_model_folder_path(folder, os.path.join(folder_paths.models_dir, folder), is_default=True)
    # core's detection folder (ComfyUI 0.3.7x+ registers it itself; older versions do not)
    folder_paths.add_model_folder_path(DETECTION, os.path.join(folder_paths.models_dir, DETECTION))


DETECTION = "detection"
SAM3D_BODY_FILE = re.compile(r"sam[-_ ]?3d[-_ ]?body.*\.safetensors$", re.IGNORECASE)  # Comfy-Org/sam-3d-body


def detection_choices(pattern: re.Pattern[str]) -> list[str]:
    """Files of ComfyUI's models/detection whose name matches pattern, offered as 'detection/<name>'."""
    try:
        names = folder_paths.get_filename_list(DETECTION)
    except KeyError:
        return []
    return [f"{DETECTION}/{n}" for n in names if pattern.search(n)]


def is_detection_choice(choice: str) -> bool:
    return choice.startswith(f"{DETECTION}/")


def resolve_detection_file(choice: str) -> str:
    """The path of a 'detection/<name>' combo choice, only inside ComfyUI's detection folders."""
    name = choice[len(DETECTION) + 1:]
    if not name or os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
        raise InputError(f"{choice!r} is not a file name inside models/{DETECTION}")
    path = folder_paths.get_full_path(DETECTION, name)
    if path is None:
        raise MissingWeightsError(f"{name} was not found in models/{DETECTION}: download it from "
                                  f"https://huggingface.co/Comfy-Org/sam-3d-body (detection/{name}) into models/{DETECTION}.")
    return path


def model_dirs(folder: str) -> list[str]:
    """ComfyUI's directories for a model family (empty if unregistered)."""
    try:
        return folder_paths.get_folder_paths(folder)
    except KeyError:
        return []


def checkpoint_choices(name: str) -> list[str]:
    """Checkpoint directory names offered in a loader's combo (the default first)."""
    spec = weights.get_spec(name)
    found = []
    for d in model_dirs(spec.folder):
        if os.path.isdir(d):
            found += sorted(e for e in os.listdir(d) if os.path.isdir(os.path.join(d, e)))
    return list(dict.fromkeys([spec.subdir, *found]))


def resolve_checkpoint(name: str, choice: str) -> str:
    """The directory of a checkpoint chosen in a combo, only inside ComfyUI's model folders."""
    spec = weights.get_spec(name)
    if os.path.isabs(choice) or ".." in choice.replace("\\", "/").split("/"):
        raise InputError(f"{choice!r} is not a checkpoint folder name inside models/{spec.folder}")
    dirs = model_dirs(spec.folder)
    for d in dirs:
        cand = os.path.join(d, choice)
        if os.path.isdir(cand):
            return str(weights.resolve_model_dir(name, explicit=cand))
    return str(weights.resolve_model_dir(name, search_dirs=dirs or None, family_dirs=True))


# --------------------------------------------------------------------------- models


@dataclass
class ModelHandle:
    """A loaded model plus its ComfyUI patcher; ``ready()`` moves it to the GPU when needed."""

    model: Any
    patcher: Any
    dtype: torch.dtype
    info: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.patcher.load_device

    def ready(self) -> Any:
        """Load onto the compute device through ComfyUI's model management; returns the model."""
        mm.load_models_gpu([self.patcher])
        return self.model


def choose_dtype(requested: str, device: torch.device | None = None) -> torch.dtype:
    """The library's precision policy (``runtime.pick_dtype``) with ComfyUI's answers for what the device
    supports; the nodes compute fp32 on the CPU."""
    device = device or mm.get_torch_device()
    if device.type == "cpu":
        return torch.float32
    return pick_dtype(device, requested, bf16_ok=mm.should_use_bf16(device), fp16_ok=mm.should_use_fp16(device))


def profile_input(name: str, tooltip: str | None = None) -> Any:
    """A loader node's input for a run-profile field: the CLI flag's name, choices and default (body4d_core.profile)."""
    from comfy_api.latest import io

    spec, default = FIELDS[name], getattr(RunProfile(), name)
    text = tooltip or f"{spec.help[0].upper()}{spec.help[1:]}."
    # optional: a workflow saved before the input existed still validates and runs with the default
    if spec.choices == (False, True):
        return io.Boolean.Input(name, default=default, advanced=True, optional=True, tooltip=text)
    return io.Combo.Input(name, options=list(spec.choices), default=default, advanced=True, optional=True,
                          tooltip=text)


def node_profile(**inputs: Any) -> RunProfile:
    """The run profile a node's inputs ask for (bad values: one InputError naming the input and its choices)."""
    return RunProfile.from_node_inputs(inputs)


def wrap_model(module: torch.nn.Module, dtype: torch.dtype, **info: Any) -> ModelHandle:
    """Wrap an nn.Module built on the offload device for ComfyUI's model management."""
    load_device = mm.get_torch_device()
    offload_device = mm.unet_offload_device()
    module.eval()
    # ComfyUI's patcher assigns ``model.device``; a module with a read-only ``device`` property (MoGe) is held in a list
    held = torch.nn.ModuleList([module]) if isinstance(getattr(type(module), "device", None), property) else module
    patcher = comfy.model_patcher.CoreModelPatcher(held, load_device=load_device, offload_device=offload_device,
                                                   size=mm.module_size(module))
    return ModelHandle(module, patcher, dtype, dict(info))


# --------------------------------------------------------------------------- progress


def hooks(total: int) -> CallbackHooks:
    """Hooks that drive a ComfyUI progress bar and honour the cancel button."""
    bar = comfy.utils.ProgressBar(max(1, total))

    def progress(done: int, total_now: int) -> None:
        bar.update_absolute(done, max(1, total_now))

    return CallbackHooks(progress, mm.throw_exception_if_processing_interrupted)


# --------------------------------------------------------------------------- tensors


def image_to_uint8(image: torch.Tensor) -> np.ndarray:
    """ComfyUI IMAGE [B, H, W, C] (any float dtype, 0..1) -> uint8 numpy [B, H, W, 3]."""
    if image.ndim != 4 or image.shape[-1] < 3:
        raise InputError(f"expected an IMAGE batch [B, H, W, 3], got shape {tuple(image.shape)}")
    out = np.empty((*image.shape[:3], 3), np.uint8)
    for s in range(0, image.shape[0], 64):  # chunked: no full-size float copy
        chunk = image[s:s + 64, ..., :3].float().mul(255.0).round_().clamp_(0, 255)
        out[s:s + 64] = chunk.to(torch.uint8).cpu().numpy()
    return out


def uint8_to_image(frames: np.ndarray) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> IMAGE in ComfyUI's intermediate dtype on its intermediate device."""
    t = torch.from_numpy(np.ascontiguousarray(frames)).to(mm.intermediate_device())
    return t.to(mm.intermediate_dtype()).div_(255.0)


def masks_to_tensor(masks: np.ndarray) -> torch.Tensor:
    """bool/float [B, H, W] -> MASK in the intermediate dtype."""
    t = torch.from_numpy(np.ascontiguousarray(masks)).to(mm.intermediate_device())
    return t.to(mm.intermediate_dtype())


def tracks_input(tracks: Any, sam3_track_data: Any, size: tuple[int, int]) -> Any:
    """Our tracks, or core SAM3_TRACK_DATA converted; either must match the frames' (H, W)."""
    from ..body4d_core.interop.sam3_track_data import tracks_from_core

    if tracks is None and sam3_track_data is None:
        raise InputError("connect tracks (SAM-Body4D Propagate) or sam3_track_data (core SAM3 Video Track)")
    what = "tracks" if tracks is not None else "the SAM3 track data"
    trk = tracks if tracks is not None else tracks_from_core(sam3_track_data)
    if tuple(trk.image_size) != tuple(size):
        raise InputError(f"{what} are for {tuple(trk.image_size)} (H, W) frames but the frames are {tuple(size)}; "
                         "use the same frames for every stage")
    return trk


def input_path(name: str) -> str:
    """Path of a file picked from ComfyUI's input folder; refuses anything outside it."""
    if not name:
        raise VideoError("no file selected: upload a video or pick one from the input folder")
    path = os.path.realpath(folder_paths.get_annotated_filepath(name))
    roots = [folder_paths.get_input_directory(), folder_paths.get_output_directory(), folder_paths.get_temp_directory()]
    if not any(path == os.path.realpath(r) or path.startswith(os.path.realpath(r) + os.sep) for r in roots):
        raise VideoError(f"{name!r} resolves outside ComfyUI's input folder; pick a file inside it")
    return path


def output_prefix(prefix: str | None, default: str) -> tuple[str, str]:
    """(ComfyUI's output folder, the cleaned prefix); refuses a prefix that would leave the output folder."""
    out_root = os.path.realpath(folder_paths.get_output_directory())
    clean = (prefix or default).strip().replace("\\", "/")
    target = os.path.realpath(os.path.join(out_root, clean))
    if clean.startswith("/") or ".." in clean.split("/") or not target.startswith(out_root + os.sep):
        raise InputError(f"filename_prefix {prefix!r} must stay inside ComfyUI's output folder")
    return out_root, clean
