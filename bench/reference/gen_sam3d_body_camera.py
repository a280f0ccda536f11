"""Regenerate tests/fixtures/reference/sam3d_body_camera.npz from the official SAM-3D-Body camera head.

Usage: SAM3D_BODY_SRC=/path/to/sam-3d-body python bench/reference/gen_sam3d_body_camera.py

Builds the official ``PerspectiveHead`` (sam_3d_body/models/heads/camera_head.py) with seeded
random weights, runs it on random pose tokens, and runs its ``perspective_projection`` (pred_cam ->
camera translation -> 2D keypoints) for off-centre boxes on a non-square image, with the
principal point off the image centre, both with and without ``use_intrin_center``. Only the
numbers (weights, inputs, outputs) are stored; tests/test_q_reference.py feeds the same weights
and inputs to our CameraHead and projection. Not run by the test suite.
"""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "reference" / "sam3d_body_camera.npz"
DIM, DEPTH, DIV = 32, 2, 8
N, K = 6, 9
IMG_W, IMG_H = 480.0, 270.0


def official_head():
    """The official PerspectiveHead, imported without the package __init__ (which needs the data stack)."""
    src = Path(os.environ["SAM3D_BODY_SRC"]).expanduser().resolve()
    pkg = types.ModuleType("sam_3d_body")
    pkg.__path__ = [str(src / "sam_3d_body")]
    sys.modules["sam_3d_body"] = pkg
    sys.path.insert(0, str(src))
    from sam_3d_body.models.heads.camera_head import PerspectiveHead

    return PerspectiveHead(DIM, (256, 192), mlp_depth=DEPTH, mlp_channel_div_factor=DIV, default_scale_factor=1.0)


def main() -> None:
    torch.manual_seed(20)
    head = official_head().eval()
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, 0.1)
    g = torch.Generator().manual_seed(21)
    tokens = torch.randn(N, DIM, generator=g)
    init = torch.tensor([[-2.0, 0.05, -0.1]]).expand(N, 3).contiguous()  # s < 0: in front of the camera
    centre = torch.stack([torch.tensor([60.0, 400.0, 250.0, 30.0, 455.0, 240.0]),
                          torch.tensor([50.0, 200.0, 135.0, 250.0, 20.0, 140.0])], -1)  # off-centre, all corners
    size = torch.tensor([80.0, 120.0, 60.0, 40.0, 30.0, 200.0])
    f = torch.tensor([500.0, 350.0, 420.0, 600.0, 275.0, 380.0])
    cam_int = torch.zeros(N, 3, 3)
    cam_int[:, 0, 0] = cam_int[:, 1, 1] = f
    cam_int[:, 0, 2], cam_int[:, 1, 2], cam_int[:, 2, 2] = 250.0, 125.0, 1.0  # not (W/2, H/2)
    img_wh = torch.tensor([[IMG_W, IMG_H]]).expand(N, 2).contiguous()
    points = torch.randn(N, K, 3, generator=g) * 0.3
    with torch.no_grad():
        pred_cam = head(tokens, init)
        out = {"pred_cam": pred_cam}
        for flag in (False, True):
            res = head.perspective_projection(points, pred_cam, centre, size, img_wh, cam_int, use_intrin_center=flag)
            out[f"cam_t_{int(flag)}"] = res["pred_cam_t"]
            out[f"kp2d_{int(flag)}"] = res["pred_keypoints_2d"]
    arrays = {f"w.{k}": v.numpy() for k, v in head.state_dict().items()}
    arrays.update(tokens=tokens.numpy(), init=init.numpy(), centre=centre.numpy(), size=size.numpy(),
                  cam_int=cam_int.numpy(), img_wh=img_wh.numpy(), points=points.numpy(),
                  dims=np.array([DIM, DEPTH, DIV]), **{k: v.numpy() for k, v in out.items()})
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
