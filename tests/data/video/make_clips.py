"""Writes the small clips in this folder (run by hand; tests only read the committed files).

``python tests/data/video/make_clips.py`` (PyAV only). ``matrix_ccwN``: display-matrix rotation of N
degrees counter-clockwise (as ffprobe reports it; phones shooting portrait write 270, i.e. -90);
``tag_cw90.mkv``: only a legacy ``rotate`` tag (clockwise degrees); ``vfr.mp4``: irregular frame times.
Every frame is four coloured quadrants (red, green / blue, white when upright) so orientation
is checkable, plus frame number n drawn as the grey level 20 * n in a centre square.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

HERE = Path(__file__).resolve().parent
H, W = 64, 128  # as stored (landscape; decord needs rows of a multiple of 64 pixels)


def pattern(n: int) -> np.ndarray:
    """The stored frame n: quadrants plus its number as a grey centre square."""
    f = np.zeros((H, W, 3), np.uint8)
    f[: H // 2, : W // 2] = (255, 0, 0)
    f[: H // 2, W // 2:] = (0, 255, 0)
    f[H // 2:, : W // 2] = (0, 0, 255)
    f[H // 2:, W // 2:] = (255, 255, 255)
    f[H // 2 - 8: H // 2 + 8, W // 2 - 8: W // 2 + 8] = 20 * n
    return f


def write(name: str, rotation: int | None = None, tag: int | None = None, times_ms: list[int] | None = None,
          n: int = 6) -> None:
    """One clip: display-matrix rotation (counter-clockwise), legacy rotate tag, or explicit frame times."""
    times_ms = times_ms or [100 * i for i in range(n)]
    with av.open(str(HERE / name), "w") as c:
        s = c.add_stream("libx264", rate=10, options={"crf": "28"})
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.time_base = Fraction(1, 1000)
        s.codec_context.time_base = Fraction(1, 1000)
        if rotation is not None:
            s.set_display_rotation(rotation)
        if tag is not None:
            s.metadata["rotate"] = str(tag)
        for i, t in enumerate(times_ms):
            frame = av.VideoFrame.from_ndarray(pattern(i), format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


if __name__ == "__main__":
    write("upright.mp4")
    for ccw in (90, 180, 270):
        write(f"matrix_ccw{ccw}.mp4", rotation=ccw)
    write("tag_cw90.mkv", tag=90)
    write("vfr.mp4", times_ms=[0, 100, 200, 250, 300, 500, 700, 733, 766, 800])
