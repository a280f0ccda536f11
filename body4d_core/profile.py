"""One run profile: how every stage runs (device, precision, compile, fp8, loaders, speed options, memory cap).

``RunProfile`` is built in one place from CLI flags (``from_args``), ComfyUI node inputs
(``from_node_inputs``) or a config mapping (``from_dict``, the ``profile:`` section of the YAML
config), validated when constructed, and derives each stage's own option objects (SAM-3's
``SpeedOptions``, the amodal ``AccelConfig``, ``estimate_bodies`` keyword arguments, loader keyword
arguments), so the stage functions keep their signatures. The CLI flags and the loader nodes use the
field names and choices of ``FIELDS`` (tests/test_profile.py checks both against it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import torch

from .errors import InputError

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
COMPILE_MODES = {"auto": "auto", "off": "", "max-autotune": "max-autotune-no-cudagraphs", "always": "default"}


@dataclass(frozen=True)
class FieldSpec:
    """A profile field's choices (None: a number or a free-form device name) and its one-line help."""

    choices: tuple | None
    help: str


FIELDS: dict[str, FieldSpec] = {
    "device": FieldSpec(None, "torch device: auto (CUDA when available), cpu, cuda, cuda:N"),
    "precision": FieldSpec(PRECISIONS, "compute precision of SAM-3, Diffusion-VAS and the SAM-3D-Body backbone on "
                                       "the GPU (auto: bf16 where supported, else fp16; MoGe-2: fp32, else its own "
                                       "fp16 autocast); the CPU runs fp32"),
    "decoder_precision": FieldSpec(("fp32", "bf16"), "SAM-3D-Body decoder matmuls on the GPU: fp32 as upstream, bf16 "
                                                     "faster and slightly less exact"),
    "backbone_fp8": FieldSpec((False, True), "experimental, lossy: FP8 SAM-3D-Body backbone linears on GPUs that "
                                             "support it (compute capability 8.9+)"),
    "compile": FieldSpec(tuple(COMPILE_MODES), "torch.compile of SAM-3D-Body on CUDA: auto (only jobs large enough "
                                               "to win the compile time back), always, max-autotune, off (eager)"),
    "attention": FieldSpec(("auto", "flash", "cudnn", "efficient", "math"),
                           "attention kernel baked into the compiled SAM-3D-Body backbone (auto: torch's choice; "
                           "others need compile always or max-autotune)"),
    "crop_kernel": FieldSpec(("auto", "triton", "grid_sample"), "SAM-3D-Body crop kernel (auto: triton where "
                                                                "available)"),
    "sam3_speed": FieldSpec(("fast", "reference", "compile", "unfused"),
                            "SAM-3 propagation: fast (batched objects, async copies, prefetch, CUDA graphs and fused "
                            "backbone kernels on GPUs; same masks), unfused (fast without the fused kernels), reference (the plain per-object path) or compile (fast + torch.compile of "
                            "the vision backbone on GPUs: faster on long clips, compiles once per process and caches "
                            "the kernels on disk; masks may differ in a few pixels)"),
    "amodal_accel": FieldSpec(("default", "reference", "compile", "unfused", "mixed"),
                              "Diffusion-VAS speed options: default (exact options, fused GPU kernels, native "
                              "precision), reference (none), compile (default + torch.compile of the UNet blocks and "
                              "the VAE decoder), unfused (default without the fused kernels: diffusers' own blocks), "
                              "mixed (experimental: default + windows of different lengths in one UNet call; the "
                              "same frames up to rounding)"),
    "loader": FieldSpec(("fast", "legacy"), "weight loading: fast (no random init, cast where the weights live) or "
                                            "the libraries' own loaders (same values, slower)"),
    "load_threads": FieldSpec(None, "threads placing weights on the device (0 = the default, 8)"),
    "vram_gb": FieldSpec(None, "GPU memory cap in GB (0 = the whole device): batch sizes and model offload follow "
                               "it, a run that cannot fit is refused before it starts"),
    "offload": FieldSpec(("auto", "always", "never"),
                         "move models off the GPU between uses: auto (when the memory cap needs it), always, never"),
}
# set by the ComfyUI side (ComfyUI's device and model management own these), so only the CLI exposes them
CLI_ONLY = ("device", "load_threads", "vram_gb", "offload")
DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


@dataclass(frozen=True)
class RunProfile:
    """How a run runs (not what it computes); every field is validated against ``FIELDS``."""

    device: str = "auto"
    precision: str = "auto"
    decoder_precision: str = "fp32"
    backbone_fp8: bool = False
    compile: str = "auto"
    attention: str = "auto"
    crop_kernel: str = "auto"
    sam3_speed: str = "fast"
    amodal_accel: str = "default"
    loader: str = "fast"
    load_threads: int = 0
    vram_gb: float = 0.0
    offload: str = "auto"

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value, spec = getattr(self, f.name), FIELDS[f.name]
            if spec.choices is not None and (value not in spec.choices or type(value) is not type(spec.choices[0])):
                raise InputError(f"profile {f.name} must be one of {', '.join(map(_show, spec.choices))}, "
                                 f"got {value!r}")
        if not isinstance(self.device, str) or not DEVICE_RE.match(self.device):
            raise InputError(f"profile device must be auto, cpu, mps, cuda or cuda:N, got {self.device!r}")
        if isinstance(self.load_threads, bool) or not isinstance(self.load_threads, int) \
                or not 0 <= self.load_threads <= 64:
            raise InputError(f"profile load_threads must be an integer in 0..64 (0 = default), "
                             f"got {self.load_threads!r}")
        if isinstance(self.vram_gb, bool) or not isinstance(self.vram_gb, (int, float)) \
                or not math.isfinite(self.vram_gb) or self.vram_gb < 0:
            raise InputError(f"profile vram_gb must be a number of GB >= 0 (0 = the whole device), "
                             f"got {self.vram_gb!r}")
        object.__setattr__(self, "vram_gb", float(self.vram_gb))
        if self.attention != "auto" and self.compile not in ("always", "max-autotune"):
            raise InputError(f"profile attention {self.attention!r} applies to the compiled SAM-3D-Body backbone "
                             f"only: set compile to always or max-autotune, or attention to auto")

    # ----------------------------------------------------------------- building

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None, base: "RunProfile | None" = None) -> "RunProfile":
        """A profile from a mapping (config file section); unknown keys are refused in one sentence."""
        values = dict(values or {})
        unknown = sorted(set(values) - set(FIELDS))
        if unknown:
            raise InputError(f"unknown profile setting(s) {', '.join(unknown)}; known: {', '.join(FIELDS)}")
        values = {k: _coerce(k, v) for k, v in values.items()}
        return dataclasses.replace(base or cls(), **values)

    @classmethod
    def from_node_inputs(cls, inputs: Mapping[str, Any], base: "RunProfile | None" = None) -> "RunProfile":
        """A profile from a node's inputs: the profile fields among them (a node's other inputs are skipped)."""
        return cls.from_dict({k: v for k, v in inputs.items() if k in FIELDS and v is not None}, base)

    @classmethod
    def from_args(cls, args: Any, base: "RunProfile | None" = None) -> "RunProfile":
        """A profile from parsed CLI flags (flags not given keep ``base``'s values, e.g. the config file's).

        The older flags still work: ``--no_compile`` = ``--compile off``; ``--fp8`` = ``--backbone_fp8``
        with bf16 decoders (unless ``--decoder_precision`` says otherwise); ``--dtype`` = ``--precision``.
        """
        given = {k: getattr(args, k) for k in FIELDS if getattr(args, k, None) is not None}
        if getattr(args, "no_compile", False):
            given.setdefault("compile", "off")
        if getattr(args, "fp8", False):
            given["backbone_fp8"] = True
            given.setdefault("decoder_precision", "bf16")
        return cls.from_dict(given, base)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (run.json, bench rows)."""
        return dataclasses.asdict(self)

    # ----------------------------------------------------------------- what each stage gets

    def torch_device(self) -> torch.device:
        """The device the stages run on."""
        from .runtime import pick_device

        return pick_device(None if self.device == "auto" else self.device)

    def dtype_for(self, device: torch.device) -> torch.dtype:
        """The compute dtype on ``device`` (the library's one precision policy, ``runtime.pick_dtype``)."""
        from .runtime import pick_dtype

        return pick_dtype(device, self.precision)

    @property
    def dtype_name(self) -> str | None:
        """The precision as the loaders' ``dtype`` argument (None: auto)."""
        return None if self.precision == "auto" else self.precision

    @property
    def compile_mode(self) -> str:
        """SAM-3D-Body's ``compile_for`` mode ('' = eager)."""
        return COMPILE_MODES[self.compile]

    @property
    def moge_fp16(self) -> bool | None:
        """MoGe-2's own fp16 autocast: off for fp32, else its default (on CUDA)."""
        return False if self.precision == "fp32" else None

    def loader_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the five loaders (none for the default fast path)."""
        return {} if self.loader == "fast" else {"fast": False}

    @contextlib.contextmanager
    def loading(self) -> Iterator[None]:
        """Loads inside place their weights with ``load_threads`` threads (0: the default)."""
        from .fastload import load_threads_set

        with load_threads_set(self.load_threads):
            yield

    def speed_options(self) -> Any:
        """SAM-3's propagation ``SpeedOptions``."""
        from .sam3.propagate import BASELINE, SpeedOptions

        if self.sam3_speed == "reference":
            return BASELINE
        return SpeedOptions(compile_backbone=self.sam3_speed == "compile",
                            fused_backbone=self.sam3_speed != "unfused")

    def accel_config(self) -> Any:
        """The Diffusion-VAS ``AccelConfig``."""
        from .amodal.accel import AccelConfig
        from .amodal.models import DEFAULT_ACCEL, UNFUSED_ACCEL

        if self.amodal_accel == "reference":
            return AccelConfig()
        if self.amodal_accel == "unfused":
            return UNFUSED_ACCEL
        if self.amodal_accel == "compile":
            return dataclasses.replace(DEFAULT_ACCEL, compile_blocks=True, compile_vae=True)
        if self.amodal_accel == "mixed":
            return dataclasses.replace(DEFAULT_ACCEL, mixed_lengths=True)
        return DEFAULT_ACCEL

    def body_kwargs(self) -> dict[str, Any]:
        """``estimate_bodies`` keyword arguments that differ from its defaults (precision, decoder dtype, fp8, crop
        kernel)."""
        out: dict[str, Any] = {}
        if self.precision != "auto":
            out["dtype"] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[self.precision]
        if self.decoder_precision == "bf16":
            out["decoder_dtype"] = torch.bfloat16
        if self.backbone_fp8:
            out["fp8"] = True
        if self.crop_kernel != "auto":
            out["crop_kernel"] = self.crop_kernel
        return out

    def compile_body(self, model: Any, batch_size: int, crops: int, body_mode: str) -> dict[str, str] | None:
        """Compile SAM-3D-Body as ``compile`` and ``attention`` say (CUDA only; see ``Sam3dBody.compile_for``)."""
        if self.attention == "auto":
            return model.compile_for(self.compile_mode, batch_size, crops=crops, body_mode=body_mode)
        if next(iter(model.parameters())).device.type != "cuda":
            return None
        mode = self.compile_mode
        return model.optimize(mode, mode, bucket=int(batch_size), sdpa=self.attention)


def _show(choice: Any) -> str:
    return str(choice).lower() if isinstance(choice, bool) else str(choice)


def _coerce(name: str, value: Any) -> Any:
    """Config-file spellings: 'on'/'off'/'true'/'false' for booleans, numbers from strings."""
    spec = FIELDS[name]
    if spec.choices == (False, True) and isinstance(value, str):
        low = value.strip().lower()
        if low in ("true", "on", "yes", "1"):
            return True
        if low in ("false", "off", "no", "0"):
            return False
    if name == "load_threads" and isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if name == "vram_gb" and isinstance(value, str):
        with contextlib.suppress(ValueError):
            return float(value)
    if name == "vram_gb" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def add_cli_flags(parser: Any) -> None:
    """The profile's flags on a CLI parser (``--<field>``, FIELDS' choices; defaults None = not given)."""
    for name, spec in FIELDS.items():
        flags = [f"--{name}"] + (["--dtype"] if name == "precision" else [])
        default = getattr(RunProfile(), name)
        if spec.choices == (False, True):
            parser.add_argument(*flags, dest=name, action="store_const", const=True, default=None,
                                help=f"{spec.help} (off unless given)")
        elif spec.choices is not None:
            parser.add_argument(*flags, dest=name, choices=list(spec.choices), default=None,
                                help=f"{spec.help} (default: {default})")
        else:
            kind = str if name == "device" else (int if name == "load_threads" else float)
            parser.add_argument(*flags, dest=name, type=kind, default=None, help=f"{spec.help} (default: {default})")
