"""Randomly initialised Diffusion-VAS / Depth Anything networks for tests and benchmarks.

``tiny`` builds the real architectures with minimal widths (CPU tests in seconds);
``real`` builds them at the released sizes (SVD-XT UNet + conv_in2, SVD temporal VAE,
CLIP ViT-H/14 image encoder, Depth Anything V2 Large) for GPU benchmarks without weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..amodal.unet import VASUNet

SVD_SCHEDULER = {
    "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "interpolation_type": "linear",
    "num_train_timesteps": 1000, "prediction_type": "v_prediction", "sigma_max": 700.0, "sigma_min": 0.002,
    "steps_offset": 1, "timestep_spacing": "leading", "timestep_type": "continuous", "use_karras_sigmas": True,
}

UNET = {
    "tiny": dict(block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlockSpatioTemporal",
                 "DownBlockSpatioTemporal"), up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
                 num_attention_heads=(2, 4), cross_attention_dim=32, layers_per_block=1, addition_time_embed_dim=8,
                 projection_class_embeddings_input_dim=24, sample_size=8, num_frames=25),
    "real": dict(block_out_channels=(320, 640, 1280, 1280), num_attention_heads=(5, 10, 20, 20),
                 cross_attention_dim=1024, layers_per_block=2, addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=768, sample_size=96, num_frames=25),
}
VAE = {
    "tiny": dict(block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2, layers_per_block=1,
                 latent_channels=4, sample_size=32),
    "real": dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                 layers_per_block=2, latent_channels=4, sample_size=768),
}
CLIP = {
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, patch_size=32,
                 image_size=224, projection_dim=32),
    "real": dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                 patch_size=14, image_size=224, projection_dim=1024, hidden_act="gelu"),
}
DEPTH = {
    "tiny": dict(backbone=dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, out_indices=[1, 2, 3, 4],
                               image_size=70, patch_size=14, mlp_ratio=2),
                 reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16,
                 head_hidden_size=8, size=70),
    "real": dict(backbone=dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                               out_indices=[5, 12, 18, 24], image_size=518, patch_size=14, mlp_ratio=4),
                 reassemble_hidden_size=1024, neck_hidden_sizes=[256, 512, 1024, 1024], fusion_hidden_size=256,
                 head_hidden_size=32, size=518),
}


def build_vas_parts(preset: str = "tiny", seed: int = 0, device: str | torch.device = "cpu") -> dict:
    """Random VASUNet, temporal VAE, CLIP encoder and SVD Euler scheduler of a preset size."""
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    with torch.device(device):
        unet = VASUNet(**UNET[preset])
        vae = AutoencoderKLTemporalDecoder(**VAE[preset])
        enc = CLIPVisionModelWithProjection(CLIPVisionConfig(**CLIP[preset]))
    # .to(device) again: tensors made with the legacy torch.Tensor([...]) constructor (diffusers'
    # AlphaBlender.mix_factor) ignore the device context above and would stay on the CPU.
    return {"unet": unet.to(device).eval(), "vae": vae.to(device).eval(), "image_encoder": enc.to(device).eval(),
            "scheduler": EulerDiscreteScheduler(**SVD_SCHEDULER)}


def build_vas_pipeline(preset: str = "tiny", seed: int = 0, device: str | torch.device = "cpu",
                       dtype: torch.dtype = torch.float32):
    """A VASPipeline with random weights (weights cast to ``dtype`` only on CUDA)."""
    from ..amodal.sampler import VASPipeline

    parts = build_vas_parts(preset, seed, device)
    if torch.device(device).type == "cuda":
        for k in ("unet", "vae", "image_encoder"):
            parts[k].to(dtype)
    return VASPipeline(parts["unet"], parts["vae"], parts["image_encoder"], parts["scheduler"], dtype=dtype)


def random_conditions(b: int, t: int, h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random sampler conditions in [-1, 1]: a 1-channel [b, t, 1, h, w] and a 3-channel [b, t, 3, h, w]."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, t, 1, h, w, generator=g) * 2 - 1, torch.rand(b, t, 3, h, w, generator=g) * 2 - 1


def save_vas_folder(parts: dict, directory: str | Path) -> Path:
    """Write parts in the released diffusers folder layout (model_index.json + one folder per part)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    parts["unet"].save_pretrained(directory / "unet")
    cfg_path = directory / "unet" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["_class_name"] = "UNetSpatioTemporalConditionModel"  # what the released folders say
    cfg_path.write_text(json.dumps(cfg))
    parts["vae"].save_pretrained(directory / "vae")
    parts["image_encoder"].save_pretrained(directory / "image_encoder")
    parts["scheduler"].save_pretrained(directory / "scheduler")
    (directory / "feature_extractor").mkdir(exist_ok=True)
    (directory / "feature_extractor" / "preprocessor_config.json").write_text(json.dumps({
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "CLIPImageProcessor"}))
    (directory / "model_index.json").write_text(json.dumps({
        "_class_name": "DiffusionVASPipeline", "feature_extractor": ["transformers", "CLIPImageProcessor"],
        "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "unet": ["diffusion_vas", "UNetSpatioTemporalConditionModel"],
        "vae": ["diffusers", "AutoencoderKLTemporalDecoder"]}))
    return directory


def build_depth_model(preset: str = "tiny", seed: int = 0, device: str | torch.device = "cpu"):
    """Random DepthAnythingForDepthEstimation of a preset size, plus its preprocessing settings."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    p = DEPTH[preset]
    torch.manual_seed(seed)
    cfg = DepthAnythingConfig(backbone_config=Dinov2Config(**p["backbone"], reshape_hidden_states=False),
                              reassemble_hidden_size=p["reassemble_hidden_size"],
                              neck_hidden_sizes=p["neck_hidden_sizes"], fusion_hidden_size=p["fusion_hidden_size"],
                              head_hidden_size=p["head_hidden_size"], depth_estimation_type="relative")
    with torch.device(device):
        model = DepthAnythingForDepthEstimation(cfg).eval()
    prep = {"size": p["size"], "multiple": 14, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    return model, prep


def save_depth_folder(model, prep: dict, directory: str | Path) -> Path:
    """Write a transformers Depth Anything folder (config, safetensors, preprocessor_config.json)."""
    directory = Path(directory)
    model.save_pretrained(directory)
    (directory / "preprocessor_config.json").write_text(json.dumps({
        "size": {"height": prep["size"], "width": prep["size"]}, "ensure_multiple_of": prep["multiple"],
        "keep_aspect_ratio": True, "image_mean": list(prep["mean"]), "image_std": list(prep["std"]),
        "image_processor_type": "DPTImageProcessor"}))
    return directory


def randomise(module: torch.nn.Module, scale: float = 0.3) -> torch.nn.Module:
    """Every parameter of ``module`` redrawn from N(0, scale^2) (torch's global generator): blocks whose default
    initialisation is degenerate (zero-initialised outputs, alpha blends at 0.5) compute something to compare."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * scale)
    return module
