"""The world stage's inputs made early: MoGe-2 depth, then person masks and camera motion on a thread.

Camera motion needs only the frames, the people's masks, the intrinsics and the depth, not the
bodies, so a pipeline can solve it on a background thread while the GPU runs the body model; the
world stage then only waits for what is left. The results are those ``ground_clip`` computes.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any

import numpy as np

from ..alloc import Alloc
from ..data import Camera, Tracks
from .camera_motion import CameraTrajectory, estimate_camera_motion
from .clock import timed
from .depth import KeyframeDepth
from .inputs import moge_depth, people_from_tracks


class WorldPrep:
    """Depth (on the calling thread: it runs MoGe-2 on the GPU), then person masks and the camera
    trajectory on one background thread. ``people()`` / ``trajectory()`` join it and raise its
    error; ``close()`` joins it without raising (on a failing run)."""

    def __init__(self, frames: np.ndarray, tracks: Tracks | None, camera: Camera, moge_model: Any | None,
                 depth_every: int, options: Any, *, alloc: Alloc | None = None) -> None:
        """``alloc``: where the depth and the person masks go (zero-filled arrays, e.g. ``FrameStore.empty``;
        default RAM)."""
        self.timings: dict[str, float] = {}
        self.depth: KeyframeDepth | None = None
        self.depth_error: BaseException | None = None
        frames = np.asarray(frames)
        if moge_model is not None and depth_every > 0:
            try:
                with timed(self.timings, "depth"):
                    self.depth = moge_depth(moge_model, frames, every_n=depth_every, alloc=alloc)
            except Exception as err:  # noqa: BLE001 - raised where ground_clip would have raised it
                self.depth_error = err
        self._alloc = alloc
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="body4d-world")
        self._people: Future = self._pool.submit(self._timed, "people", partial(people_from_tracks, alloc=alloc),
                                                 tracks, len(frames), tuple(frames.shape[1:3]))
        self._traj: Future | None = None
        if self.depth_error is None and options.camera_motion == "auto":
            self._traj = self._pool.submit(self._solve, frames, camera, options)
        self._pool.shutdown(wait=False)

    def _timed(self, name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.timings[f"{name}_background"] = time.perf_counter() - t0

    def _solve(self, frames: np.ndarray, camera: Camera, options: Any) -> CameraTrajectory:
        people = self._people.result()
        intrinsics = camera.check_frames(len(frames)).intrinsics
        return self._timed("camera_motion", estimate_camera_motion, frames, intrinsics, people, self.depth,
                           options.static_threshold, options.keyframe_every, max_side=options.max_side,
                           alloc=self._alloc)

    def people(self) -> np.ndarray | None:
        """The person masks (what ``people_from_tracks`` returns), waiting for them."""
        return self._people.result()

    def trajectory(self) -> CameraTrajectory:
        """The camera trajectory, waiting for it (only when the options solve camera motion)."""
        if self._traj is None:
            raise RuntimeError("WorldPrep: no camera motion was started (camera_motion is not 'auto' or depth failed)")
        return self._traj.result()

    def close(self) -> None:
        """Wait for the background work without raising (its error, if any, belongs to the world stage)."""
        self._pool.shutdown(wait=True)
