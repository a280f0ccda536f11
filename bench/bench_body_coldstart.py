"""SAM-3D-Body cold start: wall time of one pipeline-sized Body Batch call in a fresh process.

The throughput bench (bench_body.py) times warm, compiled calls. A user's first run instead pays
torch.compile inside the call. This bench starts one child process per configuration, builds the
real-size model (random weights), runs ``estimate_bodies`` once on a clip-sized job (default 450
crops: 5 people x 90 frames of 720x1280, as bench_pipeline's clip) and then once more, and prints
one table: first-call and second-call seconds, graphs compiled and recompile-limit hits.

Configurations (``--configs``, comma list):
    eager     no compile
    static    backbone and decoder compiled, decoder with one static graph per batch size
              (the fourth session's behaviour)
    dynamic   compiled, decoder batch/token sizes symbolic (one graph per layer kind)
    auto      what the pipeline and the node do by default now (``Sam3dBody.compile_for`` with
              mode 'auto': compiles only when the job is large enough or graphs are already warm)
Each compiled configuration runs with an empty inductor cache ("cold": a first-ever run) and,
where ``--warm`` is given, again in a new process with the cache the cold run left ("warm disk
cache": a later ComfyUI start). ``--runner-cache`` (implies ``--warm``) leaves the cache folder to
the body runner (``sam3d_body.runner``: ``BODY4D_COMPILE_CACHE`` names the folder, the runner points
inductor at it only while it compiles) instead of setting ``TORCHINDUCTOR_CACHE_DIR`` for the whole
child, so the warm row measures the shipped cross-process cache; every row also reports inductor's
FX graph cache hits / misses.

    python -m bench.bench_body_coldstart                       # H200, ~4-5 min
    python -m bench.bench_body_coldstart --configs dynamic --modes body,full --runner-cache   # cold vs warm
    python -m bench.bench_body_coldstart --tiny                # CPU smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from bench.rows import REPO, RowWriter, add_rows_args

CONFIGS = ("eager", "static", "dynamic", "auto")


def child(args: argparse.Namespace) -> dict:
    """Run in the child process: build, one cold call, one warm call; returns the figures."""
    import torch
    import torch._dynamo.utils as dutils

    from bench.bench_body import build_ours
    from bench.clips import body_inputs
    from bench.timers import sync
    from body4d_core.sam3d_body import Sam3dBodyConfig, estimate_bodies, tiny_config

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backend = "inductor" if dev.type == "cuda" else "aot_eager"
    cfg = tiny_config() if args.tiny else Sam3dBodyConfig()
    t0 = time.perf_counter()
    model = build_ours(cfg, dev, rig_hidden=16 if args.tiny else 3000)
    build_s = time.perf_counter() - t0
    h, w = (int(v) for v in args.size.split("x"))
    frames, items = body_inputs(args.items, h, w, args.people)
    cfg_name = args.child
    if cfg_name == "static":
        model.optimize("default", "default", bucket=args.batch, backend=backend, decoder_dynamic=False)
    elif cfg_name == "dynamic":
        model.optimize("default", "default", bucket=args.batch, backend=backend)
    elif cfg_name == "auto":
        model.compile_for("auto", args.batch, crops=len(items), body_mode=args.mode)
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        estimate_bodies(model, frames, items, mode=args.mode, batch_size=args.batch)
        sync()
        times.append(time.perf_counter() - t0)
    stats = dutils.counters["stats"]
    return {"config": cfg_name, "build_s": build_s, "first_s": times[0], "second_s": times[1],
            "graphs": int(stats.get("unique_graphs", 0)),
            "limit_hits": int(sum(v for k, v in dutils.counters["recompiles"].items())) if "recompiles" in dutils.counters
            else 0,
            "compiled": model.runner.in_effect()["backbone"] or "eager",
            "fx_hits": int(dutils.counters["inductor"]["fxgraph_cache_hit"]),
            "fx_misses": int(dutils.counters["inductor"]["fxgraph_cache_miss"]),
            "device": torch.cuda.get_device_name() if dev.type == "cuda" else "CPU", "torch": torch.__version__}


def spawn(args: argparse.Namespace, config: str, cache: str) -> dict:
    """One fresh process with its own inductor/triton cache folder (``--runner-cache``: handed to the runner)."""
    if args.runner_cache:
        env = {k: v for k, v in os.environ.items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
        env.update(BODY4D_COMPILE_CACHE=cache, PYTHONUNBUFFERED="1")
    else:
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache, TRITON_CACHE_DIR=os.path.join(cache, "triton"),
                   PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "bench.bench_body_coldstart", "--child", config, "--items", str(args.items),
           "--people", str(args.people), "--size", args.size, "--batch", str(args.batch), "--mode", args.mode]
    cmd += ["--tiny"] if args.tiny else []
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout, cwd=REPO)
    wall = time.perf_counter() - t0
    line = next((ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith("{")), "")
    if proc.returncode or not line:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"config": config, "error": f"exit {proc.returncode}: {' | '.join(tail)}"[:200], "process_s": wall}
    out = json.loads(line)
    out["process_s"] = wall
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="eager,static,dynamic,auto")
    ap.add_argument("--modes", default="full,body", help="Body Batch modes to run (comma list)")
    ap.add_argument("--warm", action="store_true", help="also rerun compiled configs with the cold run's disk cache")
    ap.add_argument("--runner-cache", action="store_true",
                    help="cold vs warm with the runner's own compile cache (BODY4D_COMPILE_CACHE); implies --warm")
    ap.add_argument("--items", type=int, default=450)
    ap.add_argument("--people", type=int, default=5)
    ap.add_argument("--size", default="720x1280")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--tiny", action="store_true", help="tiny model, 10 crops of 96x128 (CPU smoke test)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per child process")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="full", help=argparse.SUPPRESS)
    add_rows_args(ap)
    args = ap.parse_args()
    if args.tiny:
        args.items, args.people, args.size, args.batch = 10, 2, "96x128", 4
    if args.child:
        print(json.dumps(child(args)))
        return
    args.warm = args.warm or args.runner_cache
    configs = [c for c in args.configs.split(",") if c]
    bad = [c for c in configs if c not in CONFIGS]
    if bad:
        raise SystemExit(f"unknown config(s) {bad}; choose from {CONFIGS}")
    print(f"# SAM-3D-Body cold start: {args.items} crops ({args.people} people x "
          f"{-(-args.items // args.people)} frames of {args.size}), batch {args.batch}, one process per row")
    print("| mode | config | disk cache | first call s | second call s | graphs | FX cache hit/miss | build s | "
          "process s |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    t_start = time.perf_counter()
    last: dict = {}
    out = None  # made once a child has said which device it ran on
    with tempfile.TemporaryDirectory() as root:
        for mode in [m for m in args.modes.split(",") if m]:
            args.mode = mode
            for config in configs:
                cache = os.path.join(root, f"{mode}-{config}")
                runs = ["cold", "warm"] if args.warm and config != "eager" else ["cold"]
                for kind in runs:
                    r = spawn(args, config, cache)
                    if "error" in r:
                        print(f"| {mode} | {config} | {kind} | failed: {r['error']} | | | | | {r['process_s']:.1f} |")
                        continue
                    last = r
                    out = out or RowWriter.from_args("bench_body_coldstart", args, "cpu")  # (no CUDA in this process)
                    out.device = r["device"] if r["device"] != "CPU" else "cpu"  # the card the child ran on
                    for metric in ("first_s", "second_s", "build_s", "process_s"):
                        out.add(f"{mode} {config} {kind} cache", metric, r[metric], "s", graphs=r["graphs"],
                                items=args.items, batch=args.batch, size=args.size, fx_hits=r["fx_hits"],
                                fx_misses=r["fx_misses"], runner_cache=args.runner_cache)
                    print(f"| {mode} | {config} | {kind} | {r['first_s']:.1f} | {r['second_s']:.1f} | {r['graphs']} | "
                          f"{r['fx_hits']}/{r['fx_misses']} | {r['build_s']:.1f} | {r['process_s']:.1f} |", flush=True)
    print(f"# device {last.get('device', '?')}, torch {last.get('torch', '?')}; wall {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
