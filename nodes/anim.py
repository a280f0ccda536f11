"""Save Animation: one skinned glTF scene (every person as an MHR rig, the camera) + BVH + flags."""

from __future__ import annotations

import os
from pathlib import Path

import folder_paths
from comfy_api.latest import io

from ..body4d_core.anim import write_animation
from ..body4d_core.anim.world_input import scene_world_from
from ..body4d_core.data import Camera
from ..body4d_core.errors import InputError
from ..body4d_core.interop.mhr_pose_data import from_mhr_pose
from . import comfy_glue as glue
from . import sockets as t

FORMAT_CHOICES = {"glb + bvh": ("glb", "bvh", "npz"), "glb": ("glb", "npz"), "bvh": ("bvh", "npz")}


def _unique_prefix(filename_prefix: str, names: tuple[str, ...]) -> tuple[Path, str, str]:
    """(folder, file stem, subfolder) for new files in ComfyUI's output folder: never overwrites, never leaves it."""
    out_root, prefix = glue.output_prefix(filename_prefix, "body4d/anim")
    folder, stem, counter, subfolder, _ = folder_paths.get_save_image_path(prefix, out_root)
    while any(os.path.exists(os.path.join(folder, f"{stem}_{counter:05d}{n}")) for n in names):
        counter += 1
    return Path(folder), f"{stem}_{counter:05d}", subfolder


def _file3d(path: Path):
    """Core's File3D for the scene on disk (None where comfy_api has no Types.File3D)."""
    try:
        from comfy_api.latest import Types

        return Types.File3D(str(path), "glb")
    except (ImportError, AttributeError, TypeError):
        return None


class SaveAnimation(io.ComfyNode):
    """Skinned scene GLB (all people, camera) and BVH files with per-frame flags, into the output folder."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SAMBody4D_SaveAnimation",
            display_name="Save Animation (Body4D)",
            category=glue.CATEGORY,
            search_aliases=["skinned glb", "rig", "armature", "bvh", "mocap", "blender", "animation", "skeleton"],
            description="Writes <prefix>_NNNNN_scene.glb (every person as a skinned MHR rig with its own skeleton, "
                        "the clip's camera; metres, y up), BVH (all people and one per person; centimetres, y up) "
                        "with per-frame flag CSVs, and <prefix>_NNNNN_anim.npz (flags, joint positions). Previews "
                        "the scene.",
            is_output_node=True,
            inputs=[
                t.BodyModel.Input("sam3d_body_model", tooltip="SAM 3D Body (Body4D): its MHR rig gives the skeleton, "
                                                              "skinning and rest shape."),
                t.Bodies.Input("bodies", optional=True, tooltip="Bodies from SAM3D Body / Kalman Smooth (Body4D)."),
                t.MhrPoseData.Input("mhr_pose_data", optional=True,
                                    tooltip="Or core SAM3D Body pose data (used when bodies is not connected)."),
                t.Camera.Input("camera", optional=True,
                               tooltip="The clip's intrinsics (default: f = sqrt(H^2 + W^2) or core's focal)."),
                t.World.Input("world", optional=True,
                              tooltip="World Ground's world: the scene gets its floor (y = 0, y up), the moving "
                                      "camera's path and the heel / toe contact flags. Connect the camera-space "
                                      "bodies (Kalman Smooth), not World Ground's world_bodies."),
                io.Float.Input("fps", default=30.0, min=0.1, max=240.0, step=0.1,
                               tooltip="Frame rate (use the clip's fps from Load Video)."),
                io.String.Input("filename_prefix", default="body4d/anim",
                                tooltip="File prefix inside ComfyUI's output folder."),
                io.Combo.Input("formats", options=list(FORMAT_CHOICES), default="glb + bvh",
                               tooltip="Which files to write (the flags NPZ always)."),
                io.Boolean.Input("expressions", default=True, advanced=True,
                                 tooltip="Facial expression as morph targets with animated weights (when used)."),
            ],
            outputs=[io.File3DGLB.Output("model_3d", tooltip="The scene GLB, for core Preview 3D / Save 3D Model."),
                     io.String.Output("files", tooltip="Written files, relative to the output folder, one per line.")],
        )

    @classmethod
    def execute(cls, sam3d_body_model, bodies=None, mhr_pose_data=None, camera=None, world=None, fps=30.0,
                filename_prefix="body4d/anim", formats="glb + bvh", expressions=True) -> io.NodeOutput:
        if formats not in FORMAT_CHOICES:
            raise InputError(f"formats must be one of {', '.join(FORMAT_CHOICES)}, got {formats!r}")
        if bodies is None:
            if mhr_pose_data is None:
                raise InputError("Save Animation: connect bodies (Body4D) or mhr_pose_data (core SAM3D Body)")
            bodies, core_camera = from_mhr_pose(mhr_pose_data)
            camera = camera or core_camera
        camera = camera or Camera.default(bodies.image_size, bodies.num_frames)
        model = getattr(sam3d_body_model, "model", sam3d_body_model)
        rig = getattr(model, "mhr", None)
        if rig is None:
            raise InputError("Save Animation: the SAM 3D Body model has no MHR rig attached")
        try:
            scene_world = scene_world_from(world, bodies) if world is not None else None
        except InputError as err:
            raise InputError(f"Save Animation: {err}") from None
        kinds = FORMAT_CHOICES[formats]
        names = ("_scene.glb", "_all.bvh", "_anim.npz")
        folder, stem, subfolder = _unique_prefix(filename_prefix, names)
        paths = write_animation(bodies, rig, camera, folder, float(fps), world=scene_world, model=model, prefix=stem,
                                formats=kinds, expressions=bool(expressions), hooks=glue.hooks(16))
        rel = [f"{subfolder}/{p.name}" if subfolder else p.name for p in paths]
        scene = next((p for p in paths if p.suffix == ".glb"), None)
        shown = [{"filename": scene.name, "subfolder": subfolder, "type": "output"}] if scene is not None else []
        return io.NodeOutput(_file3d(scene) if scene is not None else None, "\n".join(rel),
                             ui={"3d": shown})


NODES = [SaveAnimation]
