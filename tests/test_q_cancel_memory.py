"""Cancel for every long loop, memory guards for every path that allocates in proportion to its input.

Cancel: a loop must check for an interrupt once per unit of work (so the number of checks grows
with the input) and stop at the check that raises (no progress reported after it, the error
propagated unchanged). Memory: a path that allocates frames x size refuses up front, with one
clear error, when the allocation would not fit, whatever the dtype it allocates in.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
import torch

from body4d_core.data import PARAM_DIMS, Bodies, Camera, Tracks
from body4d_core.errors import MemoryBudgetError

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "samples" / "cartoon_dancer_81f.mp4"


class Cancelled(Exception):
    pass


class Cancel:
    """Hooks that raise Cancelled at check number ``at`` (never when None) and record everything."""

    def __init__(self, at: int | None = None) -> None:
        self.at, self.checks, self.progress_after, self.progress_calls = at, 0, 0, 0
        self.raised = False

    def check_interrupt(self) -> None:
        self.checks += 1
        if self.at is not None and self.checks >= self.at:
            self.raised = True
            raise Cancelled

    def progress(self, done: int, total: int) -> None:
        self.progress_calls += 1
        if self.raised:
            self.progress_after += 1


def _checks(fn) -> int:
    h = Cancel()
    fn(h)
    return h.checks


def _cancel_stops(fn, at: int = 2) -> Cancel:
    h = Cancel(at)
    with pytest.raises(Cancelled):
        fn(h)
    assert h.progress_after == 0, "progress reported after the cancel"
    return h


def _bodies(n: int = 2, t: int = 6, h: int = 40, w: int = 64) -> Bodies:
    rng = np.random.default_rng(1)
    params = {k: rng.normal(0, 0.02, (n, t, d)).astype(np.float32) for k, d in PARAM_DIMS.items()}
    params["cam_t"][..., 2] += 3.0
    params["cam_t"][0, :, 0] -= 0.4
    quad = np.array([[-0.2, -0.3, 0], [0.2, -0.3, 0], [0.2, 0.3, 0], [-0.2, 0.3, 0]], np.float32)
    return Bodies(np.arange(1, n + 1) * 3, np.ones((n, t), np.uint8), params, (h, w),
                  vertices=np.broadcast_to(quad, (n, t, 4, 3)).copy(), faces=np.array([[0, 2, 1], [0, 3, 2]], np.int32),
                  keypoints_2d=rng.random((n, t, 70, 2)).astype(np.float32) * 40)


# ----------------------------------------------------------------- render


def test_render_cancels_per_batch():
    from body4d_core.render import render_bodies

    def run(t):
        b = _bodies(t=t)
        return lambda h: render_bodies(None, b, Camera.default((40, 64), t), mode="mesh", hooks=h, batch_size=2)

    assert _checks(run(8)) > _checks(run(2))
    _cancel_stops(run(8))


# ----------------------------------------------------------------- smoothing


def test_smoothing_cancels():
    from body4d_core.smoothing import smooth_bodies

    assert _checks(lambda h: smooth_bodies(_bodies(n=4), hooks=h)) >= 4
    _cancel_stops(lambda h: smooth_bodies(_bodies(n=4), hooks=h))


def test_smooth_node_honours_the_cancel_button(pack):
    import comfy.model_management as mm

    node = importlib.import_module(f"{pack.__name__}.nodes.smooth").KalmanSmooth
    data = importlib.import_module(f"{pack.__name__}.body4d_core.data")
    b = _bodies()
    b = data.Bodies(b.obj_ids, b.flags, b.params, b.image_size, vertices=b.vertices, faces=b.faces)
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            node.execute(bodies=b)
    finally:
        mm.interrupt_current_processing(False)


# ----------------------------------------------------------------- SAM 3D Body


@pytest.fixture(scope="module")
def body_model():
    from body4d_core.sam3d_body import tiny_config
    from body4d_core.testing.body import random_model

    return random_model(tiny_config(), seed=2).eval()


def test_body_estimation_cancels_per_batch(body_model):
    from body4d_core.body_inputs import body_items
    from body4d_core.sam3d_body import estimate_bodies

    frames = np.random.default_rng(0).integers(0, 255, (4, 40, 64, 3), dtype=np.uint8)
    masks = np.zeros((1, 4, 40, 64), bool)
    masks[0, :, 5:35, 10:30] = True
    items = body_items(Tracks.from_masks([5], masks))
    run = lambda n: lambda h: estimate_bodies(body_model, frames, items[:n], mode="body", batch_size=1,  # noqa: E731
                                              hooks=h, overlap=False, prefetch=False)
    assert _checks(run(4)) > _checks(run(1))
    h = _cancel_stops(run(4))
    assert h.progress_calls <= 1


# ----------------------------------------------------------------- amodal


@pytest.fixture(scope="module")
def vas():
    from body4d_core.amodal.sampler import VASPipeline
    from body4d_core.testing.amodal import build_depth_model, build_vas_parts

    parts = build_vas_parts("tiny", seed=1)
    depth, prep = build_depth_model("tiny", seed=2)
    return VASPipeline(parts["unet"], parts["vae"], parts["image_encoder"], parts["scheduler"]), depth, prep


def test_amodal_denoising_cancels_per_step(vas):
    from body4d_core.amodal.config import SamplerConfig

    pipe = vas[0]
    a = torch.zeros(1, 2, 1, 16, 16)
    b = torch.zeros(1, 2, 3, 16, 16)
    run = lambda steps: lambda h: pipe.generate(a, b, [1], SamplerConfig(steps=steps, decode_chunk_size=2),  # noqa
                                                hooks=h)
    assert _checks(run(3)) >= 3 > _checks(run(1))
    _cancel_stops(run(3))


def test_amodal_depth_cancels_per_batch(vas):
    from body4d_core.amodal.depth import estimate_depth

    _, depth, prep = vas
    frames = torch.rand(4, 24, 40, 3)
    run = lambda n: lambda h: estimate_depth(depth, frames[:n], prep, batch_size=1, hooks=h)  # noqa: E731
    assert _checks(run(4)) > _checks(run(1))
    _cancel_stops(run(4))


def test_amodal_stage_cancel_reaches_completion(vas):
    """The stage's cancel works in its last (completion) pass too, not only before it."""
    from body4d_core.amodal.config import OcclusionConfig, SamplerConfig
    from body4d_core.amodal.models import AmodalModels, DepthEstimator
    from body4d_core.amodal.stage import run_amodal

    pipe, depth, prep = vas
    gt = np.zeros((32, 48), bool)
    gt[5:27, 19:29] = True
    cover = (np.arange(48) >= 15) & (np.arange(48) < 27)
    vis = np.stack([gt & ~cover[None, :] if 2 <= k <= 3 else gt for k in range(6)])

    class Truth:
        def run_jobs(self, jobs, sampler, hooks=None, budget_px=0):
            import torch.nn.functional as F
            g = torch.from_numpy(gt).float()
            return [F.interpolate(g[None, None], size=tuple(j.cond_a.shape[-2:])).expand(j.length, 3, -1, -1)
                    for j in jobs]

    models = AmodalModels(Truth(), pipe, DepthEstimator(depth, prep))
    frames = torch.rand(6, 32, 48, 3, generator=torch.Generator().manual_seed(1))
    occ = OcclusionConfig(detection_resolution=(16, 24), completion_resolution=(32, 48))
    smp = SamplerConfig(steps=2, decode_chunk_size=4)
    total = _checks(lambda h: run_amodal(frames, Tracks.from_masks([4], vis[None]), models, occ, smp, hooks=h))
    assert total >= 3
    _cancel_stops(lambda h: run_amodal(frames, Tracks.from_masks([4], vis[None]), models, occ, smp, hooks=h),
                  at=total)  # the very last check point (inside the completion sampler) still cancels


# ----------------------------------------------------------------- FOV, exports, detection


def test_fov_estimation_cancels_per_batch():
    from body4d_core.fov import estimate_camera

    class Fake(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def infer(self, images, **kw):
            k = torch.eye(3).repeat(images.shape[0], 1, 1)
            k[:, 0, 2] = k[:, 1, 2] = 0.5
            return {"intrinsics": k}

    frames = np.zeros((6, 20, 30, 3), np.uint8)
    run = lambda mode: lambda h: estimate_camera(Fake(), frames, mode=mode, batch_size=1, hooks=h)  # noqa: E731
    assert _checks(run("all")) > _checks(run("first"))
    _cancel_stops(run("all"))


@pytest.mark.parametrize("what", ["meshes", "glb"])
def test_exports_cancel_and_leave_no_partial_file(tmp_path, what):
    from body4d_core import export

    write = (lambda b, h: export.write_meshes(b, tmp_path / "m", hooks=h)) if what == "meshes" else \
        (lambda b, h: export.write_glb(b, tmp_path / "g", hooks=h))
    assert _checks(lambda h: write(_bodies(n=3), h)) > _checks(lambda h: write(_bodies(n=1), h)) - (what == "glb")
    for p in tmp_path.rglob("*"):
        if p.is_file():
            p.unlink()
    _cancel_stops(lambda h: write(_bodies(n=3), h), at=2)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) <= 1 * (3 if what == "glb" else 1)  # only the units before the cancel
    for f in files:  # every file left is complete: readable by an independent reader
        if f.suffix == ".glb":
            import pygltflib
            assert pygltflib.GLTF2.load(str(f)).meshes
        else:
            import trimesh
            assert len(trimesh.load(f, process=False).faces) == 2
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".") or p.suffix in (".tmp", ".part")]


def test_detection_scan_cancels_per_frame():
    from body4d_core.testing.sam3 import tiny_sam3
    from body4d_core.sam3.detect import detect_people

    bundle = tiny_sam3(image_size=112, seed=0, with_detector=True)
    frames = np.zeros((4, 48, 64, 3), np.uint8)  # nothing to find: the scan visits every frame

    def run(n):
        def go(h):
            try:
                detect_people(bundle, frames[:n], score_threshold=1.0, hooks=h)
            except Cancelled:
                raise
            except Exception:  # noqa: BLE001 - "no person found" ends a full scan
                pass
        return go

    assert _checks(run(4)) > _checks(run(1))
    _cancel_stops(run(4))


def test_nodes_wire_the_cancel_button(pack):
    """Render, Export and Save GLB nodes stop on ComfyUI's interrupt flag."""
    import comfy.model_management as mm

    data = importlib.import_module(f"{pack.__name__}.body4d_core.data")
    b0 = _bodies()
    b = data.Bodies(b0.obj_ids, b0.flags, b0.params, b0.image_size, vertices=b0.vertices, faces=b0.faces)
    cam = data.Camera.default(b.image_size, b.num_frames)
    render = importlib.import_module(f"{pack.__name__}.nodes.render").RenderMesh
    export = importlib.import_module(f"{pack.__name__}.nodes.export")
    calls = [lambda: render.execute(b, cam), lambda: export.ExportMeshes.execute(b, filename_prefix="q/c"),
             lambda: export.SaveGLB.execute(b, filename_prefix="q/cg")]
    for call in calls:
        mm.interrupt_current_processing(True)
        try:
            with pytest.raises(mm.InterruptProcessingException):
                call()
        finally:
            mm.interrupt_current_processing(False)


# ----------------------------------------------------------------- memory guards


def test_float_decode_path_is_guarded_by_its_own_dtype():
    """A budget that fits the uint8 frames but not the float32 tensor: uint8 loads, float32 refuses."""
    from body4d_core import video as v

    opts = v.LoadOptions(frame_load_cap=4, max_side=64)
    frames, _ = v.load_video(SAMPLE, opts)
    nbytes = frames.nbytes
    fits_u8 = v.LoadOptions(frame_load_cap=4, max_side=64, memory_budget_bytes=nbytes + 16)
    v.load_video(SAMPLE, fits_u8)
    with pytest.raises(MemoryBudgetError):
        v.load_video_tensor(SAMPLE, fits_u8, dtype=torch.float32)
    out, _ = v.load_video_tensor(SAMPLE, v.LoadOptions(frame_load_cap=4, max_side=64,
                                                       memory_budget_bytes=4 * nbytes + 16), dtype=torch.float32)
    assert out.shape == frames.shape
    with pytest.raises(MemoryBudgetError):
        v.load_video_tensor(SAMPLE, v.LoadOptions(frame_load_cap=4, max_side=64, memory_budget_bytes=2 * nbytes),
                            dtype=torch.float32)


def test_load_video_node_guards_images_and_file_paths(pack):
    """The node's IMAGE-input resize path and its file path both honour memory_budget_gb."""
    node = importlib.import_module(f"{pack.__name__}.nodes.video").LoadVideo
    errors = importlib.import_module(f"{pack.__name__}.body4d_core.errors")
    images = torch.rand(6, 48, 80, 3)
    tiny = 1e-6  # GiB: ~1 KiB
    common = dict(frame_load_cap=0, skip_first_frames=0, select_every_nth=1, force_rate=0.0, decoder="auto")
    with pytest.raises(errors.MemoryBudgetError):
        node.execute(file="(none)", max_side=40, memory_budget_gb=tiny, images=images, **common)
    out = node.execute(file="(none)", max_side=40, memory_budget_gb=0.0, images=images, **common)
    assert out.args[0].shape[0] == 6


def test_propagate_node_guards_its_image_outputs(pack, monkeypatch):
    sam3_nodes = importlib.import_module(f"{pack.__name__}.nodes.sam3")
    errors = importlib.import_module(f"{pack.__name__}.body4d_core.errors")
    monkeypatch.setattr(sam3_nodes, "available_ram", lambda: 10_000)
    with pytest.raises(errors.MemoryBudgetError, match="image outputs"):
        sam3_nodes.check_output_memory(10, (48, 64), 4)
    monkeypatch.setattr(sam3_nodes, "available_ram", lambda: 10 * 48 * 64 * 4 * 4 * 3)
    sam3_nodes.check_output_memory(10, (48, 64), 4)


def test_tracks_memory_scales_with_objects_and_frames(monkeypatch):
    from body4d_core import video
    from body4d_core.sam3.propagate import check_tracks_memory

    need = 3 * 50 * 48 * 8
    monkeypatch.setattr(video, "available_ram", lambda: int(need / 0.8) + 10)
    check_tracks_memory(3, 50, (48, 64))
    with pytest.raises(MemoryBudgetError):
        check_tracks_memory(4, 50, (48, 64))
    with pytest.raises(MemoryBudgetError):
        check_tracks_memory(3, 51, (48, 64))


def test_render_refuses_outputs_that_do_not_fit(monkeypatch):
    from body4d_core import video
    from body4d_core.render import render_bodies

    monkeypatch.setattr(video, "available_ram", lambda: 1000)
    b = _bodies()
    with pytest.raises(MemoryBudgetError):
        render_bodies(None, b, Camera.default((40, 64), 6), mode="mesh")
