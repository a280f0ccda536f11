"""One tracked frame of SAM-3 for all objects at once (memory attention and mask decoder batched).

transformers' ``Sam3TrackerVideoModel.forward`` loops over objects and runs the memory attention
and mask decoder once per object, with a host-device sync per object (the object pointers'
temporal offsets are uploaded from pageable memory). On frames where no object has new prompts
the objects only differ by their memory bank, so objects whose memory banks have the same
length go through both as one batch. Same session bookkeeping, same arithmetic per object.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..runtime import upload


@dataclass
class StepOutput:
    """What ``Sam3TrackerVideoModel.forward`` returns, as far as propagate uses it."""

    object_ids: list[int]
    pred_masks: torch.Tensor  # [N, 1, h, w] low-res logits, objects in session order
    object_score_logits: torch.Tensor  # [N]


def _pointer_inputs(model: Any, offsets: list[int], tokens: list[torch.Tensor], max_ptrs: int,
                    device: torch.device, pe_memo: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Object pointers [P, 1, mem_dim] and their temporal position embeddings, for one object."""
    from transformers.models.sam3_tracker_video.modeling_sam3_tracker_video import get_1d_sine_pe

    pointers = torch.stack(tokens, dim=0)  # [P, 1, C]
    channels, mem_dim = model.hidden_dim, model.mem_dim
    key = (tuple(offsets), max_ptrs, pointers.dtype)
    pos = pe_memo.get(key)
    if pos is None:
        if model.config.enable_temporal_pos_encoding_for_object_pointers:
            diffs = upload(torch.tensor(offsets, dtype=torch.float32), device) / float(max_ptrs - 1)
            sine = get_1d_sine_pe(diffs, dim=channels).to(pointers.dtype)
            pos = model.temporal_positional_encoding_projection_layer(sine).unsqueeze(1).expand(-1, 1, mem_dim)
        else:
            pos = pointers.new_zeros(len(offsets), 1, mem_dim)
        if mem_dim < channels:
            pos = pos.repeat_interleave(channels // mem_dim, dim=0)
        pe_memo[key] = pos
    if mem_dim < channels:
        splits = channels // mem_dim
        pointers = pointers.reshape(-1, 1, splits, mem_dim).permute(0, 2, 1, 3).flatten(0, 1)
    return pointers, pos


def _memory_of(model: Any, session: Any, obj_idx: int, frame_idx: int, reverse: bool,
               device: torch.device, pe_memo: dict) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One object's memory bank [M, 1, 64], its position embeddings, and its pointer-token count."""
    previous = model._gather_memory_frame_outputs(session, obj_idx, frame_idx, reverse)
    memories, positions = model._build_memory_attention_inputs(previous, device)
    offsets, tokens, max_ptrs = model._get_object_pointers(session, obj_idx, frame_idx, session.num_frames,
                                                           device, reverse, True)
    n_ptr = 0
    if tokens:
        pointers, pointer_pos = _pointer_inputs(model, offsets, tokens, max_ptrs, device, pe_memo)
        memories.append(pointers)
        positions.append(pointer_pos)
        n_ptr = pointers.shape[0]
    return torch.cat(memories, dim=0).to(dtype=session.dtype), torch.cat(positions, dim=0), n_ptr


Decoded = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # pred, pointer, high-res, score logits
Decoder = Callable[[Any, list[torch.Tensor], list[torch.Tensor], torch.Tensor, torch.Tensor, int], Decoded]


def decode_group(model: Any, feats: list[torch.Tensor], pos: list[torch.Tensor], memory: torch.Tensor,
                 memory_pos: torch.Tensor, n_ptr: int) -> Decoded:
    """Memory attention + mask decoder for a batch of objects (memory [M, B, 64]) on one frame's features.

    Returns the decoder's pred_masks, object_pointer, high_res_masks and object_score_logits: a pure
    function of its tensors (nothing read from or written to the session), so it can be graphed.
    """
    batch = memory.shape[1]
    channels = model.hidden_dim
    height, width = model.backbone_feature_sizes[-1]
    fused = model.memory_attention(
        current_vision_features=feats[-1].expand(-1, batch, -1),
        current_vision_position_embeddings=pos[-1].expand(-1, batch, -1),
        memory=memory,
        memory_posision_embeddings=memory_pos,
        num_object_pointer_tokens=n_ptr,
    )  # [1, B, HW, C]
    pix_feat = fused[0].transpose(1, 2).view(batch, channels, height, width)
    high_res = [x.permute(1, 2, 0).view(x.size(1), x.size(2), *s).expand(batch, -1, -1, -1)
                for x, s in zip(feats[:-1], model.backbone_feature_sizes[:-1])]
    out = model._single_frame_forward(pixel_values=None, image_embeddings=high_res + [pix_feat],
                                      multimask_output=model._use_multimask(False, None))
    return out.pred_masks, out.object_pointer, out.high_res_masks, out.object_score_logits


def _track_group(model: Any, feats: list[torch.Tensor], pos: list[torch.Tensor],
                 banks: list[tuple[torch.Tensor, torch.Tensor, int]], decoder: Decoder = decode_group) -> Decoded:
    """Memory attention + mask decoder for objects whose memory banks have one shape, as one batch."""
    memory = torch.cat([b[0] for b in banks], dim=1) if len(banks) > 1 else banks[0][0]
    memory_pos = torch.cat([b[1] for b in banks], dim=1) if len(banks) > 1 else banks[0][1]
    return decoder(model, feats, pos, memory, memory_pos, banks[0][2])


def _pick(x: torch.Tensor, i: int, batch: int) -> torch.Tensor:
    """Object ``i`` of a batched decoder output, shaped like a batch-of-one output.

    With multimask selection the decoder indexes [batch, object, best] with index tensors
    that broadcast to [B, B]; entry (i, i) is object i's own pick (the rest is discarded; the
    copy lets the [B, B] tensor go instead of living on in the memory bank).
    """
    if batch > 1 and x.dim() >= 2 and x.shape[0] == batch and x.shape[1] == batch:
        return x[i:i + 1, i:i + 1].clone()
    return x[i:i + 1]


def can_batch(model: Any, session: Any) -> bool:
    """Whether the batched step applies: memory on, no object waiting for its prompt to be used."""
    return model.num_maskmem > 0 and not session.obj_with_new_inputs and session.get_obj_num() > 0


def tracked_step(model: Any, session: Any, frame_idx: int, frame: torch.Tensor, reverse: bool,
                 decoder: Decoder = decode_group) -> StepOutput:
    """``model(inference_session=session, frame_idx=frame_idx, frame=frame, reverse=reverse)``, batched.

    ``decoder``: runs memory attention + mask decoder (``decode_group``, or a graphed equivalent).
    """
    frame_idx = session.add_new_frame(frame, frame_idx)
    feats, pos = model._prepare_vision_features(session, frame_idx, batch_size=1)  # the backbone, once
    device = feats[-1].device
    n = session.get_obj_num()
    masks: list[Any] = [None] * n
    scores: list[Any] = [None] * n
    groups: dict[tuple, list[tuple[int, tuple]]] = {}
    pe_memo: dict = {}
    for obj_idx in range(n):
        if frame_idx in session.output_dict_per_obj[obj_idx]["cond_frame_outputs"]:  # prompted here: reuse
            masks[obj_idx] = session.get_output(obj_idx, frame_idx, "pred_masks", is_conditioning_frame=True)
            scores[obj_idx] = session.get_output(obj_idx, frame_idx, "object_score_logits",
                                                 is_conditioning_frame=True).squeeze(-1)
            continue
        bank = _memory_of(model, session, obj_idx, frame_idx, reverse, device, pe_memo)
        groups.setdefault((bank[0].shape[0], bank[2]), []).append((obj_idx, bank))
    tracked: dict[int, dict] = {}
    for members in groups.values():
        pred, pointer, high_res, score = _track_group(model, feats, pos, [bank for _, bank in members], decoder)
        b = len(members)
        for i, (obj_idx, _) in enumerate(members):
            tracked[obj_idx] = {
                "pred_masks": _pick(pred, i, b),
                "object_pointer": _pick(pointer, i, b),
                "high_res_masks": _pick(high_res, i, b),
                "object_score_logits": score[i:i + 1],
            }
    order = sorted(tracked)
    for obj_idx in order:
        session.store_output(obj_idx, frame_idx, output_value=tracked[obj_idx], is_conditioning_frame=False)
        masks[obj_idx] = tracked[obj_idx]["pred_masks"]
        scores[obj_idx] = tracked[obj_idx]["object_score_logits"].squeeze(-1)
        session.frames_tracked_per_obj[obj_idx][frame_idx] = {"reverse": reverse}
    model._batch_encode_memories(
        inference_session=session, frame_idx=frame_idx, objects_needing_memory_encoding=order,
        high_res_masks_for_memory=[tracked[o]["high_res_masks"] for o in order],
        object_score_logits_for_memory=[tracked[o]["object_score_logits"] for o in order],
        is_mask_from_pts_per_obj=[False] * len(order),
    )
    return StepOutput(session.obj_ids.copy(), torch.cat(masks, dim=0), torch.cat(scores, dim=0))
