"""SAM-3 through transformers: loading, point/box propagation, people detection."""

from .detect import SCAN, detect_people
from .frames import FrameSource, as_frame_source
from .loading import Sam3Bundle, build_processor, load_sam3
from .propagate import DIRECTIONS, pack_bits_torch, propagate

__all__ = [
    "DIRECTIONS", "SCAN", "FrameSource", "detect_people", "Sam3Bundle", "as_frame_source", "build_processor", "load_sam3",
    "pack_bits_torch", "propagate",
]
