"""Settings of the amodal stage: occlusion thresholds and sampler, defaults as upstream."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

from ..errors import InputError


@dataclass(frozen=True)
class OcclusionConfig:
    """Thresholds of occlusion detection; every default is upstream's."""

    detection_resolution: tuple[int, int] = (256, 512)  # (H, W), swapped for portrait clips
    completion_resolution: tuple[int, int] = (512, 1024)
    swap_portrait: bool = True
    mask_threshold: float = 600.0 / 765.0  # mean of the predicted RGB in [0,1]; upstream sum(uint8 RGB) > 600
    keep_largest: bool = True
    iou_occluded: float = 0.55  # detection pass: occluded if IoU(visible, amodal) < this
    iou_final: float = 0.65  # completion-resolution pass: final cut
    border_fraction: float = 0.05  # object entirely inside this border -> not occluded
    long_wide_ratio: float = 0.70  # amodal box spanning >= this of the image side -> degenerate
    skinny_ratio: float = 0.20  # amodal box short/long side < this -> degenerate
    fill_single_gaps: bool = True
    pad_frames: int = 2
    refine: bool = True  # re-run amodal masks at the completion resolution (upstream); off: reuse detection masks

    def __post_init__(self) -> None:
        for name in ("detection_resolution", "completion_resolution"):
            h, w = (int(v) for v in getattr(self, name))
            if h < 8 or w < 8 or h % 8 or w % 8:
                raise InputError(f"amodal {name} must be two multiples of 8 (H, W), got {(h, w)}")
            object.__setattr__(self, name, (h, w))
        for name in ("mask_threshold", "iou_occluded", "iou_final", "border_fraction", "long_wide_ratio",
                     "skinny_ratio"):
            v = float(getattr(self, name))
            if not 0.0 <= v <= 1.0:
                raise InputError(f"amodal {name} must be in [0, 1], got {v}")
        if self.pad_frames < 0:
            raise InputError(f"amodal pad_frames must be >= 0, got {self.pad_frames}")


@dataclass(frozen=True)
class SamplerConfig:
    """Diffusion-VAS sampler settings (upstream: 25 steps, guidance 1.5, bucket 127, fps 8)."""

    steps: int = 25
    guidance: float = 1.5  # min = max guidance, constant over frames
    motion_bucket_id: int = 127
    fps: int = 8
    noise_aug_strength: float = 0.02
    decode_chunk_size: int = 8
    seed: int = 23
    window: int = 64  # frames per diffusion call (upstream: batches of 64)
    overlap: int = 8  # frames shared by consecutive windows, cross-faded
    people_batch: int = 4  # people denoised together in one UNet batch (halved on OOM)
    embed_order: str = "upstream"  # "upstream" (the released pipeline's CFG layout) or "aligned"

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise InputError(f"amodal steps must be >= 1, got {self.steps}")
        if self.window < 2:
            raise InputError(f"amodal window must be >= 2 frames, got {self.window}")
        if not 0 <= self.overlap < self.window:
            raise InputError(f"amodal overlap must be in [0, window), got {self.overlap} (window {self.window})")
        if self.decode_chunk_size < 1 or self.people_batch < 1:
            raise InputError("amodal decode_chunk_size and people_batch must be >= 1")
        if self.embed_order not in ("upstream", "aligned"):
            raise InputError(f"amodal embed_order must be 'upstream' or 'aligned', got {self.embed_order!r}")


def configs_from_mapping(values: Mapping[str, Any] | None) -> tuple[OcclusionConfig, SamplerConfig]:
    """Split a flat mapping (e.g. configs/body4d.yaml ``amodal:``) into the two configs."""
    values = dict(values or {})
    occ_names = {f.name for f in fields(OcclusionConfig)}
    smp_names = {f.name for f in fields(SamplerConfig)}
    unknown = set(values) - occ_names - smp_names
    if unknown:
        raise InputError(f"unknown amodal settings {sorted(unknown)}")
    occ = {k: (tuple(v) if k.endswith("resolution") else v) for k, v in values.items() if k in occ_names}
    return OcclusionConfig(**occ), SamplerConfig(**{k: v for k, v in values.items() if k in smp_names})
