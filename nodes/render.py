"""Render Mesh: bodies drawn through the clip's camera (overlay, mesh, masks, normals, depth, OpenPose)."""

from __future__ import annotations

import numpy as np

import comfy.model_management as mm
from comfy_api.latest import io

from ..body4d_core import render as br
from ..body4d_core.errors import InputError
from . import comfy_glue as glue
from . import sockets as t


class RenderMesh(io.ComfyNode):
    """Render every person's mesh (or OpenPose skeleton) on each frame; per-id colours."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SAMBody4D_RenderMesh",
            display_name="Render Mesh (Body4D)",
            category=glue.CATEGORY,
            search_aliases=["render", "mesh overlay", "openpose", "normal map", "depth map", "silhouette"],
            description="Draws the bodies through the camera with a torch z-buffer (CPU or GPU, no OpenGL needed). "
                        "Colours match the mask overlay. Modes: overlay on the frames, mesh on black, per-id "
                        "silhouettes, normals and depth (ControlNet-style), OpenPose-18 skeleton from keypoints.",
            inputs=[
                t.Bodies.Input("bodies", tooltip="Bodies (smoothed or not)."),
                t.Camera.Input("camera", tooltip="The clip's camera (FOV node)."),
                io.Image.Input("frames", optional=True, tooltip="The clip's frames, the overlay background."),
                io.Combo.Input("mode", options=list(br.MODES), default="overlay",
                               tooltip="overlay: shaded meshes over the frames; mesh: on black; silhouette: flat "
                                       "id colours; normals: camera-space normal map; depth: near white; openpose: "
                                       "OpenPose-18 skeletons from the 2D keypoints (needs no vertices)."),
                io.Float.Input("opacity", default=0.85, min=0.0, max=1.0, step=0.05,
                               tooltip="Mesh opacity in overlay mode."),
                io.Int.Input("mask_obj_id", default=0, min=0, max=10000, advanced=True,
                             tooltip="MASK output: 0 = every person, else only this object id."),
                io.Int.Input("batch_size", default=16, min=1, max=1024, advanced=True,
                             tooltip="Frames per batch between progress updates and cancel checks."),
            ],
            outputs=[io.Image.Output("image"), io.Mask.Output("mask")],
        )

    @classmethod
    def execute(cls, bodies, camera, frames=None, mode="overlay", opacity=0.85, mask_obj_id=0,
                batch_size=16) -> io.NodeOutput:
        if mask_obj_id and int(mask_obj_id) not in bodies.obj_ids.tolist():
            raise InputError(f"mask_obj_id {mask_obj_id} is not among the bodies' ids {bodies.obj_ids.tolist()}")
        bg = None if frames is None else glue.image_to_uint8(frames)
        images, masks, ids = br.render_bodies(bg, bodies, camera, mode=mode, opacity=float(opacity),
                                              batch_size=int(batch_size), hooks=glue.hooks(bodies.num_frames),
                                              device=mm.get_torch_device(), return_ids=True)
        if mask_obj_id:
            masks = (ids == int(mask_obj_id)).astype(np.float32)
        return io.NodeOutput(glue.uint8_to_image(images), glue.masks_to_tensor(masks))


NODES = [RenderMesh]
