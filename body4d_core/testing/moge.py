"""A tiny random MoGe-2 (official architecture, shrunk) for CPU tests and the tiny checkpoint writer."""

from __future__ import annotations

from typing import Any

import torch

from ..fov import _RESAMPLERS, build_moge

# A MoGe-2 of the official layout (DINOv2 encoder, conv neck, points/normal/mask heads,
# metric-scale MLP) shrunk for CPU tests: ViT-S/14 instead of ViT-L/14, narrow convs, few tokens.
_TINY_DIMS = [64, 32, 16, 8, 8]


def _tiny_head(out_channels: int) -> dict[str, Any]:
    return {"dim_in": list(_TINY_DIMS), "dim_out": [None, None, None, None, out_channels],
            "dim_res_blocks": list(_TINY_DIMS), "num_res_blocks": [0, 1, 1, 1, 0],
            "res_block_in_norm": "none", "res_block_hidden_norm": "none", "resamplers": list(_RESAMPLERS)}


TINY_MOGE_CONFIG: dict[str, Any] = {
    "encoder": {"backbone": "dinov2_vits14", "intermediate_layers": [2, 5, 8, 11], "dim_out": _TINY_DIMS[0]},
    "neck": {"dim_in": [_TINY_DIMS[0] + 2, 2, 2, 2, 2], "dim_out": None, "dim_res_blocks": list(_TINY_DIMS),
             "num_res_blocks": [0, 1, 1, 1, 0], "res_block_in_norm": "none", "res_block_hidden_norm": "none",
             "resamplers": list(_RESAMPLERS)},
    "points_head": _tiny_head(3),
    "normal_head": _tiny_head(3),
    "mask_head": _tiny_head(1),
    "scale_head": {"dims": [384, 64, 1]},
    "remap_output": "exp",
    "num_tokens_range": [64, 144],
}


def build_tiny_moge(seed: int = 0) -> torch.nn.Module:
    """The tiny random MoGe-2 used by tests (official architecture, ViT-S backbone, ~22M params)."""
    return build_moge(TINY_MOGE_CONFIG, seed)
