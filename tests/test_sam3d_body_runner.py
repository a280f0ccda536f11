"""The SAM-3D-Body runner: compiled stand-ins applied only during a job, buckets that follow an OOM
halving, the crop kernel choice, and the persistent compile cache reused by a second process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from body4d_core.errors import InputError
from body4d_core.sam3d_body import estimate_bodies, tiny_config
from body4d_core.sam3d_body import infer
from body4d_core.sam3d_body.layers import DecoderLayer
from body4d_core.sam3d_body.runner import BodyRunner, CompiledBlocks, CompiledLayer, run_block
from body4d_core.testing.body import random_model
from body4d_core.sam3d_body.vit import BlockStack

from .media import REPO
from .test_sam3d_body_speed import three_people


@pytest.fixture(scope="module")
def model():
    return random_model(tiny_config(), seed=0)


@pytest.fixture(scope="module")
def scene():
    frames, items = three_people(1)
    return frames, items[:5]


class RecordingCompiler:
    """Stands in for torch.compile: 'compiles' to the eager function and records every call's batch size
    (the ViT block calls' token batch; the decoder layer calls')."""

    def __init__(self) -> None:
        self.blocks: list[int] = []
        self.layers: list[int] = []

    def __call__(self, fn, device, mode, backend, what, dynamic=False):
        seen = self.blocks if fn is run_block else self.layers

        def compiled(mod, x, *rest):
            seen.append(int(x.shape[0]))
            return fn(mod, x, *rest)

        return compiled


def _oom_above(limit: int, forward):
    """A backbone forward that runs out of memory for batches above ``limit`` crops."""

    def fake(x):
        if x.shape[0] > limit:
            raise torch.OutOfMemoryError(f"simulated: {x.shape[0]} crops")
        return forward(x)

    return fake


def _assert_same(a, b, keys=("body_pose", "global_rot", "shape", "keypoints_2d", "keypoints_3d", "cam_t")):
    assert len(a) == len(b)
    for r, o in zip(a, b):
        for key in keys:
            np.testing.assert_array_equal(o[key], r[key], err_msg=key)


def test_oom_halving_pads_retried_chunks_to_the_halved_bucket(model, scene, monkeypatch, caplog) -> None:
    """Batch 4 runs out of memory, the runner retries with 2: the compiled blocks then see chunks of 2
    (the last crop padded to 2), never the old bucket of 4, and the results equal a run at batch 2."""
    frames, items = scene
    straight = RecordingCompiler()
    ref = estimate_bodies(model, frames, items, batch_size=2, runner=BodyRunner("default", bucket=4,
                                                                                 compiler=straight))
    assert straight.blocks and set(straight.blocks) == {2}
    retried = RecordingCompiler()
    monkeypatch.setattr(model.backbone, "forward", _oom_above(2, model.backbone.forward))
    with caplog.at_level("WARNING"):
        out = estimate_bodies(model, frames, items, batch_size=4, runner=BodyRunner("default", bucket=4,
                                                                                     compiler=retried))
    assert "out of memory at batch size 4; retrying with 2" in caplog.text
    assert retried.blocks and set(retried.blocks) == {2}, retried.blocks
    assert len(retried.blocks) == len(straight.blocks)  # 3 chunks (2 + 2 + 1 padded) through every block
    _assert_same(ref, out)
    monkeypatch.undo()
    eager = estimate_bodies(model, frames, items, batch_size=2)
    for r, o in zip(eager, out):
        np.testing.assert_allclose(o["keypoints_3d"], r["keypoints_3d"], atol=1e-5)


def test_bucket_caps_the_chunks_and_never_exceeds_the_batch() -> None:
    runner = BodyRunner("default", bucket=4)
    assert [runner.chunk_size(b) for b in (64, 4, 2, 1)] == [4, 4, 2, 1]
    assert BodyRunner("default").chunk_size(8) == 0  # no bucket: unpadded (each size its own graph)


def test_runner_stand_ins_live_only_for_the_job(model, scene) -> None:
    """Compiled stand-ins (block stack, decoder layers) are in the model during the job only; the model
    holds no compile state of its own afterwards, and the decoder layers ran through the compiled call."""
    frames, items = scene
    rec = RecordingCompiler()
    runner = BodyRunner("default", "default", bucket=2, compiler=rec)
    seen = {}

    def spy(start, stop, fn):
        enc = model.backbone.encoder
        seen["blocks"] = type(enc.blocks)
        seen["layers"] = {type(m) for m in model.decoder.layers}
        return fn(start, stop)

    run = runner.run
    runner.run = lambda m, fn, n, bs, hooks: run(m, lambda a, b: spy(a, b, fn), n, bs, hooks)
    out = estimate_bodies(model, frames, items[:3], mode="full", batch_size=2, runner=runner)
    assert seen["blocks"] is CompiledBlocks and seen["layers"] == {CompiledLayer}
    assert type(model.backbone.encoder.blocks) is BlockStack
    assert all(type(m) is DecoderLayer for m in model.decoder.layers)
    assert not any(isinstance(m, (CompiledBlocks, CompiledLayer)) for m in model.modules())
    assert rec.layers and rec.blocks
    assert model.backbone.encoder.compiled == "" and model._compiled_for == ("", 0)
    _assert_same(estimate_bodies(model, frames, items[:3], mode="full", batch_size=2), out,
                 keys=("body_pose", "hand_pose", "cam_t"))


def test_compile_for_keeps_its_choice_in_the_runner(model) -> None:
    """compile_for / optimize choose the runner estimate_bodies uses; the network modules stay plain."""
    try:
        state = model.optimize("default", "default", bucket=8, backend="eager")
        assert state == {"backbone": "default", "decoder": "default"}
        assert model.runner.bucket == 8 and model._compiled_for == ("custom", -1)  # not the default backend
        assert type(model.backbone.encoder.blocks) is BlockStack
        assert model.compile_for("", 8) == {"backbone": "", "decoder": ""}
        assert model.compile_for("", 8) is None  # already eager: nothing changes
    finally:
        model.optimize()
    with pytest.raises(ValueError, match="sdpa must be"):
        model.optimize("default", sdpa="fast")


def test_crop_kernel_choice(model, scene, monkeypatch) -> None:
    frames, items = scene
    cuda = torch.device("cuda")  # the choice only: nothing runs on it
    try:
        import body4d_core.sam3d_body.crop_triton  # noqa: F401
        has_triton = True
    except Exception:  # noqa: BLE001 - no triton in this environment
        has_triton = False
    assert infer._crop_kernel_usable(cuda, "auto") is has_triton
    assert infer._crop_kernel_usable(cuda, "grid_sample") is False
    assert infer._crop_kernel_usable(torch.device("cpu"), "auto") is False
    with pytest.raises(InputError, match="crop_kernel='triton': the crop kernel needs a CUDA device"):
        estimate_bodies(model, frames, items[:1], crop_kernel="triton")
    with pytest.raises(InputError, match="crop_kernel must be one of"):
        estimate_bodies(model, frames, items[:1], crop_kernel="bilinear")
    used = []
    real = infer._crop_images
    monkeypatch.setattr(infer, "_crop_images", lambda *a, **k: used.append(a[6]) or real(*a, **k))
    a = estimate_bodies(model, frames, items[:2], crop_kernel="grid_sample")
    assert used and not any(used)
    monkeypatch.setattr(infer, "_crop_kernel_usable", lambda dev, kernel="auto": kernel == "triton")
    with pytest.raises(Exception):  # the kernel was asked for (and cannot run on this CPU tensor path)
        estimate_bodies(model, frames, items[:2], crop_kernel="triton", prefetch=False, overlap=False)
    assert used[-1] is True
    _assert_same(estimate_bodies(model, frames, items[:2]), a)


CACHE_RUN = r"""
import json, os, sys, time
import torch
from torch._dynamo.utils import counters
from body4d_core.sam3d_body.runner import BodyRunner
from body4d_core.sam3d_body.vit import DinoV3ViT

torch.manual_seed(0)
holder = torch.nn.Module()
holder.backbone = torch.nn.Module()
holder.backbone.encoder = vit = DinoV3ViT(16, 1, 2, 32, True, 8).eval()
x = torch.randn(2, 3, 16, 16)
runner = BodyRunner("default", bucket=2, cache_dir=sys.argv[1])
with torch.inference_mode():
    ref = vit(x)
    out = runner.run(holder, lambda a, b: vit(x[a:b]), 2, 2)[0]
assert torch.allclose(out, ref, atol=1e-4), (out - ref).abs().max()
print(json.dumps({"hit": counters["inductor"]["fxgraph_cache_hit"], "miss": counters["inductor"]["fxgraph_cache_miss"],
                  "env": os.environ.get("TORCHINDUCTOR_CACHE_DIR")}))
"""


def _inductor_unavailable() -> str:
    """'' when inductor can compile on this CPU (it needs a C++ compiler), else why not."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception as err:  # noqa: BLE001 - any failure means no CPU inductor here
        return f"torch.compile (inductor) cannot compile on this CPU: {type(err).__name__}: {err}"
    return ""


def test_compile_cache_is_written_and_reused_by_a_second_process(tmp_path) -> None:
    """A compiled tiny backbone call fills the runner's cache folder (an FX graph cache miss); a fresh
    process compiling the same call hits that cache and misses nothing. The cache folder is set only
    while the runner compiles (not left in the environment)."""
    why = _inductor_unavailable()
    if why:
        pytest.skip(why)
    cache = tmp_path / "compile-cache"
    env = {k: v for k, v in os.environ.items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    env["TORCHINDUCTOR_COMPILE_THREADS"] = "1"  # compile in-process: no worker pool to start on 2 cores
    runs = []
    for _ in range(2):
        res = subprocess.run([sys.executable, "-c", CACHE_RUN, str(cache)], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
    first, second = runs
    assert first["miss"] >= 1 and first["hit"] == 0, first
    assert any(cache.rglob("*")), "the compile cache folder stayed empty"
    assert second["hit"] >= 1 and second["miss"] == 0, second
    assert first["env"] != str(cache) and second["env"] != str(cache)


@torch.inference_mode()
def test_fp8_swaps_stand_ins_and_puts_the_same_modules_back() -> None:
    """FP8 replaces modules (the network code has no FP8 branch): the original blocks are left untouched
    while it is on, and the very same objects are back afterwards, also under a compiled block stack."""
    from body4d_core.sam3d_body.fp8 import Fp8Linear
    from body4d_core.sam3d_body.vit import DinoV3ViT

    torch.manual_seed(0)
    vit = DinoV3ViT(32, 2, 2, 64, True, 8).eval()
    originals = list(vit.blocks)
    linears = {n: m for n, m in vit.named_modules() if isinstance(m, torch.nn.Linear)}
    x = torch.randn(3, 3, 16, 16)
    ref = vit(x)
    rec = RecordingCompiler()
    holder = torch.nn.Module()
    holder.backbone = torch.nn.Module()
    holder.backbone.encoder = vit
    runner = BodyRunner("default", bucket=2, compiler=rec, cache_dir=None)
    with vit.fp8_scope(True, scaling="row", fast_accum=True):
        swapped = list(vit.blocks)
        assert all(type(b).__name__ == "Fp8Block" and b.fp8_source is o for b, o in zip(swapped, originals))
        assert isinstance(swapped[0].attn.qkv, Fp8Linear) and originals[0].attn.qkv is linears["blocks.0.attn.qkv"]
        assert not any(isinstance(m, Fp8Linear) for b in originals for m in b.modules())
        out = runner.run(holder, lambda a, b: vit(x[a:b]), 3, 4)[0]
    assert rec.blocks == [2, 2] * 2  # two chunks (2 + 1 padded) through both blocks
    assert 0 < float((out.float() - ref).abs().max()) < 0.1 * float(ref.abs().max())
    assert all(a is b for a, b in zip(vit.blocks, originals)) and type(vit.blocks) is BlockStack
    assert {n: m for n, m in vit.named_modules() if isinstance(m, torch.nn.Linear)} == linears
    assert torch.equal(vit(x), ref)
