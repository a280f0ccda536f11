"""Load Video node over the ComfyUI stand-in: every input route, previews, errors, progress."""

import asyncio
import importlib
import shutil
from fractions import Fraction

import pytest
import torch

from .media import DANCER, need


@pytest.fixture()
def node(pack):
    import folder_paths

    shutil.copy(need(DANCER), folder_paths.get_input_directory())
    return importlib.import_module(f"{pack.__name__}.nodes.video").LoadVideo


ARGS = dict(frame_load_cap=0, skip_first_frames=0, select_every_nth=1, force_rate=0.0, max_side=0,
            memory_budget_gb=0.0, decoder="auto")


def test_every_node_is_prefixed_and_unique(pack):
    ext = asyncio.run(pack.comfy_entrypoint())
    asyncio.run(ext.on_load())
    nodes = asyncio.run(ext.get_node_list())
    ids = [n.GET_SCHEMA().node_id for n in nodes]
    assert "SAMBody4D_LoadVideo" in ids
    assert all(i.startswith("SAMBody4D_") for i in ids), ids
    assert len(ids) == len(set(ids))
    for n in nodes:
        schema = n.GET_SCHEMA()
        assert schema.display_name and "_" not in schema.display_name, schema.node_id
    import folder_paths

    assert "sam3d_body" in folder_paths.folder_names_and_paths


def test_load_file(node):
    out = node.execute(file=DANCER.name, **{**ARGS, "frame_load_cap": 10, "max_side": 176})
    frames, fps, count, clip = out.args
    assert frames.shape == (10, 176, 176, 3) and frames.dtype == torch.float32
    assert 0.0 <= float(frames.min()) and float(frames.max()) <= 1.0
    assert fps == 16.0 and count == 10 and clip.num_frames == 10 and clip.source_size == (350, 350)
    assert out.ui.args[0].shape[0] == 3  # preview: first, middle, last frame


def test_schema_lists_input_videos(node):
    schema = node.GET_SCHEMA()
    file_input = schema.inputs[0]
    assert DANCER.name in file_input.kwargs["options"]
    assert file_input.kwargs["upload"].value == "video_upload"


def test_images_input_applies_selection(node):
    images = torch.rand(12, 40, 60, 3)
    out = node.execute(file=DANCER.name, **{**ARGS, "select_every_nth": 4, "max_side": 30}, images=images,
                       images_fps=24.0)
    frames, fps, count, clip = out.args
    assert frames.shape == (3, 20, 30, 3) and fps == 6.0 and clip.frame_indices.tolist() == [0, 4, 8]
    same = node.execute(file=DANCER.name, **ARGS, images=images).args[0]
    assert torch.equal(same, images)


class FakeVideo:
    """A core VIDEO built from components (no file behind it)."""

    def __init__(self, images, rate):
        self.images, self.rate = images, rate

    def get_stream_source(self):
        return None

    def get_components(self):
        return type("C", (), {"images": self.images, "frame_rate": self.rate})()


def test_video_input(node):
    out = node.execute(file="(none - use the video or images input)", **{**ARGS, "frame_load_cap": 2},
                       video=FakeVideo(torch.rand(5, 8, 8, 3), Fraction(30000, 1001)))
    assert out.args[0].shape == (2, 8, 8, 3) and out.args[1] == pytest.approx(29.97, abs=1e-2)


def test_errors(node, pack):
    VideoError = importlib.import_module(f"{pack.__name__}.body4d_core.errors").VideoError
    with pytest.raises(VideoError, match="no video"):
        node.execute(file="(none - use the video or images input)", **ARGS)
    with pytest.raises(VideoError, match="outside ComfyUI's input folder"):
        node.execute(file="../../etc/passwd", **ARGS)
    with pytest.raises(VideoError, match="keeps no frame"):
        node.execute(file=DANCER.name, **{**ARGS, "skip_first_frames": 1000})
    with pytest.raises(VideoError, match="zero frames"):
        node.execute(file=DANCER.name, **ARGS, images=torch.zeros(0, 4, 4, 3))
    assert node.validate_inputs(file="missing.mp4").startswith("video file not found")
    assert node.validate_inputs(file=DANCER.name) is True


def test_fingerprint_changes_with_file(node):
    import folder_paths
    import os

    a = node.fingerprint_inputs(file=DANCER.name)
    path = os.path.join(folder_paths.get_input_directory(), DANCER.name)
    os.utime(path, ns=(1, 2))
    assert node.fingerprint_inputs(file=DANCER.name) != a


def test_progress_and_interrupt(node):
    import comfy.model_management as mm
    import comfy.utils

    comfy.utils.UPDATES.clear()
    node.execute(file=DANCER.name, **ARGS)
    assert comfy.utils.UPDATES[-1] == (81, 81)
    mm.interrupt_current_processing()
    with pytest.raises(mm.InterruptProcessingException):
        node.execute(file=DANCER.name, **ARGS)
