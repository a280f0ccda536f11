"""The one entry point for SAM-3D-Body weights: an official folder or ComfyUI core's single safetensors file.

The format is chosen by the path (a ``.safetensors`` file is core's repackaged file); the
official reader (``loader``) knows nothing of core's format, which reuses its pieces.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch

from .config import Sam3dBodyConfig
from .loader import load_official_folder
from .model import Sam3dBody


def load_sam3d_body(model_dir: str | Path | None = None, search_dirs: Iterable[str | Path] | None = None,
                    device: torch.device | str = "cpu", config: Sam3dBodyConfig | None = None,
                    fast: bool = True) -> Sam3dBody:
    """Build SAM-3D-Body from an official folder (or ComfyUI core's .safetensors file); clear errors if missing.

    ``fast`` (default): checkpoint tensors go to ``device`` first and are cast to fp32 there on a
    few threads (same values); False: cast on the CPU, then moved (the previous path, for A/B benches).
    """
    if model_dir is not None and str(model_dir).lower().endswith(".safetensors"):
        from ..interop.sam3d_body_file import load_core_safetensors

        return load_core_safetensors(model_dir, device=device, config=config)
    return load_official_folder(model_dir, search_dirs, device=device, config=config, fast=fast)
