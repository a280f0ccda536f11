"""Rotated (phone) and variable-frame-rate clips decode the same, upright, with every decoder."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from body4d_core import video as v

DATA = Path(__file__).parent / "data" / "video"
H, W = 64, 128  # stored size of every clip (tests/data/video/make_clips.py)
BACKENDS = [b for b in ("pyav", "decord", "opencv") if b in v.available_backends()]
CLIPS = {"upright.mp4": 0, "matrix_ccw90.mp4": 90, "matrix_ccw180.mp4": 180, "matrix_ccw270.mp4": 270,
         "tag_cw90.mkv": 270}  # a legacy rotate tag counts clockwise: 90 clockwise = 270 counter-clockwise


def stored_quadrants() -> np.ndarray:
    """The stored frame's colour layout (make_clips.pattern without its centre square)."""
    f = np.zeros((H, W, 3), np.uint8)
    f[: H // 2, : W // 2] = (255, 0, 0)
    f[: H // 2, W // 2:] = (0, 255, 0)
    f[H // 2:, : W // 2] = (0, 0, 255)
    f[H // 2:, W // 2:] = 255
    return f


def corner_colours(frame: np.ndarray) -> np.ndarray:
    """Mean colour of a small patch in each corner (away from edges and the centre square)."""
    h, w = frame.shape[:2]
    pts = [(h // 8, w // 8), (h // 8, w - w // 8 - 1), (h - h // 8 - 1, w // 8), (h - h // 8 - 1, w - w // 8 - 1)]
    return np.stack([frame[y - 2:y + 3, x - 2:x + 3].reshape(-1, 3).mean(0) for y, x in pts])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(CLIPS))
def test_every_decoder_turns_rotated_clips_upright(name, backend) -> None:
    frames, clip = v.load_video(DATA / name, v.LoadOptions(backend=backend))
    want = np.rot90(stored_quadrants(), k=CLIPS[name] // 90)
    assert frames.shape == (6, *want.shape), (name, backend, frames.shape)
    assert clip.image_size == want.shape[:2]
    np.testing.assert_allclose(corner_colours(frames[0]), corner_colours(want), atol=12)


@pytest.mark.parametrize("name", sorted(CLIPS))
def test_decoders_agree_frame_for_frame(name) -> None:
    outs = {b: v.load_video(DATA / name, v.LoadOptions(backend=b))[0].astype(np.int16) for b in BACKENDS}
    ref = outs[BACKENDS[0]]
    for b, out in outs.items():
        assert out.shape == ref.shape and float(np.abs(out - ref).mean()) < 2.0, b


@pytest.mark.parametrize("backend", BACKENDS)
def test_resizing_a_rotated_clip_keeps_it_upright(backend) -> None:
    frames, clip = v.load_video(DATA / "matrix_ccw270.mp4", v.LoadOptions(backend=backend, max_side=64))
    assert frames.shape[1:3] == (64, 32) and clip.image_size == (64, 32)
    want = np.rot90(stored_quadrants(), k=3)[::2, ::2]
    np.testing.assert_allclose(corner_colours(frames[0]), corner_colours(want), atol=16)


def test_probe_reports_the_displayed_size_and_rotation() -> None:
    info, _ = v.probe(DATA / "matrix_ccw90.mp4", "pyav")
    assert (info.height, info.width, info.rotation, info.rotation_source) == (W, H, 90, "matrix")
    info, _ = v.probe(DATA / "tag_cw90.mkv", "opencv")
    assert (info.height, info.width, info.rotation, info.rotation_source) == (W, H, 270, "tag")
    info, _ = v.probe(DATA / "upright.mp4")
    assert (info.height, info.width, info.rotation) == (H, W, 0)


# --------------------------------------------------------------------------- variable frame rate

VFR_MS = [0, 100, 200, 250, 300, 500, 700, 733, 766, 800]  # frame n shows grey 20 * n in its centre


def frame_numbers(frames: np.ndarray) -> list[int]:
    h, w = frames.shape[1:3]
    grey = frames[:, h // 2 - 4:h // 2 + 4, w // 2 - 4:w // 2 + 4].reshape(len(frames), -1).mean(1)
    return [int(round(g / 20)) for g in grey]


@pytest.mark.parametrize("backend", BACKENDS)
def test_force_rate_resamples_a_vfr_clip_by_time(backend) -> None:
    frames, clip = v.load_video(DATA / "vfr.mp4", v.LoadOptions(backend=backend, force_rate=10))
    # 10 fps ticks at 0, 100, ..., 700 ms show the frame on screen at that time
    assert frame_numbers(frames) == [0, 1, 2, 4, 4, 5, 5, 6]
    assert clip.fps == 10 and list(clip.frame_indices) == [0, 1, 2, 4, 4, 5, 5, 6]


def test_vfr_without_force_rate_warns_with_the_rate_used(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="body4d_core.video"):
        frames, clip = v.load_video(DATA / "vfr.mp4")
    assert frame_numbers(frames) == list(range(10))
    msgs = [r.getMessage() for r in caplog.records if "variable frame rate" in r.getMessage()]
    assert len(msgs) == 1 and "vfr.mp4" in msgs[0] and f"{clip.fps:.3g} fps" in msgs[0]
    assert "33-200 ms" in msgs[0] and "force_rate" in msgs[0]


def test_constant_rate_clip_gives_no_vfr_warning(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="body4d_core.video"):
        v.load_video(DATA / "upright.mp4", v.LoadOptions(force_rate=5))
    assert not [r for r in caplog.records if "variable" in r.getMessage()]
