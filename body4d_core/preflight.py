"""Checks a headless run makes before it decodes anything: weights, output folder, options, points.

Each check raises one Body4DError whose message says what is wrong and what to do, so a bad
option or a missing model is reported in seconds instead of after SAM-3 has run. Every missing
model is listed in the same message.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .atomic import OutputWriteError, describe_os_error
from .errors import InputError, MissingWeightsError

if TYPE_CHECKING:
    from .pipeline import PipelineOptions

log = logging.getLogger(__name__)

AMODAL_MODELS = ("diffusion_vas_amodal", "diffusion_vas_completion", "depth_anything")


@dataclass
class Preflight:
    """What the checks found: the clip's planned size and the warnings to show."""

    num_frames: int
    image_size: tuple[int, int]  # (H, W) of the frames as loaded
    source_size: tuple[int, int]  # (H, W) of the video file
    warnings: list[str]


def required_models(opts: PipelineOptions) -> list[str]:
    """The models the chosen stages load (MoGe-2 is optional: without it the camera uses a default FOV)."""
    names = ["sam3"]
    if opts.amodal:
        names += list(AMODAL_MODELS)
    return names + ["sam3d_body"]


def uses_moge(opts: PipelineOptions) -> bool:
    return opts.fov_mode != "none" and not opts.manual_fov


def check_models(opts: PipelineOptions) -> list[str]:
    """Raise one MissingWeightsError listing every missing model; return warnings (MoGe-2 absent)."""
    from .weights import resolve_model_dir

    search = [opts.models_root] if opts.models_root else None
    problems = []
    for name in required_models(opts):
        try:
            resolve_model_dir(name, search)
        except MissingWeightsError as err:
            problems.append(f"- {err}")
    if problems:
        head = f"{len(problems)} model(s) needed by this run are missing:" if len(problems) > 1 else \
            "a model needed by this run is missing:"
        raise MissingWeightsError("\n".join([head, *problems]))
    warnings = []
    if uses_moge(opts):
        try:
            resolve_model_dir("moge", search)
        except MissingWeightsError as err:
            world = (" and the world frame will take its floor from the feet, without camera translation"
                     if opts.world and opts.world_depth_every > 0 else "")
            warnings.append(f"no MoGe-2 weights: the camera will use f = sqrt(H^2 + W^2) instead of an estimated "
                            f"field of view{world} ({err})")
    return warnings


def check_packages(opts: PipelineOptions) -> None:
    """One sentence when a package the chosen stages import is missing (before anything is decoded)."""
    import importlib.util

    from .errors import Body4DError

    # SAM-3's processors (every run) and the people detector's NMS import torchvision
    if importlib.util.find_spec("torchvision") is None:
        raise Body4DError("torchvision is not installed and SAM-3 needs it: install the torchvision build that "
                          "matches your torch (e.g. pip install torch==<yours> torchvision), then run again")


def check_output_dir(out: Path) -> None:
    """Create ``out`` if needed and prove a file can be written there; one sentence when not."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputWriteError(f"the output folder {out} is an existing file: choose another --out")
    probe = out / f".body4d-probe-{uuid.uuid4().hex[:8]}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        os.close(fd)
    except OSError as err:
        if err.errno == errno.ENOTDIR:
            raise OutputWriteError(f"cannot create the output folder {out}: a file stands in its path "
                                   f"(choose another --out)") from err
        raise OutputWriteError(describe_os_error(err, out)) from err
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


def check_options(opts: PipelineOptions) -> None:
    """Value ranges argparse cannot express."""
    from .render import MODES

    v = opts.video
    checks = [
        (v.frame_load_cap >= 0, f"--frame_load_cap must be >= 0 (0 = all frames), got {v.frame_load_cap}"),
        (v.skip_first_frames >= 0, f"--skip_first_frames must be >= 0, got {v.skip_first_frames}"),
        (v.select_every_nth >= 1, f"--select_every_nth must be >= 1, got {v.select_every_nth}"),
        (v.force_rate >= 0, f"--force_rate must be >= 0 (0 = the video's rate), got {v.force_rate:g}"),
        (v.max_side == 0 or v.max_side >= 16, f"--max_side must be 0 (keep) or at least 16, got {v.max_side}"),
        (0.0 <= opts.detect_threshold <= 1.0, f"--detect_threshold must be in 0..1, got {opts.detect_threshold:g}"),
        (opts.max_people >= 1, f"--max_people must be >= 1, got {opts.max_people}"),
        (opts.batch_size >= 1, f"--batch_size must be >= 1, got {opts.batch_size}"),
        (0.0 <= opts.manual_fov < 180.0, f"--manual_fov must be in degrees, 0 < fov < 180 (0 = estimate), "
                                         f"got {opts.manual_fov:g}"),
        (opts.render_mode in MODES, f"--render_mode must be one of {', '.join(MODES)}, got {opts.render_mode!r}"),
        (int(opts.amodal_settings.get("steps", 1)) >= 1, "--amodal_steps must be >= 1"),
        (opts.world_camera in ("auto", "static"), f"--world_camera must be auto or static, got {opts.world_camera!r}"),
        (opts.world_floor in ("auto", "depth", "feet"),
         f"--world_floor must be auto, depth or feet, got {opts.world_floor!r}"),
        (opts.world_depth_every >= 0, f"--world_depth_every must be >= 0 (0 = no depth), got {opts.world_depth_every}"),
    ]
    res = opts.amodal_settings.get("detection_resolution")
    if res is not None:
        checks.append((all(int(x) >= 16 and int(x) % 8 == 0 for x in res),
                       f"--amodal_resolution H W must be multiples of 8, at least 16, got {' '.join(map(str, res))}"))
    for ok, msg in checks:
        if not ok:
            raise InputError(msg)


def read_points(points: str | Path | None) -> str | None:
    """The points JSON text from a file or a literal JSON string; a missing file is 'not found'."""
    if points is None:
        return None
    text = str(points)
    if text.lstrip().startswith(("{", "[")):
        return text
    path = Path(text).expanduser()
    if not path.exists():
        raise InputError(f"--points file not found: {path} (give a points JSON file or a JSON string)")
    if not path.is_file():
        raise InputError(f"--points {path} is a folder, not a points JSON file")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"--points file {path} cannot be read as text: {err}") from err


def check_points(text: str, image_size: tuple[int, int], source_size: tuple[int, int], num_frames: int) -> list[str]:
    """Parse the points against the frames as loaded; explain the coordinate space on a misfit."""
    import json

    from .prompts import parse_prompts

    h, w = image_size
    sh, sw = source_size
    try:
        parse_prompts(text, image_size, num_frames)
    except InputError as err:
        if "outside the" not in str(err):
            raise
        hint = (f"points are pixel coordinates of the frames as loaded ({w}x{h}"
                + (f", the video is {sw}x{sh} before --max_side" if (sh, sw) != (h, w) else "") + ")")
        raise InputError(f"{err}; {hint}. If you clicked on frames of another size, add \"image_size\": "
                         f"[height, width] of those frames to the JSON (e.g. [{sh}, {sw}] for the source video) "
                         f"and the points are rescaled") from err
    try:
        doc = json.loads(text)
    except ValueError:
        return []
    if isinstance(doc, dict) and doc.get("image_size") is None and (sh, sw) != (h, w):
        return [f"the points JSON has no image_size, so its points are taken as pixels of the {w}x{h} frames as "
                f"loaded (the video is {sw}x{sh}); if they were clicked on the source frames add "
                f"\"image_size\": [{sh}, {sw}]"]
    return []


def check_memory_cap(opts: PipelineOptions, size: tuple[int, int]) -> None:
    """A --vram_gb cap no batch size can meet is refused here, before anything is decoded (memory_plan)."""
    from .data import Clip
    from .memory_plan import plan_for_run

    if opts.profile.vram_gb:
        plan_for_run(opts, Clip(30.0, 1, size))


def run_preflight(video: str | Path, out: Path, opts: PipelineOptions, check_out: bool = True) -> Preflight:
    """Every check, cheapest first; nothing is decoded (the video is only probed)."""
    from .video import plan

    check_options(opts)
    check_packages(opts)
    points = opts.points_json
    info, sel, _ = plan(video, opts.video)
    if sel.indices.size == 0:
        raise InputError(f"the frame options select no frame of {video} ({info.num_frames} frames)")
    size, source = (sel.height, sel.width), (info.height, info.width)
    warnings = check_points(points, size, source, int(sel.indices.size)) if points is not None else []
    warnings += check_models(opts)
    check_memory_cap(opts, size)
    if check_out:
        check_output_dir(out)
    for w in warnings:
        log.warning(w)
    return Preflight(int(sel.indices.size), size, source, warnings)
