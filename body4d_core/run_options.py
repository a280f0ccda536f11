"""The run command's options as library objects: PipelineOptions from parsed arguments, and the help
formatter; shared by ``cli`` (run) and ``batch.cli`` (batch), which import it, not each other."""

from __future__ import annotations

import argparse
from pathlib import Path


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option's help shows its default; descriptions and examples keep their line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        """Append the default unless the help already states it or there is none to state (flags, unset)."""
        text = action.help or ""
        if "default" in text or any(action.default is v for v in (None, False, argparse.SUPPRESS)):
            return text
        return super()._get_help_string(action)


def video_options(args: argparse.Namespace):
    from .video import LoadOptions

    budget = int(args.memory_budget_gb * 2**30) if args.memory_budget_gb > 0 else None
    return LoadOptions(skip_first_frames=args.skip_first_frames, frame_load_cap=args.frame_load_cap,
                       select_every_nth=args.select_every_nth, force_rate=args.force_rate,
                       max_side=args.max_side, backend=args.decoder, memory_budget_bytes=budget)


def amodal_settings(args: argparse.Namespace, cfg) -> dict:
    from .config import section

    out = section(cfg, "amodal")
    if args.amodal_steps:
        out["steps"] = args.amodal_steps
    if args.amodal_resolution:
        h, w = args.amodal_resolution
        out["detection_resolution"] = (h, w)
        out["completion_resolution"] = (2 * h, 2 * w)
    return out


def pipeline_options(args: argparse.Namespace):
    """PipelineOptions from the run command's arguments (the config file's sections under the flags);
    the batch command builds its options with this too."""
    from .config import load_config, models_root, section
    from .pipeline import PipelineOptions
    from .preflight import read_points
    from .profile import RunProfile

    cfg = load_config(args.config)
    profile = RunProfile.from_args(args, RunProfile.from_dict(section(cfg, "profile")))
    smooth = section(cfg, "smooth")
    if args.smooth_mode:
        smooth["mode"] = args.smooth_mode
    return PipelineOptions(
        video=video_options(args), points_json=read_points(args.points), detect_frame=args.detect_frame,
        detect_threshold=args.detect_threshold, max_people=args.max_people, direction=args.direction,
        amodal=not args.no_amodal, amodal_settings=amodal_settings(args, cfg), fov_mode=args.fov,
        manual_fov=args.manual_fov, body_mode=args.body_mode,
        batch_size=args.batch_size, smooth=not args.no_smooth,
        smooth_settings=smooth,
        render_mode=args.render_mode, write_meshes=not args.no_meshes, write_glb=not args.no_glb,
        world=not args.no_world, world_camera=args.world_camera, world_floor=args.world_floor,
        world_depth_every=args.world_depth_every, write_anim=not args.no_anim,
        frames_on_disk=not getattr(args, "frames_in_ram", False),
        models_root=Path(args.models_root) if args.models_root else models_root(cfg), profile=profile)
