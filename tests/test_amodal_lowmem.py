"""Low-memory sampling modes (amodal/lowmem.py): each gives the default path's frames and is really in force."""

from __future__ import annotations

import pytest
import torch

from body4d_core.amodal.config import SamplerConfig
from body4d_core.amodal.job import VideoJob
from body4d_core.amodal import lowmem
from body4d_core.amodal.lowmem import SEQUENTIAL, LowMemory, chunked, chunked_mode
from body4d_core.amodal.models import OnDemand
from body4d_core.amodal.sampler import VASPipeline
from body4d_core.errors import InputError
from body4d_core.testing.amodal import build_vas_parts, build_vas_pipeline, random_conditions

T, H, W = 5, 16, 24
FAST = SamplerConfig(steps=2, decode_chunk_size=4)
# fp32 on the CPU, frames in [0, 1]: only GEMM/conv batch rounding differs. One UNet call deviates ~1e-6
# (test_one_unet_call_...); two Euler steps from sigma 700 amplify that to ~2e-5 in the frames, so the frames
# are held to the tolerance the exact AccelConfig options are held to (tests/test_amodal_accel.py).
TOL = 1e-4
CALL_TOL = 1e-5


@pytest.fixture(scope="module")
def pipe():
    return build_vas_pipeline("tiny", seed=4)


def conds(b: int = 2, t: int = T, seed: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    return random_conditions(b, t, H, W, seed)


@pytest.fixture(scope="module")
def reference(pipe):
    a, b = conds()
    return pipe.generate(a, b, [11, 12], FAST)


class Calls:
    """Forward pre-hooks recording the leading-dim size of each call of named module classes, or of their child
    ``CHILD[name]`` (a routed forward calls the class's forward directly, past the block's own hooks)."""

    CHILD = {"ResnetBlock2D": "conv1", "BasicTransformerBlock": "norm1", "Upsample2D": "conv"}

    def __init__(self, root: torch.nn.Module, names: tuple[str, ...], child: bool = True) -> None:
        self.rows: dict[str, list[int]] = {}
        mods = [(type(m).__name__, m) for m in root.modules() if type(m).__name__ in names]
        self.handles = [(getattr(m, self.CHILD[n]) if child and n in self.CHILD else m).register_forward_pre_hook(
            self._hook(n), with_kwargs=True) for n, m in mods]

    def _hook(self, name: str):
        def hook(_m, args, kwargs):
            x = args[0] if args else next(iter(kwargs.values()))
            self.rows.setdefault(name, []).append(int(x.shape[0]))
        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def generate(pipe: VASPipeline, mem: LowMemory) -> torch.Tensor:
    a, b = conds()
    return pipe.generate(a, b, [11, 12], FAST, memory=mem)


def test_default_mode_is_the_default_path(pipe, reference):
    assert not LowMemory().active and LowMemory().describe() == "default"
    assert torch.equal(generate(pipe, LowMemory()), reference)


def test_sequential_cfg_same_frames_and_two_unet_calls_of_half_the_batch(pipe, reference):
    calls = Calls(pipe.unet, ("VASUNet",))
    try:
        out = generate(pipe, SEQUENTIAL)
    finally:
        calls.close()
    dev = (out - reference).abs().max().item()
    print(f"sequential_cfg max abs deviation {dev:.3g}")
    assert dev <= TOL
    assert calls.rows["VASUNet"] == [2] * (2 * FAST.steps)  # B videos per call, two calls a step (default: one of 2B)


def test_one_unet_call_split_in_cfg_halves_is_exact_to_rounding(pipe):
    g = torch.Generator().manual_seed(0)
    x, ctx, ids = torch.randn(4, 5, 12, 8, 12, generator=g), torch.randn(20, 1, 32, generator=g), torch.randn(4, 3)
    t = torch.tensor(500.0)
    with torch.no_grad():
        one = pipe._unet_cfg(x, t, ctx, ids, 1)
        two = pipe._unet_cfg(x, t, ctx, ids, 2)
        swapped = pipe._unet_cfg(x, t, ctx.flip(0), ids, 2)
    dev = (one - two).abs().max().item()
    print(f"one UNet call vs two CFG halves: max abs deviation {dev:.3g} (values up to {one.abs().max():.3g})")
    assert dev <= CALL_TOL
    assert (one - swapped).abs().max().item() > 1e-3  # the halves really get their own context rows


def test_unet_batch_of_default_mode_is_2b(pipe):
    calls = Calls(pipe.unet, ("VASUNet",))
    try:
        generate(pipe, LowMemory())
    finally:
        calls.close()
    assert calls.rows["VASUNet"] == [4] * FAST.steps


def test_chunked_same_frames_and_blocks_see_chunks(pipe, reference):
    mem = LowMemory(sequential_cfg=True, frame_chunk=3, encode_frames=1)
    names = ("ResnetBlock2D", "BasicTransformerBlock", "Upsample2D")
    calls = Calls(pipe.unet, names)
    vae = Calls(pipe.vae.encoder, ("Encoder",))
    dec = Calls(pipe.vae.decoder, ("ResnetBlock2D", "Upsample2D"))
    try:
        out = generate(pipe, mem)
    finally:
        calls.close(), vae.close(), dec.close()
    dev = (out - reference).abs().max().item()
    print(f"chunked max abs deviation {dev:.3g}")
    assert dev <= TOL
    # B*T = 10 frames per UNet call -> spatial blocks see chunks of at most 3 frames (3, 3, 3, 1)
    for name in ("ResnetBlock2D", "BasicTransformerBlock", "Upsample2D"):
        assert max(calls.rows[name]) <= 3 and 1 in calls.rows[name], name
    assert max(dec.rows["ResnetBlock2D"]) <= 3 and max(dec.rows["Upsample2D"]) <= 3
    assert vae.rows["Encoder"] == [1] * (2 * 2 * T)  # one frame per encode call, both conditions
    assert "forward" not in pipe.unet.down_blocks[0].resnets[0].spatial_res_block.__dict__  # restored after


def test_fused_forwards_are_suspended_while_chunking_and_restored(pipe, reference):
    """With the fused-kernel options routed, chunking still reaches the spatial blocks (the fused block forwards
    are taken off meanwhile, so the measured low-memory path runs) and the fused forwards are back afterwards."""
    from body4d_core.amodal.accel import AccelConfig

    pipe.accelerate(AccelConfig(fused_resblocks=True, vae_fused_resblocks=True, fused_transformers=True))
    try:
        roots = (pipe.unet, pipe.vae)
        before = {id(m): m.__dict__["forward"] for r in roots for m in r.modules() if "forward" in m.__dict__}
        assert len(before) > 0
        calls = Calls(pipe.unet, ("ResnetBlock2D", "BasicTransformerBlock"))
        temporal = Calls(pipe.unet, ("TemporalBasicTransformerBlock",), child=False)
        try:
            out = generate(pipe, LowMemory(sequential_cfg=True, frame_chunk=3, encode_frames=1))
        finally:
            calls.close(), temporal.close()
        after = {id(m): m.__dict__["forward"] for r in roots for m in r.modules() if "forward" in m.__dict__}
    finally:
        pipe.accelerate(None)
    assert (out - reference).abs().max().item() <= TOL
    assert max(calls.rows["ResnetBlock2D"]) <= 3 and max(calls.rows["BasicTransformerBlock"]) <= 3
    assert "TemporalBasicTransformerBlock" in temporal.rows  # called as a module: its position slices apply
    assert after == before  # the same fused forwards, restored


def test_temporal_blocks_run_over_position_slices(pipe):
    seen: list[tuple[int, ...]] = []
    blocks = [m for m in pipe.unet.modules() if type(m).__name__ == "TemporalBasicTransformerBlock"]
    # the block's first LayerNorm sees [batch * positions, frames, C]: its rows tell the positions per call
    handles = [b.norm1.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape))) for b in blocks]
    try:
        x = torch.randn(10, 6, blocks[0].norm1.normalized_shape[0])
        ctx = torch.randn(2 * 6, 1, pipe.unet.config.cross_attention_dim)
        with torch.no_grad():
            ref = blocks[0](x, num_frames=5, encoder_hidden_states=ctx)
            with chunked([pipe.unet], LowMemory(frame_chunk=4)):
                seen.clear()
                got = blocks[0](x, num_frames=5, encoder_hidden_states=ctx)
    finally:
        for h in handles:
            h.remove()
    assert seen == [(4, 5, x.shape[-1])] * 3  # 10 rows / chunk 4 -> 3 parts of the 6 positions, 2 videos each
    assert (got - ref).abs().max().item() <= 1e-6


def test_per_network_moves_each_network_for_its_part_only(pipe, reference, monkeypatch):
    nets = {"unet": pipe.unet, "vae": pipe.vae, "clip": pipe.image_encoder}
    owner = {t.data_ptr(): name for name, m in nets.items() for t in [*m.parameters(), *m.buffers()]}
    placed: list[str] = []
    on_copies: list[bool] = []

    def to_device(t, device):
        name = owner[t.data_ptr()]
        if not placed or placed[-1] != name:
            placed.append(name)
        return t.clone()  # a distinct "device" copy

    monkeypatch.setattr(lowmem, "_to_device", to_device)
    probe = pipe.unet.conv_in2.register_forward_pre_hook(
        lambda m, a: on_copies.append(m.weight.data_ptr() not in owner))
    runner = OnDemand(pipe, torch.device("cpu"))
    job = VideoJob(conds(1)[0][0], conds(1)[1][0], 3, None, 1)
    try:
        base = pipe.run_jobs([job], FAST)
        on_copies.clear()
        out = runner.run_jobs([job], FAST, memory=LowMemory(per_network=True))
    finally:
        probe.remove()
    assert (out[0] - base[0]).abs().max().item() <= TOL
    assert placed == ["clip", "vae", "unet", "vae"]  # each network for its own part: embed, encode, denoise, decode
    assert on_copies == [True] * FAST.steps  # the UNet ran on its device copies
    assert all(t.data_ptr() in owner for m in nets.values() for t in m.parameters())  # host weights back
    assert pipe.compute_device is None


def test_streamed_unet_copies_each_block_in_for_its_own_call_only(pipe, reference, monkeypatch):
    copies: list[int] = []
    inside: list[bool] = []

    unet_ptrs = {t.data_ptr() for t in [*pipe.unet.parameters(), *pipe.unet.buffers()]}

    def to_device(t, device):
        if t.data_ptr() in unet_ptrs:  # the VAE and CLIP encoder are placed too (per_network)
            copies.append(t.numel())
        return t.clone()  # a distinct "device" copy, so a block's weights can be told apart from the host ones

    monkeypatch.setattr(lowmem, "_to_device", to_device)
    host = {id(p): p.data for p in pipe.unet.parameters()}
    block = pipe.unet.up_blocks[0].resnets[0]  # inside a streamed block: runs after the block's own swap-in
    probe = block.register_forward_pre_hook(lambda m, a: inside.append(all(
        p.data.data_ptr() != host[id(p)].data_ptr() for p in m.parameters())))
    runner = OnDemand(pipe, torch.device("cpu"))
    job = VideoJob(conds(1)[0][0], conds(1)[1][0], 3, None, 1)
    try:
        base = pipe.run_jobs([job], FAST)
        copies.clear(), inside.clear()
        out = runner.run_jobs([job], FAST, memory=chunked_mode(3, per_network=True, stream_unet=True))
    finally:
        probe.remove()
    assert (out[0] - base[0]).abs().max().item() <= TOL
    n_unet = sum(p.numel() for p in pipe.unet.parameters()) + sum(b.numel() for b in pipe.unet.buffers())
    calls = 2 * FAST.steps  # sequential CFG: two UNet calls a step, each copies every block in once
    assert sum(copies) == n_unet - sum(p.numel() for b in [*pipe.unet.down_blocks, pipe.unet.mid_block,
                                                          *pipe.unet.up_blocks] for p in lowmem._block_tensors(b)) \
        + calls * sum(p.numel() for b in [*pipe.unet.down_blocks, pipe.unet.mid_block, *pipe.unet.up_blocks]
                      for p in lowmem._block_tensors(b))
    assert inside and all(inside)  # the probed block ran on its copies; afterwards the host weights are back
    assert all(p.data.data_ptr() == host[id(p)].data_ptr() for p in pipe.unet.parameters())


def test_low_memory_options_are_checked_and_described():
    assert SEQUENTIAL.describe() == "sequential CFG"
    mode = chunked_mode(8, per_network=True, stream_unet=True)
    assert mode.describe() == ("sequential CFG, blocks over 8-frame chunks, VAE encode 1 frame(s) a call, "
                               "networks on the GPU one at a time, UNet blocks streamed to the GPU")
    with pytest.raises(InputError, match="frame_chunk must be >= 0"):
        LowMemory(frame_chunk=-1)
    with pytest.raises(InputError, match="stream_unet needs per_network"):
        LowMemory(stream_unet=True)


def test_in_place_blend_is_bit_identical_and_falls_back_when_unsafe():
    unet = build_vas_parts("tiny", seed=5)["unet"]  # its own UNet: the mix factors are changed below
    blenders = [m for m in unet.modules() if type(m).__name__ == "AlphaBlender"]
    g = torch.Generator().manual_seed(3)
    for m in blenders[:2]:
        with torch.no_grad():
            m.mix_factor.fill_(0.3)
        for shape, ind in (((2, 8, 5, 4, 6), torch.zeros(2, 5)), ((10, 24, 8), torch.zeros(2, 5))):
            xs, xt = torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)
            ref = m(x_spatial=xs, x_temporal=xt.clone(), image_only_indicator=ind)
            got_t = xt.clone()
            got = lowmem._blend_in_place(2, m, xs, got_t, ind)
            assert torch.equal(got, ref) and got is got_t  # written into the temporal input, same bits
            view = xs[:, :]  # aliasing the spatial input: not safe in place, the module's own forward runs
            assert torch.equal(lowmem._blend_in_place(2, m, xs, view, ind), m(x_spatial=xs, x_temporal=view,
                                                                              image_only_indicator=ind))
            assert torch.equal(view, xs)


def test_chunking_alone_matches_the_default(pipe, reference):
    out = generate(pipe, LowMemory(frame_chunk=3))  # the CFG batch of 2B, per-frame work in chunks of 3
    dev = (out - reference).abs().max().item()
    print(f"chunking alone: max abs deviation {dev:.3g}")
    assert dev <= TOL


def test_whole_stage_in_the_lowest_memory_mode_matches_the_default(pipe):
    """run_amodal with the networks held on the CPU (OnDemand) and every option on: the same flags, masks and
    completed frames as the default path (TruthMask: known amodal masks, real completion and depth)."""
    import numpy as np

    from body4d_core.amodal.config import OcclusionConfig
    from body4d_core.amodal.models import AmodalModels, DepthEstimator, offloaded
    from body4d_core.amodal.stage import run_amodal
    from body4d_core.data import Tracks
    from body4d_core.testing.amodal import build_depth_model

    from .test_amodal_pipeline import TruthMask, _clip

    class Known(TruthMask):  # the known amodal masks; takes the plan's keywords like a real sampler
        def run_jobs(self, jobs, sampler, hooks=None, budget_px=0, **low):
            return super().run_jobs(jobs, sampler, hooks, budget_px)

    frames, gt, vis = _clip(6)
    tracks = Tracks.from_masks([4], vis[None])
    depth, prep = build_depth_model("tiny", seed=2)
    occ = OcclusionConfig(detection_resolution=(16, 24), completion_resolution=(32, 48))
    models = AmodalModels(Known(gt), pipe, DepthEstimator(depth, prep))
    ref, _ = run_amodal(frames, tracks, models, occ, FAST)
    calls = Calls(pipe.unet, ("VASUNet",))
    depth_rows: list[int] = []
    hook = depth.register_forward_pre_hook(lambda m, a, kw: depth_rows.append(int(kw["pixel_values"].shape[0])),
                                           with_kwargs=True)
    try:
        low, _ = run_amodal(frames, tracks, offloaded(models), occ, FAST,
                            memory=LowMemory(**{**chunked_mode(2, per_network=True, stream_unet=True).__dict__,
                                                "depth_frames": 4}))
    finally:
        calls.close()
        hook.remove()
    assert calls.rows["VASUNet"] == [1] * (2 * FAST.steps)  # one completion window, CFG halves of one video
    assert depth_rows == [4, 2]  # 6 frames, depth in calls of at most 4 (the estimator's own batch is 16)
    assert np.array_equal(low.occluded, ref.occluded) and np.array_equal(low.packed_amodal, ref.packed_amodal)
    assert np.array_equal(low.completed_index, ref.completed_index) and ref.completed_rgb.size
    assert np.abs(low.completed_rgb.astype(int) - ref.completed_rgb.astype(int)).max() <= 1  # uint8 rounding
