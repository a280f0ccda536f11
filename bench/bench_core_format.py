"""ComfyUI core's SAM-3D-Body file at real size (random weights): write, load, native MHR rig on the GPU.

No real weights exist on the device either, so this writes a full-size synthetic file in core's
layout (bf16 backbone, fp32 heads, 17 ``mhr.*`` rig tensors at MHR LOD1 sizes: 18439 vertices, 127
joints, 3000 corrective units), loads it with ``load_core_safetensors`` (time, peak host RAM), then
times the native rig eager vs TorchScript-scripted (the form of the official ``assets/mhr_model.pt``)
at a batch of B bodies, and ``estimate_bodies`` (full mode, hand refinement) with each rig variant.
Prints one table.

    python -m bench.bench_core_format            # H200: about 1-2 minutes
    python -m bench.bench_core_format --tiny     # CPU smoke test
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.peak_memory import gpu_peak_gib, rss_peak_bytes
from bench.printing import key_value_table
from bench.rows import RowWriter, add_rows_args
from bench.timers import median_time
from body4d_core.sam3d_body import BodyItem, Sam3dBodyConfig, estimate_bodies, tiny_config
from body4d_core.interop.sam3d_body_file import load_core_safetensors, save_core_layout
from body4d_core.testing.body import random_rig_tensors
from body4d_core.sam3d_body.model import Sam3dBody
from body4d_core.testing.body import randomize


def _time(fn, dev: torch.device, reps: int) -> float:
    """Median seconds of fn() over reps calls after one warm-up."""
    return median_time(fn, reps, dev)[0]


def _write(cfg: Sam3dBodyConfig, rig_hidden: int, folder: Path, dev: torch.device) -> tuple[Path, float]:
    t = time.perf_counter()
    with torch.device(dev):
        model = Sam3dBody(cfg)
    randomize(model, seed=0)
    rig = random_rig_tensors(cfg.num_verts, cfg.num_joints, hidden=rig_hidden, seed=0)
    path = save_core_layout(model, folder / "sam_3d_body_dinov3_bf16.safetensors", rig)
    del model
    return path, time.perf_counter() - t


def _items(n: int, h: int, w: int) -> list[BodyItem]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 3))
        out.append(BodyItem(0, i + 1, [x0, y0, x0 + w // 3, y0 + h // 2], None))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny architecture and rig (CPU smoke test)")
    ap.add_argument("--batch", type=int, default=64, help="bodies per rig call and crops per estimate")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_rows_args(ap)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    dev = torch.device(args.device)
    if dev.type == "cpu":
        torch.set_num_threads(1)  # tiny ops on shared cores: more threads only oversubscribe
    cfg = tiny_config() if args.tiny else Sam3dBodyConfig()
    hidden = 16 if args.tiny else 3000
    batch = min(args.batch, 4) if args.tiny else args.batch
    rows: list[tuple[str, str]] = []
    out = RowWriter.from_args("bench_core_format", args, dev)
    extra = {"batch": batch, "model": "tiny" if args.tiny else "full-size"}
    with tempfile.TemporaryDirectory() as tmp:
        path, t_write = _write(cfg, hidden, Path(tmp), dev)
        rows.append(("write synthetic core file", f"{t_write:.1f} s, {path.stat().st_size / 1e9:.2f} GB"))
        out.add("write synthetic core file", "seconds", t_write, "s", gb=path.stat().st_size / 1e9, **extra)
        rss0 = rss_peak_bytes() / 1e9
        t = time.perf_counter()
        model = load_core_safetensors(path, config=cfg)
        t_load = time.perf_counter() - t
        rows.append(("load_core_safetensors (CPU)", f"{t_load:.1f} s, peak RSS "
                     f"{rss_peak_bytes() / 1e9:.1f} GB (before {rss0:.1f} GB)"))
        out.add("load_core_safetensors (CPU)", "seconds", t_load, "s", **extra)
        out.add("load_core_safetensors (CPU)", "peak_rss", rss_peak_bytes() / 1e9, "GB", before_gb=rss0, **extra)
    model = model.to(dev)
    native = model.mhr
    scripted = torch.jit.script(native)
    g = torch.Generator().manual_seed(0)
    x = [a.to(dev) for a in (torch.randn(batch, 45, generator=g), torch.randn(batch, 204, generator=g) * 0.3,
                             torch.randn(batch, 72, generator=g))]
    with torch.no_grad():
        va, sa = native(*x)
        vb, sb = scripted(*x)
        dev_v = float((va - vb).abs().max())
        for name, rig in (("native eager", native), ("native scripted", scripted)):
            ms = _time(lambda r=rig: r(*x), dev, args.reps) * 1e3
            rows.append((f"rig B={batch} {name}", f"{ms:.2f} ms"))
            out.add(f"rig B={batch} {name}", "ms_per_call", ms, "ms", **extra)
    rows.append(("rig eager vs scripted max |dv| (cm)", f"{dev_v:.2e}"))
    out.add("rig eager vs scripted", "max_abs_dv", dev_v, "cm", **extra)
    h, w = (120, 160) if args.tiny else (720, 1280)
    frames = np.random.default_rng(1).integers(0, 255, (1, h, w, 3), dtype=np.uint8)
    items = _items(batch, h, w)
    results = {}
    for name, rig in (("native eager", native), ("native scripted", scripted)):
        model.attach_rig(rig)
        secs = _time(lambda: results.__setitem__(name, estimate_bodies(
            model, frames, items, mode="full", batch_size=batch, return_vertices=True)), dev, max(1, args.reps // 5))
        rows.append((f"estimate_bodies full, {batch} crops, {name}", f"{secs:.2f} s ({batch / secs:.1f} crops/s)"))
        out.add(f"estimate_bodies full, {batch} crops, {name}", "crops_per_s", batch / secs, "crops/s", **extra)
    a, b = results["native eager"], results["native scripted"]
    # 3D outputs: with random weights the camera translation can put points near z = 0, where 2D
    # projections explode and compare nothing useful
    dv = max(float(np.abs(p["vertices"] - q["vertices"]).max()) for p, q in zip(a, b))
    dj = max(float(np.abs(p["keypoints_3d"] - q["keypoints_3d"]).max()) for p, q in zip(a, b))
    rows.append(("estimate eager vs scripted max |d vertices|, |d kp3d| (m)", f"{dv:.2e}, {dj:.2e}"))
    out.add("estimate eager vs scripted", "max_abs_d_vertices", dv, "m", max_abs_d_kp3d=dj, **extra)
    if dev.type == "cuda":
        rows.append(("peak VRAM", f"{gpu_peak_gib(dev) * 2**30 / 1e9:.1f} GB"))
        out.add("whole run", "peak_vram", gpu_peak_gib(dev) * 2**30 / 1e9, "GB", **extra)
    print(f"\nComfyUI core file, {'tiny' if args.tiny else 'full-size'} random weights, device {dev}")
    print(key_value_table(rows))


if __name__ == "__main__":
    main()
