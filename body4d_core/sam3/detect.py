"""People detection with SAM-3's text prompt "person": box prompts with ids 1..N for propagation."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from ..data import ObjectPrompt, Prompts
from ..errors import Body4DError, InputError
from ..runtime import NULL_HOOKS, Hooks, autocast
from .frames import FrameSource, as_frame_source

log = logging.getLogger(__name__)

TEXT = "person"
SCAN = -1  # frame_index value meaning "scan from the first frame until someone is found"


def _text_embeddings(bundle: Any, text: str) -> tuple[Any, torch.Tensor]:
    """Encode the text prompt once (reused for every scanned frame)."""
    proc = bundle.detector_processor
    tok = proc.tokenizer(text, return_tensors="pt", padding="max_length", max_length=32)
    ids = tok["input_ids"].to(bundle.device)
    mask = tok["attention_mask"].to(bundle.device)
    return bundle.detector.get_text_features(input_ids=ids, attention_mask=mask, return_dict=True), mask


def _nms(boxes: torch.Tensor, scores: torch.Tensor, iou: float) -> torch.Tensor:
    if iou >= 1.0 or boxes.shape[0] < 2:
        return torch.arange(boxes.shape[0])
    from torchvision.ops import nms

    return nms(boxes.float(), scores.float(), iou)


def detect_boxes(bundle: Any, source: FrameSource, frame: int, text_state: tuple[Any, torch.Tensor],
                 score_threshold: float, nms_iou: float) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (xyxy pixels, clipped to the frame) and scores of ``text`` on one frame, best first."""
    h, w = source.image_size
    proc, det = bundle.detector_processor, bundle.detector
    chw = source.get(frame).permute(2, 0, 1)
    pixels = proc.image_processor(images=chw, device=bundle.device, return_tensors="pt")["pixel_values"]
    text_embeds, text_mask = text_state
    out = det(pixel_values=pixels.to(bundle.dtype), text_embeds=text_embeds, attention_mask=text_mask)
    # boxes and scores only: the instance-segmentation post-processing gives the same boxes but also
    # upsamples every kept query's mask to the full frame (as int64), which the prompts never use
    res = proc.post_process_object_detection(out, threshold=score_threshold, target_sizes=[(h, w)])[0]
    boxes, scores = res["boxes"].float().cpu(), res["scores"].float().cpu()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    ok = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
    boxes, scores = boxes[ok], scores[ok]
    keep = _nms(boxes, scores, nms_iou)
    order = keep[torch.argsort(scores[keep], descending=True)]
    return boxes[order].numpy(), scores[order].numpy()


def detect_people(
    bundle: Any,
    frames: Any,
    frame_index: int = SCAN,
    score_threshold: float = 0.5,
    max_people: int = 5,
    nms_iou: float = 0.5,
    scan_step: int = 1,
    hooks: Hooks = NULL_HOOKS,
    text: str = TEXT,
) -> Prompts:
    """Box prompts for the people SAM-3 finds on one frame; ids 1..N from left to right.

    ``frame_index`` picks the frame; ``SCAN`` (-1) scans from frame 0 every ``scan_step``
    frames and uses the first frame with at least one person. The ``max_people`` highest
    scoring boxes above ``score_threshold`` (after box NMS at ``nms_iou``) are kept.
    """
    if getattr(bundle, "detector", None) is None or getattr(bundle, "detector_processor", None) is None:
        raise Body4DError("this SAM-3 model was loaded without its text detector; load it with detection enabled")
    source = as_frame_source(frames)
    if max_people < 1:
        raise InputError(f"max_people must be at least 1, got {max_people}")
    if not 0.0 <= score_threshold <= 1.0:
        raise InputError(f"score_threshold must be in 0..1, got {score_threshold}")
    if scan_step < 1:
        raise InputError(f"scan_step must be at least 1, got {scan_step}")
    if frame_index != SCAN and not 0 <= frame_index < source.num_frames:
        raise InputError(f"frame {frame_index} is past the clip ({source.num_frames} frames, "
                         f"0..{source.num_frames - 1}); use -1 to scan from the start")
    candidates = list(range(0, source.num_frames, scan_step)) if frame_index == SCAN else [frame_index]
    with torch.inference_mode(), autocast(bundle.device, bundle.dtype):
        text_state = _text_embeddings(bundle, text)
        for done, frame in enumerate(candidates, 1):
            hooks.check_interrupt()
            boxes, scores = detect_boxes(bundle, source, frame, text_state, score_threshold, nms_iou)
            if len(boxes):
                hooks.progress(len(candidates), len(candidates))  # found: the scan is done, the bar full
                return _to_prompts(boxes[:max_people], scores[:max_people], frame, source)
            hooks.progress(done, len(candidates))
    where = f"frame {frame_index}" if frame_index != SCAN else f"any of the {len(candidates)} scanned frames"
    raise InputError(f"no {text} found on {where} above score {score_threshold:g}; lower the threshold, "
                     f"pick another frame, or click points instead")


def _to_prompts(boxes: np.ndarray, scores: np.ndarray, frame: int, source: FrameSource) -> Prompts:
    order = np.argsort(boxes[:, 0], kind="stable")
    items = [ObjectPrompt(k + 1, frame, box=boxes[i]) for k, i in enumerate(order)]
    log.info("SAM-3 found %d person(s) on frame %d (scores %s)", len(items), frame,
             ", ".join(f"{scores[i]:.2f}" for i in order))
    return Prompts(items, source.image_size, source.num_frames)
