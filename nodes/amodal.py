"""Amodal nodes: load Diffusion-VAS + Depth Anything, detect occlusions and complete occluded people."""

from __future__ import annotations

import logging

import torch

import comfy.model_management as mm
from comfy_api.latest import io

from ..body4d_core.amodal.config import OcclusionConfig, SamplerConfig
from ..body4d_core.amodal.models import load_amodal_models
from ..body4d_core.amodal.preview import amodal_union, composite_completed
from ..body4d_core.amodal.stage import run_amodal
from ..body4d_core.errors import InputError
from . import comfy_glue as glue
from . import sockets as t

log = logging.getLogger(__name__)
_PREVIEW_CHUNK = 32


def parse_resolution(text: str, what: str) -> tuple[int, int]:
    """'256x512' -> (256, 512) (height x width, multiples of 8)."""
    try:
        h, w = (int(v) for v in text.lower().replace(" ", "").split("x"))
    except ValueError as err:
        raise InputError(f"{what} must look like 256x512 (height x width), got {text!r}") from err
    return h, w


class LoadAmodal(io.ComfyNode):
    """Load Diffusion-VAS (amodal segmentation + content completion) and Depth Anything V2."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SAMBody4D_LoadAmodal",
            display_name="Load Amodal Models (Body4D)",
            category=glue.CATEGORY,
            search_aliases=["diffusion vas", "amodal", "occlusion", "depth anything", "content completion"],
            description="Load the two Diffusion-VAS pipelines (models/diffusion_vas/<folder>, diffusers layout: "
                        "model_index.json, unet/, vae/, image_encoder/, scheduler/, feature_extractor/) and Depth "
                        "Anything V2 (models/depth_anything/<folder>, transformers format). Download: python -m "
                        "body4d_core setup --models diffusion_vas_amodal diffusion_vas_completion depth_anything. "
                        "Depth-Anything-V2-Large is CC-BY-NC; the Small model is Apache-2.0.",
            inputs=[
                io.Combo.Input("amodal_checkpoint", options=glue.checkpoint_choices("diffusion_vas_amodal"),
                               tooltip="kaihuac/diffusion-vas-amodal-segmentation folder."),
                io.Combo.Input("completion_checkpoint", options=glue.checkpoint_choices("diffusion_vas_completion"),
                               tooltip="kaihuac/diffusion-vas-content-completion folder."),
                io.Combo.Input("depth_checkpoint", options=glue.checkpoint_choices("depth_anything"),
                               tooltip="A Depth-Anything-V2-*-hf folder."),
                io.Boolean.Input("content_completion", default=True,
                                 tooltip="Also load the completion model (off: occlusion flags and amodal masks "
                                         "only, about half the memory)."),
                io.Combo.Input("precision", options=["auto", "bf16", "fp16", "fp32"], default="auto", advanced=True,
                               tooltip="Weight and compute precision on the GPU (auto: bf16 where supported). "
                                       "The CPU always runs fp32."),
                glue.profile_input("loader"),
                glue.profile_input("amodal_accel"),
            ],
            outputs=[t.AmodalModel.Output("amodal_model")],
        )

    @classmethod
    def execute(cls, amodal_checkpoint, completion_checkpoint, depth_checkpoint, content_completion=True,
                precision="auto", loader="fast", amodal_accel="default") -> io.NodeOutput:
        profile = glue.node_profile(precision=precision, loader=loader, amodal_accel=amodal_accel)
        mdir = glue.resolve_checkpoint("diffusion_vas_amodal", amodal_checkpoint)
        cdir = glue.resolve_checkpoint("diffusion_vas_completion", completion_checkpoint) if content_completion \
            else None
        ddir = glue.resolve_checkpoint("depth_anything", depth_checkpoint)
        device = mm.get_torch_device()
        dtype = glue.choose_dtype(profile.precision, device)
        extra = {"accel": profile.accel_config()} if profile.amodal_accel != "default" else {}
        with profile.loading():
            models = load_amodal_models(device=device, dtype=dtype, mask_dir=mdir, content_dir=cdir, depth_dir=ddir,
                                        with_completion=content_completion, place="cpu", **extra,
                                        **profile.loader_kwargs())
        handle = glue.wrap_model(models.module_dict(), dtype, name="amodal", path=mdir)
        handle.info["models"] = models
        return io.NodeOutput(handle)


class AmodalComplete(io.ComfyNode):
    """Find occluded people and complete them: occlusion flags, amodal masks, completed RGB."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SAMBody4D_AmodalComplete",
            display_name="Amodal Complete (Body4D)",
            category=glue.CATEGORY,
            search_aliases=["amodal", "occlusion", "diffusion vas", "complete occluded", "inpaint person"],
            description="Depth once per clip, then Diffusion-VAS amodal masks for every person; a frame is occluded "
                        "when IoU(visible, amodal) is low (SAM-Body4D's rules). Only occluded stretches are "
                        "refined at the completion resolution and completed; clips without occlusion skip that "
                        "work. Long clips run in overlapping windows; people are batched.",
            inputs=[
                io.Image.Input("frames", tooltip="The clip's frames."),
                t.Tracks.Input("tracks", optional=True, tooltip="From Propagate (Body4D)."),
                t.AmodalModel.Input("amodal_model", tooltip="From Load Amodal Models (Body4D)."),
                t.Sam3TrackData.Input("sam3_track_data", optional=True,
                                      tooltip="Core SAM3 Video Track output, used when tracks is not connected."),
                io.Int.Input("steps", default=25, min=1, max=200,
                             tooltip="Sampler steps (upstream 25). Time grows with the steps. Fewer than 25 "
                                     "is lossy: completions differ from upstream's, and their quality is "
                                     "unchecked."),
                io.Float.Input("iou_occluded", default=0.55, min=0.0, max=1.0, step=0.01,
                               tooltip="Detection pass: occluded when IoU(visible, amodal) is below this."),
                io.Float.Input("iou_final", default=0.65, min=0.0, max=1.0, step=0.01,
                               tooltip="Completion-resolution pass: final occlusion cut."),
                io.Int.Input("seed", default=23, min=0, max=2**31 - 1, tooltip="Sampler seed (upstream 23)."),
                io.String.Input("detection_resolution", default="256x512", advanced=True,
                                tooltip="height x width of the detection pass (swapped for portrait clips)."),
                io.String.Input("completion_resolution", default="512x1024", advanced=True,
                                tooltip="height x width of refinement and completion (swapped for portrait)."),
                io.Int.Input("pad_frames", default=2, min=0, max=64, advanced=True,
                             tooltip="Frames added each side of an occluded stretch."),
                io.Float.Input("border_fraction", default=0.05, min=0.0, max=0.5, step=0.01, advanced=True,
                               tooltip="People lying entirely in this image border are never occluded."),
                io.Boolean.Input("refine", default=True, advanced=True,
                                 tooltip="Re-run amodal masks at the completion resolution on occluded stretches "
                                         "(upstream). Off: reuse the detection masks, roughly a third faster."),
                io.Boolean.Input("fill_single_gaps", default=True, advanced=True,
                                 tooltip="A visible frame between two occluded ones counts as occluded."),
                io.Float.Input("guidance", default=1.5, min=1.0, max=10.0, step=0.1, advanced=True,
                               tooltip="Classifier-free guidance (constant over frames)."),
                io.Int.Input("motion_bucket_id", default=127, min=0, max=255, advanced=True,
                             tooltip="SVD motion conditioning passed to the UNet (upstream: 127)."),
                io.Int.Input("fps", default=8, min=1, max=60, advanced=True,
                             tooltip="Frame-rate conditioning of the UNet, not the clip's fps (upstream: 8)."),
                io.Float.Input("noise_aug_strength", default=0.02, min=0.0, max=1.0, step=0.01, advanced=True,
                               tooltip="Noise added to the conditioning frames before encoding (upstream: 0.02)."),
                io.Int.Input("decode_chunk_size", default=8, min=1, max=64, advanced=True,
                             tooltip="Frames decoded together by the temporal VAE."),
                io.Int.Input("window", default=64, min=2, max=256, advanced=True,
                             tooltip="Frames per diffusion call; longer stretches use overlapping windows."),
                io.Int.Input("overlap", default=8, min=0, max=128, advanced=True,
                             tooltip="Frames shared (and cross-faded) by consecutive windows."),
                io.Int.Input("people_batch", default=4, min=1, max=64, advanced=True,
                             tooltip="Windows denoised together (halved automatically on out-of-memory)."),
                io.Combo.Input("embed_order", options=["upstream", "aligned"], default="upstream", advanced=True,
                               tooltip="upstream: the released pipeline's CFG embedding layout (what the "
                                       "weights were evaluated with); aligned: each frame gets its own embedding."),
            ],
            outputs=[
                t.Amodal.Output("amodal"),
                io.Mask.Output("amodal_mask", tooltip="All people's amodal masks together, one per frame."),
                io.Image.Output("preview", tooltip="The frames with completed people pasted in."),
            ],
        )

    @classmethod
    def execute(cls, frames, amodal_model, tracks=None, sam3_track_data=None, steps=25, iou_occluded=0.55,
                iou_final=0.65, seed=23, detection_resolution="256x512", completion_resolution="512x1024",
                pad_frames=2, border_fraction=0.05, refine=True, fill_single_gaps=True, guidance=1.5,
                motion_bucket_id=127,
                fps=8, noise_aug_strength=0.02, decode_chunk_size=8, window=64, overlap=8, people_batch=4,
                embed_order="upstream") -> io.NodeOutput:
        if frames is None or frames.ndim != 4 or frames.shape[0] < 1:
            raise InputError("frames must be an IMAGE batch [T, H, W, 3] with at least one frame")
        tracks = glue.tracks_input(tracks, sam3_track_data, (int(frames.shape[1]), int(frames.shape[2])))
        occ = OcclusionConfig(
            detection_resolution=parse_resolution(detection_resolution, "detection_resolution"),
            completion_resolution=parse_resolution(completion_resolution, "completion_resolution"),
            iou_occluded=iou_occluded, iou_final=iou_final, border_fraction=border_fraction,
            fill_single_gaps=fill_single_gaps, pad_frames=pad_frames, refine=refine)
        smp = SamplerConfig(steps=steps, guidance=guidance, motion_bucket_id=motion_bucket_id, fps=fps,
                            noise_aug_strength=noise_aug_strength, decode_chunk_size=decode_chunk_size, seed=seed,
                            window=window, overlap=min(overlap, window - 1), people_batch=people_batch,
                            embed_order=embed_order)
        amodal_model.ready()
        models = amodal_model.info["models"]
        rgb = frames[..., :3]
        amodal, stats = run_amodal(rgb, tracks, models, occ, smp, glue.hooks(1000))
        log.info("amodal: %d occluded person-frames, %d completed; timings %s", int(amodal.occluded.sum()),
                 stats.completed_frames, {k: round(v, 2) for k, v in stats.timings.items()})
        mask = glue.masks_to_tensor(amodal_union(amodal))
        preview = []
        for s in range(0, rgb.shape[0], _PREVIEW_CHUNK):
            u8 = glue.image_to_uint8(rgb[s:s + _PREVIEW_CHUNK])
            preview.append(glue.uint8_to_image(composite_completed(u8, amodal, start=s)))
        return io.NodeOutput(amodal, mask, torch.cat(preview, 0))


NODES = [LoadAmodal, AmodalComplete]
