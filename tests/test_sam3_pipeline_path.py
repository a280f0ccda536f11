"""The pipeline's SAM-3 stage (stage_prompts + stage_tracks) against the bench's path and the plain reference."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch

from bench.bench_sam3 import run_ours, run_pipeline_path
from bench.clips import LoopedClip, box_prompts
from body4d_core.data import ObjectPrompt, Prompts
from body4d_core.runtime import CallbackHooks
from body4d_core.sam3 import pack_bits_torch, propagate
from body4d_core.sam3.detect import detect_boxes, _text_embeddings
from body4d_core.sam3.frames import as_frame_source
from body4d_core.sam3.propagate import BASELINE
from body4d_core.testing.sam3 import tiny_sam3

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def bundle():
    return tiny_sam3(image_size=112, seed=0, with_detector=True)


@pytest.mark.parametrize("n_obj", [1, 3])
def test_pipeline_stage_tracks_equal_the_bench_and_the_plain_reference(bundle, n_obj, tmp_path):
    clip = LoopedClip(6, 72, 130)  # width not a multiple of 8: padded bit packing
    parts, tracks = run_pipeline_path(bundle, clip, n_obj, CPU, overlay_dir=tmp_path)
    _, bench_packed = run_ours(bundle, clip, n_obj, CPU)
    plain = propagate(bundle, clip, box_prompts(clip, n_obj), "forward", speed=BASELINE)
    assert tracks.obj_ids.tolist() == list(range(1, n_obj + 1)) and tracks.present.all()
    np.testing.assert_array_equal(tracks.packed, plain.packed)
    np.testing.assert_array_equal(tracks.scores, plain.scores)
    np.testing.assert_array_equal(tracks.packed, bench_packed)
    assert parts["objects"] == n_obj
    assert parts["stage_s"] == pytest.approx(parts["prompts_s"] + parts["propagate_s"] + parts["release_s"])
    assert parts["fps"] == pytest.approx(clip.n / parts["propagate_s"]) and parts["overlay_s"] > 0
    assert (tmp_path / "mask_overlay.mp4").stat().st_size > 0


def test_pipeline_path_freezes_the_collector_for_the_stage_only(bundle, monkeypatch):
    """freeze_gc: the stage's full collection (pipeline._free) runs with the older objects frozen, and only then."""
    from body4d_core import pipeline as pl

    seen: list[int] = []
    real_free = pl._free
    monkeypatch.setattr(pl, "_free", lambda *objs: seen.append(gc.get_freeze_count()) or real_free(*objs))
    clip = LoopedClip(3, 64, 96)
    _, plain = run_pipeline_path(bundle, clip, 1, CPU)
    _, frozen = run_pipeline_path(bundle, clip, 1, CPU, freeze_gc=True)
    assert seen[0] == 0 and seen[1] > 0 and gc.get_freeze_count() == 0
    np.testing.assert_array_equal(frozen.packed, plain.packed)


def test_pipeline_detection_path_prompts_the_people_found(bundle):
    clip = LoopedClip(4, 72, 128)
    parts, tracks = run_pipeline_path(bundle, clip, 3, CPU, detect=True)
    found = parts["objects"]
    assert 1 <= found <= 3 and tracks.obj_ids.tolist() == list(range(1, found + 1)) and "overlay_s" not in parts
    assert parts["prompts_s"] > 0 and tracks.present.all()


def _totals(bundle, clip: LoopedClip, prompts: Prompts, direction: str) -> tuple[int, object]:
    seen: list[int] = []
    tracks = propagate(bundle, clip, prompts, direction, CallbackHooks(on_progress=lambda d, n: seen.append(n)))
    return seen[-1], tracks


def test_both_skips_the_backward_pass_that_would_only_revisit_the_prompt_frame(bundle):
    clip = LoopedClip(5, 64, 96)
    at0 = box_prompts(clip, 2)
    total, both = _totals(bundle, clip, at0, "both")
    assert total == 2 + clip.n  # two prompts, then frames 0..4 forward; no backward pass over frame 0 alone
    _, forward = _totals(bundle, clip, at0, "forward")
    np.testing.assert_array_equal(both.packed, forward.packed)
    np.testing.assert_array_equal(both.scores, forward.scores)
    assert _totals(bundle, clip, at0, "backward")[0] == 2  # the prompts alone
    later = Prompts([ObjectPrompt(1, 0, box=at0.items[0].box), ObjectPrompt(2, 2, box=at0.items[1].box)],
                    at0.image_size, clip.n)
    total, tracks = _totals(bundle, clip, later, "both")
    assert total == 2 + clip.n + 3  # frames 0..4 forward, then 2, 1, 0 backward
    assert tracks.present[1, :2].all(), "frames before the second prompt come from the backward pass"
    last = Prompts([ObjectPrompt(1, clip.n - 1, box=at0.items[0].box)], at0.image_size, clip.n)
    assert _totals(bundle, clip, last, "forward")[0] == 1  # a forward pass from the last frame visits nothing new
    total, back = _totals(bundle, clip, last, "both")
    assert total == 1 + clip.n and back.present.all()


def test_detection_boxes_equal_the_instance_segmentation_post_processing(bundle, monkeypatch):
    """Boxes-only post-processing gives the same boxes and scores, and never builds the full-size masks."""
    source = as_frame_source(np.stack([LoopedClip(3, 72, 128)[i] for i in range(3)]))
    proc = bundle.detector_processor
    calls = []
    original = type(proc).post_process_instance_segmentation
    monkeypatch.setattr(type(proc), "post_process_instance_segmentation",
                        lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    with torch.inference_mode():
        text = _text_embeddings(bundle, "person")
        boxes, scores = detect_boxes(bundle, source, 1, text, 0.0, 0.5)
        assert not calls, "the detection should not build full-size masks"
        monkeypatch.setattr(type(proc), "post_process_object_detection",
                            lambda self, out, threshold, target_sizes: self.post_process_instance_segmentation(
                                out, threshold=threshold, mask_threshold=0.5, target_sizes=target_sizes))
        ref_boxes, ref_scores = detect_boxes(bundle, source, 1, text, 0.0, 0.5)
    assert calls and len(boxes) >= 1
    np.testing.assert_array_equal(boxes, ref_boxes)
    np.testing.assert_array_equal(scores, ref_scores)


@pytest.mark.parametrize("width", [5, 16, 130])
def test_pack_bits_torch_batched_objects_match_numpy(width):
    m = np.random.default_rng(width).random((3, 2, 7, width)) > 0.3
    packed = pack_bits_torch(torch.from_numpy(m))
    assert packed.dtype == torch.uint8
    np.testing.assert_array_equal(packed.numpy(), np.packbits(m, axis=-1))
