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


# ------------------------------------------------------------------ input checks (committed clips only)

from pathlib import Path  # noqa: E402

CLIPS = Path(__file__).parent / "data" / "video"


@pytest.fixture()
def clip_node(pack):
    import folder_paths

    for name in ("upright.mp4", "matrix_ccw270.mp4"):
        shutil.copy(CLIPS / name, folder_paths.get_input_directory())
    return importlib.import_module(f"{pack.__name__}.nodes.video").LoadVideo


def test_rank3_image_is_one_frame_not_64_frames(clip_node):
    image = torch.rand(64, 48, 3)
    frames, fps, count, clip = clip_node.execute(file="upright.mp4", **ARGS, images=image).args
    assert frames.shape == (1, 64, 48, 3) and count == 1 and clip.image_size == (64, 48)
    assert torch.equal(frames[0], image)


def _video_error(node):
    return importlib.import_module(node.__module__).VideoError  # the pack's own class (imported as a package)


def test_grey_and_malformed_images_inputs(clip_node):
    VideoError = _video_error(clip_node)
    grey = torch.rand(2, 10, 12, 1)
    frames = clip_node.execute(file="upright.mp4", **ARGS, images=grey).args[0]
    assert frames.shape == (2, 10, 12, 3) and torch.equal(frames[..., 2], grey[..., 0])
    with pytest.raises(VideoError, match=r"must be an IMAGE batch \[frames, height, width, 3\], got shape \[5, 7\]"):
        clip_node.execute(file="upright.mp4", **ARGS, images=torch.rand(5, 7))


@pytest.mark.parametrize("name, value", [("frame_load_cap", -1), ("select_every_nth", 0), ("force_rate", 500.0),
                                         ("max_side", 9000), ("memory_budget_gb", -1.0), ("skip_first_frames", -3),
                                         ("images_fps", 0.0), ("frame_load_cap", 2.5)])
def test_validate_inputs_enforces_the_schema_ranges(clip_node, name, value):
    msg = clip_node.validate_inputs(file="upright.mp4", **{**ARGS, name: value})
    assert isinstance(msg, str) and name in msg, msg
    assert clip_node.validate_inputs(file="upright.mp4", **ARGS) is True
    assert clip_node.validate_inputs(file="upright.mp4", **{**ARGS, "frame_load_cap": 100000}) is True


def test_schema_ranges_are_the_validated_ones(clip_node):
    from importlib import import_module

    ranges = import_module(clip_node.__module__).RANGES
    for inp in clip_node.GET_SCHEMA().inputs:
        if inp.id in ranges:
            assert (inp.kwargs["min"], inp.kwargs["max"]) == ranges[inp.id], inp.id


def test_errors_never_show_server_paths(clip_node):
    import folder_paths

    VideoError = _video_error(clip_node)
    root = folder_paths.get_input_directory()
    msg = clip_node.validate_inputs(file="no_such_clip.mp4", **ARGS)
    assert isinstance(msg, str) and "no_such_clip.mp4" in msg and root not in msg
    with pytest.raises(VideoError) as err:
        clip_node.execute(file="upright.mp4", **{**ARGS, "skip_first_frames": 50})
    assert "keeps no frame" in str(err.value)
    broken = Path(root) / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64)
    with pytest.raises(VideoError) as err:
        clip_node.execute(file="broken.mp4", **ARGS)
    assert "broken.mp4" in str(err.value)
    for form in {root, str(Path(root).resolve())}:
        assert form not in str(err.value), str(err.value)


def test_rotated_clip_through_the_node_is_upright(clip_node):
    frames, _, count, clip = clip_node.execute(file="matrix_ccw270.mp4", **ARGS).args
    assert frames.shape == (6, 128, 64, 3) and clip.image_size == (128, 64)
