"""Loading the three amodal networks (two Diffusion-VAS pipelines + Depth Anything V2)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Protocol, Sequence

import torch

from ..alloc import Alloc
from ..errors import Body4DError, MissingWeightsError, WeightsMismatchError
from ..fastload import check_weights_folder, one_line
from ..runtime import NULL_HOOKS, Hooks, pick_device, pick_dtype
from ..weights import resolve_model_dir
from .accel import AccelConfig
from .config import SamplerConfig
from .depth import estimate_depth

if TYPE_CHECKING:  # diffusers is imported only when a pipeline is built
    from .job import VideoJob
    from .sampler import VASPipeline

log = logging.getLogger(__name__)


class JobRunner(Protocol):
    """Anything that denoises VideoJobs into frames [T, 3, h, w] in [0, 1] (VASPipeline, test fakes)."""

    def run_jobs(self, jobs: Sequence["VideoJob"], sampler: SamplerConfig, hooks: Hooks = NULL_HOOKS,
                 budget_px: int = 1 << 20, **memory: Any) -> list[torch.Tensor]: ...


class DepthFn(Protocol):
    def __call__(self, frames: torch.Tensor, hooks: Hooks = NULL_HOOKS, batch_size: int | None = None,
                 **alloc: Any) -> torch.Tensor: ...


@dataclass
class DepthEstimator:
    """Callable wrapper: frames [T, H, W, 3] in [0, 1] -> raw depth [T, h, w] (CPU float32)."""

    model: torch.nn.Module
    prep: dict
    dtype: torch.dtype = torch.float32
    batch_size: int = 16

    def __call__(self, frames: torch.Tensor, hooks: Hooks = NULL_HOOKS, batch_size: int | None = None, *,
                 alloc: Alloc | None = None) -> torch.Tensor:
        """``batch_size``: frames per network call for this call (a memory plan's), else the estimator's own;
        ``alloc``: where the whole-clip depth is written (``estimate_depth``)."""
        return estimate_depth(self.model, frames, self.prep, batch_size or self.batch_size, self.dtype, hooks,
                              alloc=alloc)

    def to(self, device: torch.device | str) -> "DepthEstimator":
        self.model.to(device)
        return self


@dataclass
class AmodalModels:
    """Amodal-segmentation and content-completion samplers plus the depth estimator."""

    mask: JobRunner
    content: JobRunner | None
    depth: DepthFn
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32

    def modules(self) -> list[torch.nn.Module]:
        """Every torch module held (for ComfyUI model management)."""
        out: list[torch.nn.Module] = []
        for part in (self.mask, self.content):
            if hasattr(part, "models"):
                out += part.models()
        if isinstance(self.depth, DepthEstimator):
            out.append(self.depth.model)
        return out

    def module_dict(self) -> torch.nn.ModuleDict:
        """All networks in one module (what ComfyUI's model patcher moves and frees)."""
        names = ("mask_unet", "mask_vae", "mask_clip", "content_unet", "content_vae", "content_clip")
        mods = {}
        for prefix, part in (("mask", self.mask), ("content", self.content)):
            if hasattr(part, "models"):
                mods.update({f"{prefix}_{n}": m for n, m in zip(("unet", "vae", "clip"), part.models())})
        if isinstance(self.depth, DepthEstimator):
            mods["depth"] = self.depth.model
        return torch.nn.ModuleDict({k: mods[k] for k in (*names, "depth") if k in mods})

    def to(self, device: torch.device | str) -> "AmodalModels":
        for part in (self.mask, self.content, self.depth):
            if hasattr(part, "to"):
                part.to(device)
        self.device = torch.device(device)
        return self


class OnDemand:
    """A sampler or depth estimator kept on the CPU and moved to the compute device only while it runs
    (a memory cap: one network set on the GPU at a time instead of all three)."""

    def __init__(self, part: Any, device: torch.device) -> None:
        self.part, self.compute_device = part, torch.device(device)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.part, name)

    @contextlib.contextmanager
    def _on_device(self) -> Iterator[None]:
        self.part.to(self.compute_device)
        try:
            yield
        finally:
            self.part.to("cpu")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def run_jobs(self, *args: Any, **kwargs: Any) -> list[torch.Tensor]:
        """The part's run_jobs on the compute device; with a ``memory`` of LowMemory.per_network the part stays
        on the CPU and moves each network to the device only for its own pass (VASPipeline.generate)."""
        if getattr(kwargs.get("memory"), "per_network", False):
            return self.part.run_jobs(*args, device=self.compute_device, **kwargs)
        with self._on_device():
            return self.part.run_jobs(*args, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self._on_device():
            return self.part(*args, **kwargs)

    def to(self, device: torch.device | str) -> "OnDemand":
        self.compute_device = torch.device(device)
        return self


def offloaded(models: AmodalModels) -> AmodalModels:
    """The same models held on the CPU, each moved to ``models.device`` only for its own pass."""
    dev = models.device
    for part in (models.mask, models.content, models.depth):
        if hasattr(part, "to"):
            part.to("cpu")
    wrap = (lambda part: None if part is None else OnDemand(part, dev))  # noqa: E731
    return AmodalModels(wrap(models.mask), wrap(models.content), wrap(models.depth), dev, models.dtype)


# Frame-pixels per VAE call: upstream's 8-frame chunk at the completion resolution (512x1024), so the
# VAE's activation peak there is unchanged while smaller frames share calls (256x512: 4 videos a call).
VAE_CALL_PX = 8 * 512 * 1024

# The default options (each measured in BENCHMARKS.md, Amodal completion): exact ones are the
# single-token cross-attention shortcut, feed-forward in row chunks (a lower peak), decoding only the
# VAE chunks that hold a kept frame, VAE calls batched across videos/frames up to VAE_CALL_PX
# frame-pixels, GEGLU on contiguous halves and the VAE decoder's temporal half on one contiguous copy.
# The fused Triton kernels (resblocks of the UNet and the VAE, the UNet's transformers, GEGLU) compute
# the same operations with the same roundings on CUDA; their bf16 error against an fp64 network is
# diffusers' own (tests/test_amodal_fused.py), the outputs are not bit-identical.
# Precision: the networks compute natively in their weights' dtype (bf16 on a GPU, no autocast), the
# way upstream runs its fp16 weights and ComfyUI core runs its models: close, not exact, next to bf16
# autocast (norms then write bf16, not fp32), and faster with a lower peak. The CPU computes fp32.
DEFAULT_ACCEL = AccelConfig(cross_attn_shortcut=True, ff_rows=1 << 18, skip_unkept=True, decode_px=VAE_CALL_PX,
                            encode_px=VAE_CALL_PX, native_dtype=True, split_geglu=True,
                            vae_contiguous_temporal=True, fused_resblocks=True, vae_fused_resblocks=True,
                            fused_geglu=True, fused_transformers=True)
# The same without the Triton kernels (diffusers' own block forwards): the profile's ``amodal_accel=unfused``.
UNFUSED_ACCEL = dataclasses.replace(DEFAULT_ACCEL, fused_resblocks=False, vae_fused_resblocks=False,
                                    fused_geglu=False, fused_transformers=False)


def load_amodal_models(search_dirs: Iterable[str | Path] | None = None, device: str | torch.device | None = None,
                       dtype: str | torch.dtype | None = None, mask_dir: str | Path | None = None,
                       content_dir: str | Path | None = None, depth_dir: str | Path | None = None,
                       with_completion: bool = True, place: str | torch.device | None = None,
                       fast: bool = True, accel: AccelConfig | None = None) -> AmodalModels:
    """Resolve and load the three models; MissingWeightsError names any missing files and the command.

    ``device``/``dtype`` say where and in which precision they will compute; ``place`` puts
    the weights elsewhere first (e.g. the CPU, for ComfyUI's model management to move).
    ``fast`` (default): UNet and CLIP encoder weights are cast where they will live, into
    modules built without random init (same values); False: the previous loaders (A/B benches).
    ``accel``: the UNet/VAE speed options (default ``DEFAULT_ACCEL``; the run profile's ``accel_config``).
    """
    accel = DEFAULT_ACCEL if accel is None else accel
    dev = pick_device(device)
    dt = pick_dtype(dev, dtype)
    wdt = dt if dev.type == "cuda" else torch.float32
    where = torch.device(place) if place is not None else dev
    dirs = list(search_dirs) if search_dirs else None
    mdir = resolve_model_dir("diffusion_vas_amodal", dirs, mask_dir)
    cdir = resolve_model_dir("diffusion_vas_completion", dirs, content_dir) if with_completion else None
    ddir = resolve_model_dir("depth_anything", dirs, depth_dir)
    from .depth import load_depth_model
    from .sampler import VASPipeline

    log.info("loading Diffusion-VAS from %s%s and depth from %s (%s, %s)", mdir,
             f" + {cdir}" if cdir else "", ddir, dev, dt)
    with quiet_library_logs():
        with clear_load_errors(mdir, "diffusion_vas_amodal"):
            check_vas_folder(mdir, "diffusion_vas_amodal")
            mask = VASPipeline.from_pretrained(mdir, where, dt, wdt, fast=fast).accelerate(accel)
        content = None
        if cdir:
            with clear_load_errors(cdir, "diffusion_vas_completion"):
                check_vas_folder(cdir, "diffusion_vas_completion")
                content = VASPipeline.from_pretrained(cdir, where, dt, wdt, fast=fast).accelerate(accel)
        # Depth Anything's files use DINOv2 names that transformers renames on load: no fast path (tests)
        with clear_load_errors(ddir, "depth_anything"):
            check_weights_folder(ddir, _fix("depth_anything"), DEPTH_REQUIRED)
            model, prep = load_depth_model(ddir, where, dt, wdt)
    return AmodalModels(mask, content, DepthEstimator(model, prep, dt), dev, dt)


# keys each part's weights must hold (so another model's file is refused instead of loaded half-initialised)
VAS_REQUIRED = {"unet": ("conv_in2.weight",), "vae": ("decoder.time_conv_out.weight", "encoder.conv_in.weight"),
                "image_encoder": ("visual_projection.weight",)}
DEPTH_REQUIRED = ("head.conv3.weight",)


def _fix(name: str) -> str:
    return f"download it again with: python -m body4d_core setup --models {name}"


def check_vas_folder(folder: Path, name: str) -> None:
    """Refuse in one sentence a Diffusion-VAS folder whose UNet, VAE or image encoder weights are absent or unusable."""
    for sub, required in VAS_REQUIRED.items():
        if not (folder / sub / "config.json").is_file():
            raise MissingWeightsError(f"{folder / sub} has no config.json; {_fix(name)}.")
        check_weights_folder(folder / sub, _fix(name), required)


@contextlib.contextmanager
def clear_load_errors(folder: Path, name: str) -> Iterator[None]:
    """Library errors while loading a model folder become one-sentence Body4DErrors naming it and the fix."""
    try:
        yield
    except Body4DError as err:
        text = one_line(err, 400)
        raise type(err)(text if text.endswith(".") else f"{text}.") from err
    except (FileNotFoundError, OSError) as err:
        raise MissingWeightsError(f"{folder} could not be loaded ({one_line(err)}); {_fix(name)}.") from err
    except Exception as err:  # noqa: BLE001 - SafetensorError, shape mismatches, parse errors
        raise WeightsMismatchError(f"{folder} could not be loaded ({one_line(err)}); {_fix(name)}.") from err


# Library messages a normal load triggers that say nothing to the user: diffusers' notice that accelerate
# is absent (we load without it on purpose) and its empty "kept in float32: []" list.
_QUIET_MESSAGES = ("`accelerate` was not found", "should be kept in float32: []")


class _DropKnownNotices(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(m in msg for m in _QUIET_MESSAGES)


@contextlib.contextmanager
def quiet_library_logs() -> Iterator[None]:
    """Inside, the known empty notices of diffusers' loaders are dropped (other records pass)."""
    targets = [logging.getLogger(n) for n in ("diffusers", "diffusers.models.modeling_utils")]
    flt = _DropKnownNotices()
    for lg in targets:
        lg.addFilter(flt)
    try:
        yield
    finally:
        for lg in targets:
            lg.removeFilter(flt)


def describe(models: AmodalModels) -> dict[str, Any]:
    """Parameter counts per network (for logs and the bench)."""
    out = {}
    for name, part in (("mask", models.mask), ("content", models.content)):
        if hasattr(part, "unet"):
            out[name] = {n: sum(p.numel() for p in m.parameters())
                         for n, m in (("unet", part.unet), ("vae", part.vae), ("clip", part.image_encoder))}
    if isinstance(models.depth, DepthEstimator):
        out["depth"] = sum(p.numel() for p in models.depth.model.parameters())
    return out
