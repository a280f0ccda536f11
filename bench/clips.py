"""Synthetic clips and frames for the benches: textures, people with known masks, body crops, H.264 files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from body4d_core.data import ObjectPrompt, Prompts, Tracks, pack_masks, unpack_masks


def texture(height: int, width: int) -> np.ndarray:
    """uint8 [H, W, 3]: smooth gradients with a sine texture (something for codecs and trackers to follow)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([xx / width, yy / height, 0.5 + 0.5 * np.sin(xx / 37.0) * np.cos(yy / 23.0)], -1)
    return (base * 255).astype(np.uint8)


class LoopedClip:
    """A clip of any length cycling through a small pool of generated frames (a panning texture
    with a moving blob), so neither RAM nor frame generation time grows with the length."""

    POOL = 48

    def __init__(self, num_frames: int, height: int, width: int):
        self.n, self.h, self.w = num_frames, height, width
        self.shape = (num_frames, height, width, 3)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        base = texture(height, width)
        self.pool = []
        for i in range(min(self.POOL, num_frames)):
            img = np.roll(base, shift=(i * 3, i * 2), axis=(0, 1))
            cx, cy = width * (0.3 + 0.4 * i / self.POOL), height * 0.5
            img[(xx - cx) ** 2 + (yy - cy) ** 2 < (0.12 * height) ** 2] = (220, 40, 40)
            self.pool.append(np.ascontiguousarray(img))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> np.ndarray:
        k = i % (2 * len(self.pool) - 2) if len(self.pool) > 1 else 0  # ping-pong: smooth motion
        return self.pool[k if k < len(self.pool) else 2 * len(self.pool) - 2 - k]


def box_prompts(clip: LoopedClip, n_obj: int) -> Prompts:
    """n_obj box prompts on frame 0, spread across the frame."""
    items = []
    for k in range(n_obj):
        x0 = clip.w * (0.05 + 0.9 * k / max(n_obj, 1))
        items.append(ObjectPrompt(k + 1, 0, box=[x0, clip.h * 0.3, min(clip.w, x0 + clip.w * 0.15), clip.h * 0.8]))
    return Prompts(items, (clip.h, clip.w), clip.n)


def write_h264(path: Path, width: int, height: int, frames: int, fps: int = 30) -> None:
    """A synthetic H.264 clip: smooth gradients and texture panning across the frame."""
    import av

    base = texture(height, width)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "23", "preset": "veryfast"}
        for i in range(frames):
            img = np.roll(base, shift=(i * 7, i * 5), axis=(0, 1))
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def occluded_ellipses(people: int, frames: int, h: int, w: int, hide: int = 14, occluded: bool = True
                      ) -> tuple[torch.Tensor, dict[int, np.ndarray], Tracks]:
    """Frames, amodal truth per id and visible tracks: ellipse people, each hidden by a bar once."""
    rng = np.random.default_rng(0)
    rgb = torch.from_numpy(rng.integers(0, 255, (frames, h, w, 3), dtype=np.uint8))
    ys, xs = np.arange(h)[:, None], np.arange(w)[None, :]
    dy = ((ys - 0.55 * h) / (0.3 * h)) ** 2
    truth, visible = {}, []
    for p in range(people):
        masks = np.zeros((frames, h, w), bool)
        vis = np.zeros_like(masks)
        cx0 = (p + 0.5) * w / people
        start = 8 + p * ((frames - 8 - hide) // max(1, people))
        for t in range(frames):
            cx = cx0 + 0.02 * w * np.sin(t / 10 + p)
            masks[t] = ((xs - cx) / (0.05 * w)) ** 2 + dy <= 1
            vis[t] = masks[t]
            if occluded and start <= t < start + hide:
                vis[t, :, max(0, int(cx - 0.06 * w)):int(cx + 0.03 * w)] = False
        truth[p + 1] = masks
        visible.append(vis)
    return rgb, truth, Tracks.from_masks(range(1, people + 1), np.stack(visible))


def body_inputs(n_items: int, h: int, w: int, people: int, seed: int = 0) -> tuple[np.ndarray, list]:
    """Random-texture frames with `people` boxes (and masks) per frame: SAM-3D-Body's crops (BodyItems)."""
    from body4d_core.sam3d_body import BodyItem

    rng = np.random.default_rng(seed)
    n_frames = (n_items + people - 1) // people
    frames = rng.integers(0, 255, (n_frames, h, w, 3), dtype=np.uint8)
    items = []
    for i in range(n_items):
        t, p = divmod(i, people)
        bw, bh = int(w * 0.15), int(h * 0.6)
        x0 = int((p + 0.5) * w / people - bw / 2)
        y0 = int(h * 0.2)
        mask = np.zeros((h, w), bool)
        mask[y0:y0 + bh, x0:x0 + bw] = True
        items.append(BodyItem(t, p + 1, [x0, y0, x0 + bw, y0 + bh], mask))
    return frames, items


# --------------------------------------------------------------------------- walking people (whole pipeline)


@dataclass
class SyntheticClip:
    """Frames of people-like figures plus their known visible / amodal masks (bit-packed [N, T, H, W/8])."""

    frames: np.ndarray  # uint8 [T, H, W, 3]
    visible: np.ndarray
    amodal: np.ndarray
    prompts: dict  # points-editor JSON

    @property
    def size(self) -> tuple[int, int]:
        return int(self.frames.shape[1]), int(self.frames.shape[2])


def _figure_mask(h: int, w: int, cx: float, foot: float, body_h: float, body_w: float) -> np.ndarray:
    """bool [H, W]: a torso/legs rectangle plus a round head, feet at row ``foot``."""
    m = np.zeros((h, w), bool)
    top = foot - body_h
    x0, x1 = int(round(cx - body_w / 2)), int(round(cx + body_w / 2))
    m[max(int(top), 0):max(int(foot), 0), max(x0, 0):max(x1, 0)] = True
    r = body_w * 0.45
    cy = top - r * 0.9
    ys, xs = np.ogrid[:h, :w]
    m |= (ys - cy) ** 2 + (xs - cx) ** 2 <= r * r
    return m


def make_clip(num_frames: int, people: int, height: int, width: int) -> SyntheticClip:
    """People walking left/right at different speeds (bouncing at the edges), drawn back to front, and a
    pole in front of everyone: each person is hidden by the pole or by the people in front for some frames."""
    rng = np.random.default_rng(0)
    h, w = height, width
    body_h = 0.42 * h
    body_w = max(0.33 * body_h, 6.0)  # box aspect ~0.26: clear of the amodal stage's "skinny" exemption (< 0.2)
    lo, hi = 0.08 * w, 0.92 * w
    starts = lo + (hi - lo) * (np.arange(people) + 0.5) / people
    gaps = np.diff(np.concatenate([[lo], starts, [hi]]))
    g = int(np.argmax(gaps))
    pole_x = (([lo] + starts.tolist() + [hi])[g] + ([lo] + starts.tolist() + [hi])[g + 1]) / 2
    pole_w = max(0.045 * w, 3.0)
    pole = np.zeros((h, w), bool)
    pole[:, int(pole_x - pole_w / 2):int(pole_x + pole_w / 2)] = True
    travel = (0.25 + 0.1 * np.arange(people)) * w  # over the clip; neighbours walk towards each other
    speed = travel / num_frames * np.where(np.arange(people) % 2 == 0, 1.0, -1.0)
    feet = 0.88 * h - (np.arange(people) % 3) * 0.03 * h
    colours = rng.integers(40, 230, (people, 3)).astype(np.uint8)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    background = np.stack([90 + 60 * xx / w, 110 + 50 * yy / h, 120 + 40 * np.sin(xx / 29.0) * np.cos(yy / 17.0)],
                          -1).astype(np.uint8)
    frames = np.empty((num_frames, h, w, 3), np.uint8)
    vis = np.empty((people, num_frames, h, (w + 7) // 8), np.uint8)
    amo = np.empty_like(vis)
    x = starts.copy()
    first_masks = []
    for t in range(num_frames):
        img = background.copy()
        sil = [_figure_mask(h, w, x[k], feet[k], body_h, body_w) for k in range(people)]
        covered = pole.copy()
        for k in reversed(range(people)):  # front (last drawn) first, so covered = everyone in front
            vis[k, t] = pack_masks(sil[k] & ~covered)
            amo[k, t] = pack_masks(sil[k])
            covered |= sil[k]
        for k in range(people):
            img[sil[k]] = colours[k]
        img[pole] = (200, 200, 200)
        frames[t] = img
        if t == 0:
            first_masks = [unpack_masks(vis[k, 0], w) for k in range(people)]
        x += speed
        speed = np.where((x < lo) | (x > hi), -speed, speed)
        x = np.clip(x, lo, hi)
    return SyntheticClip(frames, vis, amo, _prompts(first_masks, (h, w)))


def _prompts(masks: list[np.ndarray], size: tuple[int, int]) -> dict:
    """Points-editor JSON: per person a box around its frame-0 mask and one positive click inside it."""
    objects = []
    for k, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        if len(xs) == 0:
            continue
        i = len(xs) // 2
        objects.append({"id": k + 1, "points": [{"frame": 0, "x": float(xs[i]) + 0.5, "y": float(ys[i]) + 0.5,
                                                  "label": 1}],
                        "boxes": [{"frame": 0, "x0": float(xs.min()), "y0": float(ys.min()),
                                   "x1": float(xs.max()) + 1, "y1": float(ys.max()) + 1}]})
    return {"version": 1, "image_size": list(size), "objects": objects}


def write_clip(clip: SyntheticClip, path: Path, fps: float = 30.0) -> Path:
    """The clip's frames as an MP4 (the pipeline's own writer)."""
    from body4d_core.export import write_mp4

    return write_mp4(path, iter(clip.frames), fps, clip.size)
