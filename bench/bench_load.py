"""Model loading time: each real-size loader of the headless pipeline, previous path vs fast path.

Each (loader, variant) runs in its own Python process (a cold process, as at the start of a
pipeline stage, and memory given back between loaders), which reports the seconds spent
importing the loader's libraries (and making the CUDA context), loading (ending with a device
sync on CUDA), the parameter count and the peak RSS; ``--profile N`` adds cProfile's N hottest
functions per load (``--in-process``: all in this process, for quick checks). The
variants: ``legacy`` (the run profile's ``loader=legacy``: the loaders' previous path) and ``fast``
(``fast-Nt``: the profile's ``load_threads=N``).
Checkpoints are random real-size ones in the official layouts (body4d_core.testing.checkpoints, preset
``real``); ``--write`` writes the missing ones under ``--root`` first (on the GPU when there is one).

    python -m bench.bench_load --root /tmp/realckpt --device cpu            # CPU, all loaders, both variants
    python -m bench.bench_load --root /tmp/realckpt --device cuda --write   # H200 (writes checkpoints first)
    python -m bench.bench_load --tiny                                       # CPU smoke test (tiny checkpoints)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from bench.peak_memory import gpu_peak_gib, rss_peak_gib
from bench.rows import REPO, RowWriter, add_rows_args
from bench.timers import sync

if TYPE_CHECKING:
    from body4d_core.profile import RunProfile

LOADERS = ("sam3", "amodal", "body", "moge")
VARIANTS = ("legacy", "fast", "fast-1t", "fast-2t")  # fast-Nt: fast with N placing threads (fast: 8)
# checkpoint folders (body4d_core.weights names) each loader needs
NEEDS = {"sam3": ("sam3",), "amodal": ("diffusion_vas_amodal", "diffusion_vas_completion", "depth_anything"),
         "body": ("sam3d_body",), "moge": ("moge",)}
RESULT = "BENCH_LOAD_RESULT "


def _imports(name: str) -> None:
    """Import what the loader needs (timed apart: a pipeline pays it once per process, not per load)."""
    import torch
    import torch._dynamo  # noqa: F401 - the pipeline's first stage imports it (through transformers) anyway

    if name == "sam3":
        from body4d_core.sam3.loading import _transformers

        tf = _transformers()
        tf.Sam3TrackerVideoModel, tf.Sam3TrackerVideoProcessor  # noqa: B018 - lazy modules load here
    elif name == "amodal":
        import diffusers  # noqa: F401
        import transformers

        from body4d_core.amodal import models, sampler  # noqa: F401
        diffusers.AutoencoderKLTemporalDecoder, diffusers.EulerDiscreteScheduler  # noqa: B018
        transformers.CLIPVisionModelWithProjection, transformers.DepthAnythingForDepthEstimation  # noqa: B018
    elif name == "body":
        from body4d_core.sam3d_body import loader  # noqa: F401
    elif name == "moge":
        from body4d_core import fov

        fov._moge_class()


def _count(obj: Any) -> int:
    """Parameters of a loaded model (or of every network of the amodal bundle)."""
    if hasattr(obj, "module_dict"):
        obj = obj.module_dict()
    return sum(p.numel() for p in obj.parameters())


def variant_profile(variant: str) -> "RunProfile":
    """The run profile of a variant: legacy = loader legacy; fast-Nt = the fast loader with N placing threads."""
    from body4d_core.profile import RunProfile

    if variant == "legacy":
        return RunProfile(loader="legacy")
    threads = int(variant[len("fast-"):-1]) if variant.startswith("fast-") else 0
    return RunProfile(loader="fast", load_threads=threads)


def _loader(name: str, root: Path, device: str, profile: "RunProfile", completion: bool) -> Callable[[], Any]:
    """The pipeline's call for ``name`` (body4d_core/pipeline.py) with the profile's loader path and threads."""
    search, kw = [root], profile.loader_kwargs()

    def loading(load: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            with profile.loading():
                return load()
        return run

    if name == "sam3":
        from body4d_core.sam3 import load_sam3

        return loading(lambda: load_sam3(search_dirs=search, device=device, with_detector=False, **kw))
    if name == "amodal":
        from body4d_core.amodal.models import load_amodal_models

        return loading(lambda: load_amodal_models(search, device=device, with_completion=completion, **kw))
    if name == "body":
        from body4d_core.sam3d_body import load_sam3d_body

        return loading(lambda: load_sam3d_body(search_dirs=search, device=device, **kw))
    from body4d_core.fov import load_moge

    return loading(lambda: load_moge(search, device=device, **kw))


def _top(profile: Any, n: int) -> list[str]:
    """The n functions with the most own time (tottime) as 'seconds  file:line(function)'."""
    import pstats

    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    rows = sorted(stats.items(), key=lambda kv: -kv[1][2])[:n]
    out = []
    for (file, line, func), (_, _, tt, ct, _) in rows:
        short = "/".join(Path(file).parts[-2:]) if file != "~" else ""
        out.append(f"{tt:7.2f}s own {ct:7.2f}s cum  {short}:{line}({func})")
    return out


def child(args: argparse.Namespace) -> int:
    """Run one (loader, variant) in this process and print its result as one JSON line."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    print(RESULT + json.dumps(measure(args, args.child, args.variant)), flush=True)
    return 0


def measure(args: argparse.Namespace, loader: str, variant: str) -> dict[str, Any]:
    """Import, load (timed, optionally profiled) and describe one (loader, variant) in this process."""
    res: dict[str, Any] = {"loader": loader, "variant": variant}
    t0 = time.perf_counter()
    _imports(loader)
    if args.device.startswith("cuda"):  # the CUDA context is made before the clock starts (a pipeline has one)
        import torch

        torch.zeros(1, device=args.device)
        sync(args.device)
    res["import_s"] = time.perf_counter() - t0
    return _measure_load(args, loader, variant, res)


def _measure_load(args: argparse.Namespace, loader: str, variant: str, res: dict[str, Any]) -> dict[str, Any]:
    fn = _loader(loader, Path(args.root), args.device, variant_profile(variant), not args.no_completion)
    prof = None
    if args.profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    t0 = time.perf_counter()
    model = fn()
    sync(args.device)
    res["load_s"] = time.perf_counter() - t0
    if prof is not None:
        prof.disable()
        res["top"] = _top(prof, args.profile)
    res["params_m"] = _count(model) / 1e6
    res["rss_gb"] = rss_peak_gib()
    if args.device.startswith("cuda"):
        res["gpu_gb"] = gpu_peak_gib()
    del model
    return res


def ensure_checkpoints(root: Path, loaders: list[str], tiny: bool, device: str) -> None:
    """Write the missing checkpoints of ``loaders`` under root (random weights, official layouts)."""
    import torch

    from body4d_core.errors import Body4DError
    from body4d_core.testing.checkpoints import target_dir, write_checkpoints
    from body4d_core.weights import MODEL_SPECS, verify

    names = []
    for loader in loaders:
        for name in NEEDS[loader]:
            try:
                verify(name, target_dir(root, MODEL_SPECS[name]))
            except Body4DError:
                names.append(name)
    if not names:
        return
    where = "cuda" if device.startswith("cuda") and torch.cuda.is_available() else "cpu"
    print(f"writing {', '.join(names)} under {root} ({'tiny' if tiny else 'real'}, on {where})", flush=True)
    write_checkpoints(root, names, seed=0, preset="tiny" if tiny else "real", device=where,
                      weight_dtype=None if tiny else torch.bfloat16,
                      on_written=lambda n, s: print(f"  wrote {n} in {s:.1f} s", flush=True))


def warm_page_cache(root: Path) -> float:
    """Read every checkpoint file once, so each variant reads from memory alike; returns GB read."""
    total = 0
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                while chunk := f.read(1 << 24):
                    total += len(chunk)
    return total / 1e9


def run_one(args: argparse.Namespace, loader: str, variant: str) -> dict[str, Any]:
    """Run a child process (or, with --in-process, this one); its result dict, or one with 'error'."""
    if args.in_process:
        t0 = time.perf_counter()
        try:
            res = measure(args, loader, variant)
        except Exception as err:  # noqa: BLE001 - reported in the table
            return {"loader": loader, "variant": variant, "error": f"{type(err).__name__}: {err}"}
        res["process_s"] = time.perf_counter() - t0
        return res
    cmd = [sys.executable, "-m", "bench.bench_load", "--child", loader, "--variant", variant,
           "--root", str(args.root), "--device", args.device, "--profile", str(args.profile)]
    if args.no_completion:
        cmd.append("--no-completion")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"loader": loader, "variant": variant, "error": f"timed out after {args.timeout} s"}
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT):
            res = json.loads(line[len(RESULT):])
            res["process_s"] = time.perf_counter() - t0
            return res
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-6:]
    return {"loader": loader, "variant": variant, "error": f"exit {proc.returncode}: " + " | ".join(tail)}


def summary(results: list[dict[str, Any]]) -> str:
    """Median load seconds per (loader, variant) over the repeats, and the speed-up of the medians."""
    import statistics

    times: dict[tuple[str, str], list[float]] = {}
    for r in results:
        if "load_s" in r:
            times.setdefault((r["loader"], r["variant"]), []).append(r["load_s"])
    lines = [f"{'loader':<8} {'variant':<8} {'runs':>4} {'median load s':>13} {'speed-up':>8}"]
    for (loader, variant), ts in times.items():
        med = statistics.median(ts)
        base = times.get((loader, "legacy"))
        speed = f"{statistics.median(base) / med:.2f}x" if base and variant != "legacy" and med > 0 else ""
        lines.append(f"{loader:<8} {variant:<8} {len(ts):>4} {med:13.2f} {speed:>8}")
    return "\n".join(lines)


def table(results: list[dict[str, Any]]) -> str:
    """One row per (loader, variant): import, load, process seconds, parameters, peaks; speed-up vs legacy."""
    head = f"{'loader':<8} {'variant':<7} {'import s':>8} {'load s':>8} {'speed-up':>8} {'process s':>9} " \
           f"{'params M':>9} {'RSS GB':>7} {'GPU GB':>7}"
    lines = [head, "-" * len(head)]
    legacy: dict[str, float] = {}
    for r in results:
        if r["variant"] == "legacy" and "load_s" in r:  # the latest legacy run before this row (same repeat)
            legacy[r["loader"]] = r["load_s"]
        if "error" in r:
            lines.append(f"{r['loader']:<8} {r['variant']:<7} FAILED {r['error'][:300]}")
            continue
        base = legacy.get(r["loader"])
        speed = f"{base / r['load_s']:.2f}x" if base and r["variant"] != "legacy" and r["load_s"] > 0 else ""
        gpu = f"{r['gpu_gb']:.1f}" if "gpu_gb" in r else "-"
        lines.append(f"{r['loader']:<8} {r['variant']:<7} {r['import_s']:8.2f} {r['load_s']:8.2f} {speed:>8} "
                     f"{r['process_s']:9.1f} {r['params_m']:9.1f} {r['rss_gb']:7.1f} {gpu:>7}")
    return "\n".join(lines)


def write_rows(args: argparse.Namespace, results: list[dict[str, Any]]) -> None:
    """Every measured figure in the common row format (case 'loader variant')."""
    out = RowWriter.from_args("bench_load", args, device=args.device)
    units = {"load_s": "s", "import_s": "s", "process_s": "s", "params_m": "M", "rss_gb": "GiB", "gpu_gb": "GiB"}
    for r in results:
        for key, unit in units.items():
            if key in r:
                out.add(f"{r['loader']} {r['variant']}", key, r[key], unit, root=str(args.root), tiny=args.tiny,
                        in_process=args.in_process)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=None, help="models root holding the checkpoints "
                    "(default /tmp/realckpt, or a temporary folder with --tiny)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda (where the loaders put the models)")
    ap.add_argument("--loaders", default=",".join(LOADERS), help=f"comma list of {', '.join(LOADERS)}")
    ap.add_argument("--variants", default="legacy,fast", help=f"comma list of {', '.join(VARIANTS)}")
    ap.add_argument("--repeat", type=int, default=1, help="runs per (loader, variant), each in a new process")
    ap.add_argument("--profile", type=int, default=0, metavar="N", help="print cProfile's N hottest functions")
    ap.add_argument("--write", action="store_true", help="write missing checkpoints under --root first")
    ap.add_argument("--tiny", action="store_true", help="tiny checkpoints in a temporary folder (CPU smoke test)")
    ap.add_argument("--no-completion", action="store_true",
                    help="amodal: load the mask pipeline and depth only (halves the CPU's fp32 memory)")
    ap.add_argument("--no-warm-cache", action="store_true", help="skip reading the checkpoints once beforehand")
    ap.add_argument("--in-process", action="store_true",
                    help="load in this process (imports shared, so only the first loader pays them; quick checks)")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per child process")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here (one JSON list)")
    add_rows_args(ap)
    ap.add_argument("--child", choices=LOADERS, help=argparse.SUPPRESS)
    ap.add_argument("--variant", choices=VARIANTS, default="fast", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child(args)
    loaders = [x for x in args.loaders.split(",") if x]
    variants = [x for x in args.variants.split(",") if x]
    bad = [x for x in loaders if x not in LOADERS] + [x for x in variants if x not in VARIANTS]
    if bad:
        print(f"unknown loader/variant {bad}; loaders: {LOADERS}, variants: {VARIANTS}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench_load_") as tmp:
        if args.root is None:
            args.root = Path(tmp) if args.tiny else Path("/tmp/realckpt")
        if args.tiny or args.write:
            ensure_checkpoints(args.root, loaders, args.tiny, args.device)
        if not args.no_warm_cache:
            t0 = time.perf_counter()
            gb = warm_page_cache(args.root)
            print(f"read {gb:.1f} GB of checkpoints in {time.perf_counter() - t0:.1f} s (page cache warm-up)",
                  flush=True)
        results = []
        for loader in loaders:
            for _ in range(max(1, args.repeat)):
                for variant in variants:
                    res = run_one(args, loader, variant)
                    results.append(res)
                    msg = f"{res['load_s']:.2f} s" if "load_s" in res else res["error"][:200]
                    print(f"{loader} {variant}: {msg}", flush=True)
                    for line in res.get("top", []):
                        print("    " + line)
    print(f"\nmodel loading, device {args.device}, root {args.root}, python {sys.version.split()[0]}, "
          f"{os.cpu_count()} cores")
    print(table(results))
    if args.repeat > 1:
        print("\nmedians over the repeats")
        print(summary(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    write_rows(args, results)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
