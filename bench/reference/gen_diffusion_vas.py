"""Regenerate tests/fixtures/reference/diffusion_vas.npz from the official Diffusion-VAS pipeline.

Usage: DIFFUSION_VAS_SRC=/path/to/diffusion-vas python bench/reference/gen_diffusion_vas.py

The tiny random networks of body4d_core.testing.amodal (seed SEED) are written in the released
diffusers layout, the official ``DiffusionVASPipeline`` (models/diffusion_vas) is built from that
folder with its own UNet class, and it samples a non-square 2-frame video from two conditions at
two guidance scales. Stored: conditions, seed, sampler settings and the official frames.
tests/test_q_reference.py runs our VASPipeline on the same weights (rebuilt from the seed) and
inputs. Not run by the test suite.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "reference" / "diffusion_vas.npz"
SEED, NOISE_SEED, T, H, W = 4, 23, 2, 16, 24
STEPS, GUIDANCES = 2, (1.5, 3.0)


def conditions() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    a = torch.zeros(1, T, 3, H, W) - 1
    a[:, :, :, 3:13, 14:22] = 1  # an off-centre mask, as 3 channels
    b = torch.rand(1, T, 3, H, W, generator=g) * 2 - 1
    return a, b


def main() -> None:
    sys.path.insert(0, str(Path(os.environ["DIFFUSION_VAS_SRC"]).expanduser().resolve()))
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler
    from models.diffusion_vas.pipeline_diffusion_vas import DiffusionVASPipeline
    from models.diffusion_vas.unet_diffusion_vas import UNetSpatioTemporalConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    from body4d_core.testing.amodal import build_vas_parts, save_vas_folder

    a, b = conditions()
    out = {"cond_a": a.numpy(), "cond_b": b.numpy(), "seed": np.array(SEED), "noise_seed": np.array(NOISE_SEED),
           "steps": np.array(STEPS), "guidances": np.array(GUIDANCES)}
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_vas_folder(build_vas_parts("tiny", seed=SEED), Path(tmp) / "vas")
        pipe = DiffusionVASPipeline(
            vae=AutoencoderKLTemporalDecoder.from_pretrained(folder / "vae"),
            image_encoder=CLIPVisionModelWithProjection.from_pretrained(folder / "image_encoder"),
            unet=UNetSpatioTemporalConditionModel.from_pretrained(folder / "unet"),
            scheduler=EulerDiscreteScheduler.from_pretrained(folder / "scheduler"),
            feature_extractor=CLIPImageProcessor.from_pretrained(folder / "feature_extractor"))
        pipe.set_progress_bar_config(disable=True)
        for g in GUIDANCES:
            frames = pipe(a, b, height=H, width=W, num_frames=T, num_inference_steps=STEPS, min_guidance_scale=g,
                          max_guidance_scale=g, fps=8, motion_bucket_id=127, noise_aug_strength=0.02,
                          decode_chunk_size=T, generator=torch.Generator().manual_seed(NOISE_SEED),
                          output_type="pt").frames
            out[f"frames_{g}"] = torch.as_tensor(frames).float().numpy()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **out)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes); frames {out[f'frames_{GUIDANCES[0]}'].shape}")


if __name__ == "__main__":
    main()
