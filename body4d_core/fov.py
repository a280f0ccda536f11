"""Camera intrinsics for the clip: MoGe-2 FOV estimation, manual FOV, core MOGE_GEOMETRY, fallback.

Upstream SAM-Body4D estimates the intrinsics once per video from frame 0 with MoGe-2
(``Ruicheng/moge-2-vitl-normal``). MoGe returns *normalised* intrinsics (fx_n = fx / W,
fy_n = fy / H, principal point 0.5, 0.5); the pixel camera is fy = fy_n * H, then fx is
set to fy (square pixels, the vertical focal wins) and the principal point is the image
centre. Without a FOV model the focal is f = sqrt(H^2 + W^2).

Here the estimate can come from frame 0 (``first``, upstream), every N-th frame or all
frames; the per-frame focals are combined by their median (one camera for the clip, which
keeps the body depth steady) or, with ``per_frame=True``, kept per frame for zooming cameras
(a running median over PER_FRAME_MEDIAN sampled estimates against single-frame jitter, then
linear interpolation between sampled frames). Estimates that are not finite or give a
vertical FOV outside [MIN_FOV, MAX_FOV] degrees are dropped with a warning; if none is left
the fallback focal is used (``Camera.source == "default"``).

MoGe-2 code comes from the PyPI package ``dlr-moge`` (import name ``moge``), installed with
``pip install --no-deps dlr-moge==2.0.0 dlr-utils3d==1.3`` (their declared dependencies pull
in gradio and GUI OpenCV). Inference imports only torch, numpy, scipy, opencv (cv2),
huggingface_hub and ``utils3d`` (dlr-utils3d); ``dlr-pipeline`` is used by MoGe's training
data loaders only. The package is imported only when a model is built.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

from .data import Camera
from .errors import Body4DError, InputError, WeightsMismatchError
from .runtime import NULL_HOOKS, Hooks, run_with_oom_retry
from .weights import resolve_model_dir

log = logging.getLogger(__name__)

MODES = ("first", "every_n", "all")
MIN_FOV, MAX_FOV = 5.0, 170.0  # plausible vertical FOV range (degrees) for an estimate
PER_FRAME_MEDIAN = 5  # per-frame focals: running median over this many sampled estimates (when there are as many)
MOGE_INSTALL = "pip install --no-deps dlr-moge==2.0.0 dlr-utils3d==1.3"

_RESAMPLERS = ["conv_transpose", "conv_transpose", "conv_transpose", "bilinear"]  # MoGe-2 head upsamplers


def _vitl_head(out_channels: int) -> dict[str, Any]:
    dims = [1024, 256, 128, 64, 32]
    return {"dim_in": list(dims), "dim_out": [None, None, None, None, out_channels], "dim_res_blocks": list(dims),
            "num_res_blocks": [0, 1, 1, 1, 0], "res_block_in_norm": "none", "res_block_hidden_norm": "none",
            "resamplers": list(_RESAMPLERS)}


# The published MoGe-2 ViT-L layout (microsoft/MoGe configs/train/v2.json), for benchmarks with random
# weights at the real size; the official model.pt carries its own copy in 'model_config'.
MOGE2_VITL_CONFIG: dict[str, Any] = {
    "encoder": {"backbone": "dinov2_vitl14", "intermediate_layers": [5, 11, 17, 23], "dim_out": 1024},
    "neck": {"dim_in": [1026, 2, 2, 2, 2], "dim_out": None, "dim_res_blocks": [1024, 256, 128, 64, 32],
             "num_res_blocks": [0, 2, 2, 2, 0], "res_block_in_norm": "none", "res_block_hidden_norm": "none",
             "resamplers": list(_RESAMPLERS)},
    "points_head": _vitl_head(3),
    "normal_head": _vitl_head(3),
    "mask_head": _vitl_head(1),
    "scale_head": {"dims": [1024, 1024, 1024, 1]},
    "remap_output": "exp",
    "num_tokens_range": [1200, 3600],
}


# --------------------------------------------------------------------------- focal / FOV maths


def fallback_focal(image_size: Sequence[int]) -> float:
    """Upstream's focal without a FOV model: sqrt(H^2 + W^2) pixels."""
    h, w = (int(v) for v in image_size)
    return math.hypot(h, w)


def focal_from_fov(fov_y_deg: float, height: int) -> float:
    """Focal in pixels from a vertical FOV in degrees."""
    if not 0.0 < fov_y_deg < 180.0:
        raise InputError(f"vertical FOV must be in (0, 180) degrees, got {fov_y_deg}")
    return height / 2.0 / math.tan(math.radians(fov_y_deg) / 2.0)


def fov_from_focal(focal: float, height: int) -> float:
    """Vertical FOV in degrees from a focal in pixels."""
    if not (focal > 0 and math.isfinite(focal)):
        raise InputError(f"focal length must be positive and finite, got {focal}")
    return math.degrees(2.0 * math.atan(height / 2.0 / focal))


def pixel_intrinsics(norm_k: np.ndarray | torch.Tensor, image_size: Sequence[int]) -> np.ndarray:
    """Normalised K [B,3,3] (MoGe) -> float64 rows (fx, fy, cx, cy) [B,4] the upstream way.

    fy = fy_n * H; fx is set to fy (square pixels); principal point at the image centre.
    """
    k = norm_k.detach().float().cpu().numpy() if isinstance(norm_k, torch.Tensor) else np.asarray(norm_k, np.float64)
    k = k.reshape(-1, 3, 3).astype(np.float64)
    h, w = (int(v) for v in image_size)
    fy = k[:, 1, 1] * h
    return np.stack([fy, fy, np.full_like(fy, w / 2.0), np.full_like(fy, h / 2.0)], axis=1)


def _valid_focals(focals: np.ndarray, height: int) -> np.ndarray:
    """bool mask of focals that are finite and give a plausible vertical FOV."""
    with np.errstate(invalid="ignore", divide="ignore"):
        fov = np.degrees(2.0 * np.arctan(height / 2.0 / focals))
    return np.isfinite(focals) & (focals > 0) & (fov >= MIN_FOV) & (fov <= MAX_FOV)


def running_median(values: np.ndarray, window: int) -> np.ndarray:
    """Centred running median, symmetric windows shrinking at the ends: removes single-frame FOV
    outliers and keeps a steady zoom (a linear ramp) exactly."""
    values = np.asarray(values, np.float64)
    half, n = window // 2, values.size
    out = np.empty(n)
    for i in range(n):
        r = min(half, i, n - 1 - i)
        out[i] = np.median(values[i - r:i + r + 1])
    return out


def camera_from_focals(frames_idx: Sequence[int], focals: np.ndarray, image_size: Sequence[int],
                       num_frames: int, per_frame: bool = False, source: str = "estimated") -> Camera:
    """A Camera for num_frames from focals measured on some frames (median, or interpolated per frame)."""
    h, w = (int(v) for v in image_size)
    idx = np.asarray(frames_idx, np.int64)
    focals = np.asarray(focals, np.float64)
    ok = _valid_focals(focals, h)
    if not ok.all():
        bad = idx[~ok].tolist()
        log.warning("FOV estimate unusable on frame(s) %s (focal %s); ignoring them", bad, focals[~ok].tolist())
    if not ok.any():
        log.warning("no usable FOV estimate; falling back to f = sqrt(H^2 + W^2) = %.1f px", fallback_focal((h, w)))
        return Camera.default((h, w), num_frames)
    idx, focals = idx[ok], focals[ok]
    if per_frame and idx.size > 1:
        if idx.size >= PER_FRAME_MEDIAN:
            focals = running_median(focals, PER_FRAME_MEDIAN)
        per = np.interp(np.arange(num_frames), idx, focals)
    else:
        per = np.full(num_frames, float(np.median(focals)))
    rows = np.stack([per, per, np.full(num_frames, w / 2.0), np.full(num_frames, h / 2.0)], axis=1)
    return Camera(rows.astype(np.float32), (h, w), source)


# --------------------------------------------------------------------------- other sources


def camera_from_fov(fov_y_deg: float, image_size: Sequence[int], num_frames: int) -> Camera:
    """A manual camera from a vertical FOV in degrees (same for every frame)."""
    return Camera.from_fov(float(fov_y_deg), tuple(int(v) for v in image_size), num_frames, "manual")


def camera_from_moge_geometry(geometry: Mapping[str, Any], image_size: Sequence[int], num_frames: int,
                              per_frame: bool = False) -> Camera:
    """ComfyUI core ``MOGE_GEOMETRY`` (normalised ``intrinsics`` [B,3,3]) -> Camera for the clip.

    B == 1 is broadcast to every frame; B == num_frames keeps one estimate per frame
    (combined by median unless ``per_frame``); any other B is a frame-count mismatch.
    """
    if not isinstance(geometry, Mapping) or geometry.get("intrinsics") is None:
        raise InputError("the MoGe geometry has no intrinsics (a panorama geometry has none); "
                         "run MoGe Inference on a perspective frame")
    k = geometry["intrinsics"]
    k = k.detach().float().cpu().numpy() if isinstance(k, torch.Tensor) else np.asarray(k, np.float64)
    if k.ndim == 2:
        k = k[None]
    if k.ndim != 3 or k.shape[1:] != (3, 3):
        raise InputError(f"MoGe geometry intrinsics must have shape (B, 3, 3), got {tuple(k.shape)}")
    h, w = (int(v) for v in image_size)
    _check_geometry_aspect(geometry, (h, w))
    b = k.shape[0]
    if b not in (1, num_frames):
        raise InputError(f"the MoGe geometry holds {b} frames but the clip has {num_frames}; "
                         f"run MoGe on one frame or on every frame of the same clip")
    rows = pixel_intrinsics(k, (h, w))
    idx = [0] if b == 1 else list(range(b))
    return camera_from_focals(idx, rows[:, 1], (h, w), num_frames, per_frame, "moge_geometry")


def _check_geometry_aspect(geometry: Mapping[str, Any], image_size: tuple[int, int]) -> None:
    """Normalised intrinsics transfer across sizes only when the aspect ratio is the same."""
    src = next((geometry[k] for k in ("image", "points", "depth") if geometry.get(k) is not None), None)
    if src is None or getattr(src, "ndim", 0) < 3:
        return
    gh, gw = int(src.shape[1]), int(src.shape[2])
    h, w = image_size
    if abs((gw / gh) / (w / h) - 1.0) > 0.01:
        raise InputError(f"the MoGe geometry was computed on {gw}x{gh} images but the frames are {w}x{h} "
                         f"(another aspect ratio); run MoGe on these frames")


def check_camera_frames(camera: Camera, num_frames: int, image_size: Sequence[int] | None = None) -> Camera:
    """The camera for a clip of num_frames (1-frame cameras broadcast) and, if given, the same size."""
    if image_size is not None and tuple(int(v) for v in image_size) != camera.image_size:
        h, w = camera.image_size
        raise InputError(f"the camera is for {w}x{h} frames but the frames are {int(image_size[1])}x"
                         f"{int(image_size[0])}; estimate the camera on the same frames")
    return camera.check_frames(num_frames)


# --------------------------------------------------------------------------- MoGe-2 model


def _moge_class() -> type:
    try:
        from moge.model.v2 import MoGeModel
    except ImportError as err:
        raise Body4DError(f"MoGe-2 needs the 'moge' package ({err}); install it with: {MOGE_INSTALL} "
                          f"(plus opencv-python-headless), or give a manual FOV instead") from err
    return MoGeModel


def build_moge(config: Mapping[str, Any], seed: int | None = None) -> torch.nn.Module:
    """A MoGe-2 model from a config dict (the checkpoint's ``model_config``), random weights, eval mode."""
    cls = _moge_class()
    if seed is not None:
        torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = cls(**dict(config))
    return model.eval()


def load_moge_checkpoint(path: str | Path, device: str | torch.device = "cpu",
                         config: Mapping[str, Any] | None = None) -> torch.nn.Module:
    """Build MoGe-2 from an official ``model.pt`` ({'model_config', 'model'}, loaded with weights_only=True)
    or from a ``.safetensors`` state dict such as ComfyUI core's ``moge_2_vitl_normal_fp16.safetensors``.

    A safetensors file carries no config: ``config`` (default: the ViT-L layout) is used, without
    the normal head when the file has none. Weights are loaded as fp32.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        state = _read_safetensors(path)
        cfg = dict(config or MOGE2_VITL_CONFIG)
        if not any(k.startswith("normal_head.") for k in state):
            cfg.pop("normal_head", None)
        return _model_from_state(cfg, state, path).to(device)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a wrong or corrupt file
        from .fastload import one_line

        raise WeightsMismatchError(f"{path} could not be read as a MoGe-2 checkpoint ({one_line(err)}); "
                                   f"delete it and download it again with: python -m body4d_core setup "
                                   f"--models moge.") from err
    if not isinstance(ckpt, dict) or "model_config" not in ckpt or "model" not in ckpt:
        keys = list(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise WeightsMismatchError(f"{path} is not an official MoGe-2 model.pt (expected keys 'model_config' "
                                   f"and 'model', found {keys}); download Ruicheng/moge-2-vitl-normal's model.pt again.")
    return _model_from_state(config or ckpt["model_config"], ckpt["model"], path).to(device)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A MoGe-2 state dict from safetensors, with ComfyUI-style DINOv2 key names turned back into MoGe's."""
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except Exception as err:  # noqa: BLE001 - any parse failure means a wrong or corrupt file
        from .fastload import one_line

        raise WeightsMismatchError(f"{path} could not be read as safetensors ({one_line(err)}); "
                                   f"download it again.") from err
    return meta_backbone_keys(state)


# ComfyUI's DINOv2 port names (right) for the DINOv2 keys MoGe itself uses (left).
_BACKBONE_NAMES = {
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "cls_token": "embeddings.cls_token",
    "pos_embed": "embeddings.position_embeddings",
    "register_tokens": "embeddings.register_tokens",
    "mask_token": "embeddings.mask_token",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
}
_BLOCK_NAMES = (("ls1.gamma", "layer_scale1.lambda1"), ("ls2.gamma", "layer_scale2.lambda1"),
                ("attn.proj.", "attention.output.dense."), ("mlp.w12.", "mlp.weights_in."),
                ("mlp.w3.", "mlp.weights_out."))


def meta_backbone_keys(state: Mapping[str, torch.Tensor], prefix: str = "encoder.backbone.") -> dict[str, torch.Tensor]:
    """Rename ComfyUI-style backbone keys (``encoder.layer.N.attention.attention.query`` ...) to MoGe's.

    Separate query/key/value tensors are concatenated into MoGe's fused ``attn.qkv``; keys that
    already use MoGe's names pass through unchanged.
    """
    inverse = {v: k for k, v in _BACKBONE_NAMES.items()}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    layer = prefix + "encoder.layer."
    for key, value in state.items():
        if not key.startswith(prefix):
            out[key] = value
            continue
        rel = key[len(prefix):]
        if rel in inverse:
            out[prefix + inverse[rel]] = value
            continue
        if not key.startswith(layer):
            out[key] = value
            continue
        idx, sub = key[len(layer):].split(".", 1)
        if sub.startswith("attention.attention."):
            part, tail = sub[len("attention.attention."):].split(".", 1)
            qkv.setdefault((idx, tail), {})[part] = value
            continue
        for moge_name, comfy_name in _BLOCK_NAMES:
            sub = sub.replace(comfy_name, moge_name)
        out[f"{prefix}blocks.{idx}.{sub}"] = value
    for (idx, tail), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise WeightsMismatchError(f"block {idx}: attention {tail} is missing one of query/key/value")
        out[f"{prefix}blocks.{idx}.attn.qkv.{tail}"] = torch.cat([parts["query"], parts["key"], parts["value"]], 0)
    return out


_INIT_FUNCS = ("uniform_", "normal_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
               "xavier_normal_", "zeros_", "ones_", "constant_")


@contextlib.contextmanager
def _no_weight_init() -> Iterator[None]:
    """Skip random init while building a model whose parameters are all loaded right after.

    MoGe-2 ViT-L spends ~30 s of CPU filling 331M random weights that the checkpoint then
    overwrites. The torch.nn.init functions (and DINOv2's imported trunc_normal_) become
    no-ops only inside this block and are restored after it; every parameter is then
    required in the checkpoint (``_model_from_state`` checks), so none stays uninitialised.
    """
    import torch.nn.init as init

    _moge_class()  # the clear "install moge" error comes first

    def noop(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return tensor

    saved = {name: getattr(init, name) for name in _INIT_FUNCS}
    vit = importlib.import_module("moge.model.dinov2.models.vision_transformer")
    saved_vit = getattr(vit, "trunc_normal_", None)
    try:
        for name in _INIT_FUNCS:
            setattr(init, name, noop)
        if saved_vit is not None:
            vit.trunc_normal_ = noop
        yield
    finally:
        for name, fn in saved.items():
            setattr(init, name, fn)
        if saved_vit is not None:
            vit.trunc_normal_ = saved_vit


def _model_from_state(config: Mapping[str, Any], state: Mapping[str, torch.Tensor], path: Path) -> torch.nn.Module:
    """Build the architecture and load the checkpoint tensors (fp32).

    Missing parameters are an error; missing buffers keep their constructor values and
    extra keys are ignored, both with a warning (upstream loads with strict=False too).
    """
    with _no_weight_init():
        model = build_moge(config)
    params = {name for name, _ in model.named_parameters()}
    missing_params = sorted(k for k in params if k not in state)
    if missing_params:
        raise WeightsMismatchError(f"{path} does not match the MoGe-2 architecture: {len(missing_params)} "
                                   f"weights missing (e.g. {missing_params[:3]}); use Ruicheng/moge-2-vitl-normal's model.pt.")
    try:
        result = model.load_state_dict(dict(state), strict=False)
    except RuntimeError as err:  # shape mismatches
        from .fastload import one_line

        raise WeightsMismatchError(f"{path} does not match the MoGe-2 architecture ({one_line(err, 300)}); "
                                   f"use Ruicheng/moge-2-vitl-normal's model.pt.") from err
    if result.missing_keys or result.unexpected_keys:
        log.warning("MoGe-2 %s: %d buffers missing, %d unexpected keys ignored", path.name,
                    len(result.missing_keys), len(result.unexpected_keys))
    return model.float().eval()


def load_moge(search_dirs: Iterable[str | Path] | None = None, explicit: str | Path | None = None,
              device: str | torch.device = "cpu", fast: bool = True) -> torch.nn.Module:
    """Load ``Ruicheng/moge-2-vitl-normal`` from the registered ``moge`` folder (MissingWeightsError if absent).

    ``fast`` (default): the file is memory-mapped, each tensor moved to ``device`` and cast to
    fp32 there on a few threads, and assigned (same values, same checks and errors as
    ``load_moge_checkpoint``, which is the previous path: fast=False).
    """
    model_dir = resolve_model_dir("moge", search_dirs, explicit)
    if not fast:
        return load_moge_checkpoint(model_dir / "model.pt", device)
    return _load_moge_fast(model_dir / "model.pt", torch.device(device))


def _load_moge_fast(path: Path, device: torch.device) -> torch.nn.Module:
    """load_moge's fast path for an official model.pt (see load_moge)."""
    from .fastload import move_buffers, params_on_meta, place_all

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - legacy/corrupt files: the previous path reads or reports them
        return load_moge_checkpoint(path, device)
    if not isinstance(ckpt, dict) or "model_config" not in ckpt or "model" not in ckpt:
        return load_moge_checkpoint(path, device)  # its clear error
    with _no_weight_init(), params_on_meta():
        model = build_moge(ckpt["model_config"])
    state = ckpt["model"]
    missing_params = sorted(k for k, _ in model.named_parameters() if k not in state)
    if missing_params:
        raise WeightsMismatchError(f"{path} does not match the MoGe-2 architecture: {len(missing_params)} "
                                   f"weights missing (e.g. {missing_params[:3]}); use Ruicheng/moge-2-vitl-normal's model.pt.")
    own = model.state_dict()
    bad = [k for k, v in own.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if bad:  # the previous path's message (load_state_dict's size-mismatch error)
        return load_moge_checkpoint(path, device)
    move_buffers(model, device)
    placed = place_all({k: v for k, v in state.items() if k in own}, device, torch.float32)
    result = model.load_state_dict(placed, strict=False, assign=True)
    unexpected = [k for k in state if k not in own]
    if result.missing_keys or unexpected:
        log.warning("MoGe-2 %s: %d buffers missing, %d unexpected keys ignored", path.name,
                    len(result.missing_keys), len(unexpected))
    return model.float().eval()


# --------------------------------------------------------------------------- estimation


def sample_frames(num_frames: int, mode: str, every_n: int = 30) -> list[int]:
    """Frames MoGe runs on: [0] (first), 0, N, 2N, ... (every_n) or all of them."""
    if num_frames < 1:
        raise InputError("the clip has no frames")
    if mode == "first":
        return [0]
    if mode == "every_n":
        if every_n < 1:
            raise InputError(f"every_n must be >= 1, got {every_n}")
        return list(range(0, num_frames, every_n))
    if mode == "all":
        return list(range(num_frames))
    raise InputError(f"unknown FOV mode {mode!r}; use one of {', '.join(MODES)}")


def _frames_to_batch(frames: np.ndarray | torch.Tensor, idx: Sequence[int], device: torch.device,
                     dtype: torch.dtype) -> torch.Tensor:
    """Frames [T,H,W,C] (uint8 0..255 or float 0..1, numpy or torch) -> float [B,3,H,W] 0..1 on device."""
    sel = frames[list(idx)]
    t = torch.from_numpy(np.ascontiguousarray(sel)) if isinstance(sel, np.ndarray) else sel
    t = t[..., :3].to(device)
    t = t.to(dtype) / 255.0 if t.dtype == torch.uint8 else t.to(dtype)
    return t.permute(0, 3, 1, 2).contiguous()


MOGE_CPU_AUTOCAST_WARNING = "In CPU autocast, but the target dtype is not supported"


@contextlib.contextmanager
def quiet_cpu_autocast() -> Iterator[None]:
    """Hide the one warning MoGe's ``infer`` gives on every CPU call (its fp32 autocast block, harmless)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=MOGE_CPU_AUTOCAST_WARNING, category=UserWarning)
        yield


def estimate_normalized_intrinsics(model: torch.nn.Module, images: torch.Tensor, resolution_level: int = 9,
                                   use_fp16: bool = False) -> torch.Tensor:
    """MoGe-2 ``infer`` on images [B,3,H,W] in 0..1 -> normalised intrinsics [B,3,3] (float32, CPU).

    ``use_fp16`` enables MoGe's own scoped fp16 autocast; only meaningful on CUDA.
    """
    use_fp16 = bool(use_fp16 and images.device.type == "cuda")
    with quiet_cpu_autocast():
        out = model.infer(images, resolution_level=resolution_level, force_projection=False,
                          apply_mask=True, use_fp16=use_fp16)
    if "intrinsics" not in out:
        raise WeightsMismatchError("the MoGe model returned no intrinsics (it has no points head)")
    return out["intrinsics"].float().cpu().reshape(-1, 3, 3)


def estimate_camera(
    model: torch.nn.Module,
    frames: np.ndarray | torch.Tensor,
    mode: str = "first",
    every_n: int = 30,
    per_frame: bool = False,
    batch_size: int = 4,
    resolution_level: int = 9,
    use_fp16: bool | None = None,
    hooks: Hooks = NULL_HOOKS,
) -> Camera:
    """Run MoGe-2 on the sampled frames of a clip and build its Camera (see module docstring).

    ``frames`` is [T,H,W,C] (ComfyUI IMAGE or uint8 numpy); the model stays where it is
    (its device is used). ``use_fp16`` defaults to True on CUDA (MoGe's scoped autocast).
    """
    if frames.ndim != 4 or frames.shape[0] < 1:
        raise InputError(f"frames must be [T, H, W, C] with at least one frame, got shape {tuple(frames.shape)}")
    num_frames, h, w = int(frames.shape[0]), int(frames.shape[1]), int(frames.shape[2])
    idx = sample_frames(num_frames, mode, every_n)
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    fp16 = (device.type == "cuda") if use_fp16 is None else use_fp16

    def run(start: int, stop: int) -> torch.Tensor:
        batch = _frames_to_batch(frames, idx[start:stop], device, dtype)
        return estimate_normalized_intrinsics(model, batch, resolution_level, fp16)

    norm_k = torch.cat(run_with_oom_retry(run, len(idx), batch_size, hooks), dim=0)
    focals = pixel_intrinsics(norm_k, (h, w))[:, 1]
    log.info("MoGe-2 focal on %d frame(s): %s px", len(idx), np.round(focals[:8], 1).tolist())
    return camera_from_focals(idx, focals, (h, w), num_frames, per_frame, "estimated")


def resolve_camera(
    image_size: Sequence[int],
    num_frames: int,
    manual_fov: float = 0.0,
    fov: float | None = None,
    moge_geometry: Mapping[str, Any] | None = None,
    estimate: Any = None,
    per_frame: bool = False,
) -> Camera:
    """Pick the camera source by priority: manual FOV > FOV input > MOGE_GEOMETRY > model > fallback.

    ``estimate`` is a zero-argument callable running the model (or None when no model).
    """
    h, w = (int(v) for v in image_size)
    if manual_fov and manual_fov > 0:
        return camera_from_fov(manual_fov, (h, w), num_frames)
    if fov is not None and fov > 0:
        return camera_from_fov(fov, (h, w), num_frames)
    if moge_geometry is not None:
        return camera_from_moge_geometry(moge_geometry, (h, w), num_frames, per_frame)
    if estimate is not None:
        return estimate()
    log.info("no FOV model or value given; using f = sqrt(H^2 + W^2) = %.1f px", fallback_focal((h, w)))
    return Camera.default((h, w), num_frames)
