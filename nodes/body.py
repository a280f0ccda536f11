"""SAM-3D-Body nodes: load the model, estimate MHR bodies for every tracked person in every frame."""

from __future__ import annotations

import logging

import torch

from comfy_api.latest import io

from ..body4d_core.data import Camera, check_same_frames
from ..body4d_core.errors import InputError
from ..body4d_core.sam3d_body import estimate_bodies, load_sam3d_body
from ..body4d_core.sam3d_body.runner import AUTO_COMPILE_MIN_CROPS
from ..body4d_core.sam3d_body.writer import BodiesWriter
from ..body4d_core.body_inputs import body_items
from ..body4d_core.interop.mhr_pose_data import to_mhr_pose
from . import comfy_glue as glue
from . import sockets as t

log = logging.getLogger(__name__)


class LoadSAM3DBody(io.ComfyNode):
    """Load SAM-3D-Body (facebook/sam-3d-body-dinov3) from models/sam3d_body/<folder>."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SAMBody4D_LoadSAM3DBody",
            display_name="Load SAM 3D Body (Body4D)",
            category=glue.CATEGORY,
            search_aliases=["sam3d body", "sam 3d body", "mhr", "human mesh model"],
            description="Load SAM-3D-Body from models/sam3d_body/<folder>/ holding model.ckpt, model_config.yaml and "
                        "assets/mhr_model.pt (download: python -m body4d_core setup --models sam3d_body; the "
                        "Hugging Face repo is gated), or from ComfyUI core's repackaged file "
                        "models/detection/sam_3d_body_dinov3_bf16.safetensors (Comfy-Org/sam-3d-body, the MHR rig "
                        "included). Loaded safely (no pickled code runs).",
            inputs=[
                io.Combo.Input("checkpoint", options=glue.checkpoint_choices("sam3d_body")
                               + glue.detection_choices(glue.SAM3D_BODY_FILE),
                               tooltip="A folder inside models/sam3d_body with the official files, or detection/<file>: "
                                       "the safetensors core's Load SAM3D Body Model uses (no second download)."),
                io.Combo.Input("precision", options=["auto", "bf16", "fp16", "fp32"], default="auto", advanced=True,
                               tooltip="Backbone precision on the GPU (scoped autocast; weights stay fp32). "
                                       "Heads and the MHR rig always run fp32; the CPU always runs fp32."),
                io.Combo.Input("compile", options=["auto", "off", "max-autotune", "always"], default="auto",
                               advanced=True,
                               tooltip="torch.compile the backbone's ViT blocks and the decoder layers on a CUDA GPU "
                                       "(equal up to floating-point rounding; ~1.2-1.3x faster per crop once "
                                       "compiled, compiled once per process). auto: only where it pays: jobs of at "
                                       f"least {AUTO_COMPILE_MIN_CROPS['body']} crops in body mode or "
                                       f"{AUTO_COMPILE_MIN_CROPS['full']} in full mode (a first compile takes "
                                       "tens of seconds, less with a warm compile cache), or once this process has compiled for this batch "
                                       "size; eager otherwise or without Triton. always: compile for every job. "
                                       "max-autotune: always, slower to compile, sometimes faster. off: eager."),
                glue.profile_input("attention"),
                glue.profile_input("crop_kernel"),
                glue.profile_input("loader"),
            ],
            outputs=[t.BodyModel.Output("sam3d_body_model")],
        )

    @classmethod
    def execute(cls, checkpoint, precision="auto", compile="auto", attention="auto", crop_kernel="auto",
                loader="fast") -> io.NodeOutput:
        profile = glue.node_profile(precision=precision, compile=compile, attention=attention, crop_kernel=crop_kernel,
                                    loader=loader)
        if glue.is_detection_choice(checkpoint):
            model_dir = glue.resolve_detection_file(checkpoint)
        else:
            model_dir = glue.resolve_checkpoint("sam3d_body", checkpoint)
        with profile.loading():
            model = load_sam3d_body(model_dir, device="cpu", **profile.loader_kwargs())
        dtype = glue.choose_dtype(profile.precision)
        # the profile travels in the handle: BodyBatch reads its attention and crop kernel
        return io.NodeOutput(glue.wrap_model(model, dtype, name="sam3d_body", path=model_dir,
                                             compile=profile.compile_mode, profile=profile))


class BodyBatch(io.ComfyNode):
    """SAM-3D-Body for every tracked person on every frame, batched across people and frames."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SAMBody4D_BodyBatch",
            display_name="SAM 3D Body Batch (Body4D)",
            category=glue.CATEGORY,
            search_aliases=["sam3d body", "hmr", "human mesh", "mhr", "body estimation", "4d humans"],
            description="Estimates MHR bodies (pose, hands, shape, camera translation, keypoints, mesh) for every "
                        "object id on every frame where it has a mask. Occluded frames (from Amodal Complete) use "
                        "the completed frame, the amodal mask and its box. Results are keyed by object id.",
            inputs=[
                t.BodyModel.Input("sam3d_body_model", tooltip="From Load SAM 3D Body (Body4D)."),
                io.Image.Input("frames", tooltip="The clip's frames (the ones the tracks were computed on)."),
                t.Tracks.Input("tracks", optional=True, tooltip="Per-object masks from Propagate (Body4D)."),
                t.Sam3TrackData.Input("sam3_track_data", optional=True,
                                      tooltip="Or core SAM3 Video Track output (object k becomes id k + 1)."),
                t.Amodal.Input("amodal", optional=True,
                               tooltip="Amodal Complete output: occluded frames use completed frames + amodal masks."),
                t.Camera.Input("camera", optional=True,
                               tooltip="Intrinsics from FOV (Body4D); default f = sqrt(H^2 + W^2), centred."),
                io.Combo.Input("mode", options=["full", "body"], default="full",
                               tooltip="full: body decoder + hand decoder refinement (upstream default); "
                                       "body: body decoder only (about 3x faster)."),
                io.Int.Input("batch_size", default=64, min=1, max=1024, advanced=True,
                             tooltip="People crops per forward pass; halved automatically on GPU out-of-memory."),
                io.Boolean.Input("vertices", default=True, advanced=True,
                                 tooltip="Keep per-frame mesh vertices (needed by mesh rendering; ~0.2 MB per "
                                         "person-frame). Off keeps parameters and keypoints only."),
                io.Combo.Input("decoder_precision", options=["fp32", "bf16"], default="fp32", advanced=True,
                               tooltip="Precision of the pose decoders' matrix multiplies on the GPU. fp32 as "
                                       "upstream; bf16 is faster (body mode) and slightly less exact. Heads, "
                                       "norms and the MHR rig always run fp32."),
                io.Boolean.Input("backbone_fp8", default=False, advanced=True,
                                 tooltip="Experimental: the backbone's linear layers run FP8 (E4M3, per-row scales, "
                                         "activations quantised by fused Triton kernels) on GPUs that support it (Ada, "
                                         "Hopper or newer; elsewhere ignored with a log line). Faster body mode, "
                                         "especially together with bf16 decoders; lossy: results deviate slightly "
                                         "from the bf16 backbone."),
                io.Float.Input("min_box", default=2.0, min=1.0, max=10000.0, advanced=True,
                               tooltip="Frames where a mask's box is narrower or lower than this (pixels) are "
                                       "left missing."),
            ],
            outputs=[t.Bodies.Output("bodies"),
                     t.MhrPoseData.Output("mhr_pose_data", tooltip="The same bodies as core MHR_POSE_DATA (for "
                                                                   "core SAM3D Body render / GLB / BVH nodes).")],
        )

    @classmethod
    def execute(cls, sam3d_body_model, frames, tracks=None, sam3_track_data=None, amodal=None, camera=None,
                mode="full", batch_size=64, vertices=True, min_box=2.0, decoder_precision="fp32",
                backbone_fp8=False) -> io.NodeOutput:
        if frames.ndim != 4 or frames.shape[0] < 1:
            raise InputError(f"frames must be an IMAGE batch [T, H, W, 3], got shape {tuple(frames.shape)}")
        n, size = int(frames.shape[0]), (int(frames.shape[1]), int(frames.shape[2]))
        trk = glue.tracks_input(tracks, sam3_track_data, size)
        check_same_frames(frames=n, tracks=trk.num_frames, **({"amodal": amodal.num_frames} if amodal else {}))
        cam = (camera if camera is not None else Camera.default(size, n)).check_frames(n)
        items = body_items(trk, amodal, min_box)
        if not items:
            log.warning("no object has a mask on any frame; returning empty bodies")
        model = sam3d_body_model.ready()
        profile = sam3d_body_model.info.get("profile")
        if profile is not None and profile.attention != "auto":  # a pinned attention kernel: the profile compiles
            in_effect = profile.compile_body(model, batch_size, crops=len(items), body_mode=mode)
        else:
            in_effect = model.compile_for(sam3d_body_model.info.get("compile", ""), batch_size, crops=len(items),
                                          body_mode=mode)
        if in_effect is not None:
            log.info("SAM 3D Body: backbone %s, decoder %s", in_effect["backbone"] or "eager",
                     in_effect["decoder"] or "eager")
        glue.node_profile(decoder_precision=decoder_precision, backbone_fp8=bool(backbone_fp8))  # checks the choices
        dec_dtype = torch.bfloat16 if decoder_precision == "bf16" else torch.float32
        writer = BodiesWriter(items, n, size, obj_ids=trk.obj_ids.tolist())  # each batch goes straight in
        estimate_bodies(model, frames[..., :3], items, cam, mode=mode, batch_size=batch_size,
                        hooks=glue.hooks(len(items)), dtype=sam3d_body_model.dtype,
                        return_vertices=vertices, decoder_dtype=dec_dtype, fp8=backbone_fp8, into=writer,
                        **({"crop_kernel": profile.crop_kernel} if profile and profile.crop_kernel != "auto"
                           else {}))
        bodies = writer.result(model.faces.detach().cpu().numpy())
        return io.NodeOutput(bodies, to_mhr_pose(bodies, cam, model=model))


NODES = [LoadSAM3DBody, BodyBatch]
