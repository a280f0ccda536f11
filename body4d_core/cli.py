"""Headless command line: ``python -m body4d_core <command>`` (the seed's offline script, growing).

Commands: ``run`` (the whole pipeline), ``batch`` (the pipeline over many videos, on Ray), ``load`` (decode a video
to frames + clip.npz), ``setup`` (download weights), ``models`` (which weights are present), ``api`` (run a
workflow on a ComfyUI server).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, TextIO

from .errors import Body4DError, InterruptedError_
from .run_options import HelpFormatter, pipeline_options, video_options
from .runtime import limit_malloc_arenas, prefer_expandable_segments

log = logging.getLogger("body4d_core")


STAGE_UNITS = {"decode": "frames", "detect": "frames", "propagate": "steps", "fov": "frames", "world": "frames",
               "bodies": "crops", "render": "frames", "amodal": None}  # None: the stage reports per mille;
# propagate counts steps: each prompt once, then every frame of each pass (a pass starts on its prompt frame)


class StopFlag:
    """Set by SIGINT/SIGTERM: the run stops at the next interrupt check; a second Ctrl-C stops at once."""

    def __init__(self) -> None:
        self.signal_name: str | None = None

    def check(self) -> None:
        if self.signal_name is not None:
            raise InterruptedError_(f"interrupted ({self.signal_name})")

    def handler(self, signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = name
        sys.stderr.write(f"\n{name}: stopping at the next checkpoint (Ctrl-C again to stop at once)\n")

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Handle SIGINT/SIGTERM while the block runs (main thread only), restoring the old handlers."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        old = {s: signal.signal(s, self.handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)


class TextProgress:
    """Hooks printing a one-line progress bar to stderr: count with its unit, rate and time left."""

    def __init__(self, label: str, unit: str | None = "items", stop: StopFlag | None = None,
                 stream: TextIO | None = None, min_interval: float = 0.1) -> None:
        self.label, self.unit, self.stop = label, unit, stop
        self.stream = stream or sys.stderr
        self.min_interval = min_interval
        self.t0: float | None = None
        self.last: float | None = None

    def progress(self, done: int, total: int) -> None:
        now = time.monotonic()
        if self.t0 is None:
            self.t0 = now
        finished = done >= total
        if not finished and self.last is not None and now - self.last < self.min_interval:
            return
        self.last = now
        self.stream.write("\r" + self.line(done, total, now - self.t0) + ("\n" if finished else ""))
        self.stream.flush()

    def line(self, done: int, total: int, elapsed: float) -> str:
        """The bar text: label, bar, count (or percent), rate and elapsed/remaining time."""
        width = 24
        frac = min(1.0, done / max(1, total))
        bar = "#" * int(width * frac) + "." * (width - int(width * frac))
        if self.unit is None:
            count, rate = f"{100 * frac:5.1f}%", ""
        else:
            count = f"{done}/{total} {self.unit}"
            rate = f" {done / elapsed:.1f} {self.unit}/s" if elapsed > 0 and done else ""
        if done >= total:
            when = f" {_clock(elapsed)}"
        elif elapsed > 0 and done:
            when = f" {_clock(elapsed)} elapsed, ~{_clock(elapsed * (total - done) / done)} left"
        else:
            when = ""
        return f"{self.label:9s} [{bar}] {count}{rate}{when}   "

    def check_interrupt(self) -> None:
        if self.stop is not None:
            self.stop.check()


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}:{s:02d}" if m < 60 else f"{m // 60}:{m % 60:02d}:{s:02d}"


SAMPLE_VIDEO = Path(__file__).resolve().parent.parent / "samples" / "cartoon_dancer_81f.mp4"


def _add_video_args(p: argparse.ArgumentParser, sample_default: bool = False) -> None:
    if sample_default and SAMPLE_VIDEO.is_file():  # a source checkout; an installed copy has no samples/
        p.add_argument("--input_video", "-i", default=str(SAMPLE_VIDEO),
                       help="video file to read (default: the bundled sample clip)")
    else:
        p.add_argument("--input_video", "-i", required=True,
                       help="video file to read (required: this installed copy has no bundled sample clip)"
                       if sample_default else "video file to read")
    p.add_argument("--frame_load_cap", type=int, default=0, help="load at most N frames (0 = all)")
    p.add_argument("--skip_first_frames", type=int, default=0, help="drop this many frames at the start")
    p.add_argument("--select_every_nth", type=int, default=1, help="keep every n-th frame (1 = all)")
    p.add_argument("--force_rate", type=float, default=0.0, help="resample to this fps first (0 = source rate)")
    p.add_argument("--max_side", type=int, default=0, help="downscale the longer side to this many pixels (0 = keep)")
    p.add_argument("--decoder", default="auto", choices=["auto", "decord", "pyav", "opencv"],
                   help="video decoding library (auto: the fastest one installed)")
    p.add_argument("--memory_budget_gb", type=float, default=0.0,
                   help="refuse clips whose frames need more RAM than this (0 = half the available RAM)")


def cmd_load(args: argparse.Namespace) -> int:
    """Decode a video, write frames as images and the clip descriptor as clip.npz."""
    from PIL import Image

    from .video import load_video

    out = Path(args.out)
    frames, clip = load_video(args.input_video, video_options(args), TextProgress("decode", "frames"))
    img_dir = out / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    ext = args.image_format
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(img_dir / f"{i:08d}.{ext}")
    clip.save_npz(out / "clip.npz")
    print(f"wrote {len(frames)} frames ({clip.image_size[1]}x{clip.image_size[0]}, {clip.fps:g} fps) to {img_dir}")
    print(f"wrote clip descriptor to {out / 'clip.npz'}")
    return 0


def cmd_setup(args: argparse.Namespace) -> int:
    """Download model weights from Hugging Face (HF_TOKEN for the gated ones); a table says what happened."""
    from .config import models_root
    from .weights import MODEL_SPECS, format_setup_table, setup_models

    names = list(MODEL_SPECS) if "all" in args.models else args.models
    root = Path(args.root) if args.root else models_root()
    rows = setup_models(names, root, force=args.force)
    print(format_setup_table(rows))
    return 1 if any(r.status == "failed" for r in rows) else 0


def cmd_tiny(args: argparse.Namespace) -> int:
    """Write tiny random-weight checkpoints in the official layouts (runs the pipeline without real weights)."""
    from .testing.checkpoints import write_tiny_checkpoints

    names = None if "all" in args.models else args.models
    for name, folder in write_tiny_checkpoints(args.root, names, args.seed).items():
        print(f"{name:26s} {folder}")
    print(f"tiny checkpoints written; run with --models_root {args.root} (outputs are random: for testing only)")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """Report which model weights (configs and weight files) are present and where they are expected."""
    from .config import models_root
    from .errors import MissingWeightsError
    from .weights import MODEL_SPECS, resolve_model_dir

    root = Path(args.root) if args.root else models_root()
    print(f"models root: {root}")
    missing = 0
    for name in MODEL_SPECS:
        try:
            print(f"{name:26s} ok       {resolve_model_dir(name, [root])}")
        except MissingWeightsError as err:
            missing += 1
            print(f"{name:26s} missing  {err}")
    return 1 if missing else 0


def cmd_run(args: argparse.Namespace) -> int:
    """The whole pipeline on one video (points JSON or automatic people detection)."""
    from .manifest import OutputFolderError, default_output_dir
    from .pipeline import run_pipeline
    from .preflight import run_preflight
    from .video import check_video_path

    if args.overwrite and args.resume:
        raise OutputFolderError("--overwrite and --resume exclude each other: choose one")
    check_video_path(args.input_video)
    opts = pipeline_options(args)
    out = Path(args.out) if args.out else default_output_dir(args.input_video)
    args.out = str(out)
    run_preflight(args.input_video, out, opts)
    stop = StopFlag()
    with stop.installed():
        summary = run_pipeline(args.input_video, out, opts,
                               lambda name: TextProgress(name, STAGE_UNITS.get(name, "items"), stop),
                               overwrite=args.overwrite, resume=args.resume)
    print(summary.describe())
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    """Run one of our workflows on a running ComfyUI: upload, queue, follow, download."""
    from .interop.api_client import ComfyClient, apply_override, describe_node_errors, load_api_graph, set_video

    client = ComfyClient(args.server)
    graph = load_api_graph(args.workflow)
    if args.video:
        name = client.upload(args.video)
        set_video(graph, name)
        print(f"uploaded {args.video} as {name}")
    for item in args.set or []:
        apply_override(graph, item)
    bars: dict[str, TextProgress] = {}

    def progress(node: str, value: int, total: int) -> None:
        bars.setdefault(node, TextProgress(f"node {node}")).progress(value, total)

    result = client.run_workflow(graph, args.out, args.timeout, progress)
    print(f"run {result.prompt_id} finished; {len(result.files)} file(s) written to {args.out}")
    for f in result.files:
        print(f"  {f}")
    if result.partial:
        print("warning: ComfyUI ran only part of the workflow; refused: "
              f"{describe_node_errors(result.node_errors, graph)}", file=sys.stderr)
        return 1
    return 0


RUN_EXAMPLES = """examples:
  # the bundled sample, people found automatically, results in outputs/<video name>
  python -m body4d_core run

  # your video, two people clicked in the points editor, no amodal completion, body-only meshes
  python -m body4d_core run -i dance.mp4 --points points.json --no_amodal --body_mode body -o outputs/dance

  # a quick preview: the first 64 frames at 512 px, meshes only as a video, reusing an earlier run's stages
  python -m body4d_core run -i dance.mp4 --frame_load_cap 64 --max_side 512 --no_meshes --no_glb --resume
"""


def _models_root_default() -> str:
    """The models root the commands use when none is given (config, else $BODY4D_MODELS, else <pack>/models)."""
    from .config import models_root

    try:
        return str(models_root())
    except Exception:  # noqa: BLE001 - a broken config must not break --help
        return "configs/body4d.yaml paths.ckpt_root, else $BODY4D_MODELS, else <pack>/models"


def _add_run_parser(sub: argparse._SubParsersAction, root_default: str) -> None:
    from .profile import add_cli_flags
    from .render import MODES

    p = sub.add_parser("run", help="the whole pipeline on a video: masks, amodal, camera, bodies, smoothing, render",
                       description="Run every stage on one video and write the results into one output folder "
                                   "(run.json there records inputs, options, files and how the run ended).",
                       formatter_class=HelpFormatter, epilog=RUN_EXAMPLES)
    _add_video_args(p, sample_default=True)
    p.add_argument("--out", "-o", default=None,
                   help="output folder (default: outputs/<video name>, made unique with _2, _3, ...)")
    p.add_argument("--overwrite", action="store_true",
                   help="the output folder holds an earlier run: delete the files it wrote, then run")
    p.add_argument("--resume", action="store_true",
                   help="the output folder holds an earlier run with the same inputs: reuse its finished stages")
    p.add_argument("--points", help="points JSON (a file or a JSON string, pixel coordinates of the frames as "
                                    "loaded; add \"image_size\": [H, W] when they were clicked on another size); "
                                    "default: detect people automatically")
    p.add_argument("--detect_frame", type=int, default=-1, help="frame to detect people on (-1 = first with people)")
    p.add_argument("--detect_threshold", type=float, default=0.5, help="person detection score threshold (0..1)")
    p.add_argument("--max_people", type=int, default=5, help="track at most this many detected people")
    p.add_argument("--direction", default="both", choices=["both", "forward", "backward"],
                   help="propagate masks from the prompted frame in these directions")
    p.add_argument("--no_amodal", action="store_true", help="skip occlusion detection and completion (fast)")
    p.add_argument("--amodal_steps", type=int, default=0, help="diffusion steps (0 = the config's, upstream's 25)")
    p.add_argument("--amodal_resolution", type=int, nargs=2, metavar=("H", "W"),
                   help="amodal detection resolution (completion runs at twice it); default: the config's 256 512")
    p.add_argument("--fov", default="first", choices=["first", "every_n", "all", "none"],
                   help="frames MoGe-2 estimates the field of view on (none: f = sqrt(H^2 + W^2))")
    p.add_argument("--manual_fov", type=float, default=0.0,
                   help="vertical field of view in degrees; overrides MoGe-2 (0 = estimate)")
    p.add_argument("--body_mode", default="full", choices=["full", "body"],
                   help="full: body, hands and face; body: body only (faster)")
    p.add_argument("--batch_size", type=int, default=64, help="SAM-3D-Body crops per batch (halved on out-of-memory)")
    p.add_argument("--no_compile", action="store_true", help="the same as --compile off (SAM-3D-Body runs eager)")
    p.add_argument("--fp8", action="store_true",
                   help="shorthand for --backbone_fp8 with --decoder_precision bf16 (experimental, lossy)")
    p.add_argument("--no_smooth", action="store_true", help="skip Kalman/RTS smoothing (write the raw bodies only)")
    p.add_argument("--smooth_mode", choices=["offline", "causal"], help="smoother (default: the config's smooth.mode)")
    p.add_argument("--config", help="OmegaConf YAML file (default: the pack's configs/body4d.yaml)")
    p.add_argument("--render_mode", default="overlay", choices=list(MODES), help="what render_4d.mp4 shows")
    p.add_argument("--no_meshes", action="store_true", help="do not write per-frame .ply meshes")
    p.add_argument("--no_glb", action="store_true", help="do not write the animated .glb files")
    p.add_argument("--no_world", action="store_true",
                   help="skip the world frame (world/: floor, gravity, camera path, foot contacts, world-frame "
                        "bodies and exports)")
    p.add_argument("--world_camera", default="auto", choices=["auto", "static"],
                   help="camera motion for the world frame: auto detects a static camera, else solves its path; "
                        "static assumes it never moves")
    p.add_argument("--world_floor", default="auto", choices=["auto", "depth", "feet"],
                   help="where the floor comes from: depth (MoGe-2 depth near the feet), feet (the planted feet), "
                        "auto (depth, else or on disagreement the feet)")
    p.add_argument("--world_depth_every", type=int, default=10,
                   help="MoGe-2 depth on every n-th frame for the floor and the camera path's scale "
                        "(0 = no depth: floor from the feet, camera rotation only)")
    p.add_argument("--no_anim", action="store_true",
                   help="do not write anim/ (the skinned glTF scene, BVH files with per-frame flags, anim npz)")
    p.add_argument("--frames_in_ram", action="store_true",
                   help="hold the decoded frames in RAM instead of a temporary file in the output folder "
                        "(the default keeps host memory flat in the video's length)")
    p.add_argument("--models_root", help=f"folder holding one sub-folder per model (default: {root_default})")
    g = p.add_argument_group("run profile", "how the stages run (also the config file's profile: section; "
                                            "the loader nodes take the same names and choices)")
    add_cli_flags(g)
    p.set_defaults(func=cmd_run)


def _prog() -> str:
    """The name this command was started by: ``body4d`` (console script) or ``python -m body4d_core``."""
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    if not name or name in ("__main__.py", "-c", "-m") or name.startswith("python"):
        return "python -m body4d_core"
    return name


def build_parser() -> argparse.ArgumentParser:
    from .weights import MODEL_SPECS

    root_default = _models_root_default()
    parser = argparse.ArgumentParser(prog=_prog(), formatter_class=HelpFormatter,
                                     description="SAM-Body4D without ComfyUI: 4D human mesh recovery from video.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages too")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    p = sub.add_parser("load", help="decode a video into frames + clip.npz", formatter_class=HelpFormatter,
                       description="Decode a video and write its frames as images plus clip.npz.")
    _add_video_args(p)
    p.add_argument("--out", "-o", required=True, help="output folder")
    p.add_argument("--image_format", default="jpg", choices=["jpg", "png"], help="image file format")
    p.set_defaults(func=cmd_load)

    _add_run_parser(sub, root_default)
    from .batch.cli import add_batch_parser

    add_batch_parser(sub)

    p = sub.add_parser("setup", help="download model weights (needs HF_TOKEN for gated models)",
                       formatter_class=HelpFormatter,
                       description="Download model weights from Hugging Face. Every model is tried; a table at the "
                                   "end says what is present, what failed and how to get it by hand.")
    p.add_argument("--models", nargs="+", default=["all"], choices=["all", *MODEL_SPECS], help="models to download")
    p.add_argument("--root", help=f"models root (default: {root_default})")
    p.add_argument("--force", action="store_true", help="download again even when the files are already present")
    p.set_defaults(func=cmd_setup)

    p = sub.add_parser("api", help="run a workflow on a running ComfyUI server and download its outputs",
                       formatter_class=HelpFormatter)
    p.add_argument("--server", default="http://127.0.0.1:8188", help="ComfyUI server address")
    p.add_argument("--workflow", "-w", required=True, help="API-format workflow (workflows/api/*.json)")
    p.add_argument("--video", help="video to upload and feed to every Load Video (Body4D) node")
    p.add_argument("--set", action="append", metavar="NODE.INPUT=VALUE",
                   help="override an input; NODE is a node id, title or class type (repeatable)")
    p.add_argument("--out", "-o", default="outputs/api", help="where to download the outputs")
    p.add_argument("--timeout", type=float, default=3600.0, help="give up after this many seconds")
    p.set_defaults(func=cmd_api)

    p = sub.add_parser("tiny-checkpoints", help="write tiny random-weight checkpoints in the official layouts",
                       formatter_class=HelpFormatter)
    p.add_argument("--root", required=True, help="models root to write into")
    p.add_argument("--models", nargs="+", default=["all"], choices=["all", *MODEL_SPECS], help="models to write")
    p.add_argument("--seed", type=int, default=0, help="random seed of the weights")
    p.set_defaults(func=cmd_tiny)

    p = sub.add_parser("models", help="show which weights are present", formatter_class=HelpFormatter)
    p.add_argument("--root", help=f"models root (default: {root_default})")
    p.set_defaults(func=cmd_models)
    return parser


EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def parse_batch_args(argv: list[str]) -> argparse.Namespace:
    """Parse ``batch`` arguments with the package's parser (the run options included)."""
    return build_parser().parse_args(["batch", *argv])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    limit_malloc_arenas()  # this process may run the pipeline many times (batch): keep its heap from creeping
    if getattr(args, "vram_gb", None):
        prefer_expandable_segments()  # a capped run: less fragmentation (runtime.prefer_expandable_segments)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (KeyboardInterrupt, InterruptedError_) as err:
        where = _stopped_at(args)
        print(f"\ninterrupted{where}; nothing half-written was left"
              + (f" (see {Path(args.out) / 'run.json'})" if getattr(args, "out", None) else ""), file=sys.stderr)
        log.debug("interrupted", exc_info=err)
        return EXIT_INTERRUPTED
    except Body4DError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as err:  # a write the library did not wrap (it names the file)
        print(f"error: {err.strerror or err}{f': {err.filename}' if err.filename else ''}", file=sys.stderr)
        return EXIT_ERROR


def _stopped_at(args: argparse.Namespace) -> str:
    """' during stage X' from the run's manifest, when there is one."""
    from .manifest import read_manifest

    out = getattr(args, "out", None)
    if not out:
        return ""
    try:
        data = read_manifest(Path(out)) or {}
    except Body4DError:
        return ""
    stage = data.get("stopped_at") or data.get("current_stage")
    return f" during stage {stage}" if stage else ""
