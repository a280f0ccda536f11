"""configs/body4d.yaml: every section is valid for the stage it configures, and overrides work."""

import pytest

from body4d_core.amodal.config import OcclusionConfig, SamplerConfig, configs_from_mapping
from body4d_core.config import load_config, models_root, section
from body4d_core.smoothing import SmoothSettings


def test_default_config_matches_stage_defaults():
    cfg = load_config()
    occ, smp = configs_from_mapping(section(cfg, "amodal"))
    assert occ == OcclusionConfig() and smp == SamplerConfig()
    assert SmoothSettings(**section(cfg, "smooth")) == SmoothSettings()


def test_overrides_and_models_root(tmp_path, monkeypatch):
    cfg = load_config(overrides={"amodal.steps": 3, "paths.ckpt_root": str(tmp_path)})
    assert configs_from_mapping(section(cfg, "amodal"))[1].steps == 3
    assert models_root(cfg) == tmp_path
    monkeypatch.setenv("BODY4D_MODELS", str(tmp_path / "env"))
    assert models_root(load_config()) == tmp_path / "env"


def test_bad_values_are_refused():
    cfg = load_config(overrides={"smooth.mode": "sideways"})
    with pytest.raises(Exception, match="offline"):
        SmoothSettings(**section(cfg, "smooth"))
