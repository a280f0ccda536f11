"""The disk a headless run needs, stage by stage, checked before any stage runs (long videos, issue #21).

A run's frame store (``frame_store.py``) receives every whole-clip per-frame array a stage allocates through
``FrameStore.empty`` and keeps them all until the run ends, so its peak is their sum; the outputs stay. The
estimate follows the shapes and dtypes the stages allocate (the functions named below) for the clip's frames,
size and people, the run options and the models' sizes, each file rounded up to whole blocks. What depends on
the content takes its upper bound: every person on every frame and an MP4 allowance per pixel (the one figure
not derived from an array: x264 at crf 18 stays below it on real footage). A refusal names the biggest parts
and the options that remove them.

The amodal completed RGB (in the store and in amodal.npz) scales with the occluded person-frames K, known only
after the occlusion detection; its bound (every person-frame occluded) dwarfs the rest, so the start-up check
(``check_start``) refuses only what the definite parts (K = 0) do not fit, warns when the bound does not fit, and
``CompletionCheck`` checks the disk again with the real K before any completion work.
"""

from __future__ import annotations

import logging
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .data import PARAM_DIMS
from .errors import MemoryBudgetError

if TYPE_CHECKING:
    from .pipeline import PipelineOptions

log = logging.getLogger(__name__)

BLOCK = 4096  # file system block: every file occupies whole blocks
F32 = 4
MP4_BYTES_PER_PIXEL = 1 / 8  # allowance per frame pixel of each x264 video (crf 18): ~60 Mbit/s at 1080p30
MP4_FIXED = 1 << 16  # container and encoder headers of one MP4
NPZ_MEMBER = 1024  # zip entry (zip64) and .npy header of one npz member
SMALL_FILES = 4 << 20  # run.json, prompts.npz, world.json, trajectory.png, lock and probe files
PEOPLE = "fewer people (--max_people, or fewer objects in --points)"
FRAMES = "fewer or smaller frames (--frame_load_cap, --select_every_nth, --max_side)"
MODEL_PARAMS = 204  # MHRHead.model_params: 3 translation + 3 rotation + 130 body + 68 scales
PLY_HEADER = 1024  # trimesh's binary PLY header (vertex/face element lines, colour properties)
GLB_FRAME = 2048  # a GLB frame's JSON (mesh, node, accessors, views, sampler, channel) and its key times
EXPR_TARGETS = 72  # the skinned scene's expression morph targets (PARAM_DIMS["expr"])
BVH_VALUE = 16  # characters of one BVH channel value ("%.6f" and a space)
BVH_JOINT = 512  # a joint's block in the BVH hierarchy (name, offset, channels, indentation)
ANIM_JOINT_JSON = 2048  # a joint's node, T/R/S channels, samplers, accessors and views in the scene's JSON
COMPLETED_BOUND = "amodal completed frames (at most)"  # the completed RGB at its bound (every person-frame)
COMPLETED = "amodal completed frames"  # ... of the K person-frames the occlusion detection found


@dataclass(frozen=True)
class ModelSizes:
    """Sizes of the released models that shape the per-frame arrays (SAM-3D-Body's MHR rig, Depth Anything V2's
    input; written out so planning imports no model code, tested equal to theirs); tests with tiny models pass
    their own."""

    verts: int = 18439  # sam3d_body.config.Sam3dBodyConfig.num_verts
    faces: int = 36874  # num_faces
    joints: int = 127  # num_joints
    keypoints: int = 70  # num_keypoints (bodies_from_results writes 70)
    depth_size: int = 518  # amodal.depth.read_preprocessing defaults: DA-V2's input side and multiple
    depth_multiple: int = 14


@dataclass(frozen=True)
class Part:
    """One item of the plan: bytes in the run's frame store (deleted at the end) or in the outputs (kept)."""

    name: str
    nbytes: int
    in_store: bool
    hint: str = ""  # the option that removes or shrinks it


@dataclass
class DiskPlan:
    """A run's disk needs, part by part, in stage order."""

    parts: list[Part] = field(default_factory=list)

    @property
    def store(self) -> int:
        return sum(p.nbytes for p in self.parts if p.in_store)

    @property
    def outputs(self) -> int:
        return sum(p.nbytes for p in self.parts if not p.in_store)

    @property
    def total(self) -> int:
        return self.store + self.outputs

    def get(self, name: str) -> int:
        return sum(p.nbytes for p in self.parts if p.name == name)

    def biggest(self, k: int = 3) -> list[Part]:
        return sorted(self.parts, key=lambda p: -p.nbytes)[:k]

    def describe(self) -> str:
        """One line per part (GiB), for the log."""
        rows = [f"  {p.name:34s} {p.nbytes / 2**30:8.2f} GiB {'store' if p.in_store else 'output'}" for p in self.parts]
        return "\n".join([f"disk plan: {self.total / 2**30:.2f} GiB ({self.store / 2**30:.2f} GiB frame store, "
                          f"{self.outputs / 2**30:.2f} GiB outputs)", *rows])


def blocks(nbytes: int) -> int:
    """Bytes a file of ``nbytes`` occupies (whole blocks)."""
    return int(math.ceil(max(0, int(nbytes)) / BLOCK) * BLOCK)


def files(*sizes: int) -> int:
    """Bytes of one file per size."""
    return sum(blocks(s) for s in sizes)


def _packed(t: int, h: int, w: int) -> int:
    """Packed bool masks of a clip [T, H, ceil(W / 8)] (data.pack_masks)."""
    return t * h * ((w + 7) // 8)


# ------------------------------------------------------------------ the frame store, stage by stage


def frame_parts(t: int, h: int, w: int) -> list[Part]:
    """frame_store.decode_to_store: uint8 [T, H, W, 3]."""
    return [Part("decoded frames", files(t * h * w * 3), True)]  # the frame options close every sentence


def sam3_parts(t: int, h: int, w: int, n: int) -> list[Part]:
    """sam3.propagate: the packed masks [N, T, H, W/8]."""
    return [Part("SAM-3 masks", files(n * _packed(t, h, w)), True, PEOPLE)]


def amodal_parts(t: int, h: int, w: int, n: int, settings: dict, m: ModelSizes,
                 completed: int | None = None) -> list[Part]:
    """amodal.stage.run_amodal: raw depth [T, h', w'] (depth.estimate_depth at DA-V2's input size), depth and
    per person conditions [T, 1, det] and predictions [T, 3, det] at the detection resolution, the packed amodal
    masks (and, without refinement, each person's detection masks), the completed RGB [K, H, W, 3] of the
    ``completed`` person-frames K (None: its bound N T)."""
    from .amodal.config import configs_from_mapping
    from .amodal.depth import network_size
    from .amodal.occlusion import detection_size

    occ, _ = configs_from_mapping(settings)
    dh, dw = detection_size((h, w), occ.detection_resolution, occ.swap_portrait)
    rh, rw = network_size((h, w), m.depth_size, m.depth_multiple)
    det = t * dh * dw * F32
    detect = files(t * rh * rw * F32, det, *[det] * n, *[3 * det] * n, n * _packed(t, h, w),
                   *([] if occ.refine else [_packed(t, h, w)] * n))
    k = n * t if completed is None else int(completed)
    parts = [Part("amodal detection (depth, masks)", detect, True, "--no_amodal or a lower --amodal_resolution")]
    if k:
        parts.append(Part(COMPLETED_BOUND if completed is None else COMPLETED, files(k * h * w * 3), True,
                          "--no_amodal"))
    return parts


def _geometry_floats(m: ModelSizes) -> list[int]:
    """float32 values per person-frame of the whole-clip geometry arrays (sam3d_body.writer.BodiesWriter,
    refresh.refresh_geometry): 3D and 2D keypoints, the three joint extras, vertices."""
    return [m.keypoints * 3, m.keypoints * 2, MODEL_PARAMS, m.joints * 3, m.joints * 9, m.verts * 3]


def body_parts(t: int, n: int, m: ModelSizes, smooth: bool) -> list[Part]:
    """The bodies' geometry [N, T, ...] (the body stage writes each batch's results straight into it:
    sam3d_body.writer); smoothing's rig refresh writes the geometry once more."""
    geometry = files(*(n * t * k * F32 for k in _geometry_floats(m)))
    parts = [Part("bodies (results, vertices)", geometry, True, PEOPLE)]
    if smooth:
        parts.append(Part("smoothed bodies", geometry, True, "--no_smooth"))
    return parts


def world_parts(t: int, h: int, w: int, n: int, opts: PipelineOptions, m: ModelSizes) -> list[Part]:
    """world.inputs: person masks bool [T, H, W] and MoGe-2 depth float32 [K, H, W] of its K keyframes (every
    ``world_depth_every``-th frame, when depth is asked and the camera uses MoGe-2); camera_motion._downscale:
    gray frames, masks and the keyframes' depth at most ``max_side`` pixels (gray frames only at full size);
    world.stage: the world vertices [N, T, V, 3]."""
    from .preflight import uses_moge
    from .world import WorldOptions

    every = opts.world_depth_every
    k = -(-t // every) if every > 0 and uses_moge(opts) else 0  # moge_depth's frames 0, every, 2 every, ...
    arrays = [t * h * w, *([k * h * w * F32] if k else []), n * t * m.verts * 3 * F32]
    if opts.world_camera == "auto":
        side = WorldOptions().max_side
        s = min(1.0, side / max(h, w)) if side and side > 0 else 1.0
        if s >= 1.0:
            arrays.append(t * h * w)
        else:
            px = max(1, round(w * s)) * max(1, round(h * s))
            arrays += [t * px, t * px, *([k * px * F32] if k else [])]
    return [Part("world stage (masks, depth, vertices)", files(*arrays), True, "--no_world or --world_depth_every 0")]


# ------------------------------------------------------------------ the outputs


def _npz(*members: int) -> int:
    """An .npz of these raw member sizes (deflated or stored: never more than raw plus headers)."""
    return blocks(sum(members) + NPZ_MEMBER * (len(members) + 1))


def _bodies_npz(t: int, n: int, m: ModelSizes) -> int:
    """Bodies.save_npz: ids, flags, parameters, keypoints, extras, vertices, faces, confidence."""
    per = sum(PARAM_DIMS.values()) + sum(_geometry_floats(m)) + 1
    return _npz(n * 8, n * t, n * t * per * F32, m.faces * 3 * 4) + NPZ_MEMBER * (len(PARAM_DIMS) + 6)


def _mp4(t: int, h: int, w: int) -> int:
    return blocks(int(t * h * w * MP4_BYTES_PER_PIXEL) + MP4_FIXED)


def _ply_files(t: int, n: int, m: ModelSizes) -> int:
    """export.write_meshes: one binary PLY per person-frame (float xyz + rgba per vertex, 13 bytes per face)."""
    return n * t * blocks(PLY_HEADER + m.verts * 16 + m.faces * 13)


def _glb_person(t: int, m: ModelSizes) -> int:
    """export.write_glb, one person: the faces once, positions and normals of every frame, the JSON."""
    return blocks(BLOCK + m.faces * 12 + t * (m.verts * 24 + GLB_FRAME))


def _anim(t: int, n: int, m: ModelSizes) -> int:
    """anim.writer.write_animation: the skinned scene (per person a mesh with skin and sparse morph targets,
    per frame a TRS key and its time of every joint and the expression weights), the BVH files (all people,
    each person), their flag CSVs and the flags NPZ."""
    j = m.joints + 1
    scene = n * (m.verts * (12 + 12 + 16 + 32) + EXPR_TARGETS * m.verts * 16 + j * (64 + ANIM_JOINT_JSON)) \
        + m.faces * 12 + n * t * (j * (40 + 12) + EXPR_TARGETS * F32 + 64) + t * 64 + (64 << 10)
    bvh = 2 * n * (t * j * 6 * BVH_VALUE + j * BVH_JOINT) + n * BLOCK
    flags = 2 * n * t * 128 + n * BLOCK
    return files(scene) + blocks(bvh) + blocks(flags) + _npz(n * t * m.joints * 3 * F32, n * t * 16)


def output_parts(t: int, h: int, w: int, n: int, opts: PipelineOptions, m: ModelSizes,
                 completed: int | None = None) -> list[Part]:
    """The run's files in the output folder (pipeline._run_stages), by the option that removes them; amodal.npz
    with ``completed`` completed person-frames (None: N T)."""
    bodies = _bodies_npz(t, n, m)
    results = (_npz(t * 8) + _npz(n * 8, n * _packed(t, h, w), n * t * F32) + _npz(t * 4 * F32)
               + bodies * (3 if opts.smooth else 2) + _npz(t * 16 * F32) + SMALL_FILES)
    parts = [Part("stage results (.npz)", results, False, PEOPLE),
             Part("videos (render, mask overlay)", 2 * _mp4(t, h, w), False, "--max_side")]
    if opts.amodal:
        k = n * t if completed is None else int(completed)  # Amodal.completed_index [K, 2], completed_rgb
        parts.append(Part("amodal.npz", _npz(n * t, n * _packed(t, h, w), n * t * F32, k * 16, k * h * w * 3),
                          False, "--no_amodal"))
    copies = 2 if opts.world else 1  # out/ and out/world/
    if opts.world:
        k = m.keypoints
        world = _npz(n * t * k * 3 * F32, n * t * 3 * F32, n * t, n * t * 4, t * 12 * 8, 256) + 2 * bodies \
            + blocks(n * t * 32) + SMALL_FILES
        parts.append(Part("world results", world, False, "--no_world"))
    if opts.write_meshes:
        parts.append(Part("meshes (.ply)", copies * _ply_files(t, n, m), False, "--no_meshes"))
    if opts.write_glb:  # one person's binary chunk in a temporary file while each GLB job writes it
        parts.append(Part("GLB files", copies * (n + 1) * _glb_person(t, m), False, "--no_glb"))
    if opts.write_anim:
        parts.append(Part("animation (anim/)", _anim(t, n, m), False, "--no_anim"))
    return parts


# ------------------------------------------------------------------ the plan and the check


def plan_disk(num_frames: int, image_size: tuple[int, int], people: int, opts: PipelineOptions,
              store: bool = True, models: ModelSizes | None = None, completed: int | None = None) -> DiskPlan:
    """The bytes a run of ``opts`` on ``num_frames`` frames of ``image_size`` with ``people`` tracked people writes:
    its frame store's files (``store``: frames on disk) and its outputs; ``completed``: the amodal completed
    person-frames K (None: the bound, every person-frame; 0: the definite parts only)."""
    m = models or ModelSizes()
    t, (h, w), n = int(num_frames), (int(image_size[0]), int(image_size[1])), max(1, int(people))
    parts: list[Part] = []
    if store:
        parts += frame_parts(t, h, w) + sam3_parts(t, h, w, n)
        parts += amodal_parts(t, h, w, n, opts.amodal_settings, m, completed) if opts.amodal else []
        parts += body_parts(t, n, m, opts.smooth)
        parts += world_parts(t, h, w, n, opts, m) if opts.world else []
    return DiskPlan(parts + output_parts(t, h, w, n, opts, m, completed))


def count_people(opts: PipelineOptions, image_size: tuple[int, int], num_frames: int) -> int:
    """The clicked objects of the points JSON, else the most people detection may track (``max_people``)."""
    if opts.points_json is None:
        return int(opts.max_people)
    from .prompts import log as prompts_log, parse_prompts

    quiet, prompts_log.disabled = prompts_log.disabled, True  # the sam3 stage gives the parse's warnings
    try:
        return len({int(it.obj_id) for it in parse_prompts(opts.points_json, image_size, num_frames).items})
    finally:
        prompts_log.disabled = quiet


@dataclass(frozen=True)
class RunShape:
    """What a run's plan follows from its inputs: frames, frame size, people, and whether frames go to a store."""

    frames: int
    size: tuple[int, int]
    people: int
    store: bool

    def plan(self, opts: PipelineOptions, models: ModelSizes | None = None,
             completed: int | None = None) -> DiskPlan:
        """``plan_disk`` of this clip (``completed``: see there)."""
        return plan_disk(self.frames, self.size, self.people, opts, self.store, models, completed)


def run_shape(video: str | Path, opts: PipelineOptions, decoded: tuple[Any, Any] | None = None) -> RunShape | None:
    """The clip of a run of ``video`` (probed, not decoded; ``decoded``: frames already in RAM, so no frame store);
    None when the video or the points cannot be read (their stage says why in its own words)."""
    from .errors import Body4DError
    from .video import plan

    try:
        if decoded is not None:
            t, size = len(decoded[0]), tuple(decoded[0].shape[1:3])
        else:
            _, sel, _ = plan(video, opts.video)
            t, size = int(sel.indices.size), (sel.height, sel.width)
        if t < 1:
            return None
        people = count_people(opts, size, t)
    except (Body4DError, OSError, ValueError) as err:
        log.debug("disk plan skipped: %s", err)
        return None
    return RunShape(t, (int(size[0]), int(size[1])), people, opts.frames_on_disk and decoded is None)


def plan_for_run(video: str | Path, opts: PipelineOptions, decoded: tuple[Any, Any] | None = None,
                 models: ModelSizes | None = None, completed: int | None = None) -> DiskPlan | None:
    """``plan_disk`` for a run of ``video`` (see ``run_shape``; None when it cannot be read)."""
    shape = run_shape(video, opts, decoded)
    return None if shape is None else shape.plan(opts, models, completed)


def existing_bytes(folder: str | Path) -> int:
    """Bytes of an earlier run's outputs in ``folder`` (replaced by this run: start_run clears them)."""
    from .manifest import KNOWN_OUTPUTS

    total = 0
    for name in KNOWN_OUTPUTS:
        p = Path(folder) / name
        for f in ([p] if p.is_file() else p.rglob("*") if p.is_dir() else []):
            if f.is_file() and not f.is_symlink():
                total += f.stat().st_size
    return total


def stored_bytes(folders: list[Path]) -> int:
    """Bytes (whole blocks) of the files in ``folders`` (a run's frame stores, counted in its plan)."""
    return sum(blocks(f.stat().st_size) for d in folders if d.is_dir() for f in d.rglob("*") if f.is_file())


def _gib(n: int) -> str:
    """Bytes for a sentence: GiB, MiB below one GiB."""
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def check_run_disk(folder: str | Path, plan: DiskPlan, reclaim: int = 0) -> None:
    """Refuse, before any stage runs, a run that needs more than the free space of ``folder``'s disk (plus
    ``reclaim``: an earlier run's outputs this one replaces); one sentence naming the biggest parts."""
    free = shutil.disk_usage(folder).free + max(0, int(reclaim))
    log.info("disk plan: about %s needed in %s, %s free", _gib(plan.total), folder, _gib(free))
    log.debug("%s", plan.describe())
    if plan.total <= free:
        return
    big = plan.biggest(3)
    hints = list(dict.fromkeys([*(p.hint for p in big if p.hint), FRAMES]))
    raise MemoryBudgetError(
        f"this run needs about {_gib(plan.total)} in {folder} ({_gib(plan.store)} of frame store files while it "
        f"runs, {_gib(plan.outputs)} of outputs; biggest: {', '.join(f'{p.name} {_gib(p.nbytes)}' for p in big)}) "
        f"but its disk has {_gib(free)} free; free some space, pick another output folder, or shrink the run: "
        f"{'; '.join(hints)}")


def check_start(folder: str | Path, video: str | Path, opts: PipelineOptions,
                decoded: tuple[Any, Any] | None = None, reclaim: int = 0,
                models: ModelSizes | None = None) -> CompletionCheck | None:
    """The start-up check: refuse (``check_run_disk``) what the definite parts do not fit (no completed amodal
    frame); warn, once, when the amodal completion's bound does not fit. Returns the check the amodal stage runs
    with the real count (None: no amodal stage, or the video or points cannot be read)."""
    shape = run_shape(video, opts, decoded)
    if shape is None:
        return None
    check_run_disk(folder, shape.plan(opts, models, 0 if opts.amodal else None), reclaim)
    if not opts.amodal:
        return None
    bound = shape.plan(opts, models)
    free = shutil.disk_usage(folder).free + max(0, int(reclaim))
    if bound.total > free:
        log.warning("the amodal completion may not fit in %s: with every person-frame occluded this run would need "
                    "%s but the disk has %s free; the run checks again once the occluded frames are known, before "
                    "completing them (free some space or pick another output folder to be sure; --no_amodal skips "
                    "it)", folder, _gib(bound.total), _gib(free))
    return CompletionCheck(Path(folder), shape, opts, models)


@dataclass
class CompletionCheck:
    """The disk check of the amodal completion once the occlusion detection found its K person-frames, before any
    completion work: the rest of the run (the definite parts and K frames' completed RGB in the store and in
    amodal.npz) against the disk's free space now."""

    folder: Path
    shape: RunShape
    opts: PipelineOptions
    models: ModelSizes | None = None

    def __call__(self, completed: int, written: int = 0) -> None:
        """Refuse with one sentence when the run with ``completed`` completed person-frames needs more than is free
        now plus ``written`` (this run's bytes on the disk already: its store files and outputs so far)."""
        plan = self.shape.plan(self.opts, self.models, completed)
        base = self.shape.plan(self.opts, self.models, 0)
        extra = plan.total - base.total
        need = max(0, plan.total - max(0, int(written)))
        free = shutil.disk_usage(self.folder).free
        log.info("disk plan: %d completed amodal frames add %s; %s still needed in %s, %s free", completed,
                 _gib(extra), _gib(need), self.folder, _gib(free))
        if need <= free:
            return
        store = plan.get(COMPLETED)
        raise MemoryBudgetError(
            f"the amodal completion of {completed} occluded person-frames needs about {_gib(extra)} more in "
            f"{self.folder} ({_gib(store)} of frame store files, {_gib(extra - store)} in amodal.npz), so the rest "
            f"of this run needs {_gib(need)} but its disk has {_gib(free)} free; free some space, pick another "
            f"output folder, or shrink the run: --no_amodal; {PEOPLE}; {FRAMES}")
