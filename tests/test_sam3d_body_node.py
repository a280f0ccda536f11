"""SAM-3D-Body nodes over the ComfyUI stand-in: loading from the models folder, batch estimation, core tracks."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from body4d_core.data import BodyFlag
from body4d_core.sam3d_body import tiny_config
from body4d_core.testing.body import random_model, save_official_layout



@pytest.fixture()
def core(pack):
    """The pack's own body4d_core modules (the node code sees these classes)."""
    data = importlib.import_module(f"{pack.__name__}.body4d_core.data")
    errors = importlib.import_module(f"{pack.__name__}.body4d_core.errors")
    return data, errors


@pytest.fixture()
def body(pack):
    import folder_paths

    importlib.import_module(f"{pack.__name__}.nodes.comfy_glue").register_model_folders()
    mod = importlib.import_module(f"{pack.__name__}.nodes.body")
    root = folder_paths.get_folder_paths("sam3d_body")[0]
    save_official_layout(random_model(tiny_config(), seed=5), f"{root}/tiny-test")
    return mod


def _clip(data, t: int = 3, h: int = 60, w: int = 80):
    frames = torch.rand(t, h, w, 3)
    masks = np.zeros((2, t, h, w), bool)
    masks[0, :, 10:50, 20:40] = True
    masks[1, 1:, 5:30, 50:75] = True  # object 2 absent on frame 0
    return frames, data.Tracks.from_masks([4, 9], masks)


def test_load_and_batch(body, core):
    handle = body.LoadSAM3DBody.execute(checkpoint="tiny-test", precision="auto").args[0]
    assert handle.dtype == torch.float32 and handle.info["name"] == "sam3d_body"
    frames, tracks = _clip(core[0])
    out = body.BodyBatch.execute(handle, frames, tracks=tracks, mode="body", batch_size=2)
    bodies = out.args[0]
    assert bodies.obj_ids.tolist() == [4, 9]
    assert bodies.flags[0].tolist() == [BodyFlag.VISIBLE] * 3
    assert bodies.flags[1].tolist() == [BodyFlag.MISSING, BodyFlag.VISIBLE, BodyFlag.VISIBLE]
    assert bodies.vertices.shape == (2, 3, 40, 3) and bodies.faces.shape == (24, 3)
    assert np.isfinite(bodies.params["cam_t"][bodies.present]).all()
    pose = out.args[1]  # core MHR_POSE_DATA: slots in object-id order on every frame
    assert len(pose["frames"]) == 3 and pose["image_size"] == (60, 80)
    assert [p["obj_id"] for p in pose["frames"][1]] == [4, 9]
    np.testing.assert_array_equal(pose["frames"][2][1]["pred_cam_t"], bodies.params["cam_t"][1, 2])
    # core's shaders read the rest-pose colour fields from the rig (the tiny native rig exposes its skinning,
    # so the hand mask is there too)
    assert pose["canonical_colors"]["positions"].shape == (40, 3) and pose["hand_vert_mask"].shape == (40,)
    # compile "auto" may compile a large job, which only happens on CUDA: on the CPU it stays eager
    assert handle.info["compile"] == "auto" and handle.model._compiled_for == ("", 0)
    assert not handle.model.backbone.encoder.compiled
    # bf16 decoder matmuls are a GPU-only switch: on the CPU the result is unchanged
    again = body.BodyBatch.execute(handle, frames, tracks=tracks, mode="body", batch_size=2,
                                   decoder_precision="bf16").args[0]
    np.testing.assert_array_equal(again.params["cam_t"], bodies.params["cam_t"])
    off = body.LoadSAM3DBody.execute(checkpoint="tiny-test", compile="off").args[0]
    assert off.info["compile"] == ""


def test_amodal_frames_use_completion(body, core):
    handle = body.LoadSAM3DBody.execute(checkpoint="tiny-test").args[0]
    frames, tracks = _clip(core[0])
    occ = np.zeros((2, 3), bool)
    occ[0, 2] = True
    amodal_masks = np.zeros((2, 3, 60, 80), bool)
    amodal_masks[0, 2, 5:58, 15:45] = True
    completed = np.full((1, 60, 80, 3), 200, np.uint8)
    am = core[0].Amodal(np.array([4, 9]), occ, core[0].pack_masks(amodal_masks), (60, 80),
                completed_index=np.array([[0, 2]]), completed_rgb=completed)
    plain = body.BodyBatch.execute(handle, frames, tracks=tracks, mode="body").args[0]
    withc = body.BodyBatch.execute(handle, frames, tracks=tracks, amodal=am, mode="body").args[0]
    assert withc.flags[0, 2] == BodyFlag.OCCLUDED and withc.flags[0, 1] == BodyFlag.VISIBLE
    np.testing.assert_allclose(withc.params["body_pose"][0, 1], plain.params["body_pose"][0, 1], atol=1e-5)
    assert not np.allclose(withc.params["cam_t"][0, 2], plain.params["cam_t"][0, 2])


def test_core_track_data_and_camera(body, core):
    handle = body.LoadSAM3DBody.execute(checkpoint="tiny-test").args[0]
    frames, tracks = _clip(core[0], t=2, h=64, w=64)
    # core layout: [T, K, h, w/8] little-endian bits at the tracker's resolution (32 x 32 here)
    small = np.zeros((2, 1, 32, 32), bool)
    small[:, 0, 5:25, 10:20] = True
    bits = torch.from_numpy(small).view(2, 1, 32, 4, 8).to(torch.uint8)
    packed = (bits << torch.arange(8)).sum(-1).to(torch.uint8)
    track_data = {"packed_masks": packed, "orig_size": (64, 64), "n_frames": 2, "scores": [0.9]}
    cam = core[0].Camera.from_focal(90.0, (64, 64), 1, "manual")
    bodies = body.BodyBatch.execute(handle, frames, sam3_track_data=track_data, camera=cam, mode="full",
                                    vertices=False).args[0]
    assert bodies.obj_ids.tolist() == [1] and bodies.present.all() and bodies.vertices is None
    box = bodies.extras["model_params"].shape
    assert box == (1, 2, 204)
    np.testing.assert_allclose(bodies.params["cam_t"][0, 0], bodies.params["cam_t"][0, 1], rtol=2e-2)  # same box both frames


def test_node_errors(body, core):
    InputError = core[1].InputError
    handle = body.LoadSAM3DBody.execute(checkpoint="tiny-test").args[0]
    frames, tracks = _clip(core[0])
    with pytest.raises(InputError, match="connect tracks"):
        body.BodyBatch.execute(handle, frames)
    with pytest.raises(InputError, match="frame counts do not match"):
        body.BodyBatch.execute(handle, frames[:2], tracks=tracks)
    with pytest.raises(InputError, match="tracks are"):
        body.BodyBatch.execute(handle, frames[:, :50], tracks=tracks)
    with pytest.raises(InputError, match="not a checkpoint folder name"):
        body.LoadSAM3DBody.execute(checkpoint="../escape")


def test_load_core_detection_file(body, core):
    import folder_paths
    from body4d_core.interop.sam3d_body_file import save_core_layout
    from body4d_core.testing.body import random_rig_tensors

    cfg = tiny_config()
    root = folder_paths.get_folder_paths("detection")[0]
    save_core_layout(random_model(cfg, seed=2), f"{root}/sam_3d_body_tiny_bf16.safetensors",
                     random_rig_tensors(cfg.num_verts, cfg.num_joints))
    schema = body.LoadSAM3DBody.define_schema()
    assert "detection/sam_3d_body_tiny_bf16.safetensors" in schema.inputs[0].kwargs["options"]
    handle = body.LoadSAM3DBody.execute(checkpoint="detection/sam_3d_body_tiny_bf16.safetensors").args[0]
    frames, tracks = _clip(core[0])
    bodies = body.BodyBatch.execute(handle, frames, tracks=tracks, mode="full", batch_size=2).args[0]
    assert bodies.vertices.shape == (2, 3, 40, 3) and np.isfinite(bodies.vertices[bodies.present]).all()
    with pytest.raises(core[1].InputError, match="not a file name inside models/detection"):
        body.LoadSAM3DBody.execute(checkpoint="detection/../x.safetensors")
    with pytest.raises(core[1].MissingWeightsError, match="Comfy-Org/sam-3d-body"):
        body.LoadSAM3DBody.execute(checkpoint="detection/sam_3d_body_missing.safetensors")
