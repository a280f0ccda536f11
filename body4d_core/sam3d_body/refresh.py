"""Regenerate geometry from (smoothed) MHR parameters with the model's rig.

After smoothing, the parameters changed but the vertices, keypoints and joints computed from
the raw parameters did not. This re-runs the MHR rig on the smoothed parameters so every
output of a frame describes the same body (used as ``smooth_bodies(..., refresh=...)``).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..alloc import Alloc, zeros, zeros_like
from ..data import Bodies, Camera
from .heads import camera_geometry, project
from .infer import PARAM_KEYS
from .writer import EXTRA_KEYS
from .model import Sam3dBody


@torch.inference_mode()
def _run(model: Sam3dBody, p: dict[str, torch.Tensor], K: torch.Tensor, with_verts: bool) -> dict[str, np.ndarray]:
    out = camera_geometry(model.head_pose, model.mhr, p, model.cfg.num_keypoints, with_verts)
    out["keypoints_3d"] = out.pop("kp3d")
    out["keypoints_2d"] = project(out["keypoints_3d"], p["cam_t"], K)[0]
    return {k: v.float().cpu().numpy() for k, v in out.items()}


def refresh_geometry(model: Sam3dBody, bodies: Bodies, camera: Camera, batch_size: int = 256, *,
                     alloc: Alloc | None = None) -> Bodies:
    """Bodies whose vertices, keypoints and joint extras come from the rig on their own parameters.

    ``alloc(shape, dtype)``: returns the zero-filled arrays they are written into (e.g. ``FrameStore.empty``:
    a long clip's vertices stay out of RAM); default ``np.zeros``.
    """
    camera = camera.check_frames(bodies.num_frames)
    dev = next(model.parameters()).device
    rows, frames = np.nonzero(bodies.present)
    n, t = bodies.num_objects, bodies.num_frames
    kp3 = zeros(alloc, (n, t, model.cfg.num_keypoints, 3), np.float32)
    kp2 = zeros(alloc, (n, t, model.cfg.num_keypoints, 2), np.float32)
    with_verts = bodies.vertices is not None
    verts = zeros_like(alloc, bodies.vertices) if with_verts else None
    extras = {k: zeros_like(alloc, v) for k, v in bodies.extras.items()}
    for s in range(0, rows.size, batch_size):
        r, f = rows[s:s + batch_size], frames[s:s + batch_size]
        p = {key: torch.as_tensor(bodies.params[name][r, f], device=dev) for name, key in PARAM_KEYS.items()}
        K = torch.as_tensor(np.stack([camera.K(int(i)) for i in f]), device=dev)
        res = _run(model, p, K, with_verts)
        kp3[r, f], kp2[r, f] = res["keypoints_3d"], res["keypoints_2d"]
        if with_verts:
            verts[r, f] = res["verts"]
        for name, key in EXTRA_KEYS.items():
            if name in extras and extras[name].shape[2:] == res[key].shape[1:]:
                extras[name][r, f] = res[key]
    return bodies.replace(keypoints_3d=kp3, keypoints_2d=kp2, vertices=verts, extras=extras)


def refresher(model: Sam3dBody, camera: Camera, *, alloc: Alloc | None = None) -> Callable[[Bodies], Bodies]:
    """The ``refresh`` callable for ``smoothing.smooth_bodies`` (``alloc``: see ``refresh_geometry``)."""
    return lambda bodies: refresh_geometry(model, bodies, camera, alloc=alloc)
