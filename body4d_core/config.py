"""The pack's configuration: configs/body4d.yaml loaded with OmegaConf, plus overrides."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

PACK_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = PACK_ROOT / "configs" / "body4d.yaml"


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> DictConfig:
    """Load the YAML config and merge dotted overrides; without a path, configs/body4d.yaml of the pack
    folder, or (installed with pip, where that file is absent) an empty config: the stages' own defaults."""
    if path:
        cfg = OmegaConf.load(Path(path))
    else:
        cfg = OmegaConf.load(DEFAULT_CONFIG) if DEFAULT_CONFIG.is_file() else OmegaConf.create({})
    for key, value in (overrides or {}).items():
        OmegaConf.update(cfg, key, value, merge=True)
    return cfg


def models_root(cfg: DictConfig | None = None) -> Path:
    """Where model folders live outside ComfyUI: config (default file if none), $BODY4D_MODELS, else
    <pack>/models in a pack folder and ./models for a pip-installed copy."""
    cfg = load_config() if cfg is None else cfg
    root = cfg.get("paths", {}).get("ckpt_root")
    fallback = PACK_ROOT / "models" if DEFAULT_CONFIG.is_file() else Path.cwd() / "models"
    root = root or os.environ.get("BODY4D_MODELS") or fallback
    return Path(root).expanduser()


def section(cfg: DictConfig, name: str) -> dict[str, Any]:
    """One section of the config as a plain dict (lists as tuples), {} when absent."""
    values = OmegaConf.to_container(cfg.get(name) or OmegaConf.create({}), resolve=True)
    return {k: tuple(v) if isinstance(v, list) else v for k, v in dict(values).items()}
