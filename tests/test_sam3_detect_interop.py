"""SAM-3 people detection (tiny random detector, real code path) and core SAM3_TRACK_DATA converters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from body4d_core.data import Tracks
from body4d_core.errors import Body4DError, InputError
from body4d_core.sam3 import propagate
from body4d_core.testing.sam3 import tiny_sam3
from body4d_core.interop.sam3_track_data import tracks_from_core, tracks_to_core
from body4d_core.sam3.detect import SCAN, detect_boxes, detect_people, _text_embeddings
from body4d_core.sam3.frames import as_frame_source
from body4d_core.video import LoadOptions, load_video
from tests.media import DANCER, need

T, SIDE = 6, 96


@pytest.fixture(scope="module")
def bundle():
    return tiny_sam3(image_size=112, seed=0, with_detector=True)


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    out, _ = load_video(need(DANCER), LoadOptions(frame_load_cap=T, max_side=SIDE))
    return out


def test_detector_shares_the_tracker_backbone(bundle):
    assert bundle.detector.vision_encoder.backbone is bundle.tracker.vision_encoder.backbone
    n_unique = sum(p.numel() for p in bundle.parameters())
    n_sum = sum(p.numel() for p in bundle.tracker.parameters()) + sum(p.numel() for p in bundle.detector.parameters())
    assert n_unique < n_sum


def test_detect_people_gives_box_prompts_with_ids_1_to_n(bundle, frames):
    prompts = detect_people(bundle, frames, frame_index=2, score_threshold=0.0, max_people=3, nms_iou=1.0)
    assert prompts.obj_ids == [1, 2, 3] and prompts.frames == [2]
    assert prompts.image_size == (SIDE, SIDE) and prompts.num_frames == T
    boxes = np.stack([it.box for it in prompts.items])
    assert (boxes[:, 0] <= boxes[:, 2]).all() and boxes.min() >= 0 and boxes.max() <= SIDE
    assert np.all(np.diff(boxes[:, 0]) >= 0), "ids run left to right"
    # NMS merges the near-identical random boxes; the prompts drive propagation directly
    one = detect_people(bundle, frames, frame_index=2, score_threshold=0.0, max_people=3, nms_iou=0.5)
    assert len(one.items) < 3
    tracks = propagate(bundle, frames, one, "both")
    assert tracks.obj_ids.tolist() == one.obj_ids and tracks.present.all()


def test_scan_uses_the_first_frame_with_a_person(bundle, frames):
    source = as_frame_source(frames)
    with torch.inference_mode():
        state = _text_embeddings(bundle, "person")
        best = [detect_boxes(bundle, source, f, state, 0.0, 1.0)[1].max() for f in range(T)]
    thr = float(max(best)) - 1e-6
    prompts = detect_people(bundle, frames, SCAN, score_threshold=thr, max_people=5)
    assert prompts.frames == [int(np.argmax(np.asarray(best) >= thr))]


def test_detection_errors(bundle, frames):
    with pytest.raises(InputError, match="no person found on any of the 6 scanned frames"):
        detect_people(bundle, frames, SCAN, score_threshold=1.0)
    with pytest.raises(InputError, match="past the clip"):
        detect_people(bundle, frames, frame_index=T)
    with pytest.raises(InputError, match="max_people"):
        detect_people(bundle, frames, max_people=0)
    with pytest.raises(InputError, match="score_threshold"):
        detect_people(bundle, frames, score_threshold=1.5)
    with pytest.raises(Body4DError, match="without its text detector"):
        detect_people(tiny_sam3(with_detector=False), frames)


def _core_unpack(packed: torch.Tensor) -> torch.Tensor:
    """Core's documented bit layout, written independently: LSB-first bits along W."""
    bits = np.unpackbits(packed.numpy(), axis=-1, bitorder="little")
    return torch.from_numpy(bits.astype(bool))


def _tracks(width: int, seed: int = 0) -> tuple[Tracks, np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = np.zeros((2, 5, 40, width), bool)
    masks[0, :, 5:30, 3:width // 2] = True
    masks[1, :, 10:35, width // 3:width - 2] = rng.random((5, 25, width - 2 - width // 3)) > 0.3
    masks[1, 2] = False  # absent on one frame
    return Tracks.from_masks([4, 9], masks, rng.random((2, 5)).astype(np.float32)), masks


def test_core_round_trip_is_exact(frames):
    tracks, masks = _tracks(96)
    core = tracks_to_core(tracks)
    assert core["packed_masks"].shape == (5, 2, 40, 12) and core["packed_masks"].dtype == torch.uint8
    assert core["orig_size"] == (40, 96) and core["n_frames"] == 5 and len(core["scores"]) == 2
    np.testing.assert_array_equal(_core_unpack(core["packed_masks"]).numpy(), masks.transpose(1, 0, 2, 3))
    back = tracks_from_core(core)
    assert back.obj_ids.tolist() == [4, 9]
    np.testing.assert_array_equal(back.packed, tracks.packed)
    np.testing.assert_array_equal(back.scores, tracks.scores)


def test_core_round_trip_odd_width_and_plain_core_dict():
    tracks, masks = _tracks(350)
    core = tracks_to_core(tracks)
    assert core["packed_masks"].shape == (5, 2, 40, 44)  # width padded to 352 for core
    back = tracks_from_core(core)
    got = np.stack([back.masks_of(i) for i in (4, 9)])
    iou = (got & masks).sum() / (got | masks).sum()
    assert iou > 0.99
    plain = {k: core[k] for k in ("packed_masks", "orig_size", "n_frames", "scores")}  # as core makes it
    from_core = tracks_from_core(plain)
    assert from_core.obj_ids.tolist() == [1, 2]
    assert from_core.scores[1, 2] == 0 and np.allclose(from_core.scores[0], core["scores"][0])


def test_core_low_res_masks_are_resized_to_orig_size():
    low = np.zeros((3, 1, 8, 16), bool)
    low[:, 0, 2:6, 4:12] = True
    data = {"packed_masks": torch.from_numpy(np.packbits(low, axis=-1, bitorder="little")),
            "orig_size": (32, 64), "n_frames": 3, "scores": [0.8]}
    tr = tracks_from_core(data)
    m = tr.masks_of(1)
    assert m.shape == (3, 32, 64) and m[:, 9:23, 17:47].all() and not m[:, :7].any() and not m[:, :, :15].any()
    assert abs(int(m[0].sum()) - 16 * 32) < 40  # bilinear like core: same area up to the corners


@pytest.mark.parametrize("data, message", [
    ({"packed_masks": None, "orig_size": (4, 8), "n_frames": 3, "scores": []}, "nothing was tracked"),
    ({"foo": 1}, "expected SAM3 track data"),
    ({"packed_masks": torch.zeros(3, 4, 8), "orig_size": (4, 8)}, "uint8"),
])
def test_bad_core_track_data(data, message):
    with pytest.raises(InputError, match=message):
        tracks_from_core(data)


def test_unknown_object_id_is_refused():
    tracks, _ = _tracks(96)
    with pytest.raises(InputError, match=r"object id 5 is not in the tracks \(ids: \[4, 9\]\)"):
        tracks.masks_of(5)
