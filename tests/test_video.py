"""Video loading: decoders agree, selection rules, memory budget, and every bad input."""

import numpy as np
import pytest
import torch

from body4d_core import video as v
from body4d_core.errors import MemoryBudgetError, VideoError

from .media import DANCER, need


@pytest.fixture(scope="module")
def dancer():
    return str(need(DANCER))


def test_probe(dancer):
    info, backend = v.probe(dancer)
    assert (info.num_frames, info.height, info.width) == (81, 350, 350)
    assert info.fps == pytest.approx(16.0)
    assert backend in v.available_backends()


def test_backends_decode_identical_frames(dancer):
    opts = dict(frame_load_cap=12, select_every_nth=3)
    ref = None
    for backend in v.available_backends():
        frames, clip = v.load_video(dancer, v.LoadOptions(backend=backend, **opts))
        assert frames.shape == (12, 350, 350, 3) and frames.dtype == np.uint8
        assert clip.frame_indices.tolist() == list(range(0, 36, 3))
        if ref is None:
            ref = frames
        else:  # same decoded pixels whatever the decoder
            assert np.abs(frames.astype(int) - ref.astype(int)).max() <= 2, backend


def test_tensor_path_matches_uint8_path(dancer):
    frames, clip = v.load_video(dancer, v.LoadOptions(frame_load_cap=5))
    tensor, clip2 = v.load_video_tensor(dancer, v.LoadOptions(frame_load_cap=5), dtype=torch.float16)
    assert tensor.dtype == torch.float16 and tensor.shape == (5, 350, 350, 3)
    assert torch.allclose(tensor.float(), torch.from_numpy(frames).float() / 255, atol=1e-3)
    assert clip2.fps == clip.fps == 16.0


def test_selection_order_force_rate_skip_stride_cap():
    info = v.VideoInfo("x", 100, 30.0, 720, 1280)
    sel = v.select_frames(info, force_rate=15, skip_first_frames=2, select_every_nth=2, frame_load_cap=3)
    assert sel.indices.tolist() == [4, 8, 12] and sel.fps == pytest.approx(7.5)
    assert v.select_frames(info, max_side=640).height == 360
    assert v.scaled_size(350, 350, 200) == (200, 200)
    assert v.scaled_size(1080, 1920, 0) == (1080, 1920)


def test_resize_keeps_aspect(dancer):
    frames, clip = v.load_video(dancer, v.LoadOptions(frame_load_cap=2, max_side=176))
    assert frames.shape == (2, 176, 176, 3) and clip.source_size == (350, 350)


def test_progress_and_interrupt(dancer):
    seen = []

    class Stop(Exception):
        pass

    def check():
        if len(seen) >= 1:
            raise Stop

    hooks = __import__("body4d_core.runtime", fromlist=["CallbackHooks"]).CallbackHooks(
        lambda d, t: seen.append((d, t)), check)
    with pytest.raises(Stop):
        v.load_video(dancer, v.LoadOptions(), hooks)
    assert seen == [(32, 81)]


def test_memory_budget_refuses_with_suggestion(dancer):
    with pytest.raises(MemoryBudgetError, match=r"frame_load_cap between 1 and 27.*max_side"):
        v.load_video(dancer, v.LoadOptions(memory_budget_bytes=350 * 350 * 3 * 27 + 5))


def test_memory_budget_below_one_frame_never_suggests_cap_zero(dancer):
    with pytest.raises(MemoryBudgetError) as err:
        v.load_video(dancer, v.LoadOptions(memory_budget_bytes=1000))
    msg = str(err.value)
    assert "frame_load_cap" not in msg and "Even one frame is over the budget: set max_side to about" in msg
    side = int(msg.rsplit("about ", 1)[1].rstrip("."))
    info, _ = v.probe(dancer)
    h, w = v.scaled_size(info.height, info.width, side)
    assert h * w * 3 <= 1000 * 1.2  # a frame at the suggested size about fits


def test_missing_file(tmp_path):
    with pytest.raises(VideoError, match="video not found"):
        v.load_video(tmp_path / "nope.mp4")


def test_empty_file(tmp_path):
    p = tmp_path / "empty.mp4"
    p.write_bytes(b"")
    with pytest.raises(VideoError, match="empty"):
        v.load_video(p)


def test_non_video_file(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("hello, I am not a video\n" * 50)
    with pytest.raises(VideoError, match="notes.txt is not a video"):
        v.load_video(p)
    with pytest.raises(VideoError, match="not a video"):
        v.load_video(p, v.LoadOptions(backend="opencv"))


def test_corrupt_video(tmp_path, dancer):
    p = tmp_path / "broken.mp4"
    p.write_bytes(open(dancer, "rb").read()[:2000])
    with pytest.raises(VideoError, match="cannot read broken.mp4"):
        v.load_video(p)


def test_zero_frame_video(tmp_path):
    import av

    p = tmp_path / "zero.mp4"
    c = av.open(str(p), "w")
    s = c.add_stream("mpeg4", rate=10)
    s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
    c.start_encoding()  # writes the header although no frame follows
    for packet in s.encode(None):
        c.mux(packet)
    c.close()
    with pytest.raises(VideoError, match="cannot read zero.mp4"):
        v.load_video(p)


def test_selection_with_no_frame(dancer):
    with pytest.raises(VideoError, match="keeps no frame.*81 frames"):
        v.load_video(dancer, v.LoadOptions(skip_first_frames=500))
    with pytest.raises(VideoError, match="select_every_nth must be >= 1"):
        v.load_video(dancer, v.LoadOptions(select_every_nth=0))


def test_unknown_decoder(dancer):
    with pytest.raises(VideoError, match="unknown decoder"):
        v.load_video(dancer, v.LoadOptions(backend="ffmpeg-magic"))


def test_resolve_inside(tmp_path):
    (tmp_path / "in").mkdir()
    assert v.resolve_inside(tmp_path / "in", "a/b.mp4") == (tmp_path / "in" / "a" / "b.mp4").resolve()
    with pytest.raises(VideoError, match="outside the allowed folder"):
        v.resolve_inside(tmp_path / "in", "../secret.mp4")
    with pytest.raises(VideoError, match="outside"):
        v.resolve_inside(tmp_path / "in", "/etc/passwd")
