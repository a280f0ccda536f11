"""Model weights: where each model's files live, clear errors when missing, and the download.

Every model family has one folder name (registered with ComfyUI's ``folder_paths`` inside
ComfyUI, a sub-folder of ``paths.ckpt_root`` outside) and inside it one directory per
checkpoint holding the official on-disk layout, e.g.
``models/sam3d_body/sam-3d-body-dinov3/{model.ckpt, model_config.yaml, assets/mhr_model.pt}``.
Downloads happen only on request (``python -m body4d_core setup``), never at import.
"""

from __future__ import annotations

import contextlib
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
    weights: tuple[tuple[str, ...], ...] = ()  # weight files: each group needs one of its alternatives


def _alternatives(folder: str, stem: str) -> tuple[str, ...]:
    """The names diffusers/transformers accept for one part's weights (safetensors first)."""
    return tuple(f"{folder}/{stem}{v}.{ext}" for ext in ("safetensors", "bin") for v in ("", ".fp16"))


_VAS_WEIGHTS = (_alternatives("unet", "diffusion_pytorch_model"), _alternatives("vae", "diffusion_pytorch_model"),
                (*_alternatives("image_encoder", "model")[:2], *_alternatives("image_encoder", "pytorch_model")[2:]))

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
                   "scheduler/scheduler_config.json"), weights=_VAS_WEIGHTS),
        ModelSpec("diffusion_vas_completion", "diffusion_vas", "diffusion-vas-content-completion",
                  "kaihuac/diffusion-vas-content-completion",
                  ("model_index.json", "unet/config.json", "vae/config.json", "image_encoder/config.json",
                   "scheduler/scheduler_config.json"), weights=_VAS_WEIGHTS),
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


def _present(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


def missing_files(directory: Path, spec: ModelSpec) -> list[str]:
    """Required files (configs and weights) of ``spec`` that are absent or empty in ``directory``."""
    out = [rel for rel in spec.required if not _present(directory / rel)]
    for group in spec.weights:
        if not any(_present(directory / rel) for rel in group):
            out.append(group[0] if len(group) == 1 else f"{group[0]} (or {', '.join(group[1:])})")
    return out


def expected_files(spec: ModelSpec) -> list[str]:
    """Every file a complete folder holds (the first alternative of each weight group)."""
    return [*spec.required, *(group[0] for group in spec.weights)]


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
        if len(miss) < len(expected_files(spec)) and (best is None or len(miss) < len(best[1])):
            best = (cand, miss)  # holds some of the files: a partial download
    target = best[0] if best else cands[0]
    miss = best[1] if best else missing_files(cands[0], spec)
    raise MissingWeightsError(_missing_message(spec, target, miss, partial=best is not None))


def _missing_message(spec: ModelSpec, target: Path, miss: list[str], partial: bool) -> str:
    state = "are incomplete" if partial else "were not found"
    if not partial:
        miss = expected_files(spec)
    lines = [
        f"{spec.name} weights {state}: missing {', '.join(miss)} in {target};",
        f"download them with: {setup_command(spec.name)}  (or get them from https://huggingface.co/{spec.repo_id}"
        f" into {target}).",
    ]
    if spec.gated:
        lines.append(f"{spec.repo_id} is gated: request access on its Hugging Face page, then set HF_TOKEN.")
    return " ".join(lines)


def manual_instructions(spec: ModelSpec, target: Path) -> str:
    """Where to get one model by hand and which files to put where."""
    extra = f" (and the repo's other {', '.join(spec.allow_patterns)} files)" if spec.allow_patterns else ""
    return (f"download {', '.join(expected_files(spec))}{extra} from https://huggingface.co/{spec.repo_id}/tree/main "
            f"into {target}")


def _download_error(spec: ModelSpec, err: BaseException) -> Body4DError:
    """One sentence for a failed download: gated, unknown repo, no network, or anything else."""
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError)

    url = f"https://huggingface.co/{spec.repo_id}"
    if isinstance(err, GatedRepoError):
        return Body4DError(f"{spec.repo_id} is gated: open {url}, request access, create a read token at "
                           f"https://huggingface.co/settings/tokens and run again with HF_TOKEN=<token>.")
    if isinstance(err, RepositoryNotFoundError):
        return Body4DError(f"{spec.repo_id} was not found or your token cannot see it (check HF_TOKEN).")
    if isinstance(err, LocalEntryNotFoundError) or _is_connection_error(err):
        return Body4DError(f"cannot reach huggingface.co (offline or blocked) to download {spec.repo_id}.")
    if isinstance(err, HfHubHTTPError):
        return Body4DError(f"huggingface.co refused {spec.repo_id}: {_first_line(err)}.")
    return Body4DError(f"downloading {spec.repo_id} failed: {type(err).__name__}: {_first_line(err)}.")


def _is_connection_error(err: BaseException) -> bool:
    """True for socket/HTTP-client connection failures (any library), found along the cause chain."""
    while err is not None:
        name = type(err).__name__
        if isinstance(err, (ConnectionError, TimeoutError)) or name in ("ConnectError", "ConnectTimeout",
                                                                         "ConnectionError", "ReadTimeout"):
            return True
        err = err.__cause__ or err.__context__
    return False


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__


def _remove_empty_dirs(target: Path, created: Sequence[Path]) -> None:
    """Remove empty sub-folders of ``target``, then those of ``created`` (deepest first) left empty."""
    if target.is_dir():
        for d in sorted((p for p in target.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                d.rmdir()
    for d in created:
        with contextlib.suppress(OSError):
            d.rmdir()


def download(name: str, root: str | Path, token: str | None = None) -> Path:
    """Download one model into ``root/<folder>/<subdir>`` (resumable), then verify it.

    A failure raises Body4DError in one sentence; folders this call created and left empty are removed.
    """
    from huggingface_hub import snapshot_download

    spec = get_spec(name)
    root = Path(root).expanduser()
    target = root / spec.folder / spec.subdir
    created = [d for d in (target, target.parent, root) if not d.exists()]
    target.mkdir(parents=True, exist_ok=True)
    token = token or os.environ.get("HF_TOKEN") or None
    log.info("downloading %s from %s into %s", name, spec.repo_id, target)
    try:
        snapshot_download(spec.repo_id, local_dir=str(target), allow_patterns=list(spec.allow_patterns)
                          if spec.allow_patterns else None, token=token)
    except Exception as err:  # noqa: BLE001 - every hub/network failure becomes one sentence
        _remove_empty_dirs(target, created)
        raise _download_error(spec, err) from err
    verify(name, target)
    return target


@dataclass
class SetupResult:
    """One row of the setup table: model, folder, status and what to do next."""

    name: str
    folder: Path
    status: str  # "ok" | "present" | "failed"
    action: str = ""
    error: str = ""


def setup_models(names: Sequence[str], root: str | Path, token: str | None = None,
                 force: bool = False) -> list[SetupResult]:
    """Download each model in turn; a failure is recorded and the next model is still tried."""
    root = Path(root).expanduser()
    out = []
    for name in names:
        spec = get_spec(name)
        target = root / spec.folder / spec.subdir
        if not force and target.is_dir() and not missing_files(target, spec):
            out.append(SetupResult(name, target, "present"))
            continue
        try:
            out.append(SetupResult(name, download(name, root, token), "ok"))
        except Body4DError as err:
            log.debug("download of %s failed", name, exc_info=True)
            action = f"run again: {setup_command(name)}   or by hand: {manual_instructions(spec, target)}"
            if spec.gated:
                action = f"request access at https://huggingface.co/{spec.repo_id} and set HF_TOKEN; " + action
            out.append(SetupResult(name, target, "failed", action, str(err)))
    return out


def format_setup_table(rows: Sequence[SetupResult]) -> str:
    """The end-of-setup table (one line per model, then the error and what to do for each failure)."""
    width = max([len(r.name) for r in rows] + [5])
    lines = [f"{'model':{width}s}  {'status':8s} folder"]
    lines += [f"{r.name:{width}s}  {r.status:8s} {r.folder}" for r in rows]
    for r in rows:
        if r.status == "failed":
            lines += [f"{r.name}: {r.error}", f"  what to do: {r.action}"]
    return "\n".join(lines)


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
