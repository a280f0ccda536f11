"""Tiny random-weight checkpoints in every model's official on-disk layout.

``python -m body4d_core tiny-checkpoints --root DIR`` writes them; then the whole pipeline
(headless or in ComfyUI, with DIR as the models root) runs anywhere without real weights.
The outputs are meaningless (random weights) but every real loading and inference code
path runs, which is what the end-to-end tests need. Each writer belongs to its model's
package; this module only places them where ``body4d_core.weights`` looks.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Iterable

import torch

from .weights import MODEL_SPECS, ModelSpec, verify

log = logging.getLogger(__name__)


def _sam3(folder: Path, seed: int) -> None:
    from .sam3.loading import save_tiny_checkpoint

    save_tiny_checkpoint(folder, seed=seed)


def _sam3d_body(folder: Path, seed: int) -> None:
    from .sam3d_body.config import tiny_config
    from .sam3d_body.synthetic import random_model, save_official_layout

    save_official_layout(random_model(tiny_config(), seed), folder)


def _vas(folder: Path, seed: int) -> None:
    from .amodal.synthetic import build_vas_parts, save_vas_folder

    save_vas_folder(build_vas_parts("tiny", seed), folder)


def _depth(folder: Path, seed: int) -> None:
    from .amodal.synthetic import build_depth_model, save_depth_folder

    model, prep = build_depth_model("tiny", seed)
    save_depth_folder(model, prep, folder)


def _moge(folder: Path, seed: int) -> None:
    from .fov import TINY_MOGE_CONFIG, build_tiny_moge

    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"model_config": dict(TINY_MOGE_CONFIG), "model": build_tiny_moge(seed).state_dict()},
               folder / "model.pt")


WRITERS: dict[str, Callable[[Path, int], None]] = {
    "sam3": _sam3, "sam3d_body": _sam3d_body, "diffusion_vas_amodal": _vas,
    "diffusion_vas_completion": lambda f, s: _vas(f, s + 1), "depth_anything": _depth, "moge": _moge,
}


def target_dir(root: Path, spec: ModelSpec) -> Path:
    return Path(root) / spec.folder / spec.subdir


def write_tiny_checkpoints(root: str | Path, names: Iterable[str] | None = None, seed: int = 0) -> dict[str, Path]:
    """Write the tiny checkpoints of ``names`` (default: all) under root; returns name -> folder."""
    out = {}
    for name in names or MODEL_SPECS:
        spec = MODEL_SPECS[name]
        folder = target_dir(Path(root), spec)
        folder.mkdir(parents=True, exist_ok=True)
        WRITERS[name](folder, seed)
        verify(name, folder)
        log.info("tiny %s written to %s", name, folder)
        out[name] = folder
    return out
