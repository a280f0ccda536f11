"""The whole SAM-Body4D pipeline without ComfyUI (the original project's offline script).

    video -> frames -> prompts (points JSON or auto "person") -> SAM-3 tracks
      -> amodal completion (optional) -> camera (MoGe-2 / manual / default)
      -> SAM-3D-Body bodies -> Kalman/RTS smoothing -> world frame (floor, camera motion, contacts)
      -> render + exports (meshes, GLBs, the skinned animation scene, BVH)

Each stage writes its typed output as .npz into the output folder (so a run can be
inspected or resumed), and each model is loaded for its stage only and released after it,
so peak GPU memory is that of the largest stage, not their sum (a long-lived caller may pass a
model cache instead: then the models stay loaded across runs). The writes (npz files, the
mask overlay video, the meshes and GLBs) run on background threads while the next stage
computes; run_pipeline waits for them before it returns and raises the first one that failed.

Long videos: by default the decoded frames live in a frame store (a file inside the output folder,
``frame_store.py``) rather than RAM, the stages write their whole-clip per-frame outputs (packed masks,
amodal results, vertices, keypoints) straight into files of the store through its allocator
(``FrameStore.empty``; ``alloc.py``), and the render streams batch by batch into a background MP4
encoder; the store is deleted when the run ends, failed or not. Before any stage, the run checks that the
output folder's disk has room for every store file and output it will write (``disk_plan.py``).
"""

from __future__ import annotations

import gc
import inspect
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import InitVar, dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import numpy as np
import torch

from .alloc import Alloc
from .data import Amodal, Bodies, Camera, Clip, Prompts, Tracks
from .atomic import atomic_path, remove_temporaries
from .errors import InputError, InterruptedError_
from .manifest import Manifest, RunLock, start_run
from .memory_plan import MemoryPlan, plan_for_run as memory_plan
from .profile import RunProfile
from .runtime import (NULL_HOOKS, Hooks, pick_device, release_cuda_workspaces, release_host_memory,
                      release_library_caches)
from .frame_store import FrameStore, decode_to_store, remove_stale
from .video import LoadOptions, load_video

if TYPE_CHECKING:
    from .disk_plan import CompletionCheck

log = logging.getLogger(__name__)
HooksFactory = Callable[[str], Hooks]
ModelCache = dict  # (model name, where, device, ...) -> loaded model; kept by a long-lived caller across runs
T = TypeVar("T")
WRITE_WORKERS = 2  # background writer threads (zlib, x264 and file I/O release the GIL)
WORLD_EARLY = True  # the world stage's depth before, and its camera motion during, the bodies stage (start_world)
WORLD_BESIDE_RENDER = True  # on CUDA the world stage runs on a thread while the render runs (_world_beside_render)
RENDER_BATCH = 16  # frames a render batch when no memory plan sets it (each encoded while the next renders)
VIDEO_PRESET = "veryfast"  # x264 preset of the pipeline's videos: ~2.3x faster than "medium", same crf quality


@dataclass
class PipelineOptions:
    """Everything the headless run can be told (defaults as upstream where it had one)."""

    video: LoadOptions = field(default_factory=LoadOptions)
    points_json: str | None = None  # SAM3 Points editor JSON; None -> detect people
    detect_frame: int = -1  # -1: scan from the start for the first frame with people
    detect_threshold: float = 0.5
    max_people: int = 5
    direction: str = "both"
    amodal: bool = True
    amodal_settings: dict = field(default_factory=dict)  # OcclusionConfig / SamplerConfig fields
    fov_mode: str = "first"  # first | every_n | all | none (f = sqrt(H^2 + W^2))
    manual_fov: float = 0.0  # vertical degrees; > 0 overrides the model
    body_mode: str = "full"
    batch_size: int = 64  # SAM-3D-Body crops per batch (a memory cap may lower it: memory_plan)
    smooth: bool = True
    smooth_settings: dict = field(default_factory=dict)  # SmoothSettings fields
    render_mode: str = "overlay"
    write_meshes: bool = True
    write_glb: bool = True
    world: bool = True  # ground people, camera and floor in one metric world frame (out/world)
    world_camera: str = "auto"  # auto (detect a static camera, else solve its motion) | static
    world_floor: str = "auto"  # auto (MoGe-2 depth, else the planted feet) | depth | feet
    world_depth_every: int = 10  # MoGe-2 depth on every n-th frame for the floor and camera scale (0 = none)
    write_anim: bool = True  # skinned glTF scene + BVH + flags (out/anim), when the rig supports it
    anim_fidelity: bool = True  # measure the skinned export against the full rig (logged, stored in the GLB)
    models_root: Path | None = None
    profile: RunProfile = field(default_factory=RunProfile)  # how every stage runs: device, precision, compile, ...
    # older shorthands, folded into ``profile`` (read back as properties below): compile (False = profile compile
    # off), fp8 (FP8 backbone + bf16 decoders), device, dtype (= profile precision)
    compile: InitVar[bool | None] = None
    fp8: InitVar[bool | None] = None
    device: InitVar[str | None] = None
    dtype: InitVar[str | None] = None
    frames_on_disk: bool = True  # decoded frames in a file inside out_dir (host RAM flat in the clip's length)

    def __post_init__(self, compile: bool | None, fp8: bool | None, device: str | None, dtype: str | None) -> None:
        legacy: dict[str, Any] = {}
        if compile is not None:
            legacy["compile"] = "auto" if compile else "off"
        if fp8:
            legacy.update(backbone_fp8=True, decoder_precision="bf16")
        if device is not None:
            legacy["device"] = str(device) or "auto"
        if dtype is not None:
            legacy["precision"] = _PRECISION_NAMES.get(str(dtype), str(dtype))
        if legacy:
            self.profile = RunProfile.from_dict(legacy, self.profile)


_PRECISION_NAMES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "": "auto",
                    "torch.float32": "fp32", "torch.bfloat16": "bf16", "torch.float16": "fp16"}
# the shorthands read back from the profile (what run.json and older callers read)
PipelineOptions.compile = property(lambda self: self.profile.compile != "off")
PipelineOptions.fp8 = property(lambda self: self.profile.backbone_fp8)
PipelineOptions.device = property(lambda self: None if self.profile.device == "auto" else self.profile.device)
PipelineOptions.dtype = property(lambda self: self.profile.dtype_name)


@dataclass
class RunSummary:
    """What a run produced, for the CLI summary and tests."""

    out_dir: Path
    num_frames: int = 0
    obj_ids: list[int] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    manifest: Manifest | None = field(default=None, repr=False)  # run.json of this run (None: not recorded)
    reused: list[str] = field(default_factory=list)  # stages loaded from an earlier run (--resume)
    memory: MemoryPlan | None = None  # batch sizes and offloads the run used (memory_plan)
    released: list[str] = field(default_factory=list)  # cached models dropped from the GPU between stages (a cap)
    parts: dict[str, float] = field(default_factory=dict)  # seconds of the world stage's parts and of each
    # background write (write_<name>), for benches; not printed

    def describe(self) -> str:
        lines = [f"{self.num_frames} frames, people {self.obj_ids} -> {self.out_dir}"]
        width = max((len(k) for k in self.files), default=0)  # columns line up whatever the names
        lines += [f"  {k:{width}s} {v}" for k, v in self.files.items()]
        width = max((len(k) for k in self.timings), default=0)
        lines += [f"  time {k:{width}s} {v:7.1f} s" for k, v in self.timings.items()]
        lines += [f"  reused  {', '.join(self.reused)} (from the earlier run in this folder)"] if self.reused else []
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _free(*objs: object) -> None:
    """Collect dropped stage models and release cached GPU memory before the next stage.

    The caller drops its own references first (``del model; _free()``): memory still referenced cannot be freed.
    """
    del objs
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class _Timer:
    def __init__(self, summary: RunSummary, name: str) -> None:
        self.summary, self.name = summary, name

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()
        log.info("stage %s ...", self.name)

    def __exit__(self, *exc: object) -> None:
        self.summary.timings[self.name] = time.perf_counter() - self.t0


class _Part:
    """Times one part of a stage into summary.timings (no log line, no run.json entry: the stage has those)."""

    def __init__(self, summary: RunSummary, name: str) -> None:
        self.summary, self.name = summary, name

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.summary.timings[self.name] = time.perf_counter() - self.t0


def _search(opts: PipelineOptions) -> list[Path] | None:
    return [opts.models_root] if opts.models_root else None


def _model(models: ModelCache | None, key: tuple, load: Callable[[], T], profile: RunProfile | None = None) -> T:
    """A stage's model: loaded once and kept in ``models`` when the caller gives one, else loaded for this stage
    (the profile's loader path and load threads). Keys of the default profile are the ones a batch worker uses."""
    profile = profile or RunProfile()
    key = (*key, profile.loader) if profile.loader != "fast" else key
    if models is None or key not in models:
        with profile.loading():
            model = load()
        if models is None:
            return model
        models[key] = model
    return models[key]


def release_cached(models: ModelCache | None, plan: MemoryPlan | None) -> list[str]:
    """A memory cap: drop the models a long-lived caller keeps, so none stays on the GPU into the next stage;
    returns their names (reloaded when next needed)."""
    if not models or plan is None or not plan.release_cached:
        return []
    names = sorted({str(k[0]) for k in models})
    models.clear()
    _free()
    log.info("memory plan: released the cached %s", ", ".join(names))
    return names


def stage_prompts(frames: np.ndarray, clip: Clip, opts: PipelineOptions, hooks: Hooks,
                  models: ModelCache | None = None) -> tuple[Prompts, object]:
    """Prompts from the editor JSON, or SAM-3 "person" detection; returns the loaded SAM-3 too."""
    from .sam3 import load_sam3

    detector = opts.points_json is None
    bundle = _model(models, ("sam3", str(opts.models_root), opts.device, opts.dtype, detector),
                    lambda: load_sam3(search_dirs=_search(opts), device=opts.device, dtype=opts.dtype,
                                      with_detector=detector, **opts.profile.loader_kwargs()), opts.profile)
    if opts.points_json is not None:
        from .prompts import parse_prompts

        return parse_prompts(opts.points_json, clip.image_size, clip.num_frames), bundle
    from .sam3.detect import detect_people

    prompts = detect_people(bundle, frames, frame_index=opts.detect_frame, score_threshold=opts.detect_threshold,
                            max_people=opts.max_people, hooks=hooks)
    return prompts, bundle


def stage_tracks(bundle: object, frames: np.ndarray, prompts: Prompts, opts: PipelineOptions, hooks: Hooks,
                 alloc: Alloc | None = None) -> Tracks:
    """SAM-3 propagation; ``alloc``: where the packed masks are written (the run's frame store; default RAM)."""
    from .sam3 import propagate

    return propagate(bundle, frames, prompts, direction=opts.direction, hooks=hooks,
                     speed=opts.profile.speed_options(), alloc=alloc)


def stage_amodal(frames: np.ndarray, tracks: Tracks, opts: PipelineOptions, hooks: Hooks,
                 models: ModelCache | None = None, plan: MemoryPlan | None = None,
                 alloc: Alloc | None = None, before_completion: Callable[[int], None] | None = None) -> Amodal:
    """Occlusion detection and completion; a memory plan sets the sampler's per-call budget and low-memory mode
    and may keep the networks on the CPU between their passes; ``alloc``: where the amodal masks and completed
    RGB go, and the occlusion detection's whole-clip depth, conditions and predictions; ``before_completion``:
    run_amodal's check of the completed person-frames' count (the disk), before any completion work."""
    from .amodal.config import configs_from_mapping
    from .amodal.models import offloaded
    from .amodal.stage import run_amodal

    occ, sampler = configs_from_mapping(opts.amodal_settings)
    split = plan is not None and plan.offload_amodal
    vas = amodal_models(opts, models, split)
    if split:
        vas = offloaded(vas)
    try:
        extra = {**({"alloc": alloc} if alloc is not None else {}),
                 **_with_kw(run_amodal, "before_completion", before_completion)}
        amodal, stats = _amodal_in_plan(partial(run_amodal, torch.from_numpy(frames), tracks, vas, occ, sampler,
                                                hooks=hooks, **extra), plan)
    finally:
        del vas  # a cached model stays in ``models``
        _free()
    log.info("%s", describe_amodal(stats))
    return amodal


def _amodal_in_plan(run: Callable[..., Any], plan: MemoryPlan | None) -> Any:
    """``run(budget_px=, memory=)`` in the plan's amodal mode; after a CUDA out-of-memory error, again from the
    start in each of the plan's lower-memory fallbacks (one window per call) until one completes (the same
    frames: the modes change only how much is held at once)."""
    if plan is None:
        return run()
    from .runtime import is_oom

    tries = [(plan.amodal_budget_px, plan.amodal_memory), *((1, m) for m in plan.amodal_fallbacks)]
    for k, (budget, mode) in enumerate(tries):
        try:
            return run(budget_px=budget, memory=mode)
        except Exception as err:  # noqa: BLE001 - only OOM is handled, the rest re-raised
            if not is_oom(err) or k == len(tries) - 1:
                raise
            log.warning("amodal: out of GPU memory in sampler mode '%s'; running the stage again in '%s'",
                        mode.describe(), tries[k + 1][1].describe())
            _free()
    raise AssertionError("unreachable")


def amodal_cache_key(opts: PipelineOptions, offloaded: bool = False) -> tuple:
    """The amodal models' key in a model cache (a batch worker fills the same one): the default profile's key
    plus what differs from it (``_model`` adds a non-default loader)."""
    pf = opts.profile
    key = ("amodal", str(opts.models_root), opts.device, opts.dtype)
    return key + ((pf.amodal_accel,) if pf.amodal_accel != "default" else ()) + (("offloaded",) if offloaded else ())


def amodal_models(opts: PipelineOptions, models: ModelCache | None = None, offload: bool = False) -> Any:
    """The Diffusion-VAS models as the profile says (kept in ``models`` under ``amodal_cache_key``); offload:
    loaded onto the CPU, for a memory plan that moves each network to the GPU only for its own pass."""
    from .amodal.models import load_amodal_models

    pf = opts.profile
    return _model(models, amodal_cache_key(opts, offload),
                  lambda: load_amodal_models(_search(opts), device=opts.device, dtype=opts.dtype,
                                             accel=pf.accel_config(), **({"place": "cpu"} if offload else {}),
                                             **pf.loader_kwargs()), pf)


def describe_amodal(stats: object) -> str:
    """One readable sentence for the amodal stage's statistics."""
    segments = getattr(stats, "segments", {}) or {}
    n_seg = sum(len(v) for v in segments.values())
    occluded = sum(int(np.count_nonzero(v)) for v in (getattr(stats, "detected", {}) or {}).values())
    timings = getattr(stats, "timings", {}) or {}
    parts = ", ".join(f"{k} {v:.1f} s" for k, v in timings.items())
    return (f"amodal: {occluded} occluded person-frame(s) found, {n_seg} segment(s) completed "
            f"({getattr(stats, 'completed_frames', 0)} frames)" + (f"; {parts}" if parts else ""))


def stage_camera(frames: np.ndarray, clip: Clip, opts: PipelineOptions, hooks: Hooks,
                 notes: list[str] | None = None, models: ModelCache | None = None) -> Camera:
    """MoGe-2 intrinsics (or the manual FOV); without MoGe-2 weights, upstream's f = sqrt(H^2 + W^2)."""
    from .errors import MissingWeightsError
    from .fov import estimate_camera, resolve_camera

    def estimate() -> Camera:
        try:
            model = _moge(opts, models)
        except MissingWeightsError as err:
            msg = f"no MoGe-2 weights, camera uses f = sqrt(H^2 + W^2) ({err})"
            log.warning(msg)
            if notes is not None:
                notes.append(msg)
            return Camera.default(clip.image_size, clip.num_frames)
        try:
            return estimate_camera(model, frames, mode=opts.fov_mode, hooks=hooks,
                                   **({"use_fp16": False} if opts.profile.moge_fp16 is False else {}))
        finally:
            del model
            _free()

    use_model = opts.fov_mode != "none" and not opts.manual_fov
    return resolve_camera(clip.image_size, clip.num_frames, manual_fov=opts.manual_fov,
                          estimate=estimate if use_model else None)


def _moge(opts: PipelineOptions, models: ModelCache | None = None) -> torch.nn.Module:
    """MoGe-2 (MissingWeightsError when its weights are absent)."""
    from .fov import load_moge

    return _model(models, ("moge", str(opts.models_root), opts.device),
                  lambda: load_moge(_search(opts), device=pick_device(opts.device), **opts.profile.loader_kwargs()),
                  opts.profile)


def _body_model(opts: PipelineOptions, models: ModelCache | None = None) -> Any:
    """SAM-3D-Body (with its MHR rig)."""
    from .sam3d_body import load_sam3d_body

    return _model(models, ("sam3d_body", str(opts.models_root), opts.device),
                  lambda: load_sam3d_body(search_dirs=_search(opts), device=pick_device(opts.device),
                                          **opts.profile.loader_kwargs()), opts.profile)


def stage_bodies(frames: np.ndarray, tracks: Tracks, amodal: Amodal | None, camera: Camera, opts: PipelineOptions,
                 hooks: Hooks, models: ModelCache | None = None,
                 estimate: Callable[..., list] | None = None, plan: MemoryPlan | None = None,
                 alloc: Alloc | None = None) -> tuple[Bodies, object]:
    """SAM-3D-Body on every person of every frame; returns the bodies and the loaded model (for its rig).
    ``alloc``: where the bodies' per-frame arrays go (the run's frame store; default RAM). Each batch's results
    are written straight into them (``BodiesWriter``: one copy, no per-item arrays); a caller's ``estimate``
    (e.g. sharded over workers) does the same where it takes ``into``, else its results are copied in after."""
    from .body_inputs import body_items
    from .sam3d_body import estimate_bodies
    from .sam3d_body.writer import BodiesWriter

    model = _body_model(opts, models)
    items = body_items(tracks, amodal)
    batch = plan.bodies_batch if plan is not None else opts.batch_size
    # CUDA only; equal up to rounding; compile 'auto' compiles only jobs large enough to win back the compile time
    opts.profile.compile_body(model, batch, crops=len(items), body_mode=opts.body_mode)
    est = estimate or estimate_bodies
    writer = BodiesWriter(items, tracks.num_frames, tracks.image_size, tracks.obj_ids.tolist(), alloc)
    results = est(model, frames, items, camera.intrinsics, mode=opts.body_mode, batch_size=batch, hooks=hooks,
                  return_vertices=True, **opts.profile.body_kwargs(),
                  **_with_kw(est, "into", writer, via_kwargs=False))  # a stand-in's **kwargs may not pass it on
    if writer.written < len(items):  # an estimate that returns its results without writing them
        writer.put(items, results)
    return writer.result(model.faces.detach().cpu().numpy()), model


def run_pipeline(video: str | Path, out_dir: str | Path, opts: PipelineOptions | None = None,
                 hooks_for: HooksFactory | None = None, overwrite: bool = False, resume: bool = False,
                 record: bool = True, models: ModelCache | None = None,
                 decoded: tuple[np.ndarray, Clip] | None = None,
                 estimate: Callable[..., list] | None = None,
                 render: Callable[..., tuple] | None = None) -> RunSummary:
    """Run every stage on one video and write the results into out_dir.

    With ``record`` (default) the folder is locked for this run, a folder holding another run's
    results is refused unless ``overwrite`` or ``resume``, and run.json records the run as it goes.
    models: a dict the caller keeps between runs (a long-lived worker): each model is loaded into it
    once and reused (never freed here). decoded: (frames, clip) already decoded with ``opts.video``
    (the decode is skipped). estimate: replaces ``estimate_bodies`` (same arguments), e.g. to split
    the body stage over GPUs. render: replaces ``render.render_bodies`` (same arguments and result) for
    the overlay video, e.g. to render its batches on several GPUs.
    """
    from .preflight import required_models

    opts = opts or PipelineOptions()
    hooks_for = hooks_for or (lambda name: NULL_HOOKS)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = RunSummary(out)
    lock = RunLock(out) if record else None
    if lock is not None:
        lock.acquire()
    stores: list[FrameStore] = []  # the run's frame store, closed (and deleted) once every write is done
    try:
        remove_temporaries(out)
        remove_stale(out)
        disk = check_disk_plan(video, out, opts, decoded)  # a disk too small for the run: refused before run.json
        if record:
            summary.manifest = start_run(out, video, opts, [*required_models(opts), "moge"], _search(opts),
                                         overwrite=overwrite, resume=resume)
        writes = BackgroundWrites(summary)
        gc.collect()  # once per run; then what lives now (libraries, cached models) is left out of the
        gc.freeze()  # stages' collections (_free), which walk only what the run allocated
        try:
            _run_stages(video, out, opts, hooks_for, summary, writes, models, decoded, estimate, stores, render,
                        **_with_kw(_run_stages, "disk", disk))
        except BaseException:
            writes.close()  # the stage's error wins; finished or running writes are still completed
            raise
        finally:
            gc.unfreeze()
        t0 = time.perf_counter()
        writes.join()
        summary.timings["write_wait"] = time.perf_counter() - t0
        if summary.manifest is not None:
            summary.manifest.finish("complete")
    except BaseException as err:
        remove_temporaries(out)
        _record_failure(summary.manifest, err)
        raise
    finally:
        for store in stores:
            store.close()
        release_library_caches()
        release_cuda_workspaces()
        release_host_memory()
        if lock is not None:
            lock.release()
    return summary


def check_disk_plan(video: str | Path, out: Path, opts: PipelineOptions,
                    decoded: tuple[np.ndarray, Clip] | None = None) -> CompletionCheck | None:
    """Refuse a run whose frame store files and outputs (``disk_plan``) need more than the free space of ``out``'s
    disk (an earlier run's outputs there count as free: this run replaces them), before any stage runs; the
    amodal completed frames are checked once counted (the returned check, None without an amodal stage)."""
    from .disk_plan import check_start, existing_bytes

    return check_start(out, video, opts, decoded, existing_bytes(out))


def _completion_check(disk: CompletionCheck | None, out: Path,
                      stores: list[FrameStore] | None) -> Callable[[int], None] | None:
    """``disk`` as run_amodal's ``before_completion``: the run's bytes already on the disk (its outputs so far and
    its frame store files) are part of its plan, so they count as free."""
    if disk is None:
        return None
    from .disk_plan import existing_bytes, stored_bytes

    return lambda k: disk(k, existing_bytes(out) + stored_bytes([s.dir for s in stores or []]))


def _record_failure(manifest: Manifest | None, err: BaseException) -> None:
    """run.json says interrupted (Ctrl-C, SIGTERM, cancel) or failed, with the stage and the error."""
    if manifest is None:
        return
    interrupted = isinstance(err, (KeyboardInterrupt, InterruptedError_))
    try:
        manifest.finish("interrupted" if interrupted else "failed", None if interrupted else
                        (str(err).splitlines()[0] if str(err) else type(err).__name__))
    except Exception:  # noqa: BLE001 - the original error matters more than the manifest
        log.exception("could not update %s", manifest.path)


class _Stage:
    """Times a stage, checks for interrupts at its start and records it in run.json."""

    def __init__(self, summary: RunSummary, name: str, hooks: Hooks) -> None:
        self.summary, self.name, self.hooks = summary, name, hooks
        self.timer = _Timer(summary, name)

    def __enter__(self) -> None:
        if self.summary.manifest is not None:
            self.summary.manifest.set_stage(self.name)
        self.hooks.check_interrupt()
        self.timer.__enter__()

    def __exit__(self, *exc: object) -> None:
        self.timer.__exit__(*exc)


def _done(summary: RunSummary, stage: str, files: list[str], reused: bool = False) -> None:
    if summary.manifest is not None:
        summary.manifest.stage_done(stage, files, summary.timings.get(stage), reused)


def _one_file_stage(summary: RunSummary, writes: "BackgroundWrites", out: Path, name: str, cls: type,
                    check: Hooks, compute: Callable[[], Any]) -> Any:
    """A stage whose result is one ``<name>.npz``: reused under --resume, else computed, saved and recorded."""
    reused = _reuse(summary, name, out, {name: cls})
    if reused is not None:
        return reused[0]
    writes.check()
    with _Stage(summary, name, check):
        result = compute()
    writes.save(name, result, out / f"{name}.npz")
    _done(summary, name, [name])
    return result


def _reuse(summary: RunSummary, stage: str, out: Path, loaders: dict[str, type]) -> list | None:
    """The stage's outputs loaded from the earlier run (--resume), or None when it must run."""
    m = summary.manifest
    if m is None or stage not in m.reuse:
        return None
    loaded = [loaders[name].load_npz(out / f"{name}.npz") for name in loaders]
    log.info("stage %s: reusing the earlier run's %s", stage, ", ".join(f"{n}.npz" for n in loaders))
    summary.reused.append(stage)
    for name in loaders:
        summary.files[name] = out / f"{name}.npz"
    _done(summary, stage, list(loaders), reused=True)
    return loaded


def _run_stages(video: str | Path, out: Path, opts: PipelineOptions, hooks_for: HooksFactory, summary: RunSummary,
                writes: "BackgroundWrites", models: ModelCache | None = None,
                decoded: tuple[np.ndarray, Clip] | None = None, estimate: Callable[..., list] | None = None,
                stores: list[FrameStore] | None = None, render: Callable[..., tuple] | None = None,
                disk: CompletionCheck | None = None) -> None:
    """The stages in order; every file is written through ``writes`` (in the background); ``disk``: the start-up
    check's amodal completion check."""
    check = hooks_for("check")
    with _Stage(summary, "decode", check):
        frames, clip = decoded if decoded is not None else _decode(video, out, opts, hooks_for("decode"), stores)
    summary.num_frames = clip.num_frames
    writes.save("clip", clip, out / "clip.npz")
    _done(summary, "decode", ["clip"])
    plan = summary.memory = memory_plan(opts, clip)
    alloc = _alloc(stores)  # the stages' whole-clip per-frame outputs go straight into the frame store
    summary.notes += list(plan.notes)
    if plan.cap_gib:
        log.info("%s", plan.describe())
        if summary.manifest is not None:  # uncapped runs: run.json unchanged
            summary.manifest.record_memory_plan(plan.describe())

    reused = _reuse(summary, "sam3", out, {"prompts": Prompts, "tracks": Tracks})
    if reused is not None:
        prompts, tracks = reused
    else:
        with _Stage(summary, "sam3", check):
            with _Part(summary, "sam3_prompts"):  # the load (without a model cache), then detection or the JSON
                prompts, bundle = stage_prompts(frames, clip, opts, hooks_for("detect"), models)
            writes.save("prompts", prompts, out / "prompts.npz")
            with _Part(summary, "sam3_propagate"):  # what bench_sam3 measures
                tracks = stage_tracks(bundle, frames, prompts, opts, hooks_for("propagate"),
                                      **_with_alloc(stage_tracks, alloc))
            with _Part(summary, "sam3_release"):
                del bundle
                summary.released += release_cached(models, plan)
                release_library_caches()  # SAM-3's position embeddings stay cached in transformers otherwise
                _free()
        writes.save("tracks", tracks, out / "tracks.npz")
        _done(summary, "sam3", ["prompts", "tracks"])
    summary.obj_ids = tracks.obj_ids.tolist()
    tracks.packed = _off_ram(stores, tracks.packed)
    writes.submit("mask_overlay", out / "mask_overlay.mp4", _write_mask_overlay, frames, tracks, clip,
                  out / "mask_overlay.mp4")

    amodal = None
    if opts.amodal:
        amodal = _one_file_stage(summary, writes, out, "amodal", Amodal, check,
                                 lambda: stage_amodal(frames, tracks, opts, hooks_for("amodal"), models, plan,
                                                      **_with_alloc(stage_amodal, alloc),
                                                      **_with_kw(stage_amodal, "before_completion",
                                                                 _completion_check(disk, out, stores))))
        summary.released += release_cached(models, plan)
        amodal.packed_amodal = _off_ram(stores, amodal.packed_amodal)
        amodal.completed_rgb = _off_ram(stores, amodal.completed_rgb)
    else:
        _done(summary, "amodal", [])
    camera = _one_file_stage(summary, writes, out, "camera", Camera, check,
                             lambda: stage_camera(frames, clip, opts, hooks_for("fov"), summary.notes, models))
    prep = start_world(frames, tracks, camera, clip, opts, summary, models,  # camera motion overlaps the bodies
                       **_with_alloc(start_world, alloc))
    summary.released += release_cached(models, plan)
    world_job = None
    try:
        raw, bodies, rig = _bodies_and_smooth(frames, tracks, amodal, camera, opts, out, summary, writes, hooks_for,
                                              models, estimate, plan, alloc)
        for b in {id(raw): raw, id(bodies): bodies}.values():
            if b.vertices is not None:
                b.vertices = _off_ram(stores, b.vertices)

        def exports(world: Any) -> None:  # the world's files and the animation, to the writers once it is made
            if world is not None:
                if getattr(world, "bodies", None) is not None and world.bodies.vertices is not None:
                    world.bodies.vertices = _off_ram(stores, world.bodies.vertices)
                _submit_world(world, opts, clip, out, writes)
            _done(summary, "world", [n for n in WORLD_FILES if n in summary.files] if opts.world else [])
            if opts.write_anim:
                _submit_anim(bodies, rig, camera, world, clip, opts, out, summary, writes)

        writes.check()
        if opts.world:
            world_job = _WorldJob(summary, check, lambda free: stage_world(
                frames, tracks, camera, raw, bodies, clip, opts, summary.notes, models, prep, free=free,
                **_with_alloc(stage_world, alloc)), exports)
            world_job.start(beside_render=prep is not None and _world_beside_render(plan))
            summary.released += release_cached(models, plan)  # the world stage uses no cached model once prep ran
        else:
            exports(None)
        writes.check()
        with _Stage(summary, "render", check):
            _render_and_export(frames, clip, bodies, camera, opts, out, summary, hooks_for("render"), writes, plan,
                               render)
        if world_job is not None:
            world_job.result()
    finally:
        if world_job is not None:
            world_job.close()  # joined on every path (a failed or interrupted render too)
        if prep is not None:
            prep.close()
    _done(summary, "render", [n for n in ("params", "meshes", "glb", "anim", "render") if n in summary.files])


def _world_beside_render(plan: MemoryPlan | None) -> bool:
    """Whether the world stage (host work: floor, contacts, world frame; its depth and camera motion ran early,
    see ``start_world``) runs on a thread while the render runs: on CUDA, where the render's GPU work and
    encoder threads leave the host's cores free (a CPU render needs them), and not under a memory cap."""
    return WORLD_BESIDE_RENDER and torch.cuda.is_available() and not (plan is not None and plan.cap_gib)


class _WorldJob:
    """The world stage, run in place or on a thread beside the render (``start(beside_render=True)``), then
    ``then(world)`` (its exports) on the same thread.

    Either way it is the stage ``world`` in run.json and the timings (its own seconds) and its parts go to
    ``summary.parts``; ``result()`` waits for it and raises its error (run.json's current stage set back to
    ``world``); ``close()`` waits for the thread on every path."""

    def __init__(self, summary: RunSummary, check: Hooks, run: Callable[[bool], Any],
                 then: Callable[[Any], None]) -> None:
        self.summary, self.check, self.run, self.then = summary, check, run, then
        self.pool: ThreadPoolExecutor | None = None
        self.future: Future | None = None

    def start(self, beside_render: bool) -> None:
        stage = _Stage(self.summary, "world", self.check)
        if not beside_render:
            with stage:
                world = self._parts(self.run(True))
            self.then(world)
            return
        stage.__enter__()  # run.json's current stage, the interrupt check, the timer's start
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="body4d-world")
        self.future = self.pool.submit(self._beside, stage)
        log.info("world stage on a thread beside the render")

    def _beside(self, stage: _Stage) -> None:
        try:
            world = self._parts(self.run(False))  # its memory is freed after the render (result)
        finally:
            stage.__exit__(None, None, None)
        self.then(world)

    def _parts(self, world: Any) -> Any:
        self.summary.parts.update({f"world_{k}": v for k, v in getattr(world, "timings", {}).items()})
        return world

    def result(self) -> None:
        if self.future is None:
            return
        try:
            self.future.result()
        except BaseException:
            if self.summary.manifest is not None:
                self.summary.manifest.set_stage("world")
            raise
        _free()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)


def _decode(video: str | Path, out: Path, opts: PipelineOptions, hooks: Hooks,
            stores: list[FrameStore] | None) -> tuple[np.ndarray, Clip]:
    """The clip's frames: in a frame store inside ``out`` (``frames_on_disk``; the caller closes it) or in RAM."""
    if not opts.frames_on_disk or stores is None:
        return load_video(video, opts.video, hooks)
    store, clip = decode_to_store(video, opts.video, out, hooks)
    stores.append(store)
    return store.frames, clip


def _off_ram(stores: list[FrameStore] | None, arr: np.ndarray) -> np.ndarray:
    """A stage's per-frame output moved into the run's frame store (a file) when there is one, else as is;
    one the stage already wrote into the store (through ``_alloc``) stays where it is."""
    if not stores or stores[0].holds(arr):
        return arr
    return stores[0].keep(arr)


def _alloc(stores: list[FrameStore] | None) -> Alloc | None:
    """The allocator the stages write their whole-clip per-frame outputs through: the run's frame store
    (zero-filled files, paged out like the frames) when there is one, else None (RAM)."""
    return stores[0].empty if stores else None


def _with_alloc(fn: Callable[..., Any], alloc: Alloc | None) -> dict[str, Any]:
    """``{"alloc": alloc}`` for a stage function that takes it; {} for none or a stand-in without the keyword
    (tests and callers may replace stages with functions of the older signatures)."""
    return _with_kw(fn, "alloc", alloc)


def _with_kw(fn: Callable[..., Any], name: str, value: Any, via_kwargs: bool = True) -> dict[str, Any]:
    """``{name: value}`` for a function that takes the keyword (named, or through ``**kwargs`` when
    ``via_kwargs``); {} for None or a stand-in without it."""
    if value is None:
        return {}
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin or C callable: pass nothing it may not take
        return {}
    return {name: value} if any(p.name == name or (via_kwargs and p.kind is p.VAR_KEYWORD) for p in params) else {}


class AnimRig:
    """The parts of SAM-3D-Body an animation export needs (the MHR rig and the pose head), without the rest."""

    def __init__(self, model: object) -> None:
        self.mhr = getattr(model, "mhr", None)
        self.head_pose = getattr(model, "head_pose", None)


def _bodies_and_smooth(frames: np.ndarray, tracks: Tracks, amodal: Amodal | None, camera: Camera,
                       opts: PipelineOptions, out: Path, summary: RunSummary, writes: "BackgroundWrites",
                       hooks_for: HooksFactory, models: ModelCache | None = None,
                       estimate: Callable[..., list] | None = None,
                       plan: MemoryPlan | None = None,
                       alloc: Alloc | None = None) -> tuple[Bodies, Bodies, AnimRig | None]:
    """SAM-3D-Body then the smoother (each reused from an earlier run when --resume allows).

    Returns the raw bodies, the final (smoothed unless --no_smooth) bodies and, for the animation export,
    the model's rig and pose head (the rest of the model is freed here). ``alloc``: where both stages write
    their per-frame outputs (default RAM).
    """
    check = hooks_for("check")
    body_model = None
    reused = _reuse(summary, "bodies", out, {"bodies_raw": Bodies})
    try:
        if reused is not None:
            raw, = reused
        else:
            writes.check()
            with _Stage(summary, "bodies", check):
                raw, body_model = stage_bodies(frames, tracks, amodal, camera, opts, hooks_for("bodies"), models,
                                               estimate, plan, **_with_alloc(stage_bodies, alloc))
            writes.save("bodies_raw", raw, out / "bodies_raw.npz")
            _done(summary, "bodies", ["bodies_raw"])
        bodies = raw
        if not opts.smooth:
            _done(summary, "smooth", [])
        else:
            smoothed = _reuse(summary, "smooth", out, {"bodies": Bodies})
            if smoothed is not None:
                bodies = smoothed[0]
            else:
                if body_model is None:  # the smoother's rig comes from the model
                    body_model = _body_model(opts, models)
                with _Stage(summary, "smooth", check):
                    bodies = _smooth(raw, opts, body_model, camera, **_with_alloc(_smooth, alloc))
                writes.save("bodies", bodies, out / "bodies.npz")
                _done(summary, "smooth", ["bodies"])
        if opts.write_anim and body_model is None:  # the animation's skeleton comes from the model's rig
            from .errors import MissingWeightsError

            try:
                body_model = _body_model(opts, models)
            except MissingWeightsError as err:
                log.warning("animation export: no SAM-3D-Body rig to load (%s)", err)
        return raw, bodies, AnimRig(body_model) if opts.write_anim else None
    finally:
        del body_model
        summary.released += release_cached(models, plan)
        _free()


WORLD_FILES = ("world", "world_summary", "world_contacts", "world_bodies", "world_plot", "world_glb",
               "world_params", "world_meshes")


def _world_moge(opts: PipelineOptions, notes: list[str], models: ModelCache | None) -> torch.nn.Module | None:
    """MoGe-2 for the world stage's depth, or None (no depth asked, no model used for the camera, or absent)."""
    from .errors import MissingWeightsError

    if opts.world_depth_every <= 0:
        return None
    if opts.fov_mode == "none" or opts.manual_fov:
        notes.append("world: no MoGe-2 depth (--fov none / --manual_fov): floor from the feet, camera rotation only")
        return None
    try:
        return _moge(opts, models)
    except MissingWeightsError:
        notes.append("world: no MoGe-2 weights: floor from the feet, camera rotation only")
        return None


def _world_options(opts: PipelineOptions, clip: Clip) -> Any:
    from .world import WorldOptions

    return WorldOptions(camera_motion=opts.world_camera, floor=opts.world_floor, fps=float(clip.fps))


def start_world(frames: np.ndarray, tracks: Tracks, camera: Camera, clip: Clip, opts: PipelineOptions,
                summary: RunSummary, models: ModelCache | None = None, alloc: Alloc | None = None) -> Any:
    """The world stage's MoGe-2 depth now (the model is still loaded from the camera stage), its person masks
    and camera motion on a background thread during the bodies stage (``world.prepare``); None when the
    world stage is off (or WORLD_EARLY is). An error surfaces in the world stage, as there before. ``alloc``:
    where the depth and person masks go (default RAM)."""
    from .world.prepare import WorldPrep

    if not opts.world or not WORLD_EARLY:
        return None
    try:
        options = _world_options(opts, clip)
    except InputError:
        return None  # the world stage raises it
    with _Part(summary, "world_start"):  # MoGe-2 depth on the keyframes; the thread starts
        moge = _world_moge(opts, summary.notes, models)
        try:
            return WorldPrep(frames, tracks, camera, moge, opts.world_depth_every, options,
                             **({"alloc": alloc} if alloc is not None else {}))
        finally:
            del moge
            _free()


def stage_world(frames: np.ndarray, tracks: Tracks, camera: Camera, raw: Bodies, bodies: Bodies, clip: Clip,
                opts: PipelineOptions, notes: list[str], models: ModelCache | None = None, prep: Any = None,
                alloc: Alloc | None = None, free: bool = True) -> Any:
    """People, camera and floor in one world frame (``body4d_core.world``): the raw bodies' keypoints place
    them, the final bodies give the meshes. ``prep``: ``start_world``'s depth and camera motion; ``alloc``:
    where its whole-clip arrays go (default RAM); ``free``: collect garbage and empty the CUDA cache at the end
    (off on a thread beside the render, whose GPU memory it would release mid-batch)."""
    from .world import ground_clip

    options = _world_options(opts, clip)
    moge = _world_moge(opts, notes, models) if prep is None else None  # prep: the depth is made already
    try:
        result = ground_clip(frames, tracks, camera, raw, mesh_bodies=bodies, moge_model=moge,
                             depth_every=opts.world_depth_every, options=options, prepared=prep,
                             **({"alloc": alloc} if alloc is not None else {}))
    except InputError as err:  # the world frame is an addition: the run's other outputs still come
        msg = f"world stage skipped: {err}"
        log.warning(msg)
        notes.append(msg)
        return None
    finally:
        del moge
        if free:
            _free()
    return result


def _submit_world(world: Any, opts: PipelineOptions, clip: Clip, out: Path, writes: "BackgroundWrites") -> None:
    """out/world: world.npz, world.json, contacts.csv, world_bodies.npz, trajectory.png, then the
    world-frame exports (params.npz, glb/, meshes/)."""
    from . import export

    folder = out / "world"
    writes.submit("world", folder / "world.npz", _save_world, writes, world, folder)
    bodies = world.bodies
    if opts.write_glb:
        writes.submit("world_glb", folder / "glb", lambda: export.write_glb(bodies, folder / "glb", fps=clip.fps))
    writes.submit("world_params", folder / "params.npz", export.save_params, bodies, folder / "params.npz")
    if opts.write_meshes:
        writes.submit("world_meshes", folder / "meshes", export.write_meshes, bodies, folder / "meshes")


def _save_world(writes: "BackgroundWrites", world: Any, folder: Path) -> None:
    """WorldResult.save, each file recorded (summary and run.json) under world_<name>."""
    for name, path in world.save(folder).items():
        if name == "world":
            continue  # world.npz is the job's own file, recorded when it ends
        key = f"world_{name}"
        writes.summary.files[key] = path
        if writes.summary.manifest is not None:
            writes.summary.manifest.file_written(key, path)


def _submit_anim(bodies: Bodies, rig: AnimRig | None, camera: Camera, world: Any, clip: Clip,
                 opts: PipelineOptions, out: Path, summary: RunSummary, writes: "BackgroundWrites") -> None:
    """out/anim: the skinned scene GLB, BVH files with flag CSVs and the flags NPZ (skipped with a
    warning when the model's rig cannot be skinned)."""
    from .anim import supports_skinned_export, write_animation
    from .anim.world_input import scene_world_from

    if rig is None or not supports_skinned_export(rig.mhr):
        msg = ("animation export skipped: the SAM-3D-Body rig is not the native MHR rig a skinned export needs "
               "(the flipbook GLBs are still written)")
        log.warning(msg)
        summary.notes.append(msg)
        return
    scene = scene_world_from(world, bodies) if world is not None else None
    writes.submit("anim", out / "anim", write_animation, bodies, rig.mhr, camera, out / "anim", float(clip.fps),
                  scene, rig, "body4d", ("glb", "bvh", "npz"), True, None, opts.anim_fidelity)


class BackgroundWrites:
    """Runs the pipeline's file writes on background threads so they overlap the next stage.

    A job only reads its inputs (the pipeline never changes a stage's output once made). Its
    path goes into ``summary.files`` when it is submitted. A failed write is raised at the next
    ``check`` (before each stage: no GPU time is spent after a disk error) or by ``join``.
    """

    def __init__(self, summary: RunSummary, workers: int = WRITE_WORKERS) -> None:
        self.summary = summary
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="body4d-write")
        self._jobs: list[tuple[str, Future]] = []

    def submit(self, name: str, path: Path, fn: Callable[..., object], *args: object) -> None:
        """Run fn(*args) in the background; it writes ``path``, recorded as summary.files[name]."""
        self.summary.files[name] = path
        self._jobs.append((name, self._pool.submit(self._timed, name, fn, *args)))

    def record(self, name: str, path: Path) -> None:
        """A file written on the calling thread: summary.files and run.json."""
        self.summary.files[name] = path
        if self.summary.manifest is not None:
            self.summary.manifest.file_written(name, path)

    def save(self, name: str, obj: object, path: Path) -> None:
        """Background ``obj.save_npz(path)`` (path ends in .npz), written under a temporary name then renamed."""
        self.submit(name, path, _save_npz_atomic, obj, path)

    def _timed(self, name: str, fn: Callable[..., object], *args: object) -> None:
        t0 = time.perf_counter()
        fn(*args)
        self.summary.parts[f"write_{name}"] = seconds = time.perf_counter() - t0  # benches list them
        log.debug("wrote %s in %.2f s (background)", name, seconds)
        if self.summary.manifest is not None:
            self.summary.manifest.file_written(name, self.summary.files[name])

    def check(self) -> None:
        """Raise the error of the first finished write that failed."""
        for name, fut in self._jobs:
            if fut.done() and fut.exception() is not None:
                log.error("background write of %s failed", name)
                raise fut.exception()

    def join(self) -> None:
        """Wait for every write; raise the first failure (in submission order)."""
        self._pool.shutdown(wait=True)
        for name, fut in self._jobs:
            if fut.exception() is not None:
                log.error("background write of %s failed", name)
                raise fut.exception()

    def close(self) -> None:
        """Wait for the writes without raising (another error is on its way); log their failures."""
        self._pool.shutdown(wait=True)
        for name, fut in self._jobs:
            if not fut.cancelled() and fut.exception() is not None:
                log.error("background write of %s failed: %s", name, fut.exception())


def _save_npz_atomic(obj: object, path: Path) -> Path:
    """``obj.save_npz`` that leaves either the complete file or none (disk full, crash)."""
    with atomic_path(path) as tmp:
        obj.save_npz(tmp)
    return path


def _smooth(bodies: Bodies, opts: PipelineOptions, body_model: object, camera: Camera,
            alloc: Alloc | None = None) -> Bodies:
    """Kalman/RTS per identity, then the rig regenerates meshes and keypoints from the smoothed parameters
    (written through ``alloc`` when given: the run's frame store)."""
    from .sam3d_body.refresh import refresher
    from .smoothing import SmoothSettings, smooth_bodies

    refresh = refresher(body_model, camera, **({"alloc": alloc} if alloc is not None else {}))
    return smooth_bodies(bodies, SmoothSettings(**opts.smooth_settings), refresh=refresh)


def _write_mask_overlay(frames: np.ndarray, tracks: Tracks, clip: Clip, path: Path) -> Path:
    """The mask overlay video (per-id colours), as upstream's video_mask_*.mp4."""
    from .export import write_mp4
    from .overlay import overlay_masks

    images = (overlay_masks(frames[t], tracks.frame_masks(t), tracks.obj_ids) for t in range(len(frames)))
    with atomic_path(path) as tmp:
        write_mp4(tmp, images, clip.fps, clip.image_size, preset=VIDEO_PRESET)
    return path


def _render_and_export(frames: np.ndarray, clip: Clip, bodies: Bodies, camera: Camera, opts: PipelineOptions,
                       out: Path, summary: RunSummary, hooks: Hooks, writes: BackgroundWrites | None = None,
                       plan: MemoryPlan | None = None, render: Callable[..., tuple] | None = None) -> None:
    """Render the overlay video while params, meshes and GLBs are written (they need only the bodies).

    render: replaces ``render.render_bodies`` (see ``run_pipeline``)."""
    from . import export

    def exports() -> None:  # the longest first: GLB on one writer, params then meshes on the other
        if opts.write_glb:  # the one job that calls torch (normals): a single extra OpenMP team at most
            writes.submit("glb", out / "glb", lambda: export.write_glb(bodies, out / "glb", fps=clip.fps))
        writes.submit("params", out / "params.npz", _save_params, writes, bodies, out / "params.npz", camera)
        if opts.write_meshes:
            writes.submit("meshes", out / "meshes", export.write_meshes, bodies, out / "meshes")

    own = writes is None
    writes = writes or BackgroundWrites(summary)
    on_gpu = torch.cuda.is_available()  # render_bodies' device; a CPU render would share its cores with the exports
    try:
        if on_gpu:
            exports()
        path = out / "render_4d.mp4"
        _stream_render(frames, clip, bodies, camera, opts, path, hooks, None if on_gpu else exports,
                       plan.render_batch if plan is not None else RENDER_BATCH, render)
        writes.record("render", path)
    except BaseException:
        if own:
            writes.close()
        raise
    if own:
        writes.join()


def _stream_render(frames: np.ndarray, clip: Clip, bodies: Bodies, camera: Camera, opts: PipelineOptions,
                   path: Path, hooks: Hooks, after_render: Callable[[], None] | None = None,
                   batch_size: int = 16, render: Callable[..., tuple] | None = None) -> None:
    """Render batch by batch into the MP4: each batch is encoded on a background thread while the next one
    renders, and no more than a few batches are held (memory flat in the clip's length). ``after_render``
    runs once the last batch is rendered (the exports' submission on a CPU run); ``render`` replaces
    ``render.render_bodies`` (it hands the sink its batches in frame order)."""
    from . import export
    from .render import BatchSink, render_bodies

    with export.Mp4Stream(path, clip.fps, clip.image_size, preset=VIDEO_PRESET) as stream:
        sink = BatchSink(hooks, stream.put, max(1, batch_size))
        rendered = (render or render_bodies)(frames, bodies, camera, mode=opts.render_mode, hooks=sink)
        images = rendered[0] if isinstance(rendered, tuple) else rendered
        if len(images):  # a renderer that returned its frames instead of handing them to the sink
            stream.put(np.asarray(images))
        if after_render is not None:
            after_render()


def _save_params(writes: BackgroundWrites, bodies: Bodies, path: Path, camera: Camera) -> None:
    """params.npz and the params_camera.npz beside it (both recorded in run.json; the summary lists params)."""
    from .export import save_params

    out = save_params(bodies, path, camera)
    cam = out.with_name(out.stem + "_camera.npz")
    if cam.is_file() and writes.summary.manifest is not None:
        writes.summary.manifest.file_written("params_camera", cam)


def options_from_points(points: str | Path | None) -> str | None:
    """The points JSON from a file path or a literal string (None: detect people)."""
    from .preflight import read_points

    return read_points(points)
