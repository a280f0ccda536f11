"""Memory plan decisions (CPU only): a GPU memory cap -> batch sizes, offloads, or a clear refusal."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from body4d_core import memory_plan as mp
from body4d_core import pipeline
from body4d_core.data import Clip
from body4d_core.errors import MemoryBudgetError
from body4d_core.memory_plan import MemoryPlan, Work, check_host_ram, plan_memory
from body4d_core.profile import RunProfile

HD = Work(height=720, width=1280)


def test_no_cap_keeps_the_requested_sizes():
    plan = plan_memory(HD)
    assert (plan.bodies_batch, plan.amodal_budget_px, plan.render_batch) == (64, mp.DEFAULT_BUDGET_PX, 16)
    assert not plan.offload_amodal and not plan.release_cached and plan.cap_gib == 0
    always = plan_memory(HD, offload="always")
    assert always.offload_amodal and always.release_cached


def test_a_generous_cap_changes_nothing_but_releases_cached_models():
    plan = plan_memory(HD, cap_gb=80)
    assert (plan.bodies_batch, plan.amodal_budget_px, plan.render_batch) == (64, mp.DEFAULT_BUDGET_PX, 16)
    assert not plan.offload_amodal and plan.release_cached
    assert not plan_memory(HD, cap_gb=80, offload="never").release_cached


def test_batches_shrink_monotonically_with_the_cap():
    work = Work(height=720, width=1280, amodal=False, camera_model=False)
    batches = [plan_memory(work, cap_gb=c).bodies_batch for c in (5, 6, 8, 12, 24)]
    assert batches == sorted(batches) and batches[0] < batches[-1] == 64 and batches[0] >= 1
    # the formula: what is left after the weights, per crop
    room = 8e9 / 2**30 - mp.MARGIN_GIB
    assert plan_memory(work, cap_gb=8).bodies_batch == int((room - mp.BODY_WEIGHTS_GIB) / mp.BODY_CROP_GIB["full"])
    body = plan_memory(Work(height=720, width=1280, amodal=False, body_mode="body"), cap_gb=8).bodies_batch
    assert body > plan_memory(work, cap_gb=8).bodies_batch  # body mode needs less per crop
    fp8 = plan_memory(Work(height=720, width=1280, amodal=False, fp8=True), cap_gb=8).bodies_batch
    assert fp8 < plan_memory(work, cap_gb=8).bodies_batch


def test_amodal_offloads_before_it_refuses():
    small = Work(height=720, width=1280, completion_resolution=(256, 512))
    resident = plan_memory(small, cap_gb=24)
    assert not resident.offload_amodal
    tight = plan_memory(small, cap_gb=10)  # both pipelines do not fit with one window; one does
    assert tight.offload_amodal and "amodal networks per pass" in tight.describe()
    one_window = 2 * 64 * (256 // 8) * (512 // 8)
    assert one_window <= tight.amodal_budget_px <= mp.DEFAULT_BUDGET_PX
    with pytest.raises(MemoryBudgetError, match=r"amodal completion .* --offload auto"):
        plan_memory(small, cap_gb=10, offload="never")


def test_caps_that_cannot_work_are_refused_naming_the_stage_and_the_fix():
    with pytest.raises(MemoryBudgetError, match=r"^amodal completion \(one 64-frame window at 1024x512\) needs about "
                                                r"\d+\.\d GiB .* use --no_amodal, a smaller --amodal_resolution"):
        plan_memory(HD, cap_gb=6)  # 8 GB fits since the low-memory sampler modes (test_low_memory_modes_...)
    with pytest.raises(MemoryBudgetError, match=r"^MoGe-2 .* --fov none"):
        plan_memory(Work(height=720, width=1280, amodal=False), cap_gb=4)
    with pytest.raises(MemoryBudgetError, match="^SAM-3 tracking"):
        plan_memory(Work(height=720, width=1280, amodal=False, camera_model=False), cap_gb=2)
    with pytest.raises(MemoryBudgetError, match=r"^SAM-3D-Body .*no --backbone_fp8"):
        plan_memory(Work(height=720, width=1280, amodal=False, camera_model=False, fp8=True), cap_gb=5)


def test_render_batch_follows_the_frame_size():
    big = plan_memory(Work(height=4320, width=7680, amodal=False, render_batch=64), cap_gb=8).render_batch
    small = plan_memory(Work(height=360, width=640, amodal=False, render_batch=64), cap_gb=8).render_batch
    assert 1 <= big < small == 64


def test_free_memory_below_the_cap_is_what_counts():
    work = Work(height=720, width=1280, amodal=False)
    plan = plan_memory(work, cap_gb=24, free_gib=6.0)
    assert plan.bodies_batch == plan_memory(work, cap_gb=6e0 * 2**30 / 1e9).bodies_batch
    assert "only 6.0 GiB free" in plan.notes[0]


def test_a_cap_off_cuda_is_ignored_with_a_note():
    plan = plan_memory(HD, cap_gb=8, on_cuda=False)
    assert plan.bodies_batch == 64 and not plan.offload_amodal
    assert plan.notes == ("--vram_gb 8 ignored: the run is not on a CUDA GPU",)


def test_pipeline_plan_on_cpu_and_cached_models_released():
    opts = pipeline.PipelineOptions(amodal=False, profile=RunProfile(device="cpu", vram_gb=8))
    plan = pipeline.memory_plan(opts, Clip(10.0, 4, (64, 80)))
    assert plan.notes and "ignored" in plan.notes[0] and plan.bodies_batch == opts.batch_size
    cache = {("moge", "x"): torch.nn.Linear(2, 2)}
    keep = MemoryPlan(8.0, 8, 1, 1, offload_amodal=False, release_cached=False)
    assert pipeline.release_cached(cache, keep) == [] and cache
    drop = MemoryPlan(8.0, 8, 1, 1, offload_amodal=False, release_cached=True)
    assert pipeline.release_cached(cache, drop) == ["moge"] and cache == {}


def test_stage_bodies_uses_the_planned_batch(monkeypatch):
    import body4d_core.sam3d_body as sb
    from body4d_core.data import Camera, Tracks

    class Model:
        faces = torch.zeros(1, 3, dtype=torch.int64)

        def compile_for(self, *a, **k):
            self.compiled = a

    model = Model()
    monkeypatch.setattr(sb, "load_sam3d_body", lambda **k: model)
    seen = {}
    monkeypatch.setattr(sb, "estimate_bodies", lambda *a, **k: seen.update(k) or [])
    monkeypatch.setattr(sb, "bodies_from_results", lambda *a, **k: "bodies")
    masks = np.zeros((1, 2, 8, 10), bool)
    masks[0, :, 2:6, 3:8] = True
    plan = MemoryPlan(8.0, 5, 1, 1, offload_amodal=False, release_cached=False)
    pipeline.stage_bodies(np.zeros((2, 8, 10, 3), np.uint8), Tracks.from_masks([1], masks), None,
                          Camera.default((8, 10), 2), pipeline.PipelineOptions(
                              batch_size=64, profile=RunProfile(crop_kernel="grid_sample")), None, plan=plan)
    assert seen["batch_size"] == 5 and model.compiled[1] == 5 and seen["crop_kernel"] == "grid_sample"


def test_amodal_offload_moves_each_part_only_while_it_runs():
    from body4d_core.amodal.models import AmodalModels, offloaded

    class Part:
        def __init__(self):
            self.where, self.log = "cuda", []

        def to(self, device):
            self.where = str(device)
            return self

        def run_jobs(self, *a, **k):
            self.log.append(self.where)
            return ["done"]

        def __call__(self, *a, **k):
            self.log.append(self.where)
            return "depth"

    mask, content, depth = Part(), Part(), Part()
    models = offloaded(AmodalModels(mask, content, depth, torch.device("meta")))
    assert (mask.where, content.where, depth.where) == ("cpu", "cpu", "cpu")
    assert models.mask.run_jobs([]) == ["done"] and models.depth() == "depth"
    assert mask.log == ["meta"] and depth.log == ["meta"] and mask.where == "cpu" and content.log == []
    assert models.device == torch.device("meta")


def test_check_host_ram_refuses_in_one_sentence():
    assert check_host_ram(10, "x", "fix", free_bytes=100) == 10
    with pytest.raises(MemoryBudgetError, match=r"^tracking needs 2\.0 GiB but only 1\.0 GiB of RAM is free; load "):
        check_host_ram(2 * 2**30, "tracking", "load fewer frames", free_bytes=2**30)
    with pytest.raises(MemoryBudgetError, match="is allowed"):
        check_host_ram(2**30, "frames", "fix", fraction=0.5, free_bytes=2**30 + 1)


def test_preflight_refuses_an_impossible_cap_before_decoding(tmp_path):
    from body4d_core import preflight

    fits = pipeline.PipelineOptions(amodal=False, fov_mode="none", world=False,
                                    profile=RunProfile(device="cuda", vram_gb=8))
    preflight.check_memory_cap(fits, (720, 1280))  # planned as for a CUDA device: fits
    with pytest.raises(MemoryBudgetError, match="^amodal completion"):
        preflight.check_memory_cap(pipeline.PipelineOptions(profile=RunProfile(device="cuda", vram_gb=6)), (720, 1280))
    preflight.check_memory_cap(pipeline.PipelineOptions(profile=RunProfile(device="cuda", vram_gb=8)), (720, 1280))
    preflight.check_memory_cap(pipeline.PipelineOptions(profile=RunProfile(device="cpu", vram_gb=8)), (720, 1280))


EX02 = Work(height=720, width=1280)  # the 5 x 90 720p bench clip: completion at 512x1024, 64-frame windows


def no_depth(mode):
    """A low-memory mode without its depth batch (compared apart)."""
    import dataclasses

    return dataclasses.replace(mode, depth_frames=0)


def test_low_memory_modes_let_8_and_12_gb_run_completion():
    from body4d_core.amodal.lowmem import LowMemory

    plans = {cap: plan_memory(EX02, cap_gb=cap) for cap in (8, 12, 16, 24)}
    p8, p12 = plans[8].amodal_memory, plans[12].amodal_memory
    # the cheapest mode that fits 12 GB; depth in smaller calls (16 frames of 720p ran out of memory there)
    assert p12 == LowMemory(sequential_cfg=True, per_network=True, depth_frames=p12.depth_frames)
    assert 1 <= p8.depth_frames <= p12.depth_frames < mp.DEPTH_BATCH
    assert p12.depth_frames * mp.DEPTH_GIB_PER_FRAME * 2 + mp.DEPTH_WEIGHTS_GIB <= mp._low_memory_modes(EX02, "auto")[1][0]
    assert p8.sequential_cfg and p8.frame_chunk == mp.FRAME_CHUNK and p8.per_network and p8.stream_unet
    assert plans[8].offload_amodal and plans[12].offload_amodal
    one_window = 2 * 64 * 64 * 128
    assert plans[8].amodal_budget_px == plans[12].amodal_budget_px == one_window  # one video window per call
    assert plans[16].amodal_memory == plans[24].amodal_memory == LowMemory()  # unchanged where the default fits
    assert plans[16].offload_amodal and not plans[24].offload_amodal
    assert "amodal sampler: sequential CFG, networks on the GPU one at a time" in plans[12].describe()
    assert "UNet blocks streamed" in plans[8].describe() and "amodal sampler: default" in plans[24].describe()
    assert plan_memory(EX02).amodal_memory == LowMemory()  # no cap: the default path


def test_low_memory_estimates_keep_the_default_calibration_and_shrink_in_order():
    modes = mp._low_memory_modes(EX02, "auto")
    needs = {m.describe(): need for need, _, m in modes}
    default_need = mp.VAS_WEIGHTS_GIB + mp.AMODAL_GIB_PER_MPX * 1.0  # the calibrated default (offloaded): 14.2 GiB
    assert all(need < default_need for need in needs.values())
    seq, seq_split, chunk, chunk_split, stream = (need for need, _, _ in modes)
    assert seq_split < seq and chunk_split < chunk and chunk_split < seq_split and stream < chunk_split
    # with every part scaled from the same calibration, the default mode's largest part is the measured 10 GiB
    assert max(mp.AMODAL_PARTS["default"]) * mp.AMODAL_GIB_PER_MPX / max(mp.AMODAL_PARTS["default"]) == 10.0
    # offload never: only resident modes (both pipelines + depth on the GPU), none of them places networks
    never = mp._low_memory_modes(EX02, "never")
    assert [m.per_network for _, _, m in never] == [False, False] and not any(off for _, off, _ in never)


def test_a_cap_nothing_fits_is_refused_in_one_sentence():
    from body4d_core.memory_plan import MARGIN_GIB, SAM3_GIB

    need = f"{SAM3_GIB + MARGIN_GIB:.1f}".replace(".", r"\.")
    with pytest.raises(MemoryBudgetError, match=rf"^SAM-3 tracking needs about {need} GiB"):
        plan_memory(EX02, cap_gb=2)
    no_moge = Work(height=720, width=1280, camera_model=False)
    with pytest.raises(MemoryBudgetError) as err:
        plan_memory(no_moge, cap_gb=5)
    msg = str(err.value)
    assert msg.startswith("amodal completion (one 64-frame window at 1024x512) needs about ") and msg.count(". ") == 0
    assert "--no_amodal" in msg
    with pytest.raises(MemoryBudgetError, match=r"amodal completion .* --offload auto"):
        plan_memory(EX02, cap_gb=12, offload="never")  # both pipelines resident leave too little at 12 GB


def test_pipeline_passes_the_planned_low_memory_mode_to_the_sampler(monkeypatch):
    from body4d_core.amodal import stage as amodal_stage
    from body4d_core.amodal.lowmem import SEQUENTIAL

    seen = {}

    def fake_run(frames, tracks, vas, occ, sampler, hooks=None, **kw):
        seen.update(kw)
        raise RuntimeError("stop")

    monkeypatch.setattr(amodal_stage, "run_amodal", fake_run)
    monkeypatch.setattr(pipeline, "amodal_models", lambda opts, models=None, offload=False: object())
    monkeypatch.setattr("body4d_core.amodal.models.offloaded", lambda vas: vas)
    plan = MemoryPlan(12.0, 8, 123, 1, offload_amodal=True, release_cached=False, amodal_memory=SEQUENTIAL)
    with pytest.raises(RuntimeError, match="stop"):
        pipeline.stage_amodal(np.zeros((2, 8, 8, 3), np.uint8), None, pipeline.PipelineOptions(), None, plan=plan)
    assert seen == {"budget_px": 123, "memory": SEQUENTIAL}


def test_the_plan_is_recorded_in_run_json(tmp_path):
    import json

    from body4d_core.manifest import Manifest

    man = Manifest(tmp_path, {"status": "running"})
    text = plan_memory(EX02, cap_gb=12).describe()
    man.record_memory_plan(text)
    data = json.loads((tmp_path / man.path.name).read_text())
    assert data["memory_plan"] == text and "sequential CFG" in data["memory_plan"] and data["status"] == "running"


def test_out_of_memory_reruns_the_amodal_stage_in_the_lower_modes(monkeypatch):
    from body4d_core.amodal import stage as amodal_stage
    from body4d_core.amodal.lowmem import SEQUENTIAL, LowMemory, chunked_mode

    plan16 = plan_memory(EX02, cap_gb=16)
    assert plan16.amodal_memory == LowMemory() and no_depth(plan16.amodal_fallbacks[0]) == SEQUENTIAL
    assert "5 lower-memory modes to fall back to" in plan16.describe()
    assert plan_memory(EX02, cap_gb=8).amodal_fallbacks == ()  # nothing below the lowest mode
    assert all(not m.per_network for m in plan_memory(EX02, cap_gb=24).amodal_fallbacks)  # resident networks

    seen: list[tuple[int, LowMemory]] = []
    fail = {"left": 2}

    def fake_run(frames, tracks, vas, occ, sampler, hooks=None, budget_px=0, memory=None):
        seen.append((budget_px, memory))
        if fail["left"]:
            fail["left"] -= 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return "amodal", type("S", (), {"segments": {}, "timings": {}, "detected": {}, "completed_frames": 0})()

    monkeypatch.setattr(amodal_stage, "run_amodal", fake_run)
    monkeypatch.setattr(pipeline, "amodal_models", lambda opts, models=None, offload=False: object())
    monkeypatch.setattr("body4d_core.amodal.models.offloaded", lambda vas: vas)
    frames = np.zeros((2, 8, 8, 3), np.uint8)
    out = pipeline.stage_amodal(frames, None, pipeline.PipelineOptions(), None, plan=plan16)
    assert out == "amodal"
    assert [(b, no_depth(m)) for b, m in seen] == [(plan16.amodal_budget_px, LowMemory()), (1, SEQUENTIAL),
                                                    (1, LowMemory(sequential_cfg=True, per_network=True))]
    assert all(m.depth_frames for _, m in seen[1:])  # every fallback also runs depth in smaller calls
    fail["left"], seen[:] = 99, []  # out of memory in every mode: the last error reaches the caller
    with pytest.raises(torch.OutOfMemoryError):
        pipeline.stage_amodal(frames, None, pipeline.PipelineOptions(), None, plan=plan16)
    assert seen[-1][0] == 1 and len(seen) == 6
    assert no_depth(seen[-1][1]) == chunked_mode(mp.FRAME_CHUNK, per_network=True, stream_unet=True)
