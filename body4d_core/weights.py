"""Model weights: where each model's files live, clear errors when missing, and the download.

Every model family has one folder name (registered with ComfyUI's ``folder_paths`` inside
ComfyUI, a sub-folder of ``paths.ckpt_root`` outside) and inside it one directory per
checkpoint holding the official on-disk layout, e.g.
``models/sam3d_body/sam-3d-body-dinov3/{model.ckpt, model_config.yaml, assets/mhr_model.pt}``.
Downloads happen only on request (``python -m body4d_core setup``), never at import.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from .errors import Body4DError, MissingWeightsError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """One downloadable checkpoint: its Hugging Face repo, folder and required files."""

    name: str
    folder: str  # model family folder (ComfyUI models/<folder>)
    subdir: str  # checkpoint directory inside the folder
    repo_id: str
    required: tuple[str, ...]
    allow_patterns: tuple[str, ...] | None = None
    gated: bool = False
    licence: str = ""
    note: str = ""


MODEL_SPECS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("sam3", "sam3", "sam3", "facebook/sam3",
                  ("config.json", "model.safetensors"),
                  ("*.json", "*.safetensors", "*.txt", "*.model"), gated=True, licence="SAM License"),
        ModelSpec("sam3d_body", "sam3d_body", "sam-3d-body-dinov3", "facebook/sam-3d-body-dinov3",
                  ("model.ckpt", "model_config.yaml", "assets/mhr_model.pt"), gated=True,
                  licence="SAM License (+ DINOv3 licence for the backbone)"),
        ModelSpec("diffusion_vas_amodal", "diffusion_vas", "diffusion-vas-amodal-segmentation",
                  "kaihuac/diffusion-vas-amodal-segmentation",
                  ("model_index.json", "unet/config.json", "vae/config.json", "image_encoder/config.json",
                   "scheduler/scheduler_config.json")),
        ModelSpec("diffusion_vas_completion", "diffusion_vas", "diffusion-vas-content-completion",
                  "kaihuac/diffusion-vas-content-completion",
                  ("model_index.json", "unet/config.json", "vae/config.json", "image_encoder/config.json",
                   "scheduler/scheduler_config.json")),
        ModelSpec("depth_anything", "depth_anything", "Depth-Anything-V2-Large-hf",
                  "depth-anything/Depth-Anything-V2-Large-hf",
                  ("config.json", "model.safetensors", "preprocessor_config.json"),
                  licence="CC-BY-NC-4.0 (use Depth-Anything-V2-Small-hf for commercial work)"),
        ModelSpec("moge", "moge", "moge-2-vitl-normal", "Ruicheng/moge-2-vitl-normal", ("model.pt",),
                  licence="MIT"),
    )
}

MODEL_FOLDERS: tuple[str, ...] = tuple(dict.fromkeys(s.folder for s in MODEL_SPECS.values()))


def get_spec(name: str) -> ModelSpec:
    if name not in MODEL_SPECS:
        raise Body4DError(f"unknown model {name!r}; known: {', '.join(MODEL_SPECS)}")
    return MODEL_SPECS[name]


def missing_files(directory: Path, spec: ModelSpec) -> list[str]:
    """Required files of ``spec`` that are absent or empty in ``directory``."""
    out = []
    for rel in spec.required:
        p = directory / rel
        if not p.is_file() or p.stat().st_size == 0:
            out.append(rel)
    return out


def setup_command(name: str, root: Path | None = None) -> str:
    """The shell command that downloads one model."""
    where = f" --root {root}" if root else ""
    return f"python -m body4d_core setup --models {name}{where}"


def _candidates(spec: ModelSpec, search_dirs: Sequence[Path], family_dirs: bool) -> list[Path]:
    """Where to look, the canonical place first: root/<folder>/<subdir> (or <family>/<subdir>)."""
    out = []
    for d in search_dirs:
        d = Path(d)
        out += [d / spec.subdir, d] if family_dirs else [d / spec.folder / spec.subdir, d / spec.subdir, d]
    return out


def resolve_model_dir(name: str, search_dirs: Iterable[str | Path] | None = None,
                      explicit: str | Path | None = None, family_dirs: bool = False) -> Path:
    """The directory holding every required file of model ``name``.

    ``explicit`` is a directory chosen by the user; otherwise ``search_dirs`` are searched:
    models roots (the config's ckpt_root), or with ``family_dirs`` the family folders
    themselves (ComfyUI's models/<folder> paths). Raises MissingWeightsError naming the
    missing files, the folder to put them in and the command that downloads them.
    """
    from .config import models_root

    spec = get_spec(name)
    if explicit:
        cands = [Path(explicit)]
    else:
        dirs = [Path(d) for d in (search_dirs or [])] or [models_root()]
        cands = _candidates(spec, dirs, family_dirs and bool(search_dirs))
    best: tuple[Path, list[str]] | None = None
    for cand in cands:
        if not cand.is_dir():
            continue
        miss = missing_files(cand, spec)
        if not miss:
            return cand
        if len(miss) < len(spec.required) and (best is None or len(miss) < len(best[1])):
            best = (cand, miss)  # holds some of the files: a partial download
    target = best[0] if best else cands[0]
    miss = best[1] if best else list(spec.required)
    raise MissingWeightsError(_missing_message(spec, target, miss, partial=best is not None))


def _missing_message(spec: ModelSpec, target: Path, miss: list[str], partial: bool) -> str:
    state = "are incomplete" if partial else "were not found"
    lines = [
        f"{spec.name} weights {state}: missing {', '.join(miss)} in {target}.",
        f"Download them with: {setup_command(spec.name)}  (or get them from https://huggingface.co/{spec.repo_id}"
        f" into {target}).",
    ]
    if spec.gated:
        lines.append(f"{spec.repo_id} is gated: request access on its Hugging Face page, then set HF_TOKEN.")
    return " ".join(lines)


def download(name: str, root: str | Path, token: str | None = None) -> Path:
    """Download one model into ``root/<folder>/<subdir>`` (resumable), then verify it."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    spec = get_spec(name)
    target = Path(root).expanduser() / spec.folder / spec.subdir
    target.mkdir(parents=True, exist_ok=True)
    token = token or os.environ.get("HF_TOKEN") or None
    log.info("downloading %s from %s into %s", name, spec.repo_id, target)
    try:
        snapshot_download(spec.repo_id, local_dir=str(target), allow_patterns=list(spec.allow_patterns)
                          if spec.allow_patterns else None, token=token)
    except GatedRepoError as err:
        raise Body4DError(
            f"{spec.repo_id} is gated: open https://huggingface.co/{spec.repo_id}, request access, "
            f"create a read token at https://huggingface.co/settings/tokens and run again with HF_TOKEN=<token>."
        ) from err
    except RepositoryNotFoundError as err:
        raise Body4DError(f"{spec.repo_id} was not found or your token cannot see it: {err}") from err
    verify(name, target)
    return target


def verify(name: str, directory: str | Path) -> None:
    """Check that every required file exists, is non-empty and (for safetensors) readable."""
    spec = get_spec(name)
    directory = Path(directory)
    miss = missing_files(directory, spec)
    if miss:
        raise MissingWeightsError(_missing_message(spec, directory, miss, partial=True))
    for rel in spec.required:
        if rel.endswith(".safetensors"):
            from safetensors import safe_open

            try:
                with safe_open(str(directory / rel), "pt") as f:
                    f.keys()
            except Exception as err:  # noqa: BLE001 - any parse failure means a broken file
                raise MissingWeightsError(f"{directory / rel} is corrupt ({err}); delete it and download again "
                                          f"with {setup_command(name)}") from err
