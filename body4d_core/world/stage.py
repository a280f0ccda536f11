"""The world stage: camera-space bodies -> people, camera and floor in one metric world frame.

World frame: y up (against gravity), the floor at y = 0, metres, right-handed (x along the
first camera's right axis on the floor, z = x cross y), origin on the floor under the first
person's first position. Order: camera motion (poses in the first camera's axes), floor
(depth points near the feet, or the planted feet), world axes, bodies into the world,
contact-aware smoothing, typed outputs.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..alloc import Alloc, zeros
from ..atomic import OutputWriteError, atomic_path, describe_os_error, write_bytes_atomic, write_text_atomic
from ..data import Bodies, BodyFlag, Camera, Tracks, write_npz
from ..errors import InputError
from ..rotations import premultiply_euler_xyz
from .camera_motion import CameraTrajectory, estimate_camera_motion
from .clock import timed
from .floor import Floor, feet_on, floor_from_depth, floor_from_feet, world_axes
from .depth import KeyframeDepth
from .inputs import moge_depth, people_from_tracks
from .keypoints import CONTACT_INDEX, CONTACT_NAMES, LEFT_ANKLE, NECK, RIGHT_ANKLE
from .plot import trajectory_plot
from .prepare import WorldPrep
from .smoother import WorldSmoothSettings, world_smooth

log = logging.getLogger(__name__)


@dataclass
class WorldOptions:
    """Options of the world stage."""

    camera_motion: str = "auto"  # auto (static test, then solve) | static (assume a fixed camera)
    static_threshold: float = 0.75  # background motion (px) below which the camera is static
    keyframe_every: int = 15
    max_side: int = 640  # frames larger than this are tracked downscaled (0 = never)
    floor: str = "auto"  # auto (depth, else / on disagreement feet) | depth | feet
    fps: float = 30.0
    smooth: WorldSmoothSettings = field(default_factory=WorldSmoothSettings)
    plot_size: int = 512

    def __post_init__(self) -> None:
        if self.camera_motion not in ("auto", "static"):
            raise InputError(f"camera_motion must be 'auto' or 'static', got {self.camera_motion!r}")
        if self.floor not in ("auto", "depth", "feet"):
            raise InputError(f"floor must be 'auto', 'depth' or 'feet', got {self.floor!r}")
        if not self.fps > 0:
            raise InputError(f"fps must be > 0, got {self.fps}")


@dataclass
class WorldResult:
    """People, camera and floor in the world frame (y up, floor y = 0, metres)."""

    obj_ids: np.ndarray  # [N]
    joints: np.ndarray  # [N, T, K, 3] world keypoints
    root: np.ndarray  # [N, T, 3] world root positions (trajectories)
    present: np.ndarray  # bool [N, T]: frames inside each identity's observed span
    contacts: np.ndarray  # bool [N, T, 4] (left heel, left toe, right heel, right toe)
    camera_rotations: np.ndarray  # [T, 3, 3] world-from-camera (OpenCV camera axes)
    camera_positions: np.ndarray  # [T, 3] camera centres in the world
    camera_static: bool
    camera_source: str
    floor: Floor  # in the first camera's axes
    world_from_camera0: np.ndarray  # [4, 4]
    bodies: Bodies  # world bodies in WORLD_TO_BODIES axes (x, -y, -z of the world; exporters write y up)
    fps: float = 30.0
    plot: np.ndarray | None = None  # uint8 [H, W, 3] top-down trajectory plot
    timings: dict[str, float] = field(default_factory=dict)  # wall seconds per part (benches; not saved)

    @property
    def gravity(self) -> np.ndarray:
        """Unit gravity direction in the world frame (always -y)."""
        return np.array([0.0, -1.0, 0.0])

    @property
    def gravity_camera0(self) -> np.ndarray:
        """Unit gravity direction in the first camera's axes."""
        return -self.floor.normal

    def summary(self) -> dict:
        """JSON-ready description of the frame, floor and camera."""
        return {
            "convention": "y up, floor at y = 0, metres, origin on the floor under the first person's first position",
            "floor": {"normal_camera0": self.floor.normal.tolist(), "camera0_height": float(self.floor.offset),
                      "confidence": float(self.floor.confidence), "source": self.floor.source},
            "gravity_camera0": self.gravity_camera0.tolist(),
            "camera": {"static": bool(self.camera_static), "source": self.camera_source,
                       "path_length_m": float(np.linalg.norm(np.diff(self.camera_positions, axis=0), axis=1).sum())},
            "obj_ids": self.obj_ids.tolist(), "fps": self.fps, "contact_points": list(CONTACT_NAMES),
        }

    def contacts_csv(self) -> str:
        """Per frame and identity: the four contact flags (0/1)."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["frame", "obj_id", *CONTACT_NAMES])
        for t in range(self.contacts.shape[1]):
            for i, oid in enumerate(self.obj_ids.tolist()):
                if self.present[i, t]:
                    w.writerow([t, oid, *self.contacts[i, t].astype(int).tolist()])
        return buf.getvalue()

    def save(self, folder: str | Path) -> dict[str, Path]:
        """Write world.npz, world.json, contacts.csv, world_bodies.npz and trajectory.png (atomically)."""
        import cv2

        folder = Path(folder)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputWriteError(describe_os_error(err, folder)) from err
        out: dict[str, Path] = {}
        with atomic_path(folder / "world.npz") as tmp:
            write_npz(tmp, {"obj_ids": self.obj_ids, "joints": self.joints.astype(np.float32),
                            "root": self.root.astype(np.float32), "present": self.present,
                            "contacts": self.contacts, "camera_rotations": self.camera_rotations,
                            "camera_positions": self.camera_positions, "world_from_camera0": self.world_from_camera0,
                            "floor_normal_camera0": self.floor.normal,
                            "__header__": np.array(json.dumps({"kind": "world", **self.summary()}))})
        out["world"] = folder / "world.npz"
        out["summary"] = write_text_atomic(folder / "world.json", json.dumps(self.summary(), indent=1))
        out["contacts"] = write_text_atomic(folder / "contacts.csv", self.contacts_csv())
        with atomic_path(folder / "world_bodies.npz") as tmp:
            self.bodies.save_npz(tmp)
        out["bodies"] = folder / "world_bodies.npz"
        if self.plot is not None:
            ok, png = cv2.imencode(".png", self.plot[..., ::-1])
            if ok:
                out["plot"] = write_bytes_atomic(folder / "trajectory.png", png.tobytes())
        return out


def _observed(bodies: Bodies) -> np.ndarray:
    return (bodies.flags & (BodyFlag.VISIBLE | BodyFlag.OCCLUDED)) != 0


def _up_prior(j_c0: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """Mean body up direction (mid-ankle -> neck) in first-camera axes; -y of the camera without keypoints."""
    if j_c0.shape[2] <= NECK or not observed.any():
        return np.array([0.0, -1.0, 0.0])
    v = j_c0[:, :, NECK] - 0.5 * (j_c0[:, :, LEFT_ANKLE] + j_c0[:, :, RIGHT_ANKLE])
    v = v[observed]
    v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-9)
    m = np.median(v, axis=0)
    return m / np.linalg.norm(m)


def _depth_points(depth: np.ndarray, K: np.ndarray, people: np.ndarray | None, stride: int = 2) -> np.ndarray:
    """Background points [M, 3] of one depth map (first-camera axes for frame 0)."""
    h, w = depth.shape
    vv, uu = np.mgrid[0:h:stride, 0:w:stride]
    z = depth[vv, uu].astype(np.float64)
    ok = np.isfinite(z) & (z > 0)
    if people is not None:
        ok &= ~np.asarray(people, bool)[vv, uu]
    x = (uu + 0.5 - K[0, 2]) / K[0, 0] * z
    y = (vv + 0.5 - K[1, 2]) / K[1, 1] * z
    return np.stack([x[ok], y[ok], z[ok]], 1)


def choose_floor(points: np.ndarray | None, feet: np.ndarray, up: np.ndarray, mode: str, sole: float) -> Floor:
    """Floor from depth points near the feet, checked against (or replaced by) the planted feet."""
    from_feet = floor_from_feet(feet, up, sole)
    if mode == "feet" or points is None or len(points) == 0:
        return from_feet
    from_depth = floor_from_depth(points, up, feet)
    if from_depth is None:
        log.warning("no floor plane found in the depth map; using the people's planted feet")
        return from_feet
    if mode == "auto" and from_feet.confidence > 0.3 and not feet_on(from_depth, feet, sole):
        log.warning("the people's feet are not on the depth floor; using the planted feet")
        return from_feet
    return from_depth


def world_stage(bodies: Bodies, camera: Camera, frames: np.ndarray | None = None,
                people: np.ndarray | None = None, depth: KeyframeDepth | np.ndarray | None = None,
                options: WorldOptions | None = None, mesh_bodies: Bodies | None = None,
                timings: dict[str, float] | None = None,
                trajectory: Callable[[], CameraTrajectory] | None = None, *,
                alloc: Alloc | None = None) -> WorldResult:
    """Ground camera-space bodies in the world (see module docstring).

    bodies: camera-space Bodies with keypoints_3d (MHR70 for floor/contacts); camera: the
    clip's intrinsics; frames: uint8 [T, H, W, 3] for camera motion (None: static camera);
    people: bool [T, H, W] person pixels (union of the tracks' masks); depth: metric depth of
    the keyframes (``KeyframeDepth``) or [T, H, W] (MoGe-2 point map z, NaN where unknown), used for the floor and to scale the
    camera translation (None: floor from feet, rotation-only camera). ``mesh_bodies``
    (e.g. the camera-space smoothed, rig-refreshed bodies of the same clip) supply the pose
    parameters and vertices of the world bodies; by default ``bodies`` do. ``timings`` receives
    each part's wall seconds (they are also kept on the result). ``trajectory``: returns the camera
    motion of these frames, people and depth when it was solved already (``WorldPrep``).
    ``alloc(shape, dtype)``: returns the zero-filled array the world bodies' vertices are written into
    (e.g. ``FrameStore.empty``); default ``np.zeros``.
    """
    timings = {} if timings is None else timings
    opts = options or WorldOptions()
    if bodies.keypoints_3d is None:
        raise InputError("World Ground: the bodies carry no 3D keypoints; run SAM 3D Body with keypoints")
    t = bodies.num_frames
    camera = camera.check_frames(t)
    observed = _observed(bodies)
    if not observed.any():
        raise InputError("World Ground: the bodies hold no observed frame")
    if frames is not None and len(frames) != t:
        raise InputError(f"World Ground: {len(frames)} frames but the bodies have {t}")
    if mesh_bodies is not None and (mesh_bodies.num_frames != t or
                                    not np.array_equal(mesh_bodies.obj_ids, bodies.obj_ids)):
        raise InputError("World Ground: the mesh bodies must have the same ids and frames as the bodies")
    with timed(timings, "camera_motion"):
        if frames is not None and opts.camera_motion == "auto" and trajectory is not None:
            traj = trajectory()
        elif frames is not None and opts.camera_motion == "auto":
            traj = estimate_camera_motion(frames, camera.intrinsics, people, depth, opts.static_threshold,
                                          opts.keyframe_every, max_side=opts.max_side, alloc=alloc)
        else:
            traj = CameraTrajectory.identity(t)
    with timed(timings, "floor"):
        cam_t = bodies.params["cam_t"].astype(np.float64)
        j_c = bodies.keypoints_3d.astype(np.float64) + cam_t[:, :, None]
        j_c0 = np.einsum("tij,ntkj->ntki", traj.rotations, j_c) + traj.positions[None, :, None]
        root_c0 = np.einsum("tij,ntj->nti", traj.rotations, cam_t) + traj.positions[None]
        up = _up_prior(j_c0, observed)
        feet = j_c0[:, :, CONTACT_INDEX].min(axis=2) if j_c0.shape[2] > CONTACT_INDEX.max() else root_c0
        if j_c0.shape[2] > CONTACT_INDEX.max():  # the lowest contact point of each observed frame
            h = j_c0[:, :, CONTACT_INDEX] @ up
            low = np.argmin(h, axis=2)
            feet = np.take_along_axis(j_c0[:, :, CONTACT_INDEX], low[..., None, None], axis=2)[:, :, 0]
        feet = feet[observed]
        points = None
        if depth is not None and np.isfinite(depth[0]).any():
            points = _depth_points(np.asarray(depth[0]), camera.K(0), None if people is None else people[0])
        floor = choose_floor(points, feet, up, opts.floor, opts.smooth.sole)
        first = int(np.argmax(observed.any(1)))
        origin = root_c0[first, int(np.argmax(observed[first]))]
        A, b = world_axes(floor, origin)
        j_w = j_c0 @ A.T + b
        root_w = root_c0 @ A.T + b
        ray_w = np.einsum("ij,tjk,ntk->nti", A, traj.rotations, cam_t)
    sm = world_smooth(j_w, root_w, ray_w, observed, opts.fps, opts.smooth, timings=timings)
    shift = sm["root"][first, int(np.argmax(observed[first]))] * np.array([1.0, 0.0, 1.0])
    sm["joints"] = sm["joints"] - shift  # origin under the first person's first (smoothed) position
    sm["root"] = sm["root"] - shift
    b = b - shift
    cam_R = np.einsum("ij,tjk->tik", A, traj.rotations)
    cam_p = traj.positions @ A.T + b
    with timed(timings, "bodies"):
        world_bodies = _world_bodies(mesh_bodies if mesh_bodies is not None else bodies, sm["joints"],
                                     sm["root"], cam_R, alloc)
    present = sm["present"]
    with timed(timings, "plot"):
        plot = trajectory_plot(sm["root"], present, bodies.obj_ids, cam_p, opts.plot_size,
                               tick_every=int(round(opts.fps)), contacts=sm["contacts"],
                               feet=sm["joints"][:, :, CONTACT_INDEX])
    M = np.eye(4)
    M[:3, :3], M[:3, 3] = A, b
    log.info("world: floor from %s (confidence %.2f), camera %s (%s)", floor.source, floor.confidence,
             "static" if traj.static else "moving", traj.source)
    return WorldResult(bodies.obj_ids.copy(), sm["joints"], sm["root"], present, sm["contacts"], cam_R, cam_p,
                       traj.static, traj.source, floor, M, world_bodies, opts.fps, plot, timings)


# World bodies are stored in the axes of a virtual camera at the world origin looking along -z
# with y down (x, -y, -z of the world): Bodies keep their OpenCV camera convention, and the
# exporters' camera-to-OpenGL flip then writes y-up world coordinates.
WORLD_TO_BODIES = np.diag([1.0, -1.0, -1.0])


VERTEX_CHUNK = 64  # frames of vertices rotated at once (float64 temporaries of the chunk only)


def _world_bodies(bodies: Bodies, joints: np.ndarray, root: np.ndarray, cam_R: np.ndarray,
                  alloc: Alloc | None = None) -> Bodies:
    """Bodies in the world (see WORLD_TO_BODIES): cam_t = world root, global_rot and vertices rotated
    into the world, keypoints root-relative; missing frames stay missing and zero. The vertices are
    rotated a chunk of frames at a time into an array from ``alloc`` (default RAM)."""
    F = WORLD_TO_BODIES
    keep = bodies.present
    params = dict(bodies.params)
    params["cam_t"] = np.where(keep[..., None], root @ F.T, 0.0).astype(np.float32)
    rot = np.zeros_like(bodies.params["global_rot"])
    M = np.einsum("ij,tjk->tik", F, cam_R)  # world-bodies axes from camera-t axes
    if keep.any():
        rows, cols = np.nonzero(keep)
        rot[rows, cols] = premultiply_euler_xyz(M[cols], bodies.params["global_rot"][rows, cols])
    params["global_rot"] = rot.astype(np.float32)
    kp = np.where(keep[..., None, None], (joints - root[:, :, None]) @ F.T, 0.0).astype(np.float32)
    verts = None
    if bodies.vertices is not None:
        verts = zeros(alloc, bodies.vertices.shape, np.float32)
        for a in range(0, verts.shape[1], VERTEX_CHUNK):
            b = a + VERTEX_CHUNK
            v = np.einsum("tij,ntvj->ntvi", M[a:b], bodies.vertices[:, a:b].astype(np.float64))
            verts[:, a:b] = np.where(keep[:, a:b, None, None], v, 0.0).astype(np.float32)
    return bodies.replace(params=params, keypoints_3d=kp, vertices=verts)


def ground_clip(frames: np.ndarray, tracks: Tracks | None, camera: Camera, bodies: Bodies,
                mesh_bodies: Bodies | None = None, moge_model: object | None = None, depth_every: int = 10,
                options: WorldOptions | None = None, prepared: WorldPrep | None = None, *,
                alloc: Alloc | None = None) -> WorldResult:
    """The pipeline's world stage in one call: person masks from the tracks, MoGe-2 depth on every
    ``depth_every``-th frame when a model is given (none: floor from the feet, rotation-only
    camera), then ``world_stage`` on the raw ``bodies`` with ``mesh_bodies`` for the meshes.
    ``prepared``: masks, depth and camera motion made early (``WorldPrep`` of the same frames,
    tracks, camera, model and options); ``moge_model`` is then not used. ``alloc``: where the person
    masks, the depth (made here) and the world vertices go (see ``world_stage``; default RAM)."""
    timings: dict[str, float] = {}
    frames = np.asarray(frames)
    size = tuple(frames.shape[1:3])
    if prepared is not None:
        with timed(timings, "people"):
            people = prepared.people()
        if prepared.depth_error is not None:
            raise prepared.depth_error
        traj = prepared.trajectory if (options or WorldOptions()).camera_motion == "auto" else None
        res = world_stage(bodies, camera, frames, people, prepared.depth, options, mesh_bodies=mesh_bodies,
                          timings=timings, trajectory=traj, alloc=alloc)
        res.timings.update(prepared.timings)  # depth and the background parts (camera_motion: the wait)
        return res
    with timed(timings, "people"):
        people = people_from_tracks(tracks, len(frames), size, alloc=alloc)
    depth = None
    if moge_model is not None and depth_every > 0:
        with timed(timings, "depth"):
            depth = moge_depth(moge_model, frames, every_n=depth_every, alloc=alloc)
    return world_stage(bodies, camera, frames, people, depth, options, mesh_bodies=mesh_bodies, timings=timings,
                       alloc=alloc)
