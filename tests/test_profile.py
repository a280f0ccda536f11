"""The run profile: validation, the three ways to build it, what each stage gets, CLI/node parity."""

from __future__ import annotations

import dataclasses
import importlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from body4d_core import cli, fastload, pipeline
from body4d_core.amodal.accel import AccelConfig
from body4d_core.amodal.models import DEFAULT_ACCEL
from body4d_core.data import Clip
from body4d_core.errors import InputError
from body4d_core.profile import CLI_ONLY, FIELDS, RunProfile
from body4d_core.runtime import pick_dtype
from body4d_core.sam3.propagate import BASELINE, SpeedOptions

LOADER_NODES = {"sam3": "LoadSAM3", "amodal": "LoadAmodal", "fov": "LoadMoGe", "body": "LoadSAM3DBody"}


# --------------------------------------------------------------------------- validation


def test_defaults_derive_the_stages_current_options():
    p = RunProfile()
    assert p.accel_config() == DEFAULT_ACCEL and p.speed_options() == SpeedOptions()
    assert p.loader_kwargs() == {} and p.body_kwargs() == {} and p.compile_mode == "auto"
    assert p.dtype_name is None and p.moge_fp16 is None and p.vram_gb == 0.0


@pytest.mark.parametrize("values, words", [
    ({"precision": "fp64"}, ["precision", "auto, bf16, fp16, fp32", "'fp64'"]),
    ({"compile": "yes"}, ["compile", "auto, off, max-autotune, always"]),
    ({"backbone_fp8": "maybe"}, ["backbone_fp8", "false, true"]),
    ({"amodal_accel": "fastest"}, ["amodal_accel", "default, reference, compile, unfused, mixed"]),
    ({"device": "gpu0"}, ["device", "cuda:N"]),
    ({"vram_gb": -1}, ["vram_gb", ">= 0"]),
    ({"vram_gb": float("nan")}, ["vram_gb"]),
    ({"load_threads": 100}, ["load_threads", "0..64"]),
    ({"attention": "flash"}, ["attention", "compile to always or max-autotune"]),
])
def test_bad_values_name_the_field_and_its_choices(values, words):
    with pytest.raises(InputError) as err:
        RunProfile.from_dict(values)
    assert all(w in str(err.value) for w in words), str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_keys_are_refused_in_one_sentence():
    with pytest.raises(InputError, match=r"^unknown profile setting\(s\) dtype, fp16_everything; known: device, "):
        RunProfile.from_dict({"dtype": "bf16", "fp16_everything": True, "precision": "bf16"})


def test_from_dict_coerces_config_spellings_and_keeps_the_base():
    base = RunProfile(loader="legacy")
    p = RunProfile.from_dict({"backbone_fp8": "on", "vram_gb": "12", "load_threads": "3"}, base)
    assert (p.backbone_fp8, p.vram_gb, p.load_threads, p.loader) == (True, 12.0, 3, "legacy")
    assert RunProfile.from_dict({"backbone_fp8": "off"}).backbone_fp8 is False
    assert RunProfile.from_dict({"vram_gb": 8}).vram_gb == 8.0 and isinstance(RunProfile(vram_gb=8).vram_gb, float)


def test_node_inputs_take_only_profile_fields():
    p = RunProfile.from_node_inputs({"checkpoint": "x", "precision": "fp16", "people_detector": False,
                                     "sam3_speed": "reference"})
    assert (p.precision, p.sam3_speed) == ("fp16", "reference")
    with pytest.raises(InputError, match="profile loader must be one of fast, legacy"):
        RunProfile.from_node_inputs({"loader": "turbo"})


# --------------------------------------------------------------------------- what the stages get


def test_derived_stage_options():
    assert RunProfile(amodal_accel="reference").accel_config() == AccelConfig()
    comp = RunProfile(amodal_accel="compile").accel_config()
    assert comp.compile_blocks and comp.compile_vae and comp.cross_attn_shortcut
    fused = ("fused_resblocks", "vae_fused_resblocks", "fused_geglu", "fused_transformers")
    unfused, default = RunProfile(amodal_accel="unfused").accel_config(), RunProfile().accel_config()
    assert all(getattr(default, f) and not getattr(unfused, f) for f in fused)
    assert dataclasses.replace(unfused, **{f: True for f in fused}) == default  # nothing else differs
    mixed = RunProfile(amodal_accel="mixed").accel_config()
    assert mixed.mixed_lengths and not default.mixed_lengths
    assert dataclasses.replace(mixed, mixed_lengths=False) == default
    assert RunProfile(sam3_speed="reference").speed_options() == BASELINE
    assert RunProfile(loader="legacy").loader_kwargs() == {"fast": False}
    kw = RunProfile(precision="bf16", decoder_precision="bf16", backbone_fp8=True).body_kwargs()
    assert kw == {"dtype": torch.bfloat16, "decoder_dtype": torch.bfloat16, "fp8": True}
    assert RunProfile(crop_kernel="grid_sample").body_kwargs() == {"crop_kernel": "grid_sample"}
    from body4d_core.sam3d_body.infer import CROP_KERNELS  # the kernels estimate_bodies takes

    assert FIELDS["crop_kernel"].choices == CROP_KERNELS
    assert RunProfile(compile="off").compile_mode == "" and RunProfile(compile="always").compile_mode == "default"
    assert RunProfile(precision="fp32").moge_fp16 is False


def test_loading_sets_the_load_threads_for_the_block_only():
    dev = torch.device("cpu")
    assert fastload.load_threads(dev) == fastload.DEFAULT_LOAD_THREADS
    with RunProfile(load_threads=3).loading():
        assert fastload.load_threads(dev) == 3
        with RunProfile().loading():
            assert fastload.load_threads(dev) == fastload.DEFAULT_LOAD_THREADS
    assert fastload.load_threads(dev) == fastload.DEFAULT_LOAD_THREADS


def test_compile_body_pins_the_attention_kernel_only_when_asked():
    calls = []

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def compile_for(self, mode, batch, crops=None, body_mode="body"):
            calls.append(("compile_for", mode, batch))

        def optimize(self, backbone, decoder, bucket=0, sdpa=""):
            calls.append(("optimize", backbone, bucket, sdpa))

    RunProfile(compile="off").compile_body(Model(), 8, 100, "body")
    RunProfile(compile="always", attention="math").compile_body(Model(), 8, 100, "body")  # CPU: nothing to pin
    assert calls == [("compile_for", "", 8)]


# --------------------------------------------------------------------------- one dtype policy


def test_one_dtype_policy():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert pick_dtype(cpu, "auto") == torch.float32 and pick_dtype(cpu, None) == torch.float32
    assert pick_dtype(cuda, "auto", bf16_ok=True) == torch.bfloat16
    assert pick_dtype(cuda, "auto", bf16_ok=False) == torch.float16
    assert pick_dtype(cuda, "auto", bf16_ok=False, fp16_ok=False) == torch.float32
    assert pick_dtype(cuda, "fp16", fp16_ok=False) == torch.float32 and pick_dtype(cuda, "fp16") == torch.float16
    assert pick_dtype(cuda, "bf16", bf16_ok=False) == torch.bfloat16  # an explicit request is honoured
    assert pick_dtype(cuda, torch.float16) == torch.float16
    with pytest.raises(ValueError, match="unknown dtype 'fp64'"):
        pick_dtype(cuda, "fp64")


def test_comfy_choose_dtype_is_the_library_policy(pack, monkeypatch):
    import comfy.model_management as mm

    glue = importlib.import_module(f"{pack.__name__}.nodes.comfy_glue")
    gpu = torch.device("cuda")
    for bf16, fp16 in ((True, True), (False, True), (False, False)):
        monkeypatch.setattr(mm, "should_use_bf16", lambda *a, v=bf16, **k: v)
        monkeypatch.setattr(mm, "should_use_fp16", lambda *a, v=fp16, **k: v)
        for req in ("auto", "bf16", "fp16", "fp32"):
            assert glue.choose_dtype(req, gpu) == pick_dtype(gpu, req, bf16_ok=bf16, fp16_ok=fp16)
    assert glue.choose_dtype("bf16", torch.device("cpu")) == torch.float32


# --------------------------------------------------------------------------- CLI and pipeline options


def _opts(argv, tmp_path=None):
    args = cli.build_parser().parse_args(["run", "-i", "x.mp4", *argv])
    return cli.pipeline_options(args)


def test_cli_flags_build_the_profile_and_old_flags_still_work():
    p = _opts(["--precision", "fp16", "--compile", "max-autotune", "--attention", "flash", "--loader", "legacy",
               "--load_threads", "2", "--vram_gb", "16", "--offload", "always", "--sam3_speed", "reference",
               "--amodal_accel", "compile", "--crop_kernel", "triton", "--device", "cuda:1"]).profile
    assert p == RunProfile(device="cuda:1", precision="fp16", compile="max-autotune", attention="flash",
                           crop_kernel="triton", sam3_speed="reference", amodal_accel="compile", loader="legacy",
                           load_threads=2, vram_gb=16.0, offload="always")
    assert _opts(["--no_compile"]).profile.compile == "off"
    fp8 = _opts(["--fp8"]).profile
    assert fp8.backbone_fp8 and fp8.decoder_precision == "bf16"
    assert _opts(["--fp8", "--decoder_precision", "fp32"]).profile.decoder_precision == "fp32"
    assert _opts(["--dtype", "fp32"]).profile.precision == "fp32"
    assert _opts([]).profile == RunProfile()


def test_config_profile_section_under_the_flags(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("profile:\n  loader: legacy\n  vram_gb: 12\n  compile: 'off'\n")
    p = _opts(["--config", str(cfg), "--compile", "always"]).profile
    assert (p.loader, p.vram_gb, p.compile) == ("legacy", 12.0, "always")
    cfg.write_text("profile:\n  turbo: true\n")
    with pytest.raises(InputError, match="unknown profile setting"):
        _opts(["--config", str(cfg)])


def test_pipeline_options_fold_the_old_shorthands():
    o = pipeline.PipelineOptions(compile=False, fp8=True, device="cpu", dtype="float16")
    assert o.profile == RunProfile(device="cpu", precision="fp16", decoder_precision="bf16", backbone_fp8=True,
                                   compile="off")
    assert (o.compile, o.fp8, o.device, o.dtype) == (False, True, "cpu", "fp16")
    again = dataclasses.replace(o, max_people=2)
    assert again.profile == o.profile and again.max_people == 2
    assert "profile" in {f.name for f in dataclasses.fields(o)} and "fp8" not in {f.name for f in dataclasses.fields(o)}
    with pytest.raises(InputError, match="profile precision"):
        pipeline.PipelineOptions(dtype="fp64")


class _Recorder:
    def __init__(self, value=None):
        self.value, self.calls = value, []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self.value


def test_stages_receive_the_profile(monkeypatch):
    import body4d_core.amodal.models as amodal_models
    import body4d_core.amodal.stage as amodal_stage
    import body4d_core.sam3 as sam3

    load, prop = _Recorder("bundle"), _Recorder("tracks")
    monkeypatch.setattr(sam3, "load_sam3", load)
    monkeypatch.setattr(sam3, "propagate", prop)
    seen_threads = []
    monkeypatch.setattr(amodal_models, "load_amodal_models",
                        lambda *a, **k: seen_threads.append(fastload.load_threads(torch.device("cpu"))) or k)
    run = _Recorder(("amodal", "stats"))
    monkeypatch.setattr(amodal_stage, "run_amodal", run)
    points = '{"version": 1, "objects": [{"id": 1, "points": [{"frame": 0, "x": 4, "y": 4, "label": 1}]}]}'
    opts = pipeline.PipelineOptions(points_json=points, profile=RunProfile(
        loader="legacy", sam3_speed="reference", amodal_accel="reference", load_threads=5, precision="fp32"))
    prompts, bundle = pipeline.stage_prompts(np.zeros((2, 8, 8, 3), np.uint8), Clip(10.0, 2, (8, 8)), opts, None)
    assert bundle == "bundle" and len(prompts.items) == 1
    assert load.calls[0][1]["fast"] is False and load.calls[0][1]["dtype"] == "fp32"
    pipeline.stage_tracks("bundle", np.zeros((2, 8, 8, 3), np.uint8), "prompts", opts, None)
    assert prop.calls[0][1]["speed"] == BASELINE
    pipeline.stage_amodal(np.zeros((2, 8, 8, 3), np.uint8), "tracks", opts, None)
    kw = run.calls[0][0][2]  # the "models" the fake loader returned: its keyword arguments
    assert kw["accel"] == AccelConfig() and kw["fast"] is False and seen_threads == [5]
    assert "budget_px" not in run.calls[0][1]  # no plan: run_amodal's own default


# --------------------------------------------------------------------------- the same names on the CLI and nodes


def _cli_profile_flags() -> dict[str, tuple | type]:
    parser = cli.build_parser()
    run = next(a for a in parser._actions if a.dest == "command").choices["run"]
    out = {}
    for action in run._actions:
        names = [s[2:] for s in action.option_strings if s[2:] in FIELDS]
        for name in names:
            out[name] = (False, True) if action.const is True else (tuple(action.choices) if action.choices else
                                                                     action.type)
    return out


def _node_profile_inputs(pack) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    nodes = [(mod, cls) for mod, cls in LOADER_NODES.items()] + [("body", "BodyBatch")]
    for mod, cls in nodes:
        schema = getattr(importlib.import_module(f"{pack.__name__}.nodes.{mod}"), cls).define_schema()
        for sock in schema.inputs:
            if sock.id not in FIELDS:
                continue
            choices = (False, True) if sock.io_type == "BOOLEAN" else tuple(sock.kwargs["options"])
            assert out.setdefault(sock.id, choices) == choices, f"{cls}.{sock.id} differs from another node's"
            assert sock.kwargs.get("default") == getattr(RunProfile(), sock.id), f"{cls}.{sock.id} default"
    return out


def test_cli_and_nodes_expose_the_same_names_and_choices(pack):
    flags = _cli_profile_flags()
    assert set(flags) == set(FIELDS)
    nodes = _node_profile_inputs(pack)
    assert set(nodes) == set(FIELDS) - set(CLI_ONLY), "every profile field but the CLI-only ones is a node input"
    for name, choices in nodes.items():
        assert flags[name] == choices == FIELDS[name].choices, name


def test_node_profile_inputs_reach_the_stages(pack, monkeypatch):
    sam3_node = importlib.import_module(f"{pack.__name__}.nodes.sam3")
    glue = importlib.import_module(f"{pack.__name__}.nodes.comfy_glue")
    monkeypatch.setattr(glue, "resolve_checkpoint", lambda name, choice: "dir")
    monkeypatch.setattr(glue, "wrap_model", lambda m, dtype, **info: SimpleNamespace(model=m, info=dict(info)))
    loads = []
    monkeypatch.setattr(sam3_node, "load_sam3", lambda d, **kw: loads.append(kw) or "bundle")
    handle = sam3_node.LoadSAM3.execute("c", loader="legacy", sam3_speed="reference")
    assert loads[0]["fast"] is False and not any(dataclasses.astuple(handle.args[0].info["speed"]))
    plain = sam3_node.LoadSAM3.execute("c")
    assert "fast" not in loads[1] and "speed" not in plain.args[0].info
    with pytest.raises(Exception, match="profile sam3_speed must be one of fast, reference"):  # the pack's InputError
        sam3_node.LoadSAM3.execute("c", sam3_speed="fastest")


def test_default_profile_keeps_the_cache_keys_a_batch_worker_fills(monkeypatch):
    """A long-lived caller's models are found under the keys it used before the profile (no second load)."""
    import body4d_core.amodal.models as amodal_models
    import body4d_core.amodal.stage as amodal_stage

    monkeypatch.setattr(amodal_models, "load_amodal_models", lambda *a, **k: pytest.fail("loaded again"))
    run = _Recorder(("amodal", "stats"))
    monkeypatch.setattr(amodal_stage, "run_amodal", run)
    cache = {("amodal", "None", None, None): "cached models"}
    pipeline.stage_amodal(np.zeros((2, 8, 8, 3), np.uint8), "tracks", pipeline.PipelineOptions(), None, cache)
    assert run.calls[0][0][2] == "cached models"
    loads = []
    monkeypatch.setattr(amodal_models, "load_amodal_models", lambda *a, **k: loads.append(k) or "reference models")
    opts = pipeline.PipelineOptions(profile=RunProfile(amodal_accel="reference"))
    pipeline.stage_amodal(np.zeros((2, 8, 8, 3), np.uint8), "tracks", opts, None, cache)
    assert run.calls[1][0][2] == "reference models" and loads[0]["accel"] == AccelConfig() and len(cache) == 2
