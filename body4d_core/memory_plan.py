"""Memory policy in one place: a GPU memory cap -> batch sizes and model offload, decided before a run starts.

``plan_memory`` turns the run profile's ``vram_gb`` (and the memory free on the device) into the
SAM-3D-Body batch, the amodal sampler's per-call budget (how many people/windows are denoised
together) and, where one window does not fit with the default sampler, its low-memory mode
(amodal/lowmem.py: same frames, less memory, some speed), the render batch and whether models leave
the GPU between uses; a cap that nothing can meet is refused with one sentence naming the stage,
what it needs and what to change.
The per-stage needs are estimates (GiB) from the whole-pipeline bench's peaks
(bench/bench_pipeline.py ``--vram-cap`` measures them again). ``check_host_ram`` is the one
host-RAM check (frames, packed masks, render outputs).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .amodal.lowmem import SEQUENTIAL, LowMemory, chunked_mode
from .errors import MemoryBudgetError

if TYPE_CHECKING:
    from .data import Clip
    from .pipeline import PipelineOptions

log = logging.getLogger(__name__)
GIB = 2**30
MARGIN_GIB = 0.5  # allocator fragmentation and small buffers outside the estimates
SAM3_GIB = 3.0  # SAM-3 tracker + detector weights (bf16), one frame's working memory and its CUDA graphs' pools
MOGE_GIB = 4.2  # MoGe-2 ViT-L (fp32 weights) on one frame
BODY_WEIGHTS_GIB = 3.6  # SAM-3D-Body (fp32 weights, autocast compute)
BODY_CROP_GIB = {"full": 0.10, "body": 0.065}  # per crop of a batch (backbone + decoders, overlap on)
FP8_EXTRA_GIB = 1.2  # FP8 copies of the backbone linears during a call
VAS_WEIGHTS_GIB = 4.2  # one Diffusion-VAS pipeline (UNet + VAE + CLIP image encoder, bf16)
DEPTH_WEIGHTS_GIB = 0.7  # Depth Anything V2 Large (bf16)
AMODAL_GIB_PER_MPX = 10.0  # UNet/VAE working memory per 2**20 latent pixel-frames of one call (CFG included; measured)
# The low-memory sampler modes (amodal/lowmem.py). Per part of one reference completion window (64 frames at
# 512x1024 with CFG = 2**20 latent pixel-frames), the activation GiB alive at once on top of the weights, from
# bench/bench_amodal_memory.py (meta tensors, real-size bf16 networks, default speed options; BENCHMARKS.md,
# "Amodal completion under low memory caps"): (UNet step, VAE encode of the window, VAE decode of one 8-frame
# chunk). Assumption: the measured CUDA working set scales like these activation sizes, so each part is
# AMODAL_GIB_PER_MPX (the default mode's measured peak per 2**20 pixel-frames) times its share of the default
# mode's largest part; the default mode's estimate is the calibrated one, unchanged.
AMODAL_PARTS = {"default": (11.50, 5.41, 8.05), "sequential": (6.64, 5.41, 8.05), "chunked": (5.54, 1.01, 6.05)}
UNET_WEIGHTS_GIB = 2.84  # Diffusion-VAS UNet, 1525M parameters in bf16
UNET_BLOCK_GIB = 0.95  # its largest down/mid/up block (up_blocks.1, 489M in bf16) + the small layers
VAE_WEIGHTS_GIB = 0.2  # temporal VAE, 98M in bf16
CLIP_GIB = 1.5  # CLIP ViT-H image encoder (632M in bf16) + one window's 224x224 crops
FRAME_CHUNK = 8  # frames per call of the per-frame blocks in the chunked modes
# Depth Anything V2-L working memory per frame of one call (720p input -> 518x924 network input, bf16): a
# 16-frame call ran out of memory under a 12 GB cap on an H100 with ~8 GiB live and 4.4 GiB fragmented
# (BENCHMARKS.md, GPU memory caps); the low-memory modes give it half their room, the rest for fragmentation.
DEPTH_GIB_PER_FRAME = 0.5
DEPTH_BATCH = 16  # the estimator's own batch (amodal/models.py DepthEstimator)
RENDER_GIB_PER_MPX = 0.11  # rasteriser buffers per frame-megapixel of a render batch
DEFAULT_BUDGET_PX = 1 << 20  # run_amodal's default per-call budget (latent pixels x frames x 2)


@dataclass(frozen=True)
class Work:
    """The sizes of a run that the plan depends on."""

    height: int
    width: int
    body_mode: str = "full"
    body_batch: int = 64
    fp8: bool = False
    amodal: bool = True
    amodal_window: int = 64
    completion_resolution: tuple[int, int] = (512, 1024)
    render_batch: int = 16
    camera_model: bool = True  # MoGe-2 runs (camera or world depth)


@dataclass(frozen=True)
class MemoryPlan:
    """Batch sizes and offload decisions for one run; ``cap_gib`` 0 = no cap (the requested sizes)."""

    cap_gib: float
    bodies_batch: int
    amodal_budget_px: int
    render_batch: int
    offload_amodal: bool  # the amodal networks stay on the CPU; each moves to the GPU for its own pass
    release_cached: bool  # models kept by a long-lived caller leave the GPU after their stage
    notes: tuple[str, ...] = ()
    amodal_memory: LowMemory = LowMemory()  # the amodal sampler's low-memory mode (default: none)
    amodal_fallbacks: tuple[LowMemory, ...] = ()  # lower-memory modes to rerun the stage in after a CUDA OOM

    def offloaded(self) -> list[str]:
        """What leaves the GPU between uses (for logs and the bench)."""
        return [name for name, on in (("amodal networks per pass", self.offload_amodal),
                                      ("amodal UNet/VAE/CLIP one at a time", self.amodal_memory.per_network),
                                      ("cached models after each stage", self.release_cached)) if on]

    def describe(self) -> str:
        cap = f"cap {self.cap_gib:g} GiB" if self.cap_gib else "no memory cap"
        off = ", ".join(self.offloaded()) or "nothing"
        return (f"memory plan ({cap}): bodies batch {self.bodies_batch}, amodal budget {self.amodal_budget_px} px, "
                f"amodal sampler: {self.amodal_memory.describe()}{self._fallbacks()}, render batch {self.render_batch}, "
                f"offloaded: {off}")

    def _fallbacks(self) -> str:
        n = len(self.amodal_fallbacks)
        return f" ({n} lower-memory mode{'s' if n > 1 else ''} to fall back to on out-of-memory)" if n else ""


def plan_memory(work: Work, cap_gb: float = 0.0, offload: str = "auto", on_cuda: bool = True,
                free_gib: float | None = None) -> MemoryPlan:
    """The plan for ``work`` under a cap of ``cap_gb`` GB (0: none) and ``free_gib`` free on the device.

    offload: auto (only where the cap needs it), always, never. Off CUDA the cap is ignored (a note
    says so). Raises MemoryBudgetError when a stage cannot run within the cap at any batch size.
    """
    requested = MemoryPlan(0.0, work.body_batch, DEFAULT_BUDGET_PX, work.render_batch,
                           offload_amodal=offload == "always", release_cached=offload == "always")
    if not cap_gb:
        return requested
    if not on_cuda:
        return _with_note(requested, f"--vram_gb {cap_gb:g} ignored: the run is not on a CUDA GPU")
    cap = float(cap_gb) * 1e9 / GIB  # the flag is in GB (as GPUs are sold), the plan in GiB
    notes = []
    if free_gib is not None and free_gib < cap:
        notes.append(f"only {free_gib:.1f} GiB free on the GPU: planning for that, not the {cap:.1f} GiB cap")
        cap = free_gib
    room = cap - MARGIN_GIB
    _require(room >= SAM3_GIB, "SAM-3 tracking", SAM3_GIB + MARGIN_GIB, cap, "a larger --vram_gb")
    if work.camera_model:
        _require(room >= MOGE_GIB, "MoGe-2 (camera, world depth)", MOGE_GIB + MARGIN_GIB, cap,
                 "--fov none and --world_depth_every 0, or a larger --vram_gb")
    bodies = _bodies_batch(work, room, cap)
    budget, offload_amodal, low, later = (_amodal_budget(work, room, cap, offload) if work.amodal
                                          else (DEFAULT_BUDGET_PX, False, LowMemory(), ()))
    px = work.height * work.width / 2**20
    render = max(1, min(work.render_batch, int(room / max(RENDER_GIB_PER_MPX * px, 1e-6))))
    plan = MemoryPlan(cap, bodies, budget, render, offload_amodal or offload == "always", offload != "never",
                      tuple(notes), low, later)
    log.info("%s", plan.describe())
    return plan


def _bodies_batch(work: Work, room: float, cap: float) -> int:
    """The largest SAM-3D-Body batch (at most the requested one) that fits."""
    per = BODY_CROP_GIB.get(work.body_mode, BODY_CROP_GIB["full"])
    fixed = BODY_WEIGHTS_GIB + (FP8_EXTRA_GIB if work.fp8 else 0.0)
    _require(room >= fixed + per, "SAM-3D-Body", fixed + per + MARGIN_GIB, cap,
             "a larger --vram_gb" + (" (or no --backbone_fp8)" if work.fp8 else ""))
    return max(1, min(work.body_batch, int((room - fixed) / per)))


def _amodal_budget(work: Work, room: float, cap: float, offload: str
                   ) -> tuple[int, bool, LowMemory, tuple[LowMemory, ...]]:
    """The amodal per-call budget (latent pixel-frames), whether its networks are offloaded per pass, the
    sampler's low-memory mode and the lower ones to fall back to: the default mode where one window fits
    (resident, else offloaded), else the cheapest low-memory mode that fits (``_low_memory_modes``); refused
    when none does."""
    h, w = work.completion_resolution
    one_window = 2 * work.amodal_window * (h // 8) * (w // 8)  # the smallest call: one video window, CFG
    one_gib = AMODAL_GIB_PER_MPX * one_window / 2**20
    resident = 2 * VAS_WEIGHTS_GIB + DEPTH_WEIGHTS_GIB
    offload_amodal = offload == "always" or (offload == "auto" and room < resident + one_gib)
    weights = VAS_WEIGHTS_GIB if offload_amodal else resident
    if room >= weights + one_gib:
        budget = int((room - weights) / AMODAL_GIB_PER_MPX * 2**20)
        modes = _low_memory_modes(work, offload)
        return (max(one_window, min(DEFAULT_BUDGET_PX, budget)), offload_amodal, LowMemory(),
                _fallbacks(modes, weights + one_gib, offload_amodal))
    modes = _low_memory_modes(work, offload)
    for need, offloaded, low in modes:
        if room >= need:
            log.info("memory plan: amodal sampler in low-memory mode (%s), about %.1f GiB", low.describe(), need)
            return one_window, offloaded, low, _fallbacks(modes, need, offloaded)
    least = min(need for need, _, _ in modes) if modes else weights + one_gib
    fix = ("--no_amodal, a smaller --amodal_resolution, or a larger --vram_gb" if offload != "never" else
           "--offload auto, --no_amodal or a larger --vram_gb")
    _require(False, f"amodal completion (one {work.amodal_window}-frame window at {w}x{h})", least + MARGIN_GIB, cap,
             fix)
    raise AssertionError("unreachable")


def _fallbacks(modes: list[tuple[float, bool, LowMemory]], need: float, offloaded: bool) -> tuple[LowMemory, ...]:
    """The modes needing less than ``need`` that run with the networks where the plan puts them (held on the
    CPU when ``offloaded``, else resident: then only modes that place nothing), in the ladder's order."""
    return tuple(m for n, off, m in modes if n < need and (off if offloaded else not m.per_network))


def _low_memory_modes(work: Work, offload: str) -> list[tuple[float, bool, LowMemory]]:
    """(GiB needed, networks offloaded per pass, mode) of the low-memory sampler modes, cheapest first: sequential
    CFG, then per-frame chunks; each resident (offload never), whole pipeline offloaded per pass, networks one at
    a time; the UNet's blocks streamed last (it copies the UNet's weights in on every UNet call)."""
    h, w = work.completion_resolution
    scale = AMODAL_GIB_PER_MPX / max(AMODAL_PARTS["default"])
    win = 2 * work.amodal_window * (h // 8) * (w // 8) / 2**20  # of the reference window (1.0)
    frame = h * w / (512 * 1024)  # the decode chunk does not depend on the window length

    def parts(name: str) -> tuple[float, float, float]:
        unet, enc, dec = AMODAL_PARTS[name]
        enc_scale = frame if name == "chunked" else win  # one frame per encode call when chunked
        return scale * unet * win, scale * enc * enc_scale, scale * dec * frame

    resident = 2 * VAS_WEIGHTS_GIB + DEPTH_WEIGHTS_GIB
    out: list[tuple[float, bool, LowMemory]] = []
    for name, mode in (("sequential", SEQUENTIAL), ("chunked", chunked_mode(FRAME_CHUNK))):
        unet, enc, dec = parts(name)
        if offload == "never":
            need = resident + max(unet, enc, dec)
            out.append((need, False, _with_depth(mode, need - resident)))
            continue
        need = VAS_WEIGHTS_GIB + max(unet, enc, dec)
        out.append((need, True, _with_depth(mode, need - DEPTH_WEIGHTS_GIB)))
        split = LowMemory(**{**mode.__dict__, "per_network": True})
        need = max(UNET_WEIGHTS_GIB + unet, VAE_WEIGHTS_GIB + max(enc, dec), CLIP_GIB)
        out.append((need, True, _with_depth(split, need - DEPTH_WEIGHTS_GIB)))
    if offload != "never":
        unet, enc, dec = parts("chunked")
        need = max(UNET_BLOCK_GIB + unet, VAE_WEIGHTS_GIB + max(enc, dec), CLIP_GIB)
        out.append((need, True, _with_depth(chunked_mode(FRAME_CHUNK, per_network=True, stream_unet=True),
                                            need - DEPTH_WEIGHTS_GIB)))
    return out


def _with_depth(mode: LowMemory, room: float) -> LowMemory:
    """``mode`` with the depth estimator's frames per call fitted into half of ``room`` (GiB beside its weights
    when it runs), between 1 and its own batch."""
    frames = max(1, min(DEPTH_BATCH, int(room / (2 * DEPTH_GIB_PER_FRAME))))
    return LowMemory(**{**mode.__dict__, "depth_frames": frames})


def _require(ok: bool, stage: str, need_gib: float, cap: float, fix: str) -> None:
    if not ok:
        raise MemoryBudgetError(f"{stage} needs about {need_gib:.1f} GiB of GPU memory but the cap leaves "
                                f"{cap:.1f} GiB; use {fix}")


def _with_note(plan: MemoryPlan, note: str) -> MemoryPlan:
    log.warning("%s", note)
    return MemoryPlan(plan.cap_gib, plan.bodies_batch, plan.amodal_budget_px, plan.render_batch, plan.offload_amodal,
                      plan.release_cached, (*plan.notes, note), plan.amodal_memory, plan.amodal_fallbacks)


def check_host_ram(need_bytes: int, what: str, advice: str, fraction: float = 1.0,
                   free_bytes: int | None = None) -> int:
    """Refuse, before allocating, ``need_bytes`` of host RAM above ``fraction`` of what is free now.

    Returns the bytes needed. The message names ``what`` needs it, both sizes and ``advice``.
    """
    if free_bytes is None:
        from .video import available_ram

        free_bytes = available_ram()
    limit = fraction * free_bytes
    if need_bytes > limit:
        raise MemoryBudgetError(f"{what} needs {need_bytes / GIB:.1f} GiB but only {limit / GIB:.1f} GiB of RAM "
                                f"{'is free' if fraction == 1.0 else 'is allowed'}; {advice}")
    return need_bytes


def plan_for_run(opts: "PipelineOptions", clip: "Clip") -> MemoryPlan:
    """The run's batch sizes and offloads from the profile's memory cap (``plan_memory``)."""
    import torch

    from .amodal.config import configs_from_mapping

    device = opts.profile.torch_device()
    occ, sampler = configs_from_mapping(opts.amodal_settings) if opts.amodal else (None, None)
    h, w = clip.image_size
    work = Work(height=h, width=w, body_mode=opts.body_mode, body_batch=opts.batch_size, fp8=opts.profile.backbone_fp8,
                amodal=opts.amodal, amodal_window=sampler.window if sampler else 64,
                completion_resolution=occ.completion_resolution if occ else (512, 1024),
                camera_model=(opts.fov_mode != "none" and not opts.manual_fov)
                or (opts.world and opts.world_depth_every > 0))
    free = None
    if device.type == "cuda" and opts.profile.vram_gb and torch.cuda.is_available():
        free = torch.cuda.mem_get_info(device)[0] / 2**30 + torch.cuda.memory_reserved(device) / 2**30
    return plan_memory(work, opts.profile.vram_gb, opts.profile.offload, on_cuda=device.type == "cuda",
                       free_gib=free)
