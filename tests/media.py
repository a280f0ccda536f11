"""Paths to the shared real test media (../shared/data beside the repo)."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
DANCER = DATA / "cartoon_dancer_81f.mp4"
DANCING_JPG = DATA / "dancing.jpg"
DANCING_MASK = DATA / "dancing_mask.png"


def need(path: Path) -> Path:
    """Skip the calling test when a shared media file is absent."""
    if not path.is_file():
        pytest.skip(f"shared test media not found: {path}")
    return path
