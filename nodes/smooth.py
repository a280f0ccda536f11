"""Kalman Smooth: per-identity Kalman/RTS smoothing of bodies; also emits core MHR_POSE_DATA."""

from __future__ import annotations

from comfy_api.latest import io

from ..body4d_core.data import Camera
from ..body4d_core.errors import InputError
from ..body4d_core.interop.mhr_pose_data import RENDER_FIELDS, from_mhr_pose, to_mhr_pose
from ..body4d_core.smoothing import SmoothSettings, smooth_bodies
from . import comfy_glue as glue
from . import sockets as t


class KalmanSmooth(io.ComfyNode):
    """Temporal smoothing per person: Kalman forward pass (+ RTS backward pass offline)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SAMBody4D_KalmanSmooth",
            display_name="Kalman Smooth (Body4D)",
            category=glue.CATEGORY,
            search_aliases=["smooth", "kalman", "rts", "jitter", "temporal filter", "mhr smooth"],
            description="Smooths every person on their own: constant-velocity Kalman filter plus RTS backward pass "
                        "(offline) or forward only (causal). Bridges missing frames by prediction (no frozen "
                        "values), trusts frames from occlusion completion less, down-weights outlier frames, "
                        "smooths the global rotation on SO(3) and locks shape and scale per person. Also accepts "
                        "and outputs core MHR_POSE_DATA (SAM3D Body Predict / Render / Build Pose GLB).",
            inputs=[
                t.Bodies.Input("bodies", optional=True, tooltip="Bodies from SAM3D Body (Body4D)."),
                t.MhrPoseData.Input("mhr_pose_data", optional=True,
                                    tooltip="Or core SAM3D Body Predict output (used when bodies is not connected)."),
                t.Camera.Input("camera", optional=True,
                               tooltip="The clip's camera; sets focal_length in the MHR_POSE_DATA output "
                                       "(default: f = sqrt(H^2 + W^2))."),
                io.Combo.Input("mode", options=["offline", "causal"], default="offline",
                               tooltip="offline: forward filter + RTS backward pass, uses the whole clip (best). "
                                       "causal: forward only, each frame uses only past frames (streaming)."),
                io.Float.Input("strength", default=2.5, min=0.25, max=30.0, step=0.25,
                               tooltip="Smoothing span in frames: bigger = smoother but slower to follow fast "
                                       "moves. 2.5 was best on the synthetic benchmark at 30 fps; try 1.5 for "
                                       "causal mode or fast dance, 4-6 for slow, jittery footage."),
                io.Combo.Input("motion_model", options=["velocity", "acceleration"], default="velocity",
                               advanced=True,
                               tooltip="velocity: constant-velocity model (robust). acceleration: "
                                       "constant-acceleration model, follows curved motion with less lag."),
                io.Float.Input("occluded_noise", default=4.0, min=1.0, max=100.0, step=0.5, advanced=True,
                               tooltip="How much less a frame estimated from occlusion completion is trusted "
                                       "(observation variance factor)."),
                io.Float.Input("outlier_threshold", default=4.0, min=0.0, max=20.0, step=0.5, advanced=True,
                               tooltip="Robust z-score above which a whole frame is down-weighted as an "
                                       "outlier (0 = off)."),
                io.Int.Input("max_gap", default=60, min=0, max=100000, advanced=True,
                             tooltip="Longest run of missing frames to bridge by prediction; longer gaps stay "
                                     "empty (0 = never bridge). Causal mode predicts up to this many frames "
                                     "after the last observation."),
                io.Float.Input("gap_damping", default=0.7, min=0.05, max=1.0, step=0.05, advanced=True,
                               tooltip="Causal mode only: per-frame decay of the velocity carried into a gap "
                                       "(1 = keep moving at constant velocity; lower = ease to a stop)."),
                io.Boolean.Input("lock_shape", default=True, advanced=True,
                                 tooltip="Lock shape and scale per person to the median over their visible frames."),
                t.BodyModel.Input("sam3d_body_model", optional=True,
                                  tooltip="Optional: with the SAM 3D Body model, meshes and keypoints are rebuilt by "
                                          "its MHR rig from the smoothed parameters (exact). Without it they are "
                                          "smoothed with the same filter (close, not exact)."),
            ],
            outputs=[t.Bodies.Output("bodies"), t.MhrPoseData.Output("mhr_pose_data")],
        )

    @classmethod
    def execute(cls, bodies=None, mhr_pose_data=None, camera=None, mode="offline", strength=2.5,
                motion_model="velocity", occluded_noise=4.0, outlier_threshold=4.0, max_gap=60,
                gap_damping=0.7, lock_shape=True, sam3d_body_model=None) -> io.NodeOutput:
        if bodies is None:
            if mhr_pose_data is None:
                raise InputError("Kalman Smooth: connect bodies (Body4D) or mhr_pose_data (core SAM3D Body)")
            bodies, core_camera = from_mhr_pose(mhr_pose_data)
            camera = camera or core_camera
        settings = SmoothSettings(mode=mode, motion=motion_model, window=float(strength),
                                  occluded_noise=float(occluded_noise), outlier_threshold=float(outlier_threshold),
                                  max_gap=int(max_gap), lock_shape=bool(lock_shape), gap_damping=float(gap_damping))
        camera = camera or Camera.default(bodies.image_size, bodies.num_frames)
        model = sam3d_body_model.ready() if sam3d_body_model is not None else None
        refresh = None
        if model is not None:
            from ..body4d_core.sam3d_body.refresh import refresher

            refresh = refresher(model, camera)
        out = smooth_bodies(bodies, settings, refresh=refresh, hooks=glue.hooks(5))
        carried = None if mhr_pose_data is None else {k: mhr_pose_data.get(k) for k in RENDER_FIELDS}
        return io.NodeOutput(out, to_mhr_pose(out, camera, model=model, render_fields=carried))


NODES = [KalmanSmooth]
