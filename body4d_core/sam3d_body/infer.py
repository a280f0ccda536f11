"""Batched SAM-3D-Body inference over many people and frames, and conversion to ``Bodies``.

Every (frame, object) item is cropped on the device, items are run in batches (default 64,
halved on CUDA OOM), the backbone runs in bf16 under a scoped autocast on GPU and everything
after it in float32. Results are keyed by object id, never by list position.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from ..alloc import Alloc, zeros
from ..data import Bodies, Camera
from ..errors import InputError
from ..runtime import NULL_HOOKS, Hooks, upload
from . import crop as C
from . import fusion
from .. import rotations as rot
from .heads import camera_geometry, project
from .fp8 import fp8_unavailable
from .fused_vit import FusedBlocks
from .model import CropBatch, Sam3dBody
from .runner import BodyRunner
from .writer import BodiesWriter

log = logging.getLogger(__name__)
MODES = ("body", "full")
CROP_KERNELS = ("auto", "triton", "grid_sample")  # estimate_bodies(crop_kernel=...)
PARAM_KEYS = {"global_rot": "global_rot", "body_pose": "body_pose", "hand_pose": "hand", "shape": "shape",
              "scale": "scale", "expr": "face", "cam_t": "cam_t"}


@dataclass
class BodyItem:
    """One person in one frame: its box (xyxy pixels), optional mask, optional replacement image."""

    frame: int
    obj_id: int
    box: Sequence[float]
    mask: np.ndarray | Callable[[], np.ndarray] | None = None  # bool [H, W], or a loader called when cropping
    image: np.ndarray | Callable[[], np.ndarray] | None = None  # uint8 [H, W, 3] replacing the frame (completed RGB)
    occluded: bool = False

    def get_mask(self) -> np.ndarray | None:
        return self.mask() if callable(self.mask) else self.mask

    def get_image(self) -> np.ndarray | None:
        return self.image() if callable(self.image) else self.image


def _check_size(it: BodyItem, what: str, arr: np.ndarray | None, shape: tuple[int, ...]) -> None:
    if arr is not None and tuple(np.shape(arr)) != shape:
        raise InputError(f"{what} of object {it.obj_id} on frame {it.frame} is {tuple(np.shape(arr))}, "
                         f"expected {shape} (the frames' size)")


# ------------------------------------------------------------------ input checks


def _frames_tensor(frames: Any) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
    if not isinstance(t, torch.Tensor) or t.ndim != 4 or t.shape[-1] not in (3, 4):
        shape = tuple(getattr(t, "shape", ()))
        raise InputError(f"frames must be an RGB array [T, H, W, 3], got shape {shape}")
    if t.shape[0] == 0 or t.shape[1] < 2 or t.shape[2] < 2:
        raise InputError(f"frames are empty (shape {tuple(t.shape)})")
    return t


def _intrinsics(intrinsics: Any, t: int, h: int, w: int) -> torch.Tensor:
    """[T, 3, 3] float32 from None (f = sqrt(H^2+W^2)), a Camera, [T,4] (fx,fy,cx,cy) or [T,3,3]."""
    if intrinsics is None:
        intrinsics = Camera.default((h, w), t)
    if hasattr(intrinsics, "check_frames"):  # a Camera (duck-typed: the pack may be imported twice in tests)
        intrinsics = intrinsics.check_frames(t).intrinsics
    k = torch.as_tensor(np.asarray(intrinsics, dtype=np.float32))
    if k.shape[-2:] == (3, 3):
        k = k.reshape(-1, 3, 3)
    elif k.shape[-1] == 4:
        fx, fy, cx, cy = k.reshape(-1, 4).unbind(-1)
        z, o = torch.zeros_like(fx), torch.ones_like(fx)
        k = torch.stack([fx, z, cx, z, fy, cy, z, z, o], -1).reshape(-1, 3, 3)
    else:
        raise InputError(f"intrinsics must be [T, 4] (fx, fy, cx, cy) or [T, 3, 3], got {tuple(k.shape)}")
    if k.shape[0] == 1 and t > 1:
        k = k.expand(t, 3, 3)
    if k.shape[0] != t:
        raise InputError(f"intrinsics cover {k.shape[0]} frames but there are {t} frames")
    if not (torch.isfinite(k).all() and (k[:, 0, 0] > 0).all() and (k[:, 1, 1] > 0).all()):
        raise InputError("intrinsics must have finite, positive focal lengths")
    return k


def check_items(items: Sequence[BodyItem], t: int, h: int, w: int) -> None:
    """One clear error per bad item: frame range, empty/invalid box, mask or image size, duplicates."""
    seen: set[tuple[int, int]] = set()
    for i, it in enumerate(items):
        if not 0 <= int(it.frame) < t:
            raise InputError(f"item {i} (object {it.obj_id}) refers to frame {it.frame} but there are {t} frames")
        key = (int(it.obj_id), int(it.frame))
        if key in seen:
            raise InputError(f"object {it.obj_id} appears twice on frame {it.frame}")
        seen.add(key)
        box = np.asarray(it.box, dtype=np.float64).reshape(-1)
        if box.size != 4 or not np.isfinite(box).all() or box[2] - box[0] < 1 or box[3] - box[1] < 1:
            raise InputError(f"object {it.obj_id} on frame {it.frame} has an empty or invalid box {box.tolist()} "
                             "(xyxy pixels, at least 1 px wide and high)")
        if not callable(it.mask):
            _check_size(it, "mask", it.mask, (h, w))
        if not callable(it.image):
            _check_size(it, "replacement image", it.image, (h, w, 3))


# ------------------------------------------------------------------ crops


def _to_float_image(x: torch.Tensor | np.ndarray, device: torch.device) -> torch.Tensor:
    t = upload(x, device)
    t = t.float() / 255.0 if not t.is_floating_point() else t.float()
    return t.permute(2, 0, 1)[None]


def _host_boxes(items: Sequence[BodyItem]) -> torch.Tensor:
    """The items' xyxy boxes as float64 [N, 4] on the host."""
    return torch.tensor(np.array([np.asarray(it.box, np.float64) for it in items]), dtype=torch.float64)


def _mask_windows(items: Sequence[BodyItem], padding: float, size: int, hw: tuple[int, int],
                  flip: bool) -> np.ndarray:
    """[N, 4] int (x0, x1, y0, y1): the frame window each crop samples, from the boxes on the host.

    The crop maps output pixel k to x = (k - a02) / a00 (monotonic), so the first and last pixel
    bound the samples; 2 px of margin covers the bilinear neighbour and fp32 rounding of the grid.
    """
    h, w = hw
    centre, side = C.crop_boxes(_host_boxes(items), padding)
    a = C.affine_matrices(centre, side, size).numpy()
    ends = np.array([0.0, size - 1.0])
    xs = (ends[None] - a[:, 0, 2, None]) / a[:, 0, 0, None]
    ys = (ends[None] - a[:, 1, 2, None]) / a[:, 1, 1, None]
    if flip:
        xs = (w - 1) - xs
    x0 = np.clip(np.floor(xs.min(1)) - 2, 0, w - 1)
    x1 = np.clip(np.ceil(xs.max(1)) + 2, 0, w - 1)
    y0 = np.clip(np.floor(ys.min(1)) - 2, 0, h - 1)
    y1 = np.clip(np.ceil(ys.max(1)) + 2, 0, h - 1)
    return np.stack([x0, x1, y0, y1], 1).astype(np.int64)


def _warp_masks(items: Sequence[BodyItem], affine: torch.Tensor, size: int, windows: np.ndarray,
                hw: tuple[int, int], flip: bool = False, use_triton: bool = False,
                grid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(masks [N, 1, S, S], scores [N]) warped from each item's mask window; one upload, one warp.

    The windows (``_mask_windows``) hold every bilinear neighbour the crops sample, so this equals
    warping the whole frame; they are packed (zero padded) into one host buffer, so a batch costs a
    single pinned copy and a single warp with no device->host sync: the crop kernel where
    ``use_triton`` (see ``_crop_kernel_usable``), else grid_sample with ``grid`` (built here if None).
    """
    h, w = hw
    n, dev = len(items), affine.device
    masks = [it.get_mask() for it in items]
    for it, m in zip(items, masks):
        if m is not None:
            _check_size(it, "mask", m, (h, w))
    wm = max(int((windows[:, 1] - windows[:, 0]).max()) + 1, 2)
    hm = max(int((windows[:, 3] - windows[:, 2]).max()) + 1, 2)
    exact = all(m is None or np.asarray(m).dtype in (np.bool_, np.uint8) for m in masks)
    buf = torch.zeros(n, hm, wm, dtype=torch.uint8 if exact else torch.float32,
                      pin_memory=dev.type == "cuda")
    view = buf.numpy()
    score = np.zeros(n, np.float32)
    for i, m in enumerate(masks):
        if m is None:
            continue
        x0, x1, y0, y1 = (int(v) for v in windows[i])
        view[i, :y1 - y0 + 1, :x1 - x0 + 1] = np.asarray(m)[y0:y1 + 1, x0:x1 + 1]
        score[i] = 1.0
    lo = upload(torch.from_numpy(windows[:, [0, 2]].astype(np.float32)), dev)  # [N, 2] (x0, y0)
    src = buf.to(dev, non_blocking=True) if dev.type == "cuda" else buf
    scores = upload(torch.from_numpy(score), dev)
    if use_triton:
        from .crop_triton import crop_windows

        return crop_windows(src, lo, C.scale_shift(affine), size, w, flip=flip), scores
    grid = C.sample_grid(affine, size, hw, flip=flip) if grid is None else grid
    lo = lo.to(grid.dtype)
    px = (grid[..., 0] + 1) * (w - 1) / 2 - lo[:, 0, None, None]
    py = (grid[..., 1] + 1) * (h - 1) / 2 - lo[:, 1, None, None]
    g = torch.stack([2 * px / (wm - 1) - 1, 2 * py / (hm - 1) - 1], -1)
    return C.warp(src[:, None].float(), g), scores


def _crop_kernel_usable(dev: torch.device, crop_kernel: str = "auto") -> bool:
    """Whether crops and masks go through crop_triton's kernel: 'auto' where it can run (CUDA with triton),
    'triton' always (an error where it cannot), 'grid_sample' never."""
    if crop_kernel not in CROP_KERNELS:
        raise InputError(f"crop_kernel must be one of {CROP_KERNELS}, got {crop_kernel!r}")
    if crop_kernel == "grid_sample":
        return False
    why = "" if dev.type == "cuda" else f"the crop kernel needs a CUDA device (this model is on {dev.type})"
    if not why:
        try:
            from . import crop_triton  # noqa: F401
        except Exception as err:  # noqa: BLE001 - e.g. torch wheels without triton (Windows)
            why = f"the crop kernel needs triton ({type(err).__name__}: {err})"
    if why and crop_kernel == "triton":
        raise InputError(f"crop_kernel='triton': {why}; use 'auto' or 'grid_sample'")
    if why:
        log.debug("crops by grid_sample: %s", why)
    return not why


def _triton_crops(sources: dict[Any, torch.Tensor], keys: list[Any], affine: torch.Tensor, size: int, flip: bool,
                  dev: torch.device) -> torch.Tensor:
    """All crops of a batch in one kernel launch on one upload of its frames (sources of mixed dtypes,
    e.g. uint8 frames and a float replacement image, are all made float 0..1 first)."""
    from .crop_triton import crop_rgb

    srcs = list(sources.values())
    if len({t.dtype for t in srcs}) > 1:
        srcs = [t.float() if t.is_floating_point() else t.float() / 255.0 for t in srcs]
    if all(t.device == dev for t in srcs):
        stack = torch.stack(srcs).contiguous()
    else:
        buf = torch.empty((len(srcs),) + tuple(srcs[0].shape), dtype=srcs[0].dtype, pin_memory=True)
        for j, t in enumerate(srcs):
            buf[j].copy_(t)
        stack = buf.to(dev, non_blocking=True)
    pos = {key: j for j, key in enumerate(sources)}
    index = upload(torch.tensor([pos[k] for k in keys], dtype=torch.int32), dev)
    scale = 1.0 if stack.is_floating_point() else 1.0 / 255.0
    return crop_rgb(stack, index, C.scale_shift(affine), size, flip=flip, value_scale=scale)


def _crop_images(frames: torch.Tensor, items: Sequence[BodyItem], affine: torch.Tensor, size: int, flip: bool,
                 dev: torch.device, use_triton: bool, grid: torch.Tensor | None = None) -> torch.Tensor:
    """[N, 3, S, S] float 0..1 crops of each item's frame (or replacement image): one kernel launch
    (``_triton_crops``) where ``use_triton``, else one grid_sample per source with ``grid`` (built
    here if None)."""
    h, w = int(frames.shape[1]), int(frames.shape[2])
    keys = [("img", i) if it.image is not None else int(it.frame) for i, it in enumerate(items)]
    groups: dict[Any, list[int]] = {}  # source -> the items cropped from it
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    sources = {}
    for key in groups:
        if isinstance(key, tuple):
            src = items[key[1]].get_image()
            _check_size(items[key[1]], "replacement image", src, (h, w, 3))
        else:
            src = frames[key, ..., :3]
        sources[key] = torch.as_tensor(src)
    if use_triton:
        return _triton_crops(sources, keys, affine, size, flip, dev)
    grid = C.sample_grid(affine, size, (h, w), flip=flip) if grid is None else grid
    img = torch.zeros(len(items), 3, size, size, device=dev)
    for key, src in sources.items():
        img[groups[key]] = C.warp(_to_float_image(src, dev), grid[groups[key]])
    return img


def build_crops(model: Sam3dBody, frames: torch.Tensor, items: Sequence[BodyItem], K: torch.Tensor,
                boxes: torch.Tensor, padding: float, flip: bool = False, use_masks: bool = True,
                crop_kernel: str = "auto") -> CropBatch:
    """Crop ``items`` (boxes [B, 4] on device, in the possibly mirrored image) into a CropBatch.

    Sync-free on CUDA (pinned uploads, no device->host reads): its GPU work queues behind
    whatever is running, so it can be built ahead for the next batch. use_masks takes the mask
    windows from the items' own boxes (body crops), not from ``boxes``. crop_kernel: see ``estimate_bodies``.
    """
    dev = boxes.device
    s = model.cfg.image_size
    h, w = int(frames.shape[1]), int(frames.shape[2])
    centre, side = C.crop_boxes(boxes, padding)
    affine = C.affine_matrices(centre, side, s)
    n = len(items)
    kernel = _crop_kernel_usable(dev, crop_kernel)
    grid = None if kernel else C.sample_grid(affine, s, (h, w), flip=flip)  # grid_sample's, shared by both warps
    img = _crop_images(frames, items, affine, s, flip, dev, kernel, grid)
    if use_masks:
        windows = _mask_windows(items, padding, s, (h, w), flip)
        mask, score = _warp_masks(items, affine, s, windows, (h, w), flip, kernel, grid)
    else:
        mask, score = torch.zeros(n, 1, s, s, device=dev), torch.zeros(n, device=dev)
    k = upload(K[[int(it.frame) for it in items]], dev)
    wh = upload(torch.tensor([[w, h]] * n, dtype=torch.float32), dev)
    return CropBatch(img, mask, score, centre.float(), side.float(), affine.float(), k, wh)


def item_boxes(items: Sequence[BodyItem], device: torch.device) -> torch.Tensor:
    """The items' xyxy boxes as float64 [N, 4] on ``device`` (pinned, non-blocking upload)."""
    return upload(_host_boxes(items), device)


def body_crops(model: Sam3dBody, frames: torch.Tensor, items: Sequence[BodyItem], K: torch.Tensor,
               crop_kernel: str = "auto") -> CropBatch:
    """The body crops (with masks) of ``items``."""
    dev = next(model.parameters()).device
    return build_crops(model, frames, items, K, item_boxes(items, dev), C.BODY_PADDING, crop_kernel=crop_kernel)


def _dummy_prompt(n: int, device: torch.device) -> torch.Tensor:
    p = torch.zeros(n, 1, 3, device=device)
    p[..., 2] = -2
    return p


def _split(p: dict[str, torch.Tensor], n: int) -> tuple[dict, dict]:
    a = {k: v[:n] for k, v in p.items() if isinstance(v, torch.Tensor)}
    b = {k: v[n:] for k, v in p.items() if isinstance(v, torch.Tensor)}
    return a, b


def _cat_batches(a: CropBatch, b: CropBatch) -> CropBatch:
    return CropBatch(*[torch.cat([getattr(a, f), getattr(b, f)]) for f in CropBatch.__dataclass_fields__])


# ------------------------------------------------------------------ one batch


def _run_full(model: Sam3dBody, frames: torch.Tensor, items: Sequence[BodyItem], K: torch.Tensor, batch: CropBatch,
              feats: torch.Tensor, body: dict, dtype: torch.dtype,
              dec_dtype: torch.dtype = torch.float32, crop_kernel: str = "auto") -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Hand refinement on top of a body pass; returns the merged params and the two hand boxes."""
    n, dev = batch.n, batch.img.device
    width = batch.img_wh[:, 0]
    lbox, rbox = fusion.hand_boxes(body, batch, model.cfg.image_size)
    lb = build_crops(model, frames, items, K, fusion.mirror_boxes(lbox, width), C.HAND_PADDING, True, False,
                     crop_kernel)
    rb = build_crops(model, frames, items, K, rbox, C.HAND_PADDING, False, False, crop_kernel)
    hb = _cat_batches(lb, rb)
    ph = model.decode("hand", model.encode(hb, dtype), hb, _dummy_prompt(2 * n, dev), with_verts=False,
                      dtype=dec_dtype)
    pl, pr = _split(ph, n)
    fusion.unmirror_left(model, pl)
    ori = rot.euler_XZY_to_rotmat(body["body_pose"][:, fusion.WRIST_BODY_PARAMS].unflatten(1, (2, 3)))
    valid = fusion.hand_validity(model, body, pl, pr, lb.size, rb.size, width, ori)
    prompts = fusion.wrist_prompts(model, body, pl, pr, batch, width, valid)
    body2 = model.decode("body", feats, batch, prompts, prev=model.prev_estimate(body), with_verts=False,
                         dtype=dec_dtype)
    merged = fusion.merge_hands(model, body2, pl, pr, valid, ori)
    return merged, lbox, rbox


def _finish(model: Sam3dBody, p: dict, batch: CropBatch, with_verts: bool) -> dict[str, torch.Tensor]:
    """Final rig evaluation of (possibly merged) parameters, camera-axes flip and projection."""
    out = dict(p)
    out.update(camera_geometry(model.head_pose, model.mhr, p, model.cfg.num_keypoints, with_verts))
    out["kp2d"], _ = project(out["kp3d"], out["cam_t"], batch.K)
    return out


def _run_batch(model: Sam3dBody, frames: torch.Tensor, items: Sequence[BodyItem], K: torch.Tensor, mode: str,
               dtype: torch.dtype, with_verts: bool, dec_dtype: torch.dtype, batch: CropBatch,
               after_encode: Callable[[], None] | None = None, feats: torch.Tensor | None = None,
               ready: Any = None, stream: Any = None, crop_kernel: str = "auto") -> list[dict[str, np.ndarray]]:
    """One batch end to end from its crops. ``feats``: its encoding if already built (``ready``: the
    CUDA event after that encoding); ``after_encode``: called once the backbone is queued (the
    prefetcher builds the next batch there, while the GPU is busy); ``stream``: a side CUDA stream
    for everything after the encoding (it then overlaps the next batch's backbone); crop_kernel: the hand crops'."""
    with torch.inference_mode():
        if feats is None:
            feats, ready = model.encode(batch, dtype), _event(batch.img.device)
        if after_encode is not None:
            after_encode()
        with _on_stream(stream, ready):
            return _decode_batch(model, frames, items, K, mode, dtype, with_verts, dec_dtype, batch, feats,
                                 crop_kernel)


def _event(device: torch.device) -> Any:
    """A CUDA event recorded on the current stream now (None off CUDA)."""
    if device.type != "cuda":
        return None
    ev = torch.cuda.Event()
    ev.record()
    return ev


@contextlib.contextmanager
def _on_stream(stream: Any, ready: Any) -> Iterator[None]:
    """Run the block on ``stream`` after ``ready`` (no-op without a stream)."""
    if stream is None:
        yield
        return
    if ready is not None:
        stream.wait_event(ready)
    with torch.cuda.stream(stream):
        yield


def _decode_batch(model: Sam3dBody, frames: torch.Tensor, items: Sequence[BodyItem], K: torch.Tensor, mode: str,
                  dtype: torch.dtype, with_verts: bool, dec_dtype: torch.dtype, batch: CropBatch,
                  feats: torch.Tensor, crop_kernel: str = "auto") -> list[dict[str, np.ndarray]]:
    """Body decode (+ hand refinement), final rig, results to the host (syncs the current stream)."""
    dev = feats.device
    body = model.decode("body", feats, batch, _dummy_prompt(batch.n, dev), with_verts=False, dtype=dec_dtype)
    lbox = rbox = None
    if mode == "full":
        body, lbox, rbox = _run_full(model, frames, items, K, batch, feats, body, dtype, dec_dtype, crop_kernel)
    out = _finish(model, body, batch, with_verts)
    res = {name: out[key] for name, key in PARAM_KEYS.items()}
    res.update(keypoints_3d=out["kp3d"], keypoints_2d=out["kp2d"], model_params=out["model_params"],
               joints=out["joints"], joint_rots=out["joint_rots"], focal=out["focal"][:, None])
    if with_verts:
        res["vertices"] = out["verts"]
    if lbox is not None:
        res["lhand_box"], res["rhand_box"] = lbox, rbox
    arrays = {k: v.detach().float().cpu().numpy() for k, v in res.items()}
    return [{k: v[i] for k, v in arrays.items()} for i in range(len(items))]


class CropPrefetcher:
    """Builds batch i+1's crops while batch i's backbone runs (same crops, only earlier).

    ``take(start, stop)`` returns the prefetched crops when they are for exactly that range (else
    builds them now: after an OOM halving the ranges change); ``ahead(start, stop)`` builds them.
    """

    def __init__(self, build: Callable[[int, int], Any]) -> None:
        self.build = build
        self.key: tuple[int, int] | None = None
        self.batch: Any = None

    def take(self, start: int, stop: int) -> Any:
        key, batch = self.key, self.batch
        self.key = self.batch = None
        return batch if key == (start, stop) and batch is not None else self.build(start, stop)

    def ahead(self, start: int, stop: int) -> None:
        if start < stop:
            self.key, self.batch = (start, stop), self.build(start, stop)


# ------------------------------------------------------------------ public API


def estimate_bodies(model: Sam3dBody, frames: Any, items: Sequence[BodyItem], intrinsics: Any = None,
                    mode: str = "body", batch_size: int = 64, hooks: Hooks = NULL_HOOKS,
                    dtype: torch.dtype | None = None, return_vertices: bool = False,
                    decoder_dtype: torch.dtype | None = None, prefetch: bool = True,
                    overlap: bool = True, fp8: bool = False, crop_kernel: str = "auto",
                    runner: BodyRunner | None = None, *, alloc: Alloc | None = None,
                    into: BodiesWriter | None = None, fused_backbone: bool = True) -> list[dict[str, np.ndarray]]:
    """Per-item MHR parameters, camera translation and keypoints, in the order of ``items``.

    frames: uint8 (or float 0..1) [T, H, W, 3]; intrinsics: see ``_intrinsics``; mode 'body'
    (body decoder only) or 'full' (hand refinement). dtype is the backbone's autocast dtype on GPU
    (default bf16 where supported); decoder_dtype the decoders' matmul autocast dtype on GPU (default
    float32, as upstream; heads, norms and the rig always run float32); CPU always runs float32.
    runner: how the networks run (compile policy, padded buckets, OOM halving: ``runner.BodyRunner``);
    default ``model.runner`` (set by ``model.optimize`` / ``model.compile_for``). prefetch: build the next
    batch's crops while the current backbone runs (identical results; hides the crop time on GPU).
    overlap (default; implies prefetch): also encode the next batch before decoding this one, and
    decode on a side CUDA stream, so the decoders run alongside the next backbone (identical results;
    faster, at a little more VRAM: BENCHMARKS.md, SAM-3D-Body).
    fp8 (opt-in, lossy): the backbone's block linears run E4M3 matmuls with per-row scales and fast
    accumulation for this call (weights quantised on entry, dropped on exit; activations quantised by
    the fused kernels of ``fp8_triton``); where the GPU cannot (see ``fp8.fp8_unavailable``) it logs
    why and runs without. crop_kernel: 'auto' (crop_triton's kernel on CUDA where triton runs, else
    grid_sample), 'triton' (the kernel; an error where it cannot run) or 'grid_sample'.
    alloc(shape, dtype): when given, each batch's results are written as it finishes into zero-filled arrays
    [len(items), ...] per result key from it (e.g. ``FrameStore.empty``: a long clip's vertices never pile up
    in RAM) and each item's dict holds views of their rows; same values as without.
    into: a ``BodiesWriter``; each batch's results are written as it finishes straight into its ``Bodies``
    arrays (row = person, column = frame; ``into.result(faces)`` gives the bodies) and each item's dict holds
    views of its cell (the keys ``Bodies`` keeps), so the results are stored once; not with ``alloc``.
    fused_backbone (default): where the backbone runs eagerly (not compiled, not FP8) on a GPU with Triton, its
    blocks run the rotary embedding and layer-scale adds as single passes (``fused_vit``; identical results,
    checked against the plain ops on the device first).
    """
    if mode not in MODES:
        raise InputError(f"mode must be one of {MODES}, got {mode!r}")
    if int(batch_size) < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    if alloc is not None and into is not None:
        raise InputError("estimate_bodies takes alloc (per-item arrays) or into (the bodies' arrays), not both")
    if model.mhr is None:
        raise InputError("the SAM-3D-Body model has no MHR rig attached; load it with load_sam3d_body")
    frames_t = _frames_tensor(frames)
    t, h, w = (int(x) for x in frames_t.shape[:3])
    K = _intrinsics(intrinsics, t, h, w)
    check_items(items, t, h, w)
    dev = next(model.parameters()).device
    kernel = "triton" if _crop_kernel_usable(dev, crop_kernel) else "grid_sample"
    if not items:
        return []
    runner = model.runner if runner is None else runner
    if dtype is None:
        dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if dev.type == "cuda" \
            else torch.float32
    order = sorted(range(len(items)), key=lambda i: (int(items[i].frame), int(items[i].obj_id)))
    ordered = [items[i] for i in order]

    # high priority: the decoder's many small kernels go first whenever the next batch's backbone frees
    # an SM, so this batch's results (and the host's next crops and launches) are not held up behind it
    side = torch.cuda.Stream(device=dev, priority=-1) if overlap and dev.type == "cuda" else None

    def build(start: int, stop: int) -> tuple[CropBatch, torch.Tensor | None, Any]:
        batch = body_crops(model, frames_t, ordered[start:stop], K, kernel)
        if not overlap:
            return batch, None, None
        return batch, model.encode(batch, dtype), _event(dev)

    pre = CropPrefetcher(build)
    sink = _ResultSink(alloc, len(ordered)) if alloc is not None else None

    def run(start: int, stop: int) -> list[dict[str, np.ndarray]]:
        nxt = (stop, min(len(ordered), 2 * stop - start))
        with torch.inference_mode():
            batch, feats, ready = pre.take(start, stop)
        res = _run_batch(model, frames_t, ordered[start:stop], K, mode, dtype, return_vertices,
                         decoder_dtype or torch.float32, batch=batch, feats=feats, ready=ready, stream=side,
                         after_encode=(lambda: pre.ahead(*nxt)) if prefetch or overlap else None,
                         crop_kernel=kernel)
        if into is not None:
            return into.put(ordered[start:stop], res)
        return res if sink is None else sink.put(start, res)

    why = fp8_unavailable(dev) if fp8 else ""
    if why:
        log.warning("SAM-3D-Body: FP8 backbone requested but %s; running %s", why, dtype)
    use_fp8, encoder = fp8 and not why, model.backbone.encoder
    fused = FusedBlocks(encoder, fused_backbone and not runner.backbone and not use_fp8, dtype)
    with encoder.fp8_scope(use_fp8, scaling="row", fast_accum=True), fused:
        chunks = runner.run(model, run, len(ordered), int(batch_size), hooks)
    if side is not None:
        _release_side_stream(side, dev)
    flat = [r for chunk in chunks for r in chunk]
    out: list[dict[str, np.ndarray]] = [{} for _ in items]
    for pos, i in enumerate(order):
        out[i] = flat[pos]
    return out


class _ResultSink:
    """Per result key one zero-filled array [N, ...] from ``alloc``: each batch's results are copied into their
    rows (positions ``start..``) and the returned dicts hold views of those rows, so the batch's own arrays
    are freed once it is done (with a file-backed allocator nothing of a finished batch stays in RAM)."""

    def __init__(self, alloc: Alloc, n: int) -> None:
        self.alloc, self.n = alloc, n
        self.arrays: dict[str, np.ndarray] = {}

    def put(self, start: int, results: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        out = []
        for i, res in enumerate(results):
            row = {}
            for key, value in res.items():
                arr = self.arrays.get(key)
                if arr is None:
                    arr = self.arrays[key] = zeros(self.alloc, (self.n,) + value.shape, value.dtype)
                arr[start + i] = value
                row[key] = arr[start + i]
            out.append(row)
        return out


def _release_side_stream(side: torch.cuda.Stream, dev: torch.device) -> None:
    """Join the decoder's side stream and drop the cuBLAS workspaces kept per (handle, stream).

    Every call makes a fresh side stream and cuBLAS keeps a workspace for each stream it met,
    so without this each call would leave one workspace allocated for the life of the process.
    """
    torch.cuda.current_stream(dev).wait_stream(side)
    clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear is not None:
        torch.cuda.synchronize(dev)
        clear()


def bodies_from_results(items: Sequence[BodyItem], results: Sequence[dict[str, np.ndarray]], num_frames: int,
                        image_size: tuple[int, int], faces: np.ndarray | None = None,
                        obj_ids: Sequence[int] | None = None, *, alloc: Alloc | None = None) -> Bodies:
    """Fill a ``Bodies`` (keyed by object id) from per-item results; frames without an item stay MISSING.

    ``alloc(shape, dtype)``: returns the zero-filled arrays the keypoints, extras and vertices [N, T, ...] are
    filled into (e.g. ``FrameStore.empty``: out of RAM); default ``np.zeros``. A run that has no use for the
    per-item results passes a ``BodiesWriter`` to ``estimate_bodies(into=...)`` instead (one copy, not two).
    """
    writer = BodiesWriter(items, num_frames, image_size, obj_ids, alloc)
    writer.put(items, results)
    return writer.result(faces)
