"""World Ground: camera-space bodies -> people, camera path, floor and foot contacts in one world frame."""

from __future__ import annotations

from comfy_api.latest import io, ui

from ..body4d_core.data import Camera
from ..body4d_core.errors import InputError
from ..body4d_core.world import WorldOptions, world_stage
from ..body4d_core.world.inputs import keyframe_depth_from_geometry, people_from_tracks
from ..body4d_core.world.smoother import WorldSmoothSettings
from . import comfy_glue as glue
from . import sockets as t


class WorldGround(io.ComfyNode):
    """Floor, gravity, camera motion, world trajectories, foot contacts and contact-aware smoothing."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SAMBody4D_WorldGround",
            display_name="World Ground (Body4D)",
            category=glue.CATEGORY,
            search_aliases=["world", "floor", "ground", "gravity", "foot contact", "foot skate", "camera motion",
                            "trajectory"],
            description="Places every person in one metric world frame: y up, floor at y = 0, origin on the floor "
                        "under the first person's first position. Fits the floor from MoGe depth near the feet (or "
                        "from the planted feet), tells a static camera from a moving one and solves the moving "
                        "camera's path from background pixels, detects heel and toe contacts and smooths in the "
                        "world so planted feet stay still while fast limbs keep their motion.",
            inputs=[
                t.Bodies.Input("bodies", tooltip="Camera-space bodies, best straight from SAM 3D Body (this node "
                                                 "smooths in the world itself)."),
                t.Bodies.Input("mesh_bodies", optional=True,
                               tooltip="Optional: the same people after Kalman Smooth (with the SAM 3D Body "
                                       "model); their pose parameters and meshes go into the world bodies."),
                t.Camera.Input("camera", optional=True,
                               tooltip="The clip's camera (default: f = sqrt(H^2 + W^2))."),
                io.Image.Input("frames", optional=True,
                               tooltip="The clip's frames: needed to find camera motion (without them the camera "
                                       "is taken as static)."),
                t.Tracks.Input("tracks", optional=True,
                               tooltip="Person masks, left out of the camera-motion and floor fits."),
                t.MoGeGeometry.Input("moge_geometry", optional=True,
                                     tooltip="MoGe geometry (one frame or every frame): metric depth for the floor "
                                             "and the camera's translation. Without it the floor comes from the "
                                             "feet and a moving camera gets its rotation only."),
                io.Combo.Input("camera_motion", options=["auto", "static"], default="auto",
                               tooltip="auto: detect a static camera, else solve its path. static: assume it "
                                       "never moves."),
                io.Combo.Input("floor", options=["auto", "depth", "feet"], default="auto",
                               tooltip="auto: depth, or the planted feet when depth is missing or disagrees."),
                io.Float.Input("fps", default=30.0, min=1.0, max=240.0, step=1.0,
                               tooltip="Frame rate of the clip (speeds for contact detection)."),
                io.Boolean.Input("pin_feet", default=True,
                                 tooltip="Keep planted feet still (root translation corrected, feet pinned)."),
                io.Float.Input("root_strength", default=4.0, min=0.25, max=30.0, step=0.25, advanced=True,
                               tooltip="Smoothing span of the horizontal root motion in frames."),
                io.Float.Input("body_strength", default=2.5, min=0.25, max=30.0, step=0.25, advanced=True,
                               tooltip="Smoothing span of torso and head keypoints in frames."),
                io.Float.Input("hand_strength", default=1.2, min=0.1, max=30.0, step=0.1, advanced=True,
                               tooltip="Smoothing span of hands and wrists in frames (small keeps fast motion "
                                       "such as clapping)."),
                io.Float.Input("static_threshold", default=0.75, min=0.0, max=50.0, step=0.05, advanced=True,
                               tooltip="Background motion in pixels below which the camera counts as static."),
            ],
            outputs=[t.Bodies.Output("world_bodies", tooltip="Bodies in the world frame (y up, floor y = 0); "
                                                             "Export Meshes / Save GLB write them y up."),
                     t.World.Output("world", tooltip="Floor, gravity, camera trajectory, per-person trajectories "
                                                     "and foot contacts; Save Animation places its scene in it."),
                     io.Image.Output("trajectory_plot", tooltip="Top view: floor grid, camera path, one track "
                                                                "per person, frame ticks.")],
        )

    @classmethod
    def execute(cls, bodies, mesh_bodies=None, camera=None, frames=None, tracks=None, moge_geometry=None,
                camera_motion="auto",
                floor="auto", fps=30.0, pin_feet=True, root_strength=4.0, body_strength=2.5, hand_strength=1.2,
                static_threshold=0.75) -> io.NodeOutput:
        if bodies is None:
            raise InputError("World Ground: connect bodies")
        n_frames = bodies.num_frames
        camera = camera or Camera.default(bodies.image_size, n_frames)
        rgb = None
        size = tuple(bodies.image_size)
        if frames is not None:
            rgb = glue.image_to_uint8(frames)
            size = rgb.shape[1:3]
            if rgb.shape[0] != n_frames:
                raise InputError(f"World Ground: {rgb.shape[0]} frames but the bodies have {n_frames}")
        people = people_from_tracks(tracks, n_frames, size) if rgb is not None else None
        depth = keyframe_depth_from_geometry(moge_geometry, n_frames, size)  # only the frames it has
        opts = WorldOptions(camera_motion=camera_motion, floor=floor, fps=float(fps),
                            static_threshold=float(static_threshold),
                            smooth=WorldSmoothSettings(root_window=float(root_strength),
                                                       body_window=float(body_strength),
                                                       hand_window=float(hand_strength), pin_feet=bool(pin_feet)))
        res = world_stage(bodies, camera, rgb, people, depth, opts, mesh_bodies=mesh_bodies)
        plot = glue.uint8_to_image(res.plot[None])
        return io.NodeOutput(res.bodies, res, plot, ui=ui.PreviewImage(plot, cls=cls))


NODES = [WorldGround]
