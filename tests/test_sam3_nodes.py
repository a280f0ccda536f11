"""SAM-3 nodes over the ComfyUI stand-in, with a tiny random SAM-3 saved in the official layout."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from .media import DANCER, need

T, SIDE = 6, 64


@pytest.fixture(scope="module")
def env(pack):
    import folder_paths

    importlib.import_module(f"{pack.__name__}.nodes.comfy_glue").register_model_folders()
    loading = importlib.import_module(f"{pack.__name__}.body4d_core.testing.sam3")
    root = folder_paths.get_folder_paths("sam3")[0]
    loading.save_tiny_checkpoint(f"{root}/tiny-test")
    mod = importlib.import_module(f"{pack.__name__}.nodes.sam3")
    data = importlib.import_module(f"{pack.__name__}.body4d_core.data")
    errors = importlib.import_module(f"{pack.__name__}.body4d_core.errors")
    video = importlib.import_module(f"{pack.__name__}.body4d_core.video")
    frames, _ = video.load_video_tensor(need(DANCER), video.LoadOptions(frame_load_cap=T, max_side=SIDE))
    handle = mod.LoadSAM3.execute(checkpoint="tiny-test", precision="auto", people_detector=True).args[0]
    return mod, data, errors, frames, handle, root


def test_load_from_the_official_layout(env):
    mod, _, _, _, handle, _ = env
    bundle = handle.model
    assert handle.dtype == torch.float32 and bundle.detector is not None
    assert bundle.detector.vision_encoder.backbone is bundle.tracker.vision_encoder.backbone
    assert "tiny-test" in mod.LoadSAM3.GET_SCHEMA().inputs[0].kwargs["options"]


def test_missing_or_partial_weights(env, tmp_path):
    mod, _, errors, _, _, root = env
    import os

    os.makedirs(f"{root}/partial", exist_ok=True)
    with open(f"{root}/partial/config.json", "w") as f:
        f.write("{}")
    with pytest.raises(errors.MissingWeightsError, match=r"missing model\.safetensors.*python -m body4d_core setup"):
        mod.LoadSAM3.execute(checkpoint="partial")
    with pytest.raises(errors.InputError, match="not a checkpoint folder name"):
        mod.LoadSAM3.execute(checkpoint="../escape")


def test_detect_then_propagate_nodes(env):
    mod, data, _, frames, handle, _ = env
    prompts = mod.DetectPeople.execute(frames, handle, frame_index=3, score_threshold=0.0, max_people=2,
                                       nms_iou=1.0).args[0]
    assert prompts.obj_ids == [1, 2] and prompts.frames == [3]
    tracks, obj_masks, union, preview = mod.Propagate.execute(frames, handle, prompts, "both").args
    assert tracks.obj_ids.tolist() == [1, 2] and tracks.num_frames == T
    assert obj_masks.shape == (2 * T, SIDE, SIDE) and union.shape == (T, SIDE, SIDE)
    assert preview.shape == (T, SIDE, SIDE, 3) and 0 <= float(preview.min()) and float(preview.max()) <= 1
    np.testing.assert_array_equal(obj_masks[T:].numpy() > 0, tracks.masks_of(2))
    np.testing.assert_array_equal(union.numpy() > 0, tracks.union())
    tinted = tracks.union()
    assert not torch.allclose(preview[torch.from_numpy(tinted)], frames[torch.from_numpy(tinted)])
    assert torch.allclose(preview[torch.from_numpy(~tinted)], frames[torch.from_numpy(~tinted)], atol=1e-6)

    small = mod.Propagate.execute(frames, handle, prompts, "forward", object_ids="2", image_outputs=False).args
    assert small[0].present[:, :3].sum() == 0 and small[1].shape == (1, SIDE, SIDE)

    core = mod.TracksToCoreTrack.execute(tracks).args[0]
    assert core["packed_masks"].shape == (T, 2, SIDE, SIDE // 8)
    back = mod.CoreTrackToTracks.execute(core).args[0]
    np.testing.assert_array_equal(back.packed, tracks.packed)

    one = mod.TracksToMask.execute(tracks, "2", union=False).args[0]
    both = mod.TracksToMask.execute(tracks, "1,2", union=True).args[0]
    np.testing.assert_array_equal(one.numpy() > 0, tracks.masks_of(2))
    np.testing.assert_array_equal(both.numpy() > 0, tracks.union())


def test_node_errors(env):
    mod, data, errors, frames, handle, _ = env
    tracks = data.Tracks.from_masks([1, 3], np.zeros((2, 2, 8, 8), bool))
    with pytest.raises(errors.InputError, match=r"object id\(s\) \[5\] are not in the tracks \(ids: \[1, 3\]\)"):
        mod.TracksToMask.execute(tracks, "1, 5")
    with pytest.raises(errors.InputError, match="comma-separated integers"):
        mod.TracksToMask.execute(tracks, "one")
    with pytest.raises(errors.InputError, match=r"IMAGE batch"):
        mod.Propagate.execute(frames[0], handle, None)
    prompts = data.Prompts([data.ObjectPrompt(1, 0, [[5, 5]], [1])], (SIDE, SIDE), T + 1)
    with pytest.raises(errors.InputError, match="frame counts do not match"):
        mod.Propagate.execute(frames, handle, prompts)
    with pytest.raises(errors.InputError, match="nothing was tracked"):
        mod.CoreTrackToTracks.execute({"packed_masks": None, "orig_size": (8, 8), "n_frames": 2, "scores": []})


def test_every_sam3_node_is_prefixed(env):
    mod = env[0]
    ids = [n.GET_SCHEMA().node_id for n in mod.NODES]
    assert ids == ["SAMBody4D_LoadSAM3", "SAMBody4D_DetectPeople", "SAMBody4D_Propagate", "SAMBody4D_TracksToMask",
                   "SAMBody4D_TracksToCoreTrack", "SAMBody4D_CoreTrackToTracks"]


def test_cancel_stops_propagation_and_a_rerun_works(env):
    mod, data, _, frames, handle, _ = env
    import comfy.model_management as mm

    prompts = data.Prompts([data.ObjectPrompt(1, 2, [[30, 30]], [1])], (SIDE, SIDE), T)
    mm.interrupt_current_processing(True)
    with pytest.raises(mm.InterruptProcessingException):
        mod.Propagate.execute(frames, handle, prompts, "both")
    tracks = mod.Propagate.execute(frames, handle, prompts, "forward", image_outputs=False).args[0]
    assert tracks.present[0, 2:].all() and not tracks.present[0, :2].any()
