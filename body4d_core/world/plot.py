"""Top-down trajectory plot: floor grid, camera path, one coloured track per identity, frame ticks."""

from __future__ import annotations

import numpy as np

from ..palette import object_color


def trajectory_plot(root: np.ndarray, present: np.ndarray, obj_ids: np.ndarray, camera_positions: np.ndarray,
                    size: int = 512, tick_every: int = 30, contacts: np.ndarray | None = None,
                    feet: np.ndarray | None = None) -> np.ndarray:
    """uint8 RGB [size, size, 3] seen from above (x right, z down the image = towards the camera side).

    root [N, T, 3] world, present bool [N, T], camera_positions [T, 3] world. Planted foot
    positions (``feet`` [N, T, 4, 3] with ``contacts``) are drawn as small dots.
    """
    import cv2

    img = np.full((size, size, 3), 250, np.uint8)
    pts = [root[present]] + [camera_positions]
    allp = np.concatenate([p[:, [0, 2]] for p in pts if len(p)], 0) if any(len(p) for p in pts) else np.zeros((1, 2))
    lo, hi = allp.min(0), allp.max(0)
    centre = (lo + hi) / 2
    span = max(float((hi - lo).max()) * 1.15, 2.0)
    margin = 40
    scale = (size - 2 * margin) / span

    def px(xz: np.ndarray) -> np.ndarray:
        return np.round((xz - centre) * scale + size / 2).astype(np.int32)

    step = 0.5 if span < 8 else 1.0 if span < 20 else 5.0
    for v in np.arange(np.floor((centre[0] - span) / step) * step, centre[0] + span, step):
        x = int(round((v - centre[0]) * scale + size / 2))
        cv2.line(img, (x, 0), (x, size - 1), (225, 225, 225) if v % 1 else (200, 200, 200), 1)
    for v in np.arange(np.floor((centre[1] - span) / step) * step, centre[1] + span, step):
        y = int(round((v - centre[1]) * scale + size / 2))
        cv2.line(img, (0, y), (size - 1, y), (225, 225, 225) if v % 1 else (200, 200, 200), 1)
    o = px(np.zeros(2))
    cv2.drawMarker(img, tuple(int(c) for c in o), (0, 0, 0), cv2.MARKER_CROSS, 12, 1)
    cam = px(camera_positions[:, [0, 2]])
    cv2.polylines(img, [cam.reshape(-1, 1, 2)], False, (60, 60, 60), 2, cv2.LINE_AA)
    cv2.circle(img, tuple(int(c) for c in cam[0]), 6, (60, 60, 60), -1, cv2.LINE_AA)
    cv2.putText(img, "camera", tuple(int(c) for c in cam[0] + np.array([8, 4])), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                (60, 60, 60), 1, cv2.LINE_AA)
    for i, oid in enumerate(np.asarray(obj_ids).tolist()):
        color = tuple(int(c) for c in object_color(int(oid)))
        idx = np.flatnonzero(present[i])
        if idx.size == 0:
            continue
        if feet is not None and contacts is not None:
            planted = feet[i][contacts[i]]
            for q in px(planted[:, [0, 2]]):
                cv2.circle(img, (int(q[0]), int(q[1])), 1, tuple(int(c * 0.6) for c in color), -1)
        track = px(root[i, idx][:, [0, 2]])
        cv2.polylines(img, [track.reshape(-1, 1, 2)], False, color, 2, cv2.LINE_AA)
        for j in idx[::max(1, tick_every)]:
            q = px(root[i, j, [0, 2]])
            cv2.circle(img, (int(q[0]), int(q[1])), 4, color, 1, cv2.LINE_AA)
            cv2.putText(img, str(int(j)), (int(q[0]) + 5, int(q[1]) - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.35, color, 1,
                        cv2.LINE_AA)
        q = track[0]
        cv2.putText(img, f"id {oid}", (int(q[0]) - 10, int(q[1]) + 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, color, 1,
                    cv2.LINE_AA)
    bar = int(round(scale * 1.0))
    cv2.line(img, (margin, size - 20), (margin + bar, size - 20), (0, 0, 0), 2)
    cv2.putText(img, "1 m", (margin, size - 26), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, "top view (x right, z down)", (8, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return img
