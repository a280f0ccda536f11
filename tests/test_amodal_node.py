"""Amodal nodes over the ComfyUI stand-in, with tiny random networks saved in the official layouts."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch


T, H, W = 5, 32, 48


@pytest.fixture(scope="module")
def env(pack):
    import folder_paths

    importlib.import_module(f"{pack.__name__}.nodes.comfy_glue").register_model_folders()
    syn = importlib.import_module(f"{pack.__name__}.body4d_core.testing.amodal")
    parts = syn.build_vas_parts("tiny", seed=1)
    vas = folder_paths.get_folder_paths("diffusion_vas")[0]
    syn.save_vas_folder(parts, f"{vas}/diffusion-vas-amodal-segmentation")
    syn.save_vas_folder(parts, f"{vas}/diffusion-vas-content-completion")
    model, prep = syn.build_depth_model("tiny", seed=2)
    syn.save_depth_folder(model, prep, f"{folder_paths.get_folder_paths('depth_anything')[0]}/Depth-Anything-V2-Large-hf")
    mod = importlib.import_module(f"{pack.__name__}.nodes.amodal")
    data = importlib.import_module(f"{pack.__name__}.body4d_core.data")
    errors = importlib.import_module(f"{pack.__name__}.body4d_core.errors")
    handle = mod.LoadAmodal.execute(amodal_checkpoint="diffusion-vas-amodal-segmentation",
                                    completion_checkpoint="diffusion-vas-content-completion",
                                    depth_checkpoint="Depth-Anything-V2-Large-hf").args[0]
    return mod, data, errors, handle, vas


def clip(data):
    gt = np.zeros((H, W), bool)
    gt[5:27, 19:29] = True
    vis = np.stack([gt] * T)
    frames = torch.rand(T, H, W, 3, generator=torch.Generator().manual_seed(0))
    return frames, data.Tracks.from_masks([2], vis[None])


def test_schema_ids_and_load(env):
    mod, _, _, handle, _ = env
    assert [n.GET_SCHEMA().node_id for n in mod.NODES] == ["SAMBody4D_LoadAmodal", "SAMBody4D_AmodalComplete"]
    assert handle.dtype == torch.float32
    models = handle.info["models"]
    assert models.content is not None and len(handle.model) == 7
    opts = mod.LoadAmodal.GET_SCHEMA().inputs[0].kwargs["options"]
    assert "diffusion-vas-amodal-segmentation" in opts


def test_amodal_complete_outputs(env):
    mod, data, _, handle, _ = env
    frames, tracks = clip(data)
    out = mod.AmodalComplete.execute(frames=frames, amodal_model=handle, tracks=tracks, steps=1,
                                     detection_resolution="16x24", completion_resolution="32x48").args
    amodal, mask, preview = out
    assert isinstance(amodal, data.Amodal) and amodal.obj_ids.tolist() == [2]
    assert amodal.occluded.shape == (1, T)
    assert tuple(mask.shape) == (T, H, W) and tuple(preview.shape) == (T, H, W, 3)
    # unoccluded frames pass through the preview unchanged (up to uint8 rounding)
    for t in np.flatnonzero(~amodal.occluded[0]):
        torch.testing.assert_close(preview[t].float(), frames[t], atol=1 / 255 + 1e-6, rtol=0)


def test_bad_inputs(env):
    mod, data, errors, handle, vas = env
    frames, tracks = clip(data)
    with pytest.raises(errors.InputError, match="frame counts do not match"):
        mod.AmodalComplete.execute(frames=frames[:3], amodal_model=handle, tracks=tracks, steps=1,
                                   detection_resolution="16x24", completion_resolution="32x48")
    with pytest.raises(errors.InputError, match="connect tracks"):
        mod.AmodalComplete.execute(frames=frames, amodal_model=handle)
    with pytest.raises(errors.InputError, match="256x512"):
        mod.AmodalComplete.execute(frames=frames, amodal_model=handle, tracks=tracks, detection_resolution="big")
    with pytest.raises(errors.InputError, match="multiples of 8"):
        mod.AmodalComplete.execute(frames=frames, amodal_model=handle, tracks=tracks, detection_resolution="20x30")
    import os
    os.makedirs(f"{vas}/partial", exist_ok=True)
    with open(f"{vas}/partial/model_index.json", "w") as f:
        f.write("{}")
    with pytest.raises(errors.MissingWeightsError, match=r"missing unet/config\.json.*python -m body4d_core setup"):
        mod.LoadAmodal.execute(amodal_checkpoint="partial", completion_checkpoint="diffusion-vas-content-completion",
                               depth_checkpoint="Depth-Anything-V2-Large-hf")
    with pytest.raises(errors.InputError, match="not a checkpoint folder name"):
        mod.LoadAmodal.execute(amodal_checkpoint="../x", completion_checkpoint="diffusion-vas-content-completion",
                               depth_checkpoint="Depth-Anything-V2-Large-hf")
