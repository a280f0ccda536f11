"""SAM-3 propagation on real frames with a tiny random tracker built from config (real code path)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from body4d_core.data import ObjectPrompt, Prompts, Tracks, unpack_masks
from body4d_core.errors import InputError, MemoryBudgetError
from body4d_core.runtime import CallbackHooks
from body4d_core.sam3 import pack_bits_torch, propagate
from body4d_core.testing.sam3 import tiny_sam3
from body4d_core.sam3.propagate import BASELINE, SpeedOptions
from body4d_core.video import LoadOptions, load_video
from tests.media import DANCER, need

T, SIDE, MID = 18, 96, 9
T_LONG = 24  # longer than the tracker's reach (17 frames kept), so memory pruning is exercised


@pytest.fixture(scope="module")
def bundle():
    return tiny_sam3(image_size=112, seed=0)


@pytest.fixture(scope="module")
def long_frames() -> np.ndarray:
    """24 real frames of the dancer clip, downscaled to 96x96 (uint8 [T, H, W, 3])."""
    out, clip = load_video(need(DANCER), LoadOptions(frame_load_cap=T_LONG, max_side=SIDE))
    assert out.shape == (T_LONG, SIDE, SIDE, 3) and clip.num_frames == T_LONG
    return out


@pytest.fixture(scope="module")
def frames(long_frames) -> np.ndarray:
    return long_frames[:T]


def two_objects(frame: int = MID, order: int = 1) -> Prompts:
    items = [
        ObjectPrompt(1, frame, [[48, 40], [10, 10]], [1, 0]),
        ObjectPrompt(3, frame, box=[30, 20, 70, 90]),
    ]
    return Prompts(items[::order], (SIDE, SIDE), T)


@pytest.fixture(scope="module")
def both(bundle, frames) -> Tracks:
    return propagate(bundle, frames, two_objects(), "both")


def test_both_directions_fill_every_frame_with_stable_ids(both):
    assert both.obj_ids.tolist() == [1, 3]
    assert both.packed.shape == (2, T, SIDE, SIDE // 8) and both.packed.dtype == np.uint8
    assert both.present.all(), "with both directions every frame of every object is tracked"
    assert both.scores.shape == (2, T) and ((both.scores > 0.5) & (both.scores <= 1)).all()
    assert not np.array_equal(both.masks_of(1), both.masks_of(3)), "two objects, two different masklets"


def test_prompt_order_does_not_change_ids_or_masks(bundle, frames, both):
    again = propagate(bundle, torch.from_numpy(frames).float() / 255.0, two_objects(order=-1), "both")
    assert again.obj_ids.tolist() == [1, 3]
    np.testing.assert_array_equal(again.packed, both.packed)  # float IMAGE input == uint8 input
    np.testing.assert_allclose(again.scores, both.scores, atol=1e-6)


def test_forward_and_backward_leave_the_other_side_empty(bundle, frames, both):
    fwd = propagate(bundle, frames, two_objects(), "forward")
    bwd = propagate(bundle, frames, two_objects(), "backward")
    assert not fwd.present[:, :MID].any() and fwd.present[:, MID:].all()
    assert not bwd.present[:, MID + 1:].any() and bwd.present[:, :MID + 1].all()
    assert (fwd.scores[:, :MID] == 0).all() and (bwd.scores[:, MID + 1:] == 0).all()
    # each side of "both" is exactly the one-direction pass
    np.testing.assert_array_equal(both.packed[:, MID:], fwd.packed[:, MID:])
    np.testing.assert_array_equal(both.packed[:, :MID + 1], bwd.packed[:, :MID + 1])


def _reference(bundle, frames: np.ndarray, prompt: ObjectPrompt, reverse: bool) -> dict[int, np.ndarray]:
    """transformers' own whole-video session and propagate_in_video_iterator, for comparison."""
    proc, model = bundle.processor, bundle.tracker
    session = proc.init_video_session(video=list(frames), inference_device="cpu", dtype=torch.float32)
    proc.add_inputs_to_inference_session(session, frame_idx=prompt.frame, obj_ids=[prompt.obj_id],
                                         input_points=[[prompt.points.tolist()]],
                                         input_labels=[[prompt.labels.tolist()]])
    out = {}
    with torch.inference_mode():
        model(inference_session=session, frame_idx=prompt.frame)
        for o in model.propagate_in_video_iterator(session, start_frame_idx=prompt.frame, reverse=reverse):
            m = proc.post_process_masks([o.pred_masks], original_sizes=[frames.shape[1:3]], binarize=True)[0]
            out[o.frame_idx] = m[0, 0].numpy()
    return out


@pytest.mark.parametrize("reverse", [False, True])
def test_streamed_pruned_tracking_matches_transformers_reference(bundle, long_frames, reverse):
    start = T_LONG - 2 if reverse else 1  # 23 tracked frames: older memories get pruned on the way
    prompt = ObjectPrompt(2, start, [[48, 40]], [1])
    ours = propagate(bundle, long_frames, Prompts([prompt], (SIDE, SIDE), T_LONG), "backward" if reverse else "forward")
    ref = _reference(bundle, long_frames, prompt, reverse)
    assert sorted(ref) == (list(range(0, start + 1)) if reverse else list(range(start, T_LONG)))
    for t, mask in ref.items():
        np.testing.assert_array_equal(ours.masks_of(2, slice(t, t + 1))[0], mask, err_msg=f"frame {t}")
    assert ours.present.sum() == len(ref)


def test_speed_options_give_identical_tracks(bundle, frames):
    """Batched objects (in two memory-length groups), prefetch and deferred copies change nothing."""
    items = [ObjectPrompt(1, 3, [[48, 40], [10, 10]], [1, 0]), ObjectPrompt(2, 3, box=[5, 5, 40, 50]),
             ObjectPrompt(3, 6, box=[30, 20, 70, 90]), ObjectPrompt(2, 9, [[50, 50]], [1])]
    prompts = Prompts(items, (SIDE, SIDE), 12)
    fast = propagate(bundle, frames[:12], prompts, "both", speed=SpeedOptions())
    plain = propagate(bundle, frames[:12], prompts, "both", speed=BASELINE)
    assert fast.obj_ids.tolist() == plain.obj_ids.tolist() == [1, 2, 3]
    assert plain.present.all() and len({fast.masks_of(k).tobytes() for k in (1, 2, 3)}) == 3
    np.testing.assert_array_equal(fast.packed, plain.packed)
    np.testing.assert_array_equal(fast.scores, plain.scores)


@pytest.mark.parametrize("width", [1, 7, 8, 13, 96])
def test_pack_bits_torch_matches_numpy(width):
    rng = np.random.default_rng(width)
    m = rng.random((3, 5, width)) > 0.5
    np.testing.assert_array_equal(pack_bits_torch(torch.from_numpy(m)).numpy(), np.packbits(m, axis=-1))
    np.testing.assert_array_equal(unpack_masks(np.packbits(m, axis=-1), width), m)


def test_progress_and_interrupt(bundle, frames):
    seen = []
    propagate(bundle, frames[:6], Prompts([ObjectPrompt(1, 2, [[40, 40]], [1])], (SIDE, SIDE), 6), "both",
              CallbackHooks(on_progress=lambda d, n: seen.append((d, n))))
    assert seen[-1] == (1 + 4 + 3, 1 + 4 + 3) and [d for d, _ in seen] == list(range(1, 9))

    class Stop(Exception):
        pass

    calls = []

    def check():
        calls.append(1)
        if len(calls) == 3:
            raise Stop

    with pytest.raises(Stop):
        propagate(bundle, frames[:6], Prompts([ObjectPrompt(1, 2, [[40, 40]], [1])], (SIDE, SIDE), 6), "forward",
                  CallbackHooks(on_check=check))
    assert len(calls) == 3


def _p(items, size=(SIDE, SIDE), n=T):
    return Prompts(items, size, n)


@pytest.mark.parametrize("make, message", [
    (lambda: _p([ObjectPrompt(1, 2, [[120, 10]], [1])]), "outside the 96x96 frame"),
    (lambda: _p([ObjectPrompt(1, 2, [[-1, 10]], [1])]), "outside the 96x96 frame"),
    (lambda: _p([ObjectPrompt(1, T, [[10, 10]], [1])]), "past the clip"),
    (lambda: _p([]), "no prompt given"),
    (lambda: _p([ObjectPrompt(1, 2)]), "neither points nor a box"),
    (lambda: _p([ObjectPrompt(0, 2, [[10, 10]], [1])]), "object ids start at 1"),
    (lambda: _p([ObjectPrompt(1, 2, box=[50, 10, 20, 30])]), "empty or outside"),
])
def test_bad_prompts_are_refused_with_one_clear_error(make, message):
    with pytest.raises(InputError, match=message):
        make()


def test_bad_propagate_inputs(bundle, frames):
    good = _p([ObjectPrompt(1, 2, [[10, 10]], [1])])
    with pytest.raises(InputError, match="direction must be one of"):
        propagate(bundle, frames, good, "sideways")
    with pytest.raises(InputError, match=r"placed on a 96x96 image but the frames are 48x96"):
        propagate(bundle, frames[:, :, :48], good)
    with pytest.raises(InputError, match="frame counts do not match"):
        propagate(bundle, frames[:10], good)
    with pytest.raises(InputError, match="zero frames"):
        propagate(bundle, frames[:0], good)
    with pytest.raises(InputError, match=r"\[T, H, W, 3\]"):
        propagate(bundle, frames[0], good)
    with pytest.raises(InputError, match="must be a Prompts"):
        propagate(bundle, frames, {"1": [[10, 10]]})
    two_boxes = _p([ObjectPrompt(1, 2, box=[1, 1, 9, 9]), ObjectPrompt(1, 2, box=[2, 2, 8, 8])])
    with pytest.raises(InputError, match="2 boxes on frame 2"):
        propagate(bundle, frames, two_boxes)


def test_refuses_tracks_that_would_not_fit_in_ram(bundle, frames, monkeypatch):
    import body4d_core.video as video

    monkeypatch.setattr(video, "available_ram", lambda: 1_000)
    with pytest.raises(MemoryBudgetError, match=r"2 object\(s\) x 18 frames at 96x96 need .* GiB RAM is free"):
        propagate(bundle, frames, two_objects(), "both")
