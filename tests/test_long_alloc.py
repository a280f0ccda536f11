"""Long videos: the stages write their whole-clip per-frame outputs through an allocator (the frame store's
zero-filled files in a headless run) instead of RAM, with exactly the values of the default (np.zeros) path."""

from __future__ import annotations

import errno
import json
import os

import numpy as np
import pytest
import torch

from body4d_core import alloc as A
from body4d_core import pipeline
from body4d_core.data import Bodies, Camera, Tracks
from body4d_core.errors import MemoryBudgetError
from body4d_core.frame_store import FrameStore
from body4d_core.video import LoadOptions

from .test_amodal_occlusion import EXACT, FakeContentRunner, FakeMaskRunner, fake_depth, person_mask, rect
from .tiny_runs import SAMPLE, tiny_models


class Spy:
    """An allocator over a FrameStore that records every (shape, dtype) it was asked for."""

    def __init__(self, store: FrameStore) -> None:
        self.store, self.calls, self.arrays = store, [], []

    def __call__(self, shape, dtype):
        self.calls.append((tuple(shape), np.dtype(dtype)))
        self.arrays.append(self.store.empty(shape, dtype))
        return self.arrays[-1]

    def gave(self, t: torch.Tensor) -> bool:
        """Whether tensor ``t`` is a view of the start of one of the arrays handed out (torch.from_numpy)."""
        return any(t.data_ptr() == a.ctypes.data and self.store.holds(a) for a in self.arrays)


@pytest.fixture
def store(tmp_path):
    s = FrameStore(tmp_path, 1, 2, 2, interval=0.01)
    yield s
    s.close()


def _equal(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a, b)


def _bodies_equal(a: Bodies, b: Bodies) -> None:
    for k, v in a.to_arrays().items():
        _equal(v, b.to_arrays()[k])


# ------------------------------------------------------------------ the allocator helpers and the store


def test_alloc_helpers_default_to_ram_and_check_what_an_allocator_returns(store):
    _equal(A.zeros(None, (2, 3), np.int16), np.zeros((2, 3), np.int16))
    _equal(A.full(None, (2, 3), np.nan, np.float32), np.full((2, 3), np.nan, np.float32))
    filled = A.full(store.empty, (3, 2, 2), np.nan, np.float32)
    assert store.holds(filled) and np.isnan(filled).all()
    like = A.zeros_like(store.empty, np.ones((4, 5), np.float64))
    assert store.holds(like) and like.dtype == np.float64 and not like.any()
    with pytest.raises(TypeError, match="asked for"):
        A.zeros(lambda shape, dtype: np.zeros(shape, np.float64), (2,), np.float32)


def test_store_holds_its_arrays_and_views_only(store):
    arr = store.empty((4, 3), np.float32)
    assert store.holds(arr) and store.holds(arr[1:]) and store.holds(arr[2, 1:])
    assert store.holds(store.keep(np.ones(3)))
    assert not store.holds(np.zeros((4, 3), np.float32)) and not store.holds(np.asarray(arr).copy())
    other = FrameStore(store.dir.parent, 1, 2, 2)
    try:
        assert not other.holds(arr) and not store.holds(other.empty((2,)))
    finally:
        other.close()


def test_empty_on_a_full_disk_is_one_clear_error_and_leaves_no_file(store, monkeypatch):
    before = sorted(store.dir.iterdir())

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    with pytest.raises(MemoryBudgetError, match="disk is full"):
        store.empty((1000, 1000), np.float32)
    assert sorted(store.dir.iterdir()) == before


def test_empty_reserves_the_file_blocks(store):
    arr = store.empty((256, 1024), np.uint8)  # 256 KiB: allocated up front, not a sparse file
    path = max(store.dir.iterdir(), key=lambda p: p.stat().st_mtime_ns)
    assert path.stat().st_size == arr.nbytes
    if hasattr(os, "posix_fallocate"):
        assert path.stat().st_blocks * 512 >= arr.nbytes


# ------------------------------------------------------------------ SAM-3


def test_propagate_writes_packed_masks_into_the_allocator(store):
    from body4d_core.data import ObjectPrompt, Prompts
    from body4d_core.sam3 import propagate
    from body4d_core.testing.sam3 import tiny_sam3
    from body4d_core.video import load_video

    from .media import DANCER, need

    frames, _ = load_video(need(DANCER), LoadOptions(frame_load_cap=8, max_side=64))
    h, w = frames.shape[1:3]
    prompts = Prompts([ObjectPrompt(1, 3, [[32, 28]], [1]), ObjectPrompt(4, 3, box=[10, 10, 40, 60])], (h, w), 8)
    bundle = tiny_sam3(image_size=112, seed=0)
    ref = propagate(bundle, frames, prompts, "both")
    spy = Spy(store)
    got = propagate(bundle, frames, prompts, "both", alloc=spy)
    assert spy.calls == [((2, 8, h, (w + 7) // 8), np.dtype(np.uint8))]
    assert store.holds(got.packed)
    assert ref.packed.any()  # real masks were written, not only the zeros of a fresh file
    _equal(got.packed, ref.packed)
    _equal(got.scores, ref.scores)


def test_propagate_with_an_allocator_skips_the_ram_check(store, monkeypatch):
    """The RAM refusal is for masks held in RAM; a file-backed allocator's masks are not."""
    from body4d_core import video
    from body4d_core.data import ObjectPrompt, Prompts
    from body4d_core.sam3 import propagate
    from body4d_core.testing.sam3 import tiny_sam3

    monkeypatch.setattr(video, "available_ram", lambda: 1)
    frames = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), np.uint8)
    prompts = Prompts([ObjectPrompt(1, 0, [[16, 16]], [1])], (32, 32), 3)
    bundle = tiny_sam3(image_size=112, seed=0)
    with pytest.raises(MemoryBudgetError):
        propagate(bundle, frames, prompts, "forward")
    assert store.holds(propagate(bundle, frames, prompts, "forward", alloc=store.empty).packed)


# ------------------------------------------------------------------ amodal


def _amodal_case():
    gt = person_mask()
    n = 16
    other = np.roll(gt, -30, axis=1)
    truth = {1: np.repeat(other[None], n, axis=0), 2: np.repeat(gt[None], n, axis=0)}
    vis2 = np.stack([gt & ~rect(30, 54) if 6 <= t <= 8 or 11 <= t <= 12 else gt for t in range(n)])
    tracks = Tracks.from_masks([1, 2], np.stack([truth[1], vis2]))
    frames = torch.rand(n, *gt.shape, 3, generator=torch.Generator().manual_seed(0))
    return truth, tracks, frames


def _amodal(truth, tracks, frames, **kw):
    from body4d_core.amodal.config import SamplerConfig
    from body4d_core.amodal.models import AmodalModels
    from body4d_core.amodal.stage import run_amodal

    class Content(FakeContentRunner):  # a varied picture per frame, so row order matters
        def run_jobs(self, jobs, sampler, hooks=None, budget_px=0):
            return [torch.rand(j.length, 3, *j.cond_a.shape[-2:], generator=torch.Generator().manual_seed(j.obj_id))
                    for j in jobs]

    models = AmodalModels(FakeMaskRunner(truth), Content(), fake_depth)
    return run_amodal(frames, tracks, models, EXACT, SamplerConfig(steps=1), **kw)[0]


def test_amodal_writes_masks_and_completed_rgb_into_the_allocator(store):
    truth, tracks, frames = _amodal_case()
    ref = _amodal(truth, tracks, frames)
    spy = Spy(store)
    got = _amodal(truth, tracks, frames, alloc=spy)
    h, w = tracks.image_size
    k = int(ref.occluded.sum())
    assert k == len(ref.completed_rgb) >= 5  # two occluded runs of person 2 completed
    f32 = np.dtype(np.float32)  # these fakes take no allocator: the stage's own detection inputs still use it
    assert spy.calls == [((16, 1, h, w), f32)] * 3 + [((2, 16, h, (w + 7) // 8), np.dtype(np.uint8)),
                                                       ((k, h, w, 3), np.dtype(np.uint8))]
    assert store.holds(got.packed_amodal) and store.holds(got.completed_rgb)
    for name in ("packed_amodal", "completed_rgb", "completed_index", "occluded", "iou"):
        _equal(getattr(got, name), getattr(ref, name))
    assert got.completed_rgb.any()


class _AllocDepth:
    """fake_depth that writes its result, one frame a batch, into the stage's allocator when given one."""

    def __init__(self) -> None:
        self.got = []

    def to(self, device):  # OnDemand moves its part
        return self

    def __call__(self, frames, hooks=None, *, alloc=None):
        self.got.append(alloc)
        ref = fake_depth(frames)
        if alloc is None:
            return ref
        out = alloc(tuple(ref.shape), np.float32)
        for t in range(len(out)):
            out[t] = ref[t].numpy()
        return torch.from_numpy(out)


class _AllocMask(FakeMaskRunner):
    """FakeMaskRunner whose outputs are allocated through ``out_alloc`` when given one (like VASPipeline)."""

    def to(self, device):
        return self

    def run_jobs(self, jobs, sampler, hooks=None, budget_px=0, out_alloc=None):
        res = super().run_jobs(jobs, sampler, hooks, budget_px)
        if out_alloc is None:
            return res
        outs = [torch.from_numpy(out_alloc(tuple(r.shape), np.float32)) for r in res]
        for o, r in zip(outs, res):
            o += r
        return outs


@pytest.mark.parametrize("refine", [True, False])
def test_amodal_detection_inputs_and_predictions_live_in_the_allocator(store, monkeypatch, refine):
    """Depth, detection conditions and predictions come from the allocator, in chunks; every output is unchanged."""
    from dataclasses import replace

    from body4d_core.amodal import stage
    from body4d_core.amodal.config import SamplerConfig
    from body4d_core.amodal.models import AmodalModels, OnDemand

    truth, tracks, frames = _amodal_case()
    occ = replace(EXACT, refine=refine)

    def run(alloc, depth, mask):
        class Content(FakeContentRunner):
            def run_jobs(self, jobs, sampler, hooks=None, budget_px=0):
                return [torch.rand(j.length, 3, *j.cond_a.shape[-2:],
                                   generator=torch.Generator().manual_seed(j.obj_id)) for j in jobs]

        models = AmodalModels(mask, Content(), depth)
        return stage.run_amodal(frames, tracks, models, occ, SamplerConfig(steps=1), alloc=alloc)

    ref, ref_stats = run(None, fake_depth, FakeMaskRunner(truth))
    monkeypatch.setattr(stage, "_CHUNK", 3)  # 16 frames in 6 chunks, the last one short
    spy, depth, mask = Spy(store), _AllocDepth(), _AllocMask(truth)
    got, stats = run(spy, OnDemand(depth, torch.device("cpu")), OnDemand(mask, torch.device("cpu")))
    assert depth.got == [spy]
    h, w = tracks.image_size
    f32, u8 = np.dtype(np.float32), np.dtype(np.uint8)
    k = int(ref.occluded.sum())
    assert k >= 5
    detect = [((16, 4, 6), f32), ((16, 1, h, w), f32), ((16, 1, h, w), f32), ((16, 1, h, w), f32),
              ((16, 3, h, w), f32), ((16, 3, h, w), f32), ((2, 16, h, (w + 7) // 8), u8)]
    packed = [] if refine else [((16, h, (w + 7) // 8), u8)] * 2  # the detection masks, reused without refinement
    assert spy.calls == detect + packed + [((k, h, w, 3), u8)]
    for name in ("packed_amodal", "completed_rgb", "completed_index", "occluded", "iou"):
        _equal(getattr(got, name), getattr(ref, name))
    for o in (1, 2):
        _equal(stats.detection_iou[o], ref_stats.detection_iou[o])
        _equal(stats.exempt[o], ref_stats.exempt[o])
        assert stats.segments[o] == ref_stats.segments[o]


def test_depth_with_an_allocator_equals_the_depth_in_ram(store):
    from body4d_core.amodal.depth import estimate_depth, normalize_depth, resize_depth, resize_depth_into
    from body4d_core.amodal.models import DepthEstimator
    from body4d_core.testing.amodal import build_depth_model

    model, prep = build_depth_model("tiny", seed=2)
    frames = torch.rand(5, 32, 48, 3, generator=torch.Generator().manual_seed(0))
    ref = estimate_depth(model, frames, prep, batch_size=2)
    spy = Spy(store)
    got = DepthEstimator(model, prep, batch_size=2)(frames, alloc=spy)
    assert spy.calls == [((5, *ref.shape[1:]), np.dtype(np.float32))] and spy.gave(got)
    assert torch.equal(got, ref)
    norm = normalize_depth(ref)
    assert normalize_depth(got, in_place=True, chunk=2) is got and torch.equal(got, norm) and not torch.equal(got, ref)
    flat = torch.full((3, 4, 5), 2.5)
    assert not normalize_depth(flat, in_place=True).any()
    small = resize_depth_into(norm, (20, 30), spy, chunk=2)
    assert spy.calls[-1] == ((5, 1, 20, 30), np.dtype(np.float32)) and spy.gave(small)
    assert torch.equal(small, resize_depth(norm, (20, 30)))
    assert torch.equal(resize_depth_into(norm, (20, 30), None, chunk=3), small)


def test_sampler_outputs_from_an_allocator_equal_those_in_ram(store):
    from body4d_core.amodal.config import SamplerConfig
    from body4d_core.amodal.job import VideoJob
    from body4d_core.testing.amodal import build_vas_pipeline

    pipe = build_vas_pipeline("tiny")
    g = torch.Generator().manual_seed(5)
    jobs = [VideoJob(torch.rand(t, 1, 32, 48, generator=g) * 2 - 1, torch.rand(t, 3, 32, 48, generator=g) * 2 - 1,
                     seed_key=k) for k, t in enumerate((7, 4))]
    smp = SamplerConfig(steps=2, decode_chunk_size=4, window=4, overlap=1, seed=7)
    ref = pipe.run_jobs(jobs, smp)
    spy = Spy(store)
    got = pipe.run_jobs(jobs, smp, out_alloc=spy)
    assert spy.calls == [((7, 3, 32, 48), np.dtype(np.float32)), ((4, 3, 32, 48), np.dtype(np.float32))]
    for a, b in zip(got, ref):
        assert spy.gave(a) and torch.equal(a, b)


def test_amodal_without_occlusion_allocates_an_empty_completed_rgb(store):
    gt = person_mask()
    truth = np.repeat(gt[None], 6, axis=0)
    tracks = Tracks.from_masks([1], truth[None])
    frames = torch.rand(6, *gt.shape, 3)
    got = _amodal({1: truth}, tracks, frames, alloc=store.empty)
    assert got.completed_rgb.shape == (0, *gt.shape, 3) and not got.occluded.any()
    assert store.holds(got.packed_amodal)


# ------------------------------------------------------------------ SAM-3D-Body, smoothing (rig refresh), world


@pytest.fixture(scope="module")
def body_case():
    from PIL import Image

    from body4d_core.sam3d_body import BodyItem, tiny_config
    from body4d_core.testing.body import random_model

    from .media import PHOTO, PHOTO_MASK, need

    img = np.array(Image.open(need(PHOTO)).convert("RGB").resize((120, 120)))
    m = np.array(Image.open(need(PHOTO_MASK)).convert("L").resize((120, 120), Image.NEAREST)) > 127
    ys, xs = np.nonzero(m)
    box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
    frames = np.stack([np.roll(img, 3 * t, axis=1) for t in range(6)])
    # two people, frames out of order, person 5 missing on frame 2: rows and frames must land where they belong
    items = [BodyItem(t, oid, [box[0] + 3 * t + d, box[1], box[2] + 3 * t + d, box[3]], m, occluded=t == 4)
             for t in (5, 0, 1, 3, 2, 4) for oid, d in ((5, 0), (2, -4)) if (oid, t) != (5, 2)]
    return random_model(tiny_config(), seed=0), frames, items, Camera.default((120, 120), 6)


def test_estimate_bodies_writes_each_batch_into_the_allocator(store, body_case):
    from body4d_core.sam3d_body import bodies_from_results, estimate_bodies

    model, frames, items, cam = body_case
    ref = estimate_bodies(model, frames, items, cam.intrinsics, mode="body", batch_size=4, return_vertices=True)
    spy = Spy(store)
    got = estimate_bodies(model, frames, items, cam.intrinsics, mode="body", batch_size=4, return_vertices=True,
                          alloc=spy)
    shapes = {s[1:]: s[0] for s, _ in spy.calls}
    assert {s[0] for s, _ in spy.calls} == {len(items)} and len(spy.calls) == len(ref[0])
    assert shapes.get(ref[0]["vertices"].shape) == len(items)  # one [N, V, 3] array for every item's vertices
    for r, g in zip(ref, got):
        assert r.keys() == g.keys()
        for key in r:
            assert store.holds(g[key]), key
            _equal(g[key], r[key])
    faces = model.faces.detach().cpu().numpy()
    want = bodies_from_results(items, ref, 6, (120, 120), faces, obj_ids=[2, 5, 7])
    spy2 = Spy(store)
    bodies = bodies_from_results(items, got, 6, (120, 120), faces, obj_ids=[2, 5, 7], alloc=spy2)
    nv = ref[0]["vertices"].shape[0]
    assert ((3, 6, nv, 3), np.dtype(np.float32)) in spy2.calls and ((3, 6, 70, 3), np.dtype(np.float32)) in spy2.calls
    assert store.holds(bodies.vertices) and store.holds(bodies.keypoints_3d) and store.holds(bodies.keypoints_2d)
    assert all(store.holds(v) for v in bodies.extras.values()) and bodies.extras
    _bodies_equal(bodies, want)
    assert not bodies.vertices[2].any() and bodies.vertices[1, 0].any()  # id 7 has no item; id 5 on frame 0


def _body_tracks(body_case) -> Tracks:
    """body_case's people as tracks: ids 2 and 5 on the shifted photo mask (5 missing on frame 2), id 7 never seen."""
    model, frames, items, cam = body_case
    m = items[0].get_mask()
    masks = np.zeros((3, 6) + m.shape, bool)
    for t in range(6):
        masks[0, t] = np.roll(m, 3 * t - 4, axis=1)
        masks[1, t] = np.roll(m, 3 * t, axis=1) if t != 2 else False
    return Tracks.from_masks([2, 5, 7], masks)


def test_estimate_bodies_into_writes_each_batch_into_the_bodies_arrays(store, body_case):
    from body4d_core.errors import InputError
    from body4d_core.sam3d_body import bodies_from_results, estimate_bodies
    from body4d_core.sam3d_body.writer import BodiesWriter

    model, frames, items, cam = body_case
    faces = model.faces.detach().cpu().numpy()
    ref = estimate_bodies(model, frames, items, cam.intrinsics, mode="body", batch_size=4, return_vertices=True)
    want = bodies_from_results(items, ref, 6, (120, 120), faces, obj_ids=[2, 5, 7])
    spy = Spy(store)
    writer = BodiesWriter(items, 6, (120, 120), obj_ids=[2, 5, 7], alloc=spy)
    got = estimate_bodies(model, frames, items, cam.intrinsics, mode="body", batch_size=4, return_vertices=True,
                          into=writer)
    bodies = writer.result(faces)
    _bodies_equal(bodies, want)
    nv = ref[0]["vertices"].shape[0]
    assert all(s[:2] == (3, 6) for s, _ in spy.calls)  # only [people, frames, ...] arrays, none per item
    assert [s for s, _ in spy.calls].count((3, 6, nv, 3)) == 1 and len(spy.calls) == 6  # kp3, kp2, 3 extras, verts
    assert store.holds(bodies.vertices) and all(store.holds(v) for v in bodies.extras.values())
    for it, r, g in zip(items, ref, got):  # each item's dict: views of its cell in the bodies' arrays
        assert np.shares_memory(g["vertices"], bodies.vertices[[2, 5, 7].index(it.obj_id), it.frame])
        for key in g:
            _equal(g[key], r[key])
    with pytest.raises(InputError, match="not both"):
        estimate_bodies(model, frames, items, cam.intrinsics, alloc=spy, into=writer)


@pytest.mark.parametrize("own", [True, False])
def test_body_stage_allocates_each_bodies_array_once(store, body_case, own):
    """The stage's estimate (or a caller's stand-in that returns its results) fills the bodies' arrays: vertices
    are asked of the allocator once, never per item, and the bodies equal bodies_from_results'."""
    from body4d_core.body_inputs import body_items
    from body4d_core.runtime import NULL_HOOKS
    from body4d_core.sam3d_body import bodies_from_results, estimate_bodies

    model, frames, _, cam = body_case
    tracks = _body_tracks(body_case)
    opts = pipeline.PipelineOptions(body_mode="body", batch_size=4, device="cpu")
    cache = {("sam3d_body", str(opts.models_root), opts.device): model}
    items = body_items(tracks)
    ref = estimate_bodies(model, frames, items, cam.intrinsics, mode="body", batch_size=4, return_vertices=True,
                          **opts.profile.body_kwargs())
    want = bodies_from_results(items, ref, 6, (120, 120), model.faces.numpy(), obj_ids=[2, 5, 7])
    seen = []

    def stand_in(model, frames, items, intrinsics=None, **kw):  # no ``into``: returns its results in RAM
        seen.append(sorted(kw))
        return estimate_bodies(model, frames, items, intrinsics, **kw)

    spy = Spy(store)
    got, _ = pipeline.stage_bodies(frames, tracks, None, cam, opts, NULL_HOOKS, cache,
                                   estimate=None if own else stand_in, alloc=spy)
    _bodies_equal(got, want)
    nv = want.vertices.shape[2]
    assert [s for s, _ in spy.calls] == [(3, 6, 70, 3), (3, 6, 70, 2), *[(3, 6) + v.shape[2:] for v in
                                         want.extras.values()], (3, 6, nv, 3)]
    assert store.holds(got.vertices) and store.holds(got.keypoints_2d)
    assert seen == ([] if own else [sorted(["mode", "batch_size", "hooks", "return_vertices",
                                            *opts.profile.body_kwargs()])])


def test_rig_refresh_and_smoothing_write_into_the_allocator(store, body_case):
    from body4d_core.sam3d_body import bodies_from_results, estimate_bodies
    from body4d_core.sam3d_body.refresh import refresh_geometry, refresher
    from body4d_core.smoothing import smooth_bodies

    model, frames, items, cam = body_case
    res = estimate_bodies(model, frames, items, cam.intrinsics, mode="body", batch_size=4, return_vertices=True)
    bodies = bodies_from_results(items, res, 6, (120, 120), model.faces.detach().cpu().numpy())
    ref = refresh_geometry(model, bodies, cam)
    spy = Spy(store)
    got = refresh_geometry(model, bodies, cam, alloc=spy)
    assert ((2, 6) + bodies.vertices.shape[2:], np.dtype(np.float32)) in spy.calls
    assert store.holds(got.vertices) and all(store.holds(v) for v in got.extras.values())
    _bodies_equal(got, ref)
    smoothed = smooth_bodies(bodies, refresh=refresher(model, cam, alloc=store.empty))
    assert store.holds(smoothed.vertices)
    _bodies_equal(smoothed, smooth_bodies(bodies, refresh=refresher(model, cam)))


@pytest.mark.parametrize("chunk", [64, 7])
def test_world_vertices_chunked_into_the_allocator_equal_the_whole_clip(store, monkeypatch, chunk):
    from body4d_core.testing.world import corrupt, make_scene
    from body4d_core.world import stage as world_stage_mod
    from body4d_core.world import world_stage

    sc = make_scene("walk", "static", 2, frames=45, seed=1, image_size=(120, 160), focal=150.0)
    bodies = corrupt(sc, seed=1)
    verts = np.random.default_rng(0).normal(size=bodies.keypoints_3d.shape[:2] + (9, 3)).astype(np.float32)
    bodies = bodies.replace(vertices=verts, faces=np.array([[0, 1, 2]], np.int32))
    cam = Camera.from_focal(150.0, sc.image_size, 45, "manual")
    monkeypatch.setattr(world_stage_mod, "VERTEX_CHUNK", 10 ** 6)  # the whole clip at once: the old path
    ref = world_stage(bodies, cam)
    monkeypatch.setattr(world_stage_mod, "VERTEX_CHUNK", chunk)
    spy = Spy(store)
    got = world_stage(bodies, cam, alloc=spy)
    assert spy.calls == [(verts.shape, np.dtype(np.float32))] and store.holds(got.bodies.vertices)
    _bodies_equal(got.bodies, ref.bodies)
    assert (~got.bodies.present).any() and not got.bodies.vertices[~got.bodies.present].any()


def test_world_people_masks_and_depth_into_the_allocator(store):
    from body4d_core.world.inputs import moge_depth, people_from_tracks

    masks = np.zeros((2, 5, 8, 10), bool)
    masks[0, :, 1:4, 2:6] = True
    masks[1, 2:, 5:8, 6:9] = True
    tracks = Tracks.from_masks([1, 2], masks)
    for size in ((8, 10), (16, 20)):
        got = people_from_tracks(tracks, 5, size, alloc=store.empty)
        assert store.holds(got)
        _equal(got, people_from_tracks(tracks, 5, size))

    class Moge(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def infer(self, images, **_):
            d = images.mean(1) + 1.0
            return {"depth": d, "mask": d > 1.3}

    frames = np.random.default_rng(1).integers(0, 255, (7, 8, 10, 3), np.uint8)
    got = moge_depth(Moge(), frames, every_n=3, alloc=store.empty)
    assert store.holds(got)
    ref = moge_depth(Moge(), frames, every_n=3)
    np.testing.assert_array_equal(got, ref)  # NaN where no depth, in the same places
    assert np.isnan(got[1]).all() and np.isfinite(got[0]).any()


@pytest.mark.parametrize("max_side", [100, 0])  # downscaled (gray, masks, depth copies) and full size (gray)
def test_camera_motion_copies_into_the_allocator_and_the_same_trajectory(store, max_side):
    from body4d_core.testing.world import make_scene, noisy_depth
    from body4d_core.world.camera_motion import estimate_camera_motion

    sc = make_scene("walk", "dolly", 1, frames=12, seed=3, image_size=(120, 160), focal=150.0)
    intr = np.array([150.0, 150.0, 80.0, 60.0])
    depth = noisy_depth(sc)
    spy = Spy(store)
    got = estimate_camera_motion(sc.frames, intr, sc.people_masks, depth, keyframe_every=4, max_side=max_side,
                                 alloc=spy)
    ref = estimate_camera_motion(sc.frames, intr, sc.people_masks, depth, keyframe_every=4, max_side=max_side)
    assert not ref.static  # the solver really tracked every frame
    for k in ("rotations", "positions", "inliers"):
        _equal(getattr(got, k), getattr(ref, k))
    if max_side:
        assert spy.calls == [((12, 75, 100), np.dtype(np.uint8)), ((12, 75, 100), np.dtype(bool)),
                             ((12, 75, 100), np.dtype(np.float32))]
    else:
        assert spy.calls == [((12, 120, 160), np.dtype(np.uint8))]


# ------------------------------------------------------------------ the pipeline


def test_with_alloc_passes_the_keyword_only_to_functions_that_take_it(store):
    def old(bundle, frames, prompts, opts, hooks):
        return None

    def new(a, b, alloc=None):
        return None

    def loose(*a, **k):
        return None

    assert pipeline._with_alloc(old, store.empty) == {}
    assert pipeline._with_alloc(new, store.empty) == {"alloc": store.empty}
    assert pipeline._with_alloc(loose, store.empty) == {"alloc": store.empty}
    assert pipeline._with_alloc(new, None) == {}
    assert pipeline._with_alloc(len, store.empty) == {}
    assert pipeline._alloc([]) is None and pipeline._alloc(None) is None
    assert pipeline._alloc([store]) == store.empty


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny_models(tmp_path_factory)


def _options(models, disk: bool, **kw) -> pipeline.PipelineOptions:
    points = {"version": 1, "image_size": [350, 350],
              "objects": [{"id": 1, "points": [{"frame": 0, "x": 175, "y": 160, "label": 1}]},
                          {"id": 2, "points": [{"frame": 6, "x": 120, "y": 250, "label": 1}]}]}
    base = dict(video=LoadOptions(frame_load_cap=12, max_side=64), points_json=json.dumps(points), amodal=False,
                fov_mode="none", models_root=models, batch_size=4, world=True, write_anim=False,
                write_meshes=False, write_glb=False, frames_on_disk=disk)
    base.update(kw)
    return pipeline.PipelineOptions(**base)


def test_headless_run_writes_every_per_frame_output_into_the_store(models, tmp_path, monkeypatch):
    """A frames-on-disk run allocates the masks, keypoints, extras and vertices of every stage in the store
    (nothing is copied in after a stage: keep() is never called), and its files equal the RAM run's."""
    allocated, kept, held = [], [], {}
    empty, keep = FrameStore.empty, FrameStore.keep

    def spy_empty(self, shape, dtype=np.uint8):
        allocated.append((tuple(shape), np.dtype(dtype)))
        return empty(self, shape, dtype)

    def spy_keep(self, arr):
        kept.append(arr.shape)
        return keep(self, arr)

    monkeypatch.setattr(FrameStore, "empty", spy_empty)
    monkeypatch.setattr(FrameStore, "keep", spy_keep)
    render = pipeline._render_and_export

    def check_render(frames, clip, bodies, camera, opts, out, summary, hooks, *rest):
        if opts.frames_on_disk:  # what the render and the exports read: all in the store
            held.update(verts=stores_hold(bodies.vertices), kp=stores_hold(bodies.keypoints_3d))
        return render(frames, clip, bodies, camera, opts, out, summary, hooks, *rest)

    stores: list[FrameStore] = []
    decode = pipeline.decode_to_store

    def spy_decode(*a, **k):
        store, clip = decode(*a, **k)
        stores.append(store)
        return store, clip

    def stores_hold(arr):
        return any(s.holds(arr) for s in stores)

    monkeypatch.setattr(pipeline, "decode_to_store", spy_decode)
    monkeypatch.setattr(pipeline, "_render_and_export", check_render)
    ram = pipeline.run_pipeline(SAMPLE, tmp_path / "ram", _options(models, False))
    assert allocated == [] and kept == []
    disk = pipeline.run_pipeline(SAMPLE, tmp_path / "disk", _options(models, True))
    assert kept == [] and held == {"verts": True, "kp": True}
    assert disk.obj_ids == ram.obj_ids == [1, 2]
    h, w = 64, 64
    shapes = [s for s, _ in allocated]
    assert (2, 12, h, (w + 7) // 8) in shapes  # SAM-3's packed masks
    nv = np.load(tmp_path / "disk" / "bodies_raw.npz")["vertices"].shape[2]
    assert shapes.count((2, 12, nv, 3)) == 3  # raw, smoothed and world vertices
    assert shapes.count((2, 12, 70, 3)) == 2  # raw and smoothed 3D keypoints
    # the body stage writes its batches straight into the bodies' arrays: no per-item [N_items, ...] results
    assert [s for s in shapes if s[-2:] in ((nv, 3), (70, 3), (70, 2)) and s[:2] != (2, 12)] == []
    assert (12, h, w) in shapes  # the world stage's person masks
    for rel in ("tracks.npz", "bodies_raw.npz", "bodies.npz", "world/world_bodies.npz", "params.npz"):
        a, b = np.load(tmp_path / "ram" / rel), np.load(tmp_path / "disk" / rel)
        assert a.files == b.files, rel
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{rel}:{k}")


def test_headless_run_with_amodal_writes_its_outputs_into_the_store(models, tmp_path, monkeypatch):
    from body4d_core.amodal.models import AmodalModels

    class Mask:
        """A fixed central box as every frame's amodal mask (frames whose visible mask is small: occluded)."""

        def run_jobs(self, jobs, sampler, hooks=None, budget_px=0):
            out = []
            for j in jobs:
                m = torch.zeros(j.length, 3, *j.cond_a.shape[-2:])
                m[:, :, 10:54, 14:50] = 1.0
                out.append(m)
            return out

    def fake_models(opts, models=None, offload=False):
        return AmodalModels(Mask(), FakeContentRunner(), fake_depth)

    monkeypatch.setattr(pipeline, "amodal_models", fake_models)
    kept = []
    keep = FrameStore.keep
    monkeypatch.setattr(FrameStore, "keep", lambda self, arr: kept.append(arr.shape) or keep(self, arr))
    settings = {"detection_resolution": (64, 64), "completion_resolution": (64, 64)}
    opts = dict(amodal=True, amodal_settings=settings, world=False)
    pipeline.run_pipeline(SAMPLE, tmp_path / "ram", _options(models, False, **opts))
    pipeline.run_pipeline(SAMPLE, tmp_path / "disk", _options(models, True, **opts))
    assert [s for s in kept if np.prod(s)] == []  # only an empty array may pass through keep (it stays as is)
    a, b = np.load(tmp_path / "ram" / "amodal.npz"), np.load(tmp_path / "disk" / "amodal.npz")
    assert a["completed_rgb"].shape[0] > 0  # occluded frames were completed: the RGB path is exercised
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_split_runner_hands_the_allocator_to_its_own_sampler_when_the_jobs_stay_here(store):
    from body4d_core.amodal.config import SamplerConfig
    from body4d_core.amodal.job import VideoJob
    from body4d_core.batch.shard import SplitJobRunner

    truth, _, _ = _amodal_case()
    local = _AllocMask(truth)
    jobs = [VideoJob(torch.zeros(16, 1, 8, 12), torch.zeros(16, 1, 8, 12), 0, np.arange(16), o) for o in (1, 2)]
    spy = Spy(store)
    got = SplitJobRunner([object()], "mask", local, None).run_jobs(jobs, SamplerConfig(steps=1), out_alloc=spy)
    assert spy.calls == [((16, 3, 8, 12), np.dtype(np.float32))] * 2 and all(spy.gave(g) for g in got)
    for g, o in zip(got, (1, 2)):
        assert torch.equal(g, local.run_jobs([jobs[o - 1]], SamplerConfig(steps=1))[0])


# ------------------------------------------------------------------ whole-clip passes drop the pages they read


def _store_resident_kib() -> int:
    import mmap

    if not (hasattr(mmap, "MADV_DONTNEED") and os.path.exists("/proc/self/smaps")):
        pytest.skip("needs /proc/self/smaps and madvise (Linux)")
    from bench.bench_long import smaps_groups

    return smaps_groups()["store outputs"]


def test_drop_resident_drops_a_store_slice_and_leaves_ram_arrays_alone(tmp_path):
    from body4d_core.pages import drop_resident

    with FrameStore(tmp_path, 1, 2, 2, interval=0) as s:
        a = s.empty((2, 100, 16, 256), np.uint8)  # 4 KiB a frame
        a[:] = 7
        full = _store_resident_kib()
        assert full >= 800 and drop_resident(a[0, 10:60])
        assert full - 200 - 8 <= _store_resident_kib() <= full - 200 + 8  # 50 frames, +-1 page either end
        assert drop_resident(a[1, ::-1]) and drop_resident(a[0]) and _store_resident_kib() == 0
        assert (a == 7).all()  # the data stays in the file
    assert not drop_resident(np.ones((4, 4))) and not drop_resident(np.ones((4, 4))[:2])


def test_mask_passes_over_the_store_leave_no_page_resident(tmp_path):
    """Tracks.present and body_items read every frame's mask: with the masks in the store (no pager running) they
    drop what they read chunk by chunk (the kernel's fault-around may map a few neighbouring pages: 256 KiB of
    slack), and give the same answers as in RAM."""
    from body4d_core.body_inputs import body_items
    from body4d_core.data import MASK_CHUNK

    t = 2 * MASK_CHUNK + 17
    masks = np.zeros((2, t, 64, 512), bool)  # 4 KiB a packed frame: 2 x 529 frames, 4.1 MiB
    masks[0, :, 4:20, 8:300] = True
    masks[1, ::3, 10:60, 30:500] = True
    ram = Tracks.from_masks([1, 4], masks)
    with FrameStore(tmp_path, 1, 2, 2, interval=0) as s:
        disk = Tracks.from_masks([1, 4], masks)
        disk.packed = s.keep(disk.packed)
        assert _store_resident_kib() == 0  # keep writes the file without touching the mapping
        _equal(disk.present, ram.present)
        assert _store_resident_kib() <= 256
        got, want = body_items(disk), body_items(ram)
        assert _store_resident_kib() <= 256
        assert [(i.frame, i.obj_id, i.box) for i in got] == [(i.frame, i.obj_id, i.box) for i in want]
        _equal(got[5].get_mask(), want[5].get_mask())
        assert int(disk.packed.sum()) == int(ram.packed.sum()) and _store_resident_kib() >= 4000  # a plain read
