"""Architecture settings of SAM-3D-Body, read from the official model_config.yaml or preset."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import WeightsMismatchError

# DINOv3 variants the official config may name: (dim, depth, heads, ffn hidden, swiglu).
BACKBONES: dict[str, tuple[int, int, int, int, bool]] = {
    "dinov3_vits16": (384, 12, 6, 1536, False),
    "dinov3_vits16plus": (384, 12, 6, 1536, True),
    "dinov3_vitb16": (768, 12, 12, 3072, False),
    "dinov3_vitl16": (1024, 24, 16, 4096, False),
    "dinov3_vith16plus": (1280, 32, 20, 5120, True),
}


@dataclass(frozen=True)
class Sam3dBodyConfig:
    """Every size the network needs; defaults are the released dinov3 ViT-H+/16 model."""

    image_size: int = 512
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    # backbone (DINOv3 ViT)
    backbone: str = "dinov3_vith16plus"
    vit_dim: int = 1280
    vit_depth: int = 32
    vit_heads: int = 20
    vit_ffn: int = 5120
    vit_swiglu: bool = True
    vit_registers: int = 4
    patch_size: int = 16
    rope_base: float = 100.0
    # promptable decoders (body and hand share the shape)
    dec_dim: int = 1024
    dec_depth: int = 6
    dec_heads: int = 8
    dec_head_dim: int = 64
    dec_mlp: int = 1024
    mask_embed_type: str = "v2"  # v1 | v2 | none
    use_intrin_center: bool = True
    # heads
    mhr_mlp_depth: int = 2
    mhr_mlp_div: int = 1
    cam_mlp_depth: int = 2
    cam_mlp_div: int = 1
    hand_cam_scale: float = 10.0
    # MHR rig sizes (buffers of the heads)
    num_verts: int = 18439
    num_faces: int = 36874
    num_joints: int = 127
    num_keypoints: int = 70

    @property
    def grid(self) -> int:
        """Patch grid side of a crop (32 for 512 / 16)."""
        return self.image_size // self.patch_size

    def replace(self, **changes: Any) -> "Sam3dBodyConfig":
        return dataclasses.replace(self, **changes)


def tiny_config() -> Sam3dBodyConfig:
    """A few-MB version of the same architecture for CPU tests (MHR rig sizes shrunk too)."""
    return Sam3dBodyConfig(
        image_size=64, backbone="tiny", vit_dim=32, vit_depth=2, vit_heads=2, vit_ffn=64,
        patch_size=16, dec_dim=32, dec_depth=2, dec_heads=2, dec_head_dim=8, dec_mlp=32,
        num_verts=40, num_faces=24,
    )


def _get(node: Any, path: str, default: Any) -> Any:
    for part in path.split("."):
        if node is None or part not in node:
            return default
        node = node[part]
    return node


def config_from_yaml(path: str | Path) -> Sam3dBodyConfig:
    """Build the config from an official ``model_config.yaml`` (MODEL.* keys); unknown keys ignored."""
    from omegaconf import OmegaConf

    try:
        conf = OmegaConf.load(str(path))
    except Exception as err:  # noqa: BLE001 - any YAML failure means an unusable file
        raise WeightsMismatchError(f"cannot read SAM-3D-Body config {path}: {err}") from err
    try:  # resolve ${...} interpolations where possible (the official loader does the same)
        raw = OmegaConf.to_container(conf, resolve=True)
    except Exception:  # noqa: BLE001 - unresolvable interpolations elsewhere in the file
        raw = OmegaConf.to_container(conf, resolve=False)
    model = (raw or {}).get("MODEL")
    if not isinstance(model, dict):
        raise WeightsMismatchError(f"{path} has no MODEL section; is it SAM-3D-Body's model_config.yaml?")
    base = Sam3dBodyConfig()
    try:
        return _from_model_section(model, base)
    except (KeyError, TypeError, ValueError) as err:
        raise WeightsMismatchError(f"{path}: unreadable SAM-3D-Body setting ({type(err).__name__}: {err})") from err


def _from_model_section(model: dict, base: Sam3dBodyConfig) -> Sam3dBodyConfig:
    name = str(_get(model, "BACKBONE.TYPE", base.backbone))
    if name == "custom":  # our extension, used by tests: explicit DINOv3-style sizes
        bb = model["BACKBONE"]
        dim, depth, heads, ffn, swiglu = (int(bb["EMBED_DIM"]), int(bb["DEPTH"]), int(bb["NUM_HEADS"]),
                                          int(bb["FFN_DIM"]), bool(bb.get("SWIGLU", True)))
    elif name in BACKBONES:
        dim, depth, heads, ffn, swiglu = BACKBONES[name]
    else:
        raise ValueError(f"backbone {name!r} is not supported (supported: {', '.join(BACKBONES)})")
    size = _get(model, "IMAGE_SIZE", [base.image_size])
    size = int(size[0] if isinstance(size, (list, tuple)) else size)
    if _get(model, "DECODER.ENABLE_TWOWAY", False):
        raise ValueError("two-way decoders are not supported")
    return Sam3dBodyConfig(
        image_size=size,
        image_mean=tuple(_get(model, "IMAGE_MEAN", base.image_mean)),
        image_std=tuple(_get(model, "IMAGE_STD", base.image_std)),
        backbone=name, vit_dim=dim, vit_depth=depth, vit_heads=heads, vit_ffn=ffn, vit_swiglu=swiglu,
        dec_dim=int(_get(model, "DECODER.DIM", base.dec_dim)),
        dec_depth=int(_get(model, "DECODER.DEPTH", base.dec_depth)),
        dec_heads=int(_get(model, "DECODER.HEADS", base.dec_heads)),
        dec_head_dim=int(_get(model, "DECODER.DIM_HEAD", base.dec_head_dim)),
        dec_mlp=int(_get(model, "DECODER.MLP_DIM", base.dec_mlp)),
        # absent keys take the official code's defaults (not this dataclass's)
        mask_embed_type=str(_get(model, "PROMPT_ENCODER.MASK_EMBED_TYPE", "none") or "none"),
        use_intrin_center=bool(_get(model, "DECODER.USE_INTRIN_CENTER", False)),
        mhr_mlp_depth=int(_get(model, "MHR_HEAD.MLP_DEPTH", 1)),
        mhr_mlp_div=int(_get(model, "MHR_HEAD.MLP_CHANNEL_DIV_FACTOR", 1)),
        cam_mlp_depth=int(_get(model, "CAMERA_HEAD.MLP_DEPTH", 1)),
        cam_mlp_div=int(_get(model, "CAMERA_HEAD.MLP_CHANNEL_DIV_FACTOR", 1)),
        hand_cam_scale=float(_get(model, "CAMERA_HEAD.DEFAULT_SCALE_FACTOR_HAND", 1.0)),
    )
