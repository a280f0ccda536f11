"""Tiny random SAM-3 twins (tracker, detector, bundle) and random checkpoints in ``facebook/sam3``'s layout.

The tiny ones run the real transformers code paths on the CPU in seconds (tests, demos); the
real-size writer serves GPU benchmarks without the gated weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..sam3.loading import Sam3Bundle, _transformers, build_processor, share_backbone


def tiny_tracker_config(image_size: int = 112) -> Any:
    """A small Sam3TrackerVideoConfig with the real architecture (for CPU tests)."""
    tf = _transformers()
    patch = 14
    vit = dict(model_type="sam3_vit_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=2, image_size=image_size, patch_size=patch, window_size=4,
               global_attn_indexes=[1], pretrain_image_size=56)
    vision = dict(model_type="sam3_vision_model", backbone_config=vit, fpn_hidden_size=128)
    return tf.Sam3TrackerVideoConfig(
        vision_config=vision,
        prompt_encoder_config=dict(hidden_size=128, image_size=image_size, patch_size=patch),
        mask_decoder_config=dict(hidden_size=128, mlp_dim=128, num_attention_heads=2, iou_head_hidden_dim=32),
        memory_attention_hidden_size=128, memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=64, memory_encoder_hidden_size=128,
        memory_encoder_output_channels=64,  # fixed by the memory attention's key/value width
        mask_downsampler_embed_dim=128, memory_fuser_embed_dim=128, memory_fuser_intermediate_dim=64,
        image_size=image_size,
    )


def tiny_sam3(image_size: int = 112, seed: int = 0, with_detector: bool = False,
              presence_bias: float | None = 4.0) -> Sam3Bundle:
    """A randomly initialised small SAM-3 bundle on the CPU, exercising the real code path.

    Random weights rarely call an object present (masks then come out empty); a positive
    ``presence_bias`` on the tracker's object-score head makes tests see real masks.
    """
    tf = _transformers()
    torch.manual_seed(seed)
    tracker = tf.Sam3TrackerVideoModel(tiny_tracker_config(image_size)).eval()
    if presence_bias is not None:
        with torch.no_grad():
            tracker.mask_decoder.pred_obj_score_head.proj_out.bias.fill_(presence_bias)
    detector = det_proc = None
    if with_detector:
        detector, det_proc = tiny_detector(image_size, seed)
        share_backbone(tracker, detector)
    return Sam3Bundle(tracker, build_processor(image_size), detector, det_proc, torch.float32)


def save_tiny_checkpoint(directory: str | Path, image_size: int = 112, seed: int = 0) -> Path:
    """Write a tiny random SAM-3 in the official ``facebook/sam3`` on-disk layout (tests, demos).

    A ``Sam3VideoModel`` (detector + tracker, keys ``detector_model.*``, ``tracker_model.*``,
    ``tracker_neck.*``) plus the detector processor files, loadable by ``load_sam3``.
    """
    tf = _transformers()
    detector, det_proc = tiny_detector(image_size, seed)
    cfg = tf.Sam3VideoConfig(detector_config=detector.config.to_dict(),
                             tracker_config=tiny_tracker_config(image_size).to_dict())
    torch.manual_seed(seed)
    model = tf.Sam3VideoModel(cfg).eval()
    with torch.no_grad():  # objects present, so masks are not empty (see tiny_sam3)
        model.tracker_model.mask_decoder.pred_obj_score_head.proj_out.bias.fill_(4.0)
    directory = _write_video_model(model, directory)
    det_proc.save_pretrained(str(directory))
    # the tracker's video processor file too, as facebook/sam3 ships it (else loading falls back with a warning)
    build_processor(image_size).video_processor.save_pretrained(str(directory))
    return directory


def _write_video_model(model: Any, directory: str | Path, weight_dtype: torch.dtype | None = None) -> Path:
    """config.json + model.safetensors with the plain module keys (parameters cast to ``weight_dtype``)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(str(directory))
    # the plain module keys, as in the official checkpoint (save_pretrained would re-prefix tracker keys)
    from safetensors.torch import save_file

    params = {name for name, _ in model.named_parameters()}
    state = {}
    for k, v in model.state_dict().items():
        if weight_dtype is not None and k in params and v.is_floating_point():
            v = v.to(weight_dtype)
        state[k] = v.detach().cpu().clone().contiguous()
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory


def save_real_size_checkpoint(directory: str | Path, seed: int = 0, device: str | torch.device = "cpu",
                              weight_dtype: torch.dtype = torch.bfloat16) -> Path:
    """Write a random ``Sam3VideoModel`` at facebook/sam3's sizes (config defaults) in its on-disk layout.

    For GPU benchmarks without the gated weights: built on ``device`` (fast on a GPU),
    parameters saved in ``weight_dtype`` (load_sam3 casts them to its compute dtype). No
    tokenizer files are written, so only point/box prompts work (no text detection).
    """
    tf = _transformers()
    torch.manual_seed(seed)
    with torch.device(device):
        model = tf.Sam3VideoModel(tf.Sam3VideoConfig()).eval()
    with torch.no_grad():  # objects present, so masks are not empty (see tiny_sam3)
        model.tracker_model.mask_decoder.pred_obj_score_head.proj_out.bias.fill_(4.0)
    out = _write_video_model(model, directory, weight_dtype)
    del model
    return out


def tiny_detector(image_size: int = 112, seed: int = 0) -> tuple[Any, Any]:
    """A small random Sam3Model (same tiny ViT as the tiny tracker) and a processor with a toy tokenizer."""
    import transformers as tf
    from tokenizers import Tokenizer, models, pre_tokenizers

    torch.manual_seed(seed + 1)
    hid = 128
    vision = tiny_tracker_config(image_size).vision_config.to_dict()
    text = dict(model_type="clip_text_model", vocab_size=64, hidden_size=32, intermediate_size=64, projection_dim=32,
                num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=32,
                pad_token_id=0, bos_token_id=1, eos_token_id=2)
    block = dict(hidden_size=hid, num_layers=1, num_attention_heads=2, intermediate_size=64)
    cfg = tf.Sam3Config(vision_config=vision, text_config=text, geometry_encoder_config=block,
                        detr_encoder_config=block, detr_decoder_config=dict(block, num_queries=10),
                        mask_decoder_config=dict(hidden_size=hid, num_upsampling_stages=3, num_attention_heads=2))
    model = tf.Sam3Model(cfg).eval()
    vocab = {"<pad>": 0, "<|startoftext|>": 1, "<|endoftext|>": 2, "person": 3, "<unk>": 4}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = tf.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                      bos_token="<|startoftext|>", eos_token="<|endoftext|>")
    size = {"height": image_size, "width": image_size}
    mask = {"height": image_size * 2 // 7, "width": image_size * 2 // 7}
    image_proc = tf.Sam3ImageProcessor(size=size, mask_size=mask)
    return model, tf.Sam3Processor(image_processor=image_proc, tokenizer=fast)
