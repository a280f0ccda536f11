"""Regenerate tests/fixtures/reference/moge2_fov.npz from the official MoGe-2 code (the ``moge`` package).

Usage: python bench/reference/gen_moge_fov.py   (needs: pip install --no-deps dlr-moge==2.0.0 dlr-utils3d==1.3;
MOGE_SRC=/path/to/MoGe puts a source checkout first on the path instead)

The official ``moge.model.v2.MoGeModel`` is built from body4d_core.testing.moge.TINY_MOGE_CONFIG with
torch.manual_seed(SEED) (the weights are the official class's own initialisation: too large to
commit, reproducible from the seed), then the official ``infer`` runs directly on a
deterministic non-square image at two resolution levels. Stored: the image, the official
normalised intrinsics and the pixel intrinsics they mean (fx * W, fy * H, cx * W, cy * H).
tests/test_q_reference.py runs our estimate_camera on the same seed-built model and frames.
Not run by the test suite.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "reference" / "moge2_fov.npz"
SEED, H, W = 5, 84, 140
LEVELS = (0, 9)


def image() -> np.ndarray:
    """uint8 [H, W, 3]: gradients and an off-centre block (not symmetric in x or y)."""
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    img = np.stack([x / W, y / H, 0.5 + 0.5 * np.sin(x / 9.0 + y / 17.0)], -1)
    img[10:40, 90:130] = (0.9, 0.2, 0.1)
    return (img * 255).round().astype(np.uint8)


def main() -> None:
    if os.environ.get("MOGE_SRC"):
        sys.path.insert(0, os.environ["MOGE_SRC"])
    from moge.model.v2 import MoGeModel

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from body4d_core.testing.moge import TINY_MOGE_CONFIG

    torch.manual_seed(SEED)
    model = MoGeModel(**TINY_MOGE_CONFIG).eval()
    img = image()
    x = torch.from_numpy(img).float().div(255).permute(2, 0, 1)
    out = {"image": img, "seed": np.array(SEED), "levels": np.array(LEVELS)}
    for level in LEVELS:
        with torch.no_grad():
            k = model.infer(x, resolution_level=level, force_projection=False, apply_mask=True, use_fp16=False)[
                "intrinsics"].float().numpy().reshape(3, 3)
        out[f"norm_k_{level}"] = k
        out[f"pixel_{level}"] = np.array([k[0, 0] * W, k[1, 1] * H, k[0, 2] * W, k[1, 2] * H], np.float64)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **out)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes): {[out[f'pixel_{lv}'].round(2).tolist() for lv in LEVELS]}")


if __name__ == "__main__":
    main()
