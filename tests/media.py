"""Paths to the real test media shipped in the repository (samples/ and tests/data/)."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
DANCER = REPO / "samples" / "cartoon_dancer_81f.mp4"  # 350x350, 81 frames, one dancing person
PHOTO = DATA / "dancer.jpg"  # frame 40 of the dancer clip, 350x350 RGB
PHOTO_MASK = DATA / "dancer_mask.png"  # that frame's person mask (L, 255 = person)
DANCING_JPG, DANCING_MASK = PHOTO, PHOTO_MASK  # the names older tests import


def need(path: Path) -> Path:
    """The path of a repository media file; fails (never skips) when a checkout lacks it."""
    if not path.is_file():
        pytest.fail(f"test media missing from the repository: {path.relative_to(REPO)}", pytrace=False)
    return path
