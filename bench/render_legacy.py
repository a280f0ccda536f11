"""Bench-only copy of the per-frame renderer before issue 6 (commit b85f415): the A/B baseline.

bench/bench_render.py times it next to body4d_core.render and counts differing pixels;
nothing else imports it. Same conventions as body4d_core/render.py.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from body4d_core.data import BodyFlag, Bodies, Camera
from body4d_core.errors import InputError
from body4d_core.palette import object_color_float
from body4d_core.runtime import NULL_HOOKS, Hooks
from body4d_core.skeleton import draw_openpose

log = logging.getLogger(__name__)

MODES = ("overlay", "mesh", "silhouette", "normals", "depth", "openpose")
VerticesFn = Callable[[Bodies, np.ndarray], np.ndarray]  # (bodies, frame indices) -> [N, len, V, 3]


@dataclass
class Raster:
    """Per-pixel result of one frame: face index (-1 = empty), barycentrics, depth (inf = empty)."""

    face: torch.Tensor  # long [H, W]
    bary: torch.Tensor  # float [H, W, 3] perspective-correct
    depth: torch.Tensor  # float [H, W]


def rasterize(verts: torch.Tensor, faces: torch.Tensor, intr: tuple[float, float, float, float],
              size: tuple[int, int], near: float = 1e-3, chunk: int = 2_000_000) -> Raster:
    """Z-buffer rasterise triangles (camera-frame verts [M, 3], faces [F, 3]) into an H x W grid."""
    h, w = size
    dev = verts.device
    fx, fy, cx, cy = intr
    verts = verts.float()
    z = verts[:, 2]
    safe_z = z.clamp_min(near)
    px = fx * verts[:, 0] / safe_z + cx - 0.5  # continuous coords of pixel centres: index space
    py = fy * verts[:, 1] / safe_z + cy - 0.5
    faces = faces.long()
    fz = z[faces]
    keep = (fz > near).all(1)
    fxy = torch.stack([px[faces], py[faces]], -1)  # [F, 3, 2]
    lo = fxy.amin(1).ceil().clamp(min=0)
    hi = fxy.amax(1).floor()
    hi = torch.minimum(hi, torch.tensor([w - 1.0, h - 1.0], device=dev))
    span = (hi - lo + 1).clamp(min=0)
    counts = (span[:, 0] * span[:, 1]).long() * keep.long()
    x0, y0 = fxy[:, 0, 0], fxy[:, 0, 1]
    e1 = fxy[:, 1] - fxy[:, 0]
    e2 = fxy[:, 2] - fxy[:, 0]
    area = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    counts = counts * (area.abs() > 1e-12).long()

    zbuf = torch.full((h * w,), float("inf"), device=dev)
    kept: list[tuple[torch.Tensor, ...]] = []
    face_ids = torch.nonzero(counts > 0).flatten()
    csum = torch.cumsum(counts[face_ids], 0)
    start = 0
    while start < face_ids.numel():
        base = int(csum[start - 1]) if start else 0
        stop = int(torch.searchsorted(csum, torch.tensor(base + chunk, device=dev), right=True))
        stop = max(stop, start + 1)
        fids = face_ids[start:stop]
        cnt = counts[fids]
        fid = torch.repeat_interleave(fids, cnt)
        first = torch.cumsum(cnt, 0) - cnt
        off = torch.arange(int(cnt.sum()), device=dev) - torch.repeat_interleave(first, cnt)
        sw = span[fid, 0].long()
        qx = lo[fid, 0] + (off % sw).float()
        qy = lo[fid, 1] + torch.div(off, sw, rounding_mode="floor").float()
        dx, dy = qx - x0[fid], qy - y0[fid]
        a = area[fid]
        b1 = (dx * e2[fid, 1] - dy * e2[fid, 0]) / a
        b2 = (e1[fid, 0] * dy - e1[fid, 1] * dx) / a
        b0 = 1.0 - b1 - b2
        inside = (b0 >= -1e-6) & (b1 >= -1e-6) & (b2 >= -1e-6)
        bary = torch.stack([b0, b1, b2], -1)[inside]
        fid, qx, qy = fid[inside], qx[inside], qy[inside]
        inv = bary / fz[fid]
        inv_z = inv.sum(-1)
        depth = 1.0 / inv_z
        pix = qy.long() * w + qx.long()
        zbuf.scatter_reduce_(0, pix, depth, reduce="amin")
        kept.append((pix, depth, fid, inv / inv_z[:, None]))
        start = stop
    face_buf = torch.full((h * w,), -1, dtype=torch.long, device=dev)
    bary_buf = torch.zeros((h * w, 3), device=dev)
    for pix, depth, fid, bary in kept:
        win = depth <= zbuf[pix]
        face_buf[pix[win]] = fid[win]
        bary_buf[pix[win]] = bary[win]
    return Raster(face_buf.view(h, w), bary_buf.view(h, w, 3), zbuf.view(h, w))


def vertex_normals(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted unit vertex normals [M, 3]."""
    v = verts[faces.long()]
    fn = torch.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=-1)
    vn = torch.zeros_like(verts).index_add_(0, faces[:, 0].long(), fn)
    vn.index_add_(0, faces[:, 1].long(), fn).index_add_(0, faces[:, 2].long(), fn)
    return torch.nn.functional.normalize(vn, dim=-1, eps=1e-12)


def _frame_vertices(bodies: Bodies, frames: np.ndarray, vertices_fn: VerticesFn | None) -> np.ndarray:
    """Root-relative vertices [N, len, V, 3] of the requested frames."""
    if bodies.vertices is not None:
        return bodies.vertices[:, frames]
    if vertices_fn is not None:
        verts = np.asarray(vertices_fn(bodies, frames), np.float32)
        if verts.ndim != 4 or verts.shape[:2] != (bodies.num_objects, len(frames)) or verts.shape[-1] != 3:
            raise InputError(f"vertices_fn must return [N, frames, V, 3] = ({bodies.num_objects}, {len(frames)}, V, 3), "
                             f"got {verts.shape}")
        return verts
    raise InputError("Render Mesh: these bodies carry no vertices; run SAM3D Body with vertices on "
                     "(or give a rig), or use the 'openpose' mode, which needs only keypoints")


def _shade(raster: Raster, face_owner: torch.Tensor, colors: torch.Tensor, normals: torch.Tensor,
           faces: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RGB [H, W, 3] in 0..1, coverage [H, W] bool and owner index [H, W] (-1 = none) of one frame."""
    hit = raster.face >= 0
    f = raster.face.clamp_min(0)
    owner = torch.where(hit, face_owner[f], torch.full_like(f, -1))
    h, w = hit.shape
    rgb = torch.zeros((h, w, 3), device=hit.device)
    if not hit.any():
        return rgb, hit, owner
    if mode == "silhouette":
        rgb[hit] = colors[owner[hit]]
        return rgb, hit, owner
    if mode == "depth":
        d = raster.depth[hit]
        lo, hi = d.min(), d.max()
        g = 1.0 - 0.8 * (d - lo) / (hi - lo).clamp_min(1e-6)  # near white, far dark grey
        rgb[hit] = g[:, None].expand(-1, 3)
        return rgb, hit, owner
    fv = faces[f[hit]].long()  # [P, 3]
    n = (normals[fv] * raster.bary[hit][..., None]).sum(1)
    n = torch.nn.functional.normalize(n, dim=-1, eps=1e-12)
    n = torch.where((n[:, 2:3] > 0), -n, n)  # face the camera (it looks along +z)
    if mode == "normals":  # OpenGL normal-map convention: +x right, +y up, +z towards the viewer
        rgb[hit] = (torch.stack([n[:, 0], -n[:, 1], -n[:, 2]], -1) + 1.0) * 0.5
        return rgb, hit, owner
    lambert = (-n[:, 2]).clamp(0, 1)
    rgb[hit] = colors[owner[hit]] * (0.35 + 0.65 * lambert[:, None])
    return rgb, hit, owner


def render_bodies(frames: np.ndarray | torch.Tensor | None, bodies: Bodies, camera: Camera, mode: str = "overlay",
                  hooks: Hooks = NULL_HOOKS, batch_size: int = 16, opacity: float = 0.85,
                  vertices_fn: VerticesFn | None = None, device: str | torch.device | None = None,
                  return_ids: bool = False) -> tuple[np.ndarray, ...]:
    """Render every frame; returns (uint8 images [T, H, W, 3], float32 masks [T, H, W]) (+ owner ids).

    ``frames`` (uint8 or float 0..1, [T, H, W, 3]) is the overlay background; None = black.
    Masks are the union of all people; with ``return_ids`` an int16 [T, H, W] map of the
    object id owning each pixel (0 = none) comes third. Frames are processed in batches of
    ``batch_size`` with progress and interrupt checks between batches.
    """
    if mode not in MODES:
        raise InputError(f"render mode must be one of {', '.join(MODES)}; got {mode!r}")
    if not 0.0 <= opacity <= 1.0:
        raise InputError(f"opacity must be within 0..1, got {opacity}")
    t = bodies.num_frames
    h, w = bodies.image_size
    camera = camera.check_frames(t)
    if tuple(camera.image_size) != (h, w):
        raise InputError(f"camera image size {camera.image_size} does not match the bodies' {bodies.image_size}")
    bg = _background(frames, t, (h, w))
    dev = torch.device(device) if device else (torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    colors = torch.tensor(np.stack([object_color_float(o) for o in bodies.obj_ids]), device=dev)
    images = np.empty((t, h, w, 3), np.uint8)
    masks = np.zeros((t, h, w), np.float32)
    ids = np.zeros((t, h, w), np.int16) if return_ids else None
    if mode != "openpose" and bodies.faces is None:
        raise InputError("Render Mesh: the bodies carry no faces (mesh topology); run SAM3D Body with vertices on")
    faces = None if bodies.faces is None else torch.as_tensor(bodies.faces, device=dev).long()
    for s0 in range(0, t, batch_size):
        hooks.check_interrupt()
        idx = np.arange(s0, min(t, s0 + batch_size))
        if mode == "openpose":
            _render_openpose(bodies, idx, bg, images, masks)
        else:
            verts = _frame_vertices(bodies, idx, vertices_fn)
            for j, ti in enumerate(idx):
                rgb, hit, owner = _render_frame(bodies, verts[:, j], int(ti), faces, camera, colors, mode, dev)
                images[ti], masks[ti] = _composite(bg[ti] if bg is not None else None, rgb, hit, mode, opacity)
                if ids is not None:
                    ids[ti] = np.where(owner >= 0, bodies.obj_ids[np.maximum(owner, 0)], 0)
        hooks.progress(int(idx[-1]) + 1, t)
    return (images, masks, ids) if return_ids else (images, masks)


def _background(frames: np.ndarray | torch.Tensor | None, t: int, size: tuple[int, int]) -> np.ndarray | None:
    """Frames as float32 0..1 [T, H, W, 3], checked against the bodies."""
    if frames is None:
        return None
    arr = frames.detach().cpu().numpy() if torch.is_tensor(frames) else np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise InputError(f"frames must be [T, H, W, 3], got shape {arr.shape}")
    if arr.shape[0] != t:
        raise InputError(f"frame counts do not match (frames: {arr.shape[0]}, bodies: {t}); "
                         "feed every input from the same clip")
    if tuple(arr.shape[1:3]) != tuple(size):
        raise InputError(f"frame size {arr.shape[1]}x{arr.shape[2]} does not match the bodies' {size[0]}x{size[1]}")
    return arr.astype(np.float32) / 255.0 if arr.dtype == np.uint8 else arr.astype(np.float32)


def _render_frame(bodies: Bodies, verts: np.ndarray, t: int, faces: torch.Tensor, camera: Camera,
                  colors: torch.Tensor, mode: str, dev: torch.device) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Rasterise and shade the people present on frame t."""
    h, w = bodies.image_size
    present = np.flatnonzero(bodies.flags[:, t] != BodyFlag.MISSING)
    if present.size == 0:
        return torch.zeros((h, w, 3)), np.zeros((h, w), bool), np.full((h, w), -1)
    nv = verts.shape[1]
    v = torch.as_tensor(verts[present] + bodies.params["cam_t"][present, t][:, None], device=dev).float()
    all_v = v.reshape(-1, 3)
    all_f = (faces[None] + (torch.arange(present.size, device=dev) * nv)[:, None, None]).reshape(-1, 3)
    owner = torch.as_tensor(present, device=dev).repeat_interleave(faces.shape[0])
    fx, fy, cx, cy = camera.intrinsics[t].tolist()
    raster = rasterize(all_v, all_f, (fx, fy, cx, cy), (h, w))
    normals = vertex_normals(all_v, all_f) if mode in ("overlay", "mesh", "normals") else all_v
    rgb, hit, own = _shade(raster, owner, colors, normals, all_f, mode)
    return rgb.cpu(), hit.cpu().numpy(), own.cpu().numpy()


def _composite(bg: np.ndarray | None, rgb: torch.Tensor, hit: np.ndarray, mode: str,
               opacity: float) -> tuple[np.ndarray, np.ndarray]:
    """uint8 image and float mask of one frame."""
    img = rgb.numpy()
    if mode == "overlay" and bg is not None:
        a = (hit * opacity)[..., None]
        img = bg * (1.0 - a) + img * a
    return (np.clip(img, 0, 1) * 255.0 + 0.5).astype(np.uint8), hit.astype(np.float32)


def _render_openpose(bodies: Bodies, idx: np.ndarray, bg: np.ndarray | None, images: np.ndarray,
                     masks: np.ndarray) -> None:
    """2D OpenPose-18 skeletons from MHR70 2D keypoints (black canvas, ControlNet style)."""
    if bodies.keypoints_2d is None:
        raise InputError("Render Mesh: 'openpose' needs 2D keypoints and these bodies have none")
    h, w = bodies.image_size
    for ti in idx:
        canvas = np.zeros((h, w, 3), np.uint8)
        for i in np.flatnonzero(bodies.flags[:, ti] != BodyFlag.MISSING):
            draw_openpose(canvas, bodies.keypoints_2d[i, ti])
        images[ti] = canvas
        masks[ti] = canvas.any(-1)
