"""SAM-3's backbone CUDA graph: features reach the tracker through its session cache, masks unchanged.

On the CPU no graph is captured, so a stand-in "graph" (the eager backbone, counted) is patched
in: it proves the hand-off (cache keys, several prompts on one frame, both directions, the
tracker's own backbone never running) gives the same masks. The capture itself is checked on CUDA.
"""

from __future__ import annotations

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
    assert SpeedOptions().graph_backbone and RunProfile().speed_options().graph_backbone
    assert not BASELINE.graph_backbone and not RunProfile(sam3_speed="reference").speed_options().graph_backbone


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
    monkeypatch.setattr(graphs, "capture_backbone", lambda *a: pytest.fail("captured with graph_backbone off"))
    propagate(bundle, frames[:4], Prompts([ObjectPrompt(1, 0, [[40, 40]], [1])], (SIDE, SIDE), 4), "forward",
              speed=replace(SpeedOptions(), graph_backbone=False))


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
