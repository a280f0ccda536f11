"""Every node option changes what it must (or, for GPU-only options, reaches the code that acts on it).

An option that is passed through but ignored keeps every "runs and has the right shape" test
green. Here each option is run at two settings whose results must differ, and options that
only act on a GPU (precisions, FP8) are followed on the CPU to the call that would act on them.
Inputs are asymmetric (non-square frames, off-centre people) so swapped axes show.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
import torch


def _mod(pack, name: str):
    return importlib.import_module(f"{pack.__name__}.{name}")


# ----------------------------------------------------------------- SAM 3D Body


@pytest.fixture(scope="module")
def body(pack):
    import folder_paths

    from body4d_core.sam3d_body import tiny_config
    from body4d_core.testing.body import random_model, save_official_layout

    _mod(pack, "nodes.comfy_glue").register_model_folders()
    root = folder_paths.get_folder_paths("sam3d_body")[0]
    save_official_layout(random_model(tiny_config(), seed=7), f"{root}/q-tiny")
    return _mod(pack, "nodes.body")


def _body_clip(pack, t: int = 3, h: int = 56, w: int = 88):
    data = _mod(pack, "body4d_core.data")
    frames = torch.rand(t, h, w, 3, generator=torch.Generator().manual_seed(3))
    masks = np.zeros((2, t, h, w), bool)
    masks[0, :, 8:50, 6:30] = True  # off-centre, left
    masks[1, 1:, 4:20, 60:84] = True  # small, top right, absent on frame 0
    return frames, data.Tracks.from_masks([6, 2], masks)


class _Spy:
    """Wraps a bound method, recording the dtype argument of every call."""

    def __init__(self, fn, arg: int, kw: str = "dtype"):
        self.fn, self.arg, self.kw, self.seen = fn, arg, kw, []

    def __call__(self, *args, **kwargs):
        self.seen.append(kwargs.get(self.kw, args[self.arg] if len(args) > self.arg else None))
        return self.fn(*args, **kwargs)


def test_body_decoder_precision_reaches_the_decoders(body, pack, monkeypatch):
    handle = body.LoadSAM3DBody.execute(checkpoint="q-tiny").args[0]
    frames, tracks = _body_clip(pack)
    model = handle.model
    for choice, want in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        spy = _Spy(model.decode, 6)
        monkeypatch.setattr(model, "decode", spy)
        body.BodyBatch.execute(handle, frames, tracks=tracks, mode="body", batch_size=8, decoder_precision=choice)
        monkeypatch.undo()
        assert spy.seen and set(spy.seen) == {want}, f"decoder_precision={choice} reached the decoders as {spy.seen}"


def test_body_backbone_fp8_reaches_the_backbone(body, pack, monkeypatch):
    """On the CPU FP8 is unavailable (logged, ignored); with the capability check passing, the switch arrives."""
    handle = body.LoadSAM3DBody.execute(checkpoint="q-tiny").args[0]
    frames, tracks = _body_clip(pack)
    infer = _mod(pack, "body4d_core.sam3d_body.infer")
    enc = handle.model.backbone.encoder
    calls = []
    monkeypatch.setattr(infer, "fp8_unavailable", lambda dev: "")
    monkeypatch.setattr(enc, "enable_fp8", lambda on=True, **kw: calls.append((bool(on), kw)))
    body.BodyBatch.execute(handle, frames, tracks=tracks, mode="body", batch_size=4, backbone_fp8=False)
    assert calls == []
    body.BodyBatch.execute(handle, frames, tracks=tracks, mode="body", batch_size=4, backbone_fp8=True)
    assert [c[0] for c in calls] == [True, False]  # on for the call, off afterwards


def test_body_load_precision_reaches_the_backbone(body, pack, monkeypatch):
    """The loader's precision picks the handle's dtype on a GPU, and the batch node encodes with it."""
    import comfy.model_management as mm

    glue = _mod(pack, "nodes.comfy_glue")
    monkeypatch.setattr(mm, "should_use_bf16", lambda *a, **k: True)
    monkeypatch.setattr(mm, "should_use_fp16", lambda *a, **k: True)
    gpu = torch.device("cuda")
    assert glue.choose_dtype("fp32", gpu) == torch.float32
    assert glue.choose_dtype("fp16", gpu) == torch.float16
    assert glue.choose_dtype("bf16", gpu) == torch.bfloat16
    monkeypatch.setattr(glue, "choose_dtype", lambda p, d=None: {"fp16": torch.float16, "bf16": torch.bfloat16}
                        .get(p, torch.float32))
    handle = body.LoadSAM3DBody.execute(checkpoint="q-tiny", precision="fp16").args[0]
    assert handle.dtype == torch.float16
    frames, tracks = _body_clip(pack)
    spy = _Spy(handle.model.encode, 1)
    monkeypatch.setattr(handle.model, "encode", spy)
    body.BodyBatch.execute(handle, frames, tracks=tracks, mode="body", batch_size=4)
    assert spy.seen and set(spy.seen) == {torch.float16}


def test_body_compile_choice_reaches_compile_for(body, pack, monkeypatch):
    seen = {}
    for choice, want in (("off", ""), ("always", "default"), ("auto", "auto")):
        handle = body.LoadSAM3DBody.execute(checkpoint="q-tiny", compile=choice).args[0]
        monkeypatch.setattr(handle.model, "compile_for", lambda mode, *a, **k: seen.update({choice: mode}))
        frames, tracks = _body_clip(pack)
        body.BodyBatch.execute(handle, frames, tracks=tracks, mode="body", batch_size=4)
        assert seen[choice] == want


def test_body_mode_vertices_min_box_and_batch_size(body, pack):
    handle = body.LoadSAM3DBody.execute(checkpoint="q-tiny").args[0]
    frames, tracks = _body_clip(pack)
    run = lambda **kw: body.BodyBatch.execute(handle, frames, tracks=tracks, **kw).args[0]  # noqa: E731
    full = run(mode="full", batch_size=4)
    part = run(mode="body", batch_size=4)
    assert not np.allclose(full.params["hand_pose"][full.present], part.params["hand_pose"][part.present])
    assert full.vertices is not None and run(mode="body", vertices=False).vertices is None
    # person 2's box is 24 x 16 px: a min_box of 20 drops it, person 6 (24 x 42) stays
    small = run(mode="body", min_box=20.0)
    assert not small.present[small.index_of(2)].any() and small.present[small.index_of(6)].all()
    assert full.present[full.index_of(2)].tolist() == [False, True, True]
    # batch size changes the grouping, never the numbers or their order
    one = run(mode="body", batch_size=1)
    np.testing.assert_allclose(one.params["cam_t"], part.params["cam_t"], atol=1e-5)


# ----------------------------------------------------------------- Kalman Smooth


def _noisy_bodies(pack):
    """Two people, noise, an occluded stretch, an outlier frame, a gap and changing shape."""
    data = _mod(pack, "body4d_core.data")
    rng = np.random.default_rng(0)
    n, t = 2, 40
    params = {k: rng.normal(0, 0.05, (n, t, d)).astype(np.float32) for k, d in data.PARAM_DIMS.items()}
    ramp = np.linspace(0, 2, t, dtype=np.float32)
    params["cam_t"] += np.stack([ramp, 0.5 * ramp, 3 + 0 * ramp], -1)[None]
    params["body_pose"] += np.sin(np.linspace(0, 6, t, dtype=np.float32))[None, :, None]
    params["shape"] += np.linspace(0, 1, t, dtype=np.float32)[None, :, None]
    params["cam_t"][:, 20] += 3.0  # an outlier frame (every block jumps)
    params["body_pose"][:, 20] += 2.0
    params["hand_pose"][:, 20] += 2.0
    flags = np.full((n, t), data.BodyFlag.VISIBLE, np.uint8)
    flags[0, 8:14] = data.BodyFlag.OCCLUDED
    params["cam_t"][0, 8:14] += rng.normal(0, 0.3, (6, 3)).astype(np.float32)
    flags[1, 28:33] = data.BodyFlag.MISSING  # a 5-frame gap
    return data.Bodies(np.array([4, 1]), flags, params, (48, 80))


SMOOTH_CHANGES = {
    "mode": "causal", "strength": 8.0, "motion_model": "acceleration", "occluded_noise": 60.0,
    "outlier_threshold": 0.0, "max_gap": 2, "lock_shape": False,
}


@pytest.mark.parametrize("option", sorted(SMOOTH_CHANGES))
def test_smooth_option_changes_the_result(pack, option):
    node = _mod(pack, "nodes.smooth").KalmanSmooth
    b = _noisy_bodies(pack)
    base = node.execute(bodies=b).args[0]
    other = node.execute(bodies=b, **{option: SMOOTH_CHANGES[option]}).args[0]
    diff = max(float(np.abs(base.params[k] - other.params[k]).max()) for k in base.params)
    assert diff > 1e-3 or not np.array_equal(base.flags, other.flags), f"{option} changed nothing"


def test_smooth_max_gap_and_gap_damping_act_where_they_should(pack):
    from body4d_core.data import BodyFlag

    node = _mod(pack, "nodes.smooth").KalmanSmooth
    b = _noisy_bodies(pack)
    bridged = node.execute(bodies=b, max_gap=5).args[0]
    assert (bridged.flags[1, 28:33] == BodyFlag.FILLED).all()
    kept = node.execute(bodies=b, max_gap=4).args[0]
    assert (kept.flags[1, 28:33] == BodyFlag.MISSING).all()
    fast = node.execute(bodies=b, mode="causal", gap_damping=1.0).args[0]
    slow = node.execute(bodies=b, mode="causal", gap_damping=0.1).args[0]
    assert np.abs(fast.params["cam_t"][1, 28:33] - slow.params["cam_t"][1, 28:33]).max() > 1e-3
    np.testing.assert_array_equal(fast.params["cam_t"][0], slow.params["cam_t"][0])  # no gap: no effect
    assert np.abs(fast.params["cam_t"][1, 28:33] - slow.params["cam_t"][1, 28:33]).max() > \
        np.abs(fast.params["cam_t"][1, :27] - slow.params["cam_t"][1, :27]).max()


def test_smooth_camera_sets_the_core_focal(pack):
    data = _mod(pack, "body4d_core.data")
    node = _mod(pack, "nodes.smooth").KalmanSmooth
    b = _noisy_bodies(pack)
    cam = data.Camera.from_focal(123.0, (48, 80), 40, "manual")
    pose = node.execute(bodies=b, camera=cam).args[1]
    first = pose["frames"][0][0]
    assert float(np.asarray(first["focal_length"]).reshape(-1)[0]) == pytest.approx(123.0)
    default = node.execute(bodies=b).args[1]["frames"][0][0]
    assert float(np.asarray(default["focal_length"]).reshape(-1)[0]) == pytest.approx(np.hypot(48, 80), rel=1e-5)


# ----------------------------------------------------------------- FOV


class _FakeMoGe(torch.nn.Module):
    """Stands in for MoGe-2: fy (normalised) = 1 + level/10 + the frame's mean grey; records its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))
        self.calls: list[tuple[int, int, bool]] = []

    def infer(self, images, resolution_level=9, force_projection=False, apply_mask=True, use_fp16=False):
        self.calls.append((images.shape[0], resolution_level, use_fp16))
        fy = 1.0 + resolution_level / 10.0 + images.mean(dim=(1, 2, 3))
        k = torch.zeros(images.shape[0], 3, 3)
        k[:, 0, 0] = fy * images.shape[2] / images.shape[3]
        k[:, 1, 1] = fy
        k[:, 0, 2] = k[:, 1, 2] = 0.5
        k[:, 2, 2] = 1
        return {"intrinsics": k}


def _fov_handle(pack, dtype=torch.float32):
    glue = _mod(pack, "nodes.comfy_glue")
    return glue.wrap_model(_FakeMoGe(), dtype, name="moge")


def _fov_frames(t: int = 6, h: int = 40, w: int = 72):
    grey = torch.linspace(0.0, 1.0, t).view(t, 1, 1, 1)
    return grey.expand(t, h, w, 3).contiguous()


def test_fov_mode_every_n_level_batch_and_per_frame(pack):
    node = _mod(pack, "nodes.fov").FOV
    frames = _fov_frames()
    h = frames.shape[1]
    handle = _fov_handle(pack)
    cam, _ = node.execute(frames, moge_model=handle, mode="first").args
    assert sum(c[0] for c in handle.model.calls) == 1
    assert cam.intrinsics[0, 1] == pytest.approx(h * (1.0 + 0.9 + 0.0), rel=1e-4)
    handle.model.calls.clear()
    node.execute(frames, moge_model=handle, mode="all", batch_size=4)
    assert [c[0] for c in handle.model.calls] == [4, 2]  # batch_size groups the frames
    handle.model.calls.clear()
    node.execute(frames, moge_model=handle, mode="every_n", every_n=2)
    assert sum(c[0] for c in handle.model.calls) == 3
    handle.model.calls.clear()
    node.execute(frames, moge_model=handle, resolution_level=3)
    assert [c[1] for c in handle.model.calls] == [3]
    per, _ = node.execute(frames, moge_model=handle, mode="all", per_frame=True).args
    one, _ = node.execute(frames, moge_model=handle, mode="all", per_frame=False).args
    assert np.ptp(per.intrinsics[:, 1]) > 1.0 and np.ptp(one.intrinsics[:, 1]) == 0.0


def test_fov_moge_precision_reaches_the_estimate(pack, monkeypatch):
    fov_node = _mod(pack, "nodes.fov")
    bf = _mod(pack, "body4d_core.fov")
    seen = []
    real = bf.estimate_camera
    monkeypatch.setattr(bf, "estimate_camera", lambda *a, **k: (seen.append(k.get("use_fp16")), real(*a, **k))[1])
    fov_node.FOV.execute(_fov_frames(), moge_model=_fov_handle(pack, torch.float16))
    fov_node.FOV.execute(_fov_frames(), moge_model=_fov_handle(pack, torch.float32))
    assert seen == [True, False]


def test_fov_source_priority_on_a_wide_frame(pack):
    """manual FOV > fov input > MoGe geometry > model > default, each checked by removing the winner."""
    node = _mod(pack, "nodes.fov").FOV
    frames = _fov_frames(t=3, h=40, w=72)
    geo_k = torch.tensor([[1.5 * 40 / 72, 0, 0.5], [0, 1.5, 0.5], [0, 0, 1]]).view(1, 3, 3)
    geometry = {"intrinsics": geo_k, "points": torch.zeros(1, 40, 72, 3)}
    everything = dict(moge_model=_fov_handle(pack), manual_fov=50.0, fov=30.0, moge_geometry=geometry)
    cam, deg = node.execute(frames, **everything).args
    assert cam.source == "manual" and deg == pytest.approx(50.0, abs=1e-3)
    cam, deg = node.execute(frames, **{**everything, "manual_fov": 0.0}).args
    assert deg == pytest.approx(30.0, abs=1e-3)
    cam, _ = node.execute(frames, **{**everything, "manual_fov": 0.0, "fov": None}).args
    assert cam.source == "moge_geometry" and cam.intrinsics[0, 1] == pytest.approx(1.5 * 40, rel=1e-4)
    cam, _ = node.execute(frames, moge_model=_fov_handle(pack)).args
    assert cam.source == "estimated"
    cam, _ = node.execute(frames).args
    assert cam.source == "default" and cam.intrinsics[0, 1] == pytest.approx(np.hypot(40, 72), rel=1e-5)
    # principal point at the centre of a wide frame: (x, y) = (W/2, H/2), not swapped
    assert cam.intrinsics[0, 2:].tolist() == [36.0, 20.0]


def test_load_moge_precision_sets_the_handle_dtype(pack, monkeypatch):
    fov_node = _mod(pack, "nodes.fov")
    monkeypatch.setattr(fov_node, "_checkpoint_path", lambda choice: "x")
    monkeypatch.setattr(fov_node.bf, "load_moge_checkpoint", lambda path, device="cpu": _FakeMoGe())
    assert fov_node.LoadMoGe.execute("c", precision="fp32").args[0].dtype == torch.float32
    assert fov_node.LoadMoGe.execute("c", precision="fp16").args[0].dtype == torch.float16


# ----------------------------------------------------------------- Amodal Complete


AMODAL_SETTINGS = {  # node input -> (value, config, field, expected field value)
    "steps": (3, "smp", "steps", 3), "iou_occluded": (0.31, "occ", "iou_occluded", 0.31),
    "iou_final": (0.42, "occ", "iou_final", 0.42), "seed": (77, "smp", "seed", 77),
    "detection_resolution": ("64x128", "occ", "detection_resolution", (64, 128)),
    "completion_resolution": ("96x160", "occ", "completion_resolution", (96, 160)),
    "pad_frames": (5, "occ", "pad_frames", 5), "border_fraction": (0.2, "occ", "border_fraction", 0.2),
    "refine": (False, "occ", "refine", False), "fill_single_gaps": (False, "occ", "fill_single_gaps", False),
    "guidance": (3.5, "smp", "guidance", 3.5), "motion_bucket_id": (40, "smp", "motion_bucket_id", 40),
    "fps": (20, "smp", "fps", 20), "noise_aug_strength": (0.3, "smp", "noise_aug_strength", 0.3),
    "decode_chunk_size": (3, "smp", "decode_chunk_size", 3), "window": (16, "smp", "window", 16),
    "overlap": (4, "smp", "overlap", 4), "people_batch": (2, "smp", "people_batch", 2),
    "embed_order": ("aligned", "smp", "embed_order", "aligned"),
}


class _Stop(Exception):
    pass


def test_amodal_node_inputs_list_matches_the_table(pack):
    schema = _mod(pack, "nodes.amodal").AmodalComplete.GET_SCHEMA()
    names = {i.id for i in schema.inputs} - {"frames", "tracks", "amodal_model", "sam3_track_data"}
    assert names == set(AMODAL_SETTINGS)


@pytest.mark.parametrize("name", sorted(AMODAL_SETTINGS))
def test_amodal_node_input_reaches_its_setting(pack, monkeypatch, name):
    mod = _mod(pack, "nodes.amodal")
    data = _mod(pack, "body4d_core.data")
    seen = {}

    def spy(rgb, tracks, models, occ, smp, hooks=None, *a, **k):
        seen.update(occ=occ, smp=smp)
        raise _Stop

    monkeypatch.setattr(mod, "run_amodal", spy)

    class Handle:
        info = {"models": None}

        def ready(self):
            return None

    masks = np.zeros((1, 2, 24, 40), bool)
    masks[0, :, 4:20, 25:35] = True
    value, cfg, field, want = AMODAL_SETTINGS[name]
    with pytest.raises(_Stop):
        mod.AmodalComplete.execute(torch.rand(2, 24, 40, 3), Handle(), tracks=data.Tracks.from_masks([3], masks),
                                   **{name: value})
    assert getattr(seen[cfg], field) == want


@pytest.fixture(scope="module")
def vas_pipe():
    from body4d_core.amodal.sampler import VASPipeline
    from body4d_core.testing.amodal import build_vas_parts

    parts = build_vas_parts("tiny", seed=4)
    return VASPipeline(parts["unet"], parts["vae"], parts["image_encoder"], parts["scheduler"])


def test_sampler_settings_change_the_samples(vas_pipe):
    """Each sampler setting reaches the denoiser: the tiny random pipeline's output moves with it."""
    from body4d_core.amodal.config import SamplerConfig

    pipe = vas_pipe
    g = torch.Generator().manual_seed(2)
    a = torch.rand(1, 2, 1, 16, 24, generator=g) * 2 - 1
    b = torch.rand(1, 2, 3, 16, 24, generator=g) * 2 - 1
    base = SamplerConfig(steps=1, decode_chunk_size=2)
    ref = pipe.generate(a, b, [5], base)
    for change in ({"guidance": 4.0}, {"motion_bucket_id": 20}, {"fps": 25}, {"noise_aug_strength": 0.5},
                   {"steps": 2}, {"embed_order": "aligned"}, {"seed": 6}):
        seed = change.pop("seed", 5)
        out = pipe.generate(a, b, [seed], SamplerConfig(**{**base.__dict__, **change}))
        assert (out - ref).abs().max() > 1e-5, f"{change} changed nothing"


def test_guidance_is_classifier_free_guidance(vas_pipe):
    """eps = unc + g (con - unc): with g = 1 only the conditional prediction counts, whatever the unconditional."""
    from body4d_core.amodal.config import SamplerConfig

    pipe = vas_pipe
    a = torch.rand(1, 2, 1, 16, 24, generator=torch.Generator().manual_seed(1)) * 2 - 1
    b = torch.rand(1, 2, 3, 16, 24, generator=torch.Generator().manual_seed(2)) * 2 - 1
    real_unet = pipe.unet
    outs = {}
    for scale in (0.0, 1.0):
        class Shift(torch.nn.Module):
            def forward(self, inp, t, ctx, ids):
                pred = real_unet(inp, t, ctx, ids)[0]
                half = pred.shape[0] // 2
                bump = torch.zeros_like(pred)
                bump[:half] = scale  # moves the unconditional half only
                return (pred + bump,)

            def parameters(self, recurse=True):
                return real_unet.parameters(recurse)

        pipe.unet = Shift()
        try:
            outs[scale] = {g: pipe.generate(a, b, [3], SamplerConfig(steps=1, guidance=g, decode_chunk_size=2))
                           for g in (1.0, 2.0)}
        finally:
            pipe.unet = real_unet
    torch.testing.assert_close(outs[0.0][1.0], outs[1.0][1.0], atol=1e-5, rtol=0)
    assert (outs[0.0][2.0] - outs[1.0][2.0]).abs().max() > 1e-4


# ----------------------------------------------------------------- Render, export


def _render_bodies(pack):
    data = _mod(pack, "body4d_core.data")
    n, t, h, w = 2, 2, 48, 80
    params = {k: np.zeros((n, t, d), np.float32) for k, d in data.PARAM_DIMS.items()}
    params["cam_t"][0, :] = [-0.4, 0.1, 3.0]  # left person
    params["cam_t"][1, :] = [0.6, -0.1, 4.0]  # right person, farther
    quad = np.array([[-0.2, -0.3, 0], [0.2, -0.3, 0], [0.2, 0.3, 0], [-0.2, 0.3, 0]], np.float32)
    verts = np.broadcast_to(quad, (n, t, 4, 3)).copy()
    faces = np.array([[0, 2, 1], [0, 3, 2]], np.int32)
    flags = np.ones((n, t), np.uint8)
    return data.Bodies(np.array([9, 2]), flags, params, (h, w), vertices=verts, faces=faces)


def test_render_opacity_mode_and_mask_obj_id(pack):
    data = _mod(pack, "body4d_core.data")
    node = _mod(pack, "nodes.render").RenderMesh
    b = _render_bodies(pack)
    cam = data.Camera.from_focal(60.0, (48, 80), 2, "manual")
    frames = torch.full((2, 48, 80, 3), 0.25)
    hi, mask = node.execute(b, cam, frames=frames, opacity=0.9).args
    lo, _ = node.execute(b, cam, frames=frames, opacity=0.2).args
    inside = mask[0] > 0.5
    assert inside.any()
    assert (hi[0][inside] - lo[0][inside]).abs().max() > 0.05
    torch.testing.assert_close(hi[0][~inside], lo[0][~inside])  # outside the meshes only the frame shows
    sil, _ = node.execute(b, cam, frames=frames, mode="silhouette").args
    assert (sil - hi).abs().max() > 0.05
    _, m9 = node.execute(b, cam, mask_obj_id=9).args
    _, m2 = node.execute(b, cam, mask_obj_id=2).args
    cols9 = torch.nonzero(m9[0].sum(0)).flatten()
    cols2 = torch.nonzero(m2[0].sum(0)).flatten()
    assert cols9.numel() and cols2.numel() and cols9.max() < cols2.min()  # id 9 on the left, id 2 on the right
    torch.testing.assert_close(torch.clamp(m9 + m2, 0, 1), mask)
    again, _ = node.execute(b, cam, frames=frames, opacity=0.9, batch_size=1).args
    torch.testing.assert_close(again, hi)  # batch size: grouping only


def test_export_format_and_glb_options(pack):
    import folder_paths
    import pygltflib

    mod = _mod(pack, "nodes.export")
    b = _render_bodies(pack)
    out = folder_paths.get_output_directory()
    rel = mod.ExportMeshes.execute(b, filename_prefix="q/m", format="obj").args[0]
    files = sorted(p.name for p in (Path(out) / rel).rglob("*.*"))
    assert any(f.endswith(".obj") for f in files) and not any(f.endswith(".ply") for f in files)
    rel = mod.ExportMeshes.execute(b, filename_prefix="q/n", format="none").args[0]
    files = sorted(p.name for p in (Path(out) / rel).rglob("*.*"))
    assert files == ["params.npz"]
    durations = {}
    for fps in (10.0, 40.0):
        rel = mod.SaveGLB.execute(b, fps=fps, filename_prefix=f"q/g{int(fps)}", obj_id=2).args[0]
        glbs = sorted((Path(out) / rel).glob("*.glb"))
        assert [g.name for g in glbs] == ["body4d_person_2.glb"]
        g = pygltflib.GLTF2.load(str(glbs[0]))
        acc = g.accessors[g.animations[0].samplers[0].input]
        durations[fps] = acc.max[0]
    assert durations[10.0] == pytest.approx(4 * durations[40.0], rel=1e-5)
