"""SAM-3's backbone CUDA graph: features reach the tracker through its session cache, masks unchanged.

On the CPU no graph is captured, so a stand-in "graph" (the eager backbone, counted) is patched
in: it proves the hand-off (cache keys, several prompts on one frame, both directions, the
tracker's own backbone never running) gives the same masks. The capture itself is checked on CUDA.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from body4d_core.data import ObjectPrompt, Prompts
from body4d_core.profile import RunProfile
from body4d_core.sam3 import graphs, propagate
from body4d_core.sam3.propagate import BASELINE, SpeedOptions
from body4d_core.testing.sam3 import tiny_sam3
from body4d_core.video import LoadOptions, load_video
from tests.media import DANCER, need

SIDE, T = 96, 12


@pytest.fixture(scope="module")
def bundle():
    return tiny_sam3(image_size=112, seed=0)


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    out, _ = load_video(need(DANCER), LoadOptions(frame_load_cap=T, max_side=SIDE))
    return out


def _prompts() -> Prompts:
    items = [ObjectPrompt(1, 3, [[48, 40], [10, 10]], [1, 0]), ObjectPrompt(2, 3, box=[5, 5, 40, 50]),
             ObjectPrompt(3, 6, box=[30, 20, 70, 90]), ObjectPrompt(2, 9, [[50, 50]], [1])]
    return Prompts(items, (SIDE, SIDE), T)


class _EagerStandIn:
    """What BackboneGraph returns per frame, computed eagerly; counts the frames it served."""

    def __init__(self, model, example):
        self.model, self.calls = model, 0
        self.shape = example.shape

    def __call__(self, pixels):
        assert pixels.shape == self.shape
        self.calls += 1
        out = self.model.get_image_features(pixels[None], return_dict=True)
        return {"vision_feats": list(out.fpn_hidden_states), "vision_pos_embeds": list(out.fpn_position_encoding)}


def test_graph_on_by_default_and_off_in_the_reference_profile():
    assert SpeedOptions().cuda_graphs and RunProfile().speed_options().cuda_graphs
    assert not BASELINE.cuda_graphs and not RunProfile(sam3_speed="reference").speed_options().cuda_graphs


def test_no_graph_on_the_cpu(bundle):
    assert graphs.capture_backbone(bundle.tracker, torch.zeros(3, 112, 112)) is None


def test_features_through_the_session_cache_give_identical_masks(bundle, frames, monkeypatch):
    made: list[_EagerStandIn] = []

    def capture(model, example):
        made.append(_EagerStandIn(model, example))
        return made[-1]

    eager = propagate(bundle, frames, _prompts(), "both")
    own_calls = []
    real = bundle.tracker.get_image_features
    monkeypatch.setattr(graphs, "capture_backbone", capture)
    monkeypatch.setattr(bundle.tracker, "get_image_features", lambda *a, **k: (own_calls.append(1), real(*a, **k))[1])
    graphed = propagate(bundle, frames, _prompts(), "both")
    assert len(made) == 1, "one capture per propagation"
    steps = (T - 3) + (9 + 1)  # forward from the first prompt, backward from the last
    assert made[0].calls == 3 + steps, "prompt frames 3, 6, 9 once each (two prompts share frame 3), then every step"
    assert len(own_calls) == made[0].calls, "the tracker never ran its own backbone: every call was the stand-in's"
    np.testing.assert_array_equal(graphed.packed, eager.packed)
    np.testing.assert_array_equal(graphed.scores, eager.scores)
    assert eager.present.all()


def test_graph_option_off_never_captures(bundle, frames, monkeypatch):
    monkeypatch.setattr(graphs, "capture_backbone", lambda *a: pytest.fail("captured with cuda_graphs off"))
    propagate(bundle, frames[:4], Prompts([ObjectPrompt(1, 0, [[40, 40]], [1])], (SIDE, SIDE), 4), "forward",
              speed=replace(SpeedOptions(), cuda_graphs=False))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_backbone_graph_equals_the_eager_backbone_on_cuda():
    b = tiny_sam3(image_size=112, seed=0)
    model = b.tracker.to("cuda")
    torch.manual_seed(1)
    a, c = torch.randn(3, 112, 112, device="cuda"), torch.randn(3, 112, 112, device="cuda")
    with torch.inference_mode():
        graph = graphs.BackboneGraph(model, a)
        for x in (a, c, a):
            got = graph(x)
            ref = model.get_image_features(x[None], return_dict=True)
            for g, r in zip(got["vision_feats"], ref.fpn_hidden_states):
                assert g.shape == r.shape and g.stride() == r.stride()
                torch.testing.assert_close(g, r, rtol=0, atol=0)
        first = graph(a)["vision_feats"][0]
        assert not torch.equal(first, graph(c)["vision_feats"][0]), "outputs are clones, not the graph's buffers"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_failed_capture_falls_back_to_eager_on_cuda(monkeypatch, caplog):
    class Broken:
        def __init__(self, *a):
            raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(graphs, "BackboneGraph", Broken)
    assert graphs.capture_backbone(object(), torch.zeros(3, 8, 8, device="cuda")) is None
    assert "not used" in caplog.text


class _T:
    """Just what GraphedDecoder reads of a tensor: shape, strides, dtype, device."""

    def __init__(self, *shape: int, cuda: bool = True):
        self.shape, self.dtype, self.is_cuda = shape, torch.bfloat16, cuda

    def stride(self) -> tuple:
        return (1,) * len(self.shape)


def _decode_args(m: int, n_ptr: int = 4, cuda: bool = True) -> tuple:
    return [_T(16, 1, 8, cuda=cuda)], [_T(16, 1, 8, cuda=cuda)], _T(m, 1, 64, cuda=cuda), _T(m, 1, 64, cuda=cuda), n_ptr


def test_decoder_graphs_capture_a_shape_on_its_third_use_and_keep_a_few(monkeypatch):
    eager, captured, replayed = [], [], []

    class Graph:
        def __init__(self, model, feats, pos, memory, memory_pos, n_ptr):
            captured.append((memory.shape[0], n_ptr))

        def __call__(self, feats, pos, memory, memory_pos):
            replayed.append(memory.shape[0])
            return "graph"

    monkeypatch.setattr(graphs, "DecodeGraph", Graph)
    monkeypatch.setattr(graphs, "decode_group", lambda model, f, p, m, mp, n: eager.append(m.shape[0]) or "eager")
    dec = graphs.GraphedDecoder(True, keep=2)
    for _ in range(2):  # the memory bank filling, in a forward and a backward pass: each shape once a pass
        assert [dec(None, *_decode_args(m)) for m in (10, 20)] == ["eager"] * 2 and not captured
    steady = [dec(None, *_decode_args(30)) for _ in range(5)]
    assert steady == ["eager"] * 2 + ["graph"] * 3 and captured == [(30, 4)] and replayed == [30, 30, 30]
    assert dec(None, *_decode_args(30, n_ptr=5)) == "eager", "the pointer count is part of the shape"
    dec(None, *_decode_args(10)), dec(None, *_decode_args(20))  # their third use: captured, the oldest goes
    assert list(k[0] for k in dec.graphs) == [4, 4] and len(dec.graphs) == 2 and len(captured) == 3
    assert dec(None, *_decode_args(30)) == "graph" and len(captured) == 4, "an evicted shape is captured again"
    assert dec(None, *_decode_args(30, cuda=False)) == "eager", "never on the CPU"
    dec.close()
    assert not dec.graphs


def test_a_failed_decoder_capture_turns_the_graphs_off(monkeypatch, caplog):
    class Broken:
        def __init__(self, *a):
            raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(graphs, "DecodeGraph", Broken)
    monkeypatch.setattr(graphs, "decode_group", lambda *a: "eager")
    dec = graphs.GraphedDecoder(True)
    assert [dec(None, *_decode_args(30)) for _ in range(4)] == ["eager"] * 4
    assert not dec.enabled and "decoder CUDA graph not used" in caplog.text
    assert caplog.text.count("not used") == 1, "logged once"
    off = graphs.GraphedDecoder(False)
    monkeypatch.setattr(graphs, "DecodeGraph", lambda *a: pytest.fail("captured while off"))
    assert [off(None, *_decode_args(30)) for _ in range(3)] == ["eager"] * 3


def test_propagate_runs_memory_attention_and_decoder_through_the_decoder(bundle, frames, monkeypatch):
    """The batched step hands its decode to the propagation's decoder (the graphs' seam): same masks."""
    from body4d_core.sam3 import tracker_step

    calls = []

    class Counting(graphs.GraphedDecoder):
        def __call__(self, *args):
            calls.append(args[3].shape)
            return tracker_step.decode_group(*args)

    eager = propagate(bundle, frames, _prompts(), "both")
    prop = sys.modules["body4d_core.sam3.propagate"]
    monkeypatch.setattr(prop, "GraphedDecoder", Counting)
    through = propagate(bundle, frames, _prompts(), "both")
    assert len(calls) >= T, "every tracked frame's decode went through the decoder"
    np.testing.assert_array_equal(through.packed, eager.packed)
    np.testing.assert_array_equal(through.scores, eager.scores)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_propagate_with_cuda_graphs_equals_without_on_cuda(frames, dtype, caplog):
    """The whole propagation (30 frames, both directions, 3 objects, prompts on two frames) on the GPU."""
    b = tiny_sam3(image_size=112, seed=0)
    b.tracker.to("cuda", dtype)
    b.dtype = dtype
    long = np.concatenate([frames, frames[::-1], frames[:6]])
    items = [ObjectPrompt(1, 3, [[48, 40], [10, 10]], [1, 0]), ObjectPrompt(2, 3, box=[5, 5, 40, 50]),
             ObjectPrompt(3, 20, box=[30, 20, 70, 90])]
    prompts = Prompts(items, (SIDE, SIDE), len(long))
    graphed = propagate(b, long, prompts, "both")
    plain = propagate(b, long, prompts, "both", speed=replace(SpeedOptions(), cuda_graphs=False))
    assert "not used" not in caplog.text, "both captures worked"
    np.testing.assert_array_equal(graphed.packed, plain.packed)
    np.testing.assert_array_equal(graphed.scores, plain.scores)


def test_compile_profile_choice_turns_on_the_compiled_backbone_only():
    from body4d_core.profile import FIELDS

    assert "compile" in FIELDS["sam3_speed"].choices
    comp = RunProfile(sam3_speed="compile").speed_options()
    assert comp.compile_backbone and comp == replace(SpeedOptions(), compile_backbone=True)
    assert not SpeedOptions().compile_backbone and not BASELINE.compile_backbone


def test_compiled_backbone_stands_in_for_the_propagation_and_is_put_back(bundle, frames, monkeypatch, tmp_path):
    """With compilation possible (patched: the CPU has no CUDA), the backbone is replaced by what
    compile_call returns for the propagation only, even when it stops with an error."""
    from body4d_core.errors import InterruptedError_ as Interrupted
    from body4d_core.runtime import CallbackHooks
    from body4d_core.sam3 import compiled as comp

    encoder = bundle.tracker.vision_encoder
    eager = encoder.backbone
    used, compiled_for = [], []

    class StandIn(torch.nn.Module):  # what torch.compile returns: a module calling the original
        def __init__(self, mod):
            super().__init__()
            self.mod = mod

        def forward(self, *a, **k):
            used.append(1)
            return self.mod(*a, **k)

    monkeypatch.setattr(comp, "_compilable", lambda device: True)
    monkeypatch.setattr(comp, "default_cache_dir", lambda: tmp_path / "compile-cache")
    inductor_dir = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    monkeypatch.setattr(comp, "compile_call", lambda fn, *a, **k: compiled_for.append(fn) or StandIn(fn))
    plain = propagate(bundle, frames, _prompts(), "both")
    monkeypatch.setattr(graphs, "capture_backbone", lambda *a: pytest.fail("no backbone graph under compile"))
    fast_compiled = propagate(bundle, frames, _prompts(), "both", speed=replace(SpeedOptions(), compile_backbone=True))
    assert compiled_for == [eager] and len(used) == 3 + (T - 3) + (9 + 1), "the stand-in ran every frame's backbone"
    assert encoder.backbone is eager, "the eager backbone is back after the propagation"
    np.testing.assert_array_equal(fast_compiled.packed, plain.packed)

    def stop(done, total):
        if done == 3:
            raise Interrupted("stop")

    with pytest.raises(Interrupted):
        propagate(bundle, frames, _prompts(), "both", hooks=CallbackHooks(on_progress=stop),
                  speed=replace(SpeedOptions(), compile_backbone=True))
    assert encoder.backbone is eager, "put back after an interruption too"
    assert (tmp_path / "compile-cache").is_dir(), "the compile cache folder was used"
    assert os.environ.get("TORCHINDUCTOR_CACHE_DIR") == inductor_dir, "and left afterwards"


def test_compile_option_is_off_on_the_cpu(bundle):
    from body4d_core.sam3.compiled import CompiledBackbone

    c = CompiledBackbone(bundle.tracker, True)
    assert not c.active
    with c:
        assert bundle.tracker.vision_encoder.backbone is not None and c.eager is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch.compile of the backbone runs on CUDA only")
def test_compiled_backbone_tracks_like_the_eager_one_on_cuda(frames):
    b = tiny_sam3(image_size=112, seed=0)
    b.tracker.to("cuda")
    eager = propagate(b, frames, _prompts(), "both")
    comp = propagate(b, frames, _prompts(), "both", speed=replace(SpeedOptions(), compile_backbone=True))
    assert comp.present.all() and comp.packed.shape == eager.packed.shape
    differ = np.unpackbits(comp.packed ^ eager.packed).sum() / max(np.unpackbits(eager.packed | comp.packed).sum(), 1)
    assert differ < 0.01, f"{differ:.4f} of the mask pixels differ"
    np.testing.assert_allclose(comp.scores, eager.scores, atol=1e-3)
