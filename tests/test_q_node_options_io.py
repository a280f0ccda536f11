"""The options of the video, points, SAM-3 and amodal-loader nodes change what they must.

Companion of test_q_node_options.py (bodies, smoothing, FOV, amodal sampler, render, export):
each option is run at two settings whose results must differ, on non-square frames.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "samples" / "cartoon_dancer_81f.mp4"


def _mod(pack, name: str):
    return importlib.import_module(f"{pack.__name__}.{name}")


# ----------------------------------------------------------------- Load Video


VIDEO_DEFAULTS = dict(frame_load_cap=0, skip_first_frames=0, select_every_nth=1, force_rate=0.0, max_side=0,
                      memory_budget_gb=0.0, decoder="auto")


def _load(node, images, **kw):
    out = node.execute(file="(none)", images=images, **{**VIDEO_DEFAULTS, **kw})
    return out.args


def test_load_video_options_on_an_image_batch(pack):
    node = _mod(pack, "nodes.video").LoadVideo
    t = torch.arange(12, dtype=torch.float32).view(12, 1, 1, 1) / 12
    images = t.expand(12, 30, 50, 3).contiguous()  # frame k is grey k/12
    frames, fps, count, clip = _load(node, images, images_fps=24.0)[:4]
    assert count == 12 and fps == 24.0 and frames.shape == (12, 30, 50, 3)
    frames, _, count, clip = _load(node, images, frame_load_cap=5)[:4]
    assert count == 5
    frames, _, _, clip = _load(node, images, skip_first_frames=4, frame_load_cap=2)[:4]
    assert clip.frame_indices.tolist() == [4, 5] and float(frames[0, 0, 0, 0]) == pytest.approx(4 / 12)
    _, _, _, clip = _load(node, images, select_every_nth=3)[:4]
    assert clip.frame_indices.tolist() == [0, 3, 6, 9]
    frames, fps, _, clip = _load(node, images, images_fps=24.0, force_rate=8.0)[:4]
    assert fps == pytest.approx(8.0) and clip.num_frames == 4
    frames = _load(node, images, max_side=20)[0]
    assert frames.shape[1:3] == (12, 20)  # the longer side (width) is scaled: H/W kept apart
    _, fps, _, _ = _load(node, images, images_fps=12.5)[:4]
    assert fps == 12.5


def test_load_video_file_options(pack):
    import folder_paths

    node = _mod(pack, "nodes.video").LoadVideo
    inp = Path(folder_paths.get_input_directory())
    inp.mkdir(parents=True, exist_ok=True)
    (inp / "q_clip.mp4").write_bytes(SAMPLE.read_bytes())
    base = node.execute(file="q_clip.mp4", **{**VIDEO_DEFAULTS, "frame_load_cap": 4, "max_side": 64}).args
    assert base[2] == 4 and max(base[0].shape[1:3]) == 64
    nth = node.execute(file="q_clip.mp4", **{**VIDEO_DEFAULTS, "frame_load_cap": 3, "select_every_nth": 2,
                                              "max_side": 64, "skip_first_frames": 1}).args
    assert nth[3].frame_indices.tolist() == [1, 3, 5]
    torch.testing.assert_close(nth[0][0], base[0][1])  # source frame 1 in both
    pyav = node.execute(file="q_clip.mp4", **{**VIDEO_DEFAULTS, "frame_load_cap": 4, "max_side": 64,
                                               "decoder": "pyav"}).args
    assert (pyav[0] - base[0]).abs().mean() < 0.02


# ----------------------------------------------------------------- SAM3 Points


def test_points_coordinate_inputs(pack):
    node = _mod(pack, "nodes.points").SAM3Points
    frames = torch.zeros(6, 40, 70, 3)
    prompts = node.execute(frames, prompts="", positive_coords='[{"x": 60, "y": 10}]',
                           negative_coords='[{"x": 5, "y": 35}]', coords_frame=4, coords_object_id=7).args[0]
    (item,) = prompts.items
    assert (item.obj_id, item.frame) == (7, 4)
    assert item.points.tolist() == [[60.0, 10.0], [5.0, 35.0]] and item.labels.tolist() == [1, 0]


# ----------------------------------------------------------------- SAM-3 nodes


class _Handle:
    def __init__(self, bundle):
        self.bundle = bundle

    def ready(self):
        return self.bundle


def test_propagate_node_direction_object_ids_and_image_outputs(pack, monkeypatch):
    mod = _mod(pack, "nodes.sam3")
    data = _mod(pack, "body4d_core.data")
    masks = np.zeros((2, 3, 20, 36), bool)
    masks[0, :, 2:10, 3:12] = True
    masks[1, :, 8:18, 20:34] = True
    tracks = data.Tracks.from_masks([5, 2], masks)
    seen = {}

    def fake(bundle, frames, prompts, direction, hooks=None):
        seen["direction"] = direction
        return tracks

    monkeypatch.setattr(mod, "propagate", fake)
    frames = torch.rand(3, 20, 36, 3)
    prompts = data.Prompts([data.ObjectPrompt(5, 0, [[5, 5]], [1])], (20, 36), 3)
    out = mod.Propagate.execute(frames, _Handle("b"), prompts, direction="backward").args
    assert seen["direction"] == "backward"
    assert out[1].shape == (6, 20, 36)  # both objects, object-major
    only = mod.Propagate.execute(frames, _Handle("b"), prompts, object_ids="2").args
    assert only[1].shape == (3, 20, 36)
    np.testing.assert_array_equal(only[1].numpy() > 0.5, masks[1])  # id 2's own masks (row 1)
    off = mod.Propagate.execute(frames, _Handle("b"), prompts, image_outputs=False).args
    assert off[0] is tracks and off[1].shape[0] == 1 and float(off[1].sum()) == 0
    one = mod.TracksToMask.execute(tracks, object_ids="5").args[0]
    np.testing.assert_array_equal(one.numpy() > 0.5, masks[0])
    union = mod.TracksToMask.execute(tracks, object_ids="5, 2", union=True).args[0]
    np.testing.assert_array_equal(union.numpy() > 0.5, masks[0] | masks[1])


def test_detect_people_node_passes_every_option(pack, monkeypatch):
    mod = _mod(pack, "nodes.sam3")
    seen = {}

    def fake(bundle, frames, frame_index, score_threshold, max_people, nms_iou, scan_step, hooks=None):
        seen.update(frame_index=frame_index, score_threshold=score_threshold, max_people=max_people,
                    nms_iou=nms_iou, scan_step=scan_step)
        return "prompts"

    monkeypatch.setattr(mod, "detect_people", fake)
    mod.DetectPeople.execute(torch.rand(4, 20, 36, 3), _Handle("b"), frame_index=2, score_threshold=0.3,
                             max_people=7, nms_iou=0.8, scan_step=3)
    assert seen == dict(frame_index=2, score_threshold=0.3, max_people=7, nms_iou=0.8, scan_step=3)


def test_load_sam3_precision_and_detector(pack, monkeypatch):
    mod = _mod(pack, "nodes.sam3")
    glue = _mod(pack, "nodes.comfy_glue")
    calls = []
    monkeypatch.setattr(glue, "resolve_checkpoint", lambda name, choice: "dir")
    monkeypatch.setattr(glue, "choose_dtype", lambda p, d=None: {"bf16": torch.bfloat16}.get(p, torch.float32))
    monkeypatch.setattr(glue, "wrap_model", lambda m, dtype, **info: (m, dtype))
    monkeypatch.setattr(mod, "load_sam3", lambda d, device=None, dtype=None, with_detector=True, move=False:
                        calls.append((dtype, with_detector)) or "bundle")
    assert mod.LoadSAM3.execute("c", precision="bf16", people_detector=False).args[0] == ("bundle", torch.bfloat16)
    mod.LoadSAM3.execute("c", precision="fp32", people_detector=True)
    assert calls == [(torch.bfloat16, False), (torch.float32, True)]


# ----------------------------------------------------------------- Load Amodal


def test_load_amodal_content_completion_and_precision(pack, monkeypatch):
    mod = _mod(pack, "nodes.amodal")
    glue = _mod(pack, "nodes.comfy_glue")
    calls = []

    class Models:
        def module_dict(self):
            return torch.nn.ModuleDict()

    def fake_load(**kw):
        calls.append(kw)
        return Models()

    monkeypatch.setattr(glue, "resolve_checkpoint", lambda name, choice: f"/{name}")
    monkeypatch.setattr(glue, "choose_dtype", lambda p, d=None: {"fp16": torch.float16}.get(p, torch.float32))
    monkeypatch.setattr(mod, "load_amodal_models", fake_load)
    mod.LoadAmodal.execute("a", "c", "d", content_completion=False, precision="fp16")
    mod.LoadAmodal.execute("a", "c", "d", content_completion=True, precision="fp32")
    assert calls[0]["with_completion"] is False and calls[0]["content_dir"] is None
    assert calls[0]["dtype"] == torch.float16
    assert calls[1]["with_completion"] is True and calls[1]["content_dir"] == "/diffusion_vas_completion"
    assert calls[1]["dtype"] == torch.float32
