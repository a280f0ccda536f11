"""The tables of bench_scaling: per-stage speed-up of one split clip, batch throughput, output agreement.

Kept apart from the runs so the figures are computed in one place from what was measured (the
seconds each run's summary row gives) and can be checked without Ray or a GPU.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

STAGES = ("decode", "sam3", "amodal", "camera", "bodies", "smooth", "world", "render")  # the pipeline's order
COMPARED = ("bodies.npz", "params.npz")


def stage_names(one: dict[str, float], many: dict[str, float]) -> list[str]:
    """The stages of either run in pipeline order, then the other timed keys (parts, waits), then the total."""
    keys = set(one) | set(many)
    main = [s for s in STAGES if s in keys]
    rest = sorted(keys - set(STAGES) - {"total"})
    return main + rest + (["total"] if "total" in keys else [])


def stage_rows(one: dict[str, float], many: dict[str, float], workers: int) -> list[dict[str, Any]]:
    """Per stage: seconds on 1 and on ``workers`` workers, speed-up (1-worker s / N-worker s) and efficiency
    (speed-up / N); None where a side lacks the stage or took no measurable time."""
    rows = []
    for name in stage_names(one, many):
        a, b = one.get(name), many.get(name)
        speed = a / b if a is not None and b else None
        rows.append({"stage": name, "one_s": a, "many_s": b, "speed_up": speed,
                     "efficiency": speed / workers if speed is not None else None})
    return rows


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    """Largest |a - b| (NaN where both are NaN counts as equal; a shape or type mismatch is inf)."""
    if a.shape != b.shape:
        return math.inf
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool) or a.dtype.kind != b.dtype.kind:
        return 0.0 if np.array_equal(a, b) else math.inf
    if a.size == 0:
        return 0.0
    x, y = a.astype(np.float64), b.astype(np.float64)
    both_nan = np.isnan(x) & np.isnan(y)
    diff = np.where(both_nan, 0.0, np.abs(x - y))
    return math.inf if np.isnan(diff).any() else float(diff.max())


def compare_npz(a: Path, b: Path) -> dict[str, float]:
    """Max abs difference per array of two npz files (an array in one only: inf)."""
    with np.load(a, allow_pickle=False) as x, np.load(b, allow_pickle=False) as y:
        names = sorted(set(x.files) | set(y.files))
        return {k: _max_abs(x[k], y[k]) if k in x.files and k in y.files else math.inf for k in names}


def decoded_frames(path: Path) -> np.ndarray:
    """Every frame of an MP4 as uint8 RGB [T, H, W, 3]."""
    import av

    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def compare_runs(one: Path, many: Path, render: str = "render_4d.mp4") -> dict[str, Any]:
    """The two runs' outputs side by side: per-array max abs difference of bodies / params, and the render."""
    out: dict[str, Any] = {}
    for name in COMPARED:
        if (one / name).is_file() and (many / name).is_file():
            diffs = compare_npz(one / name, many / name)
            out[name] = {"max_abs": max(diffs.values(), default=0.0), "arrays": diffs}
        else:
            out[name] = {"max_abs": None, "arrays": {}, "missing": True}
    if (one / render).is_file() and (many / render).is_file():
        a, b = decoded_frames(one / render), decoded_frames(many / render)
        out["render"] = {"max_abs": _max_abs(a, b), "frames": int(len(a)),
                         "bytes_identical": (one / render).read_bytes() == (many / render).read_bytes()}
    else:
        out["render"] = {"max_abs": None, "missing": True}
    return out


def linear_pct(one_vph: float | None, many_vph: float | None, workers: int) -> float | None:
    """Throughput of N workers as a percentage of N times one worker's."""
    if not one_vph or many_vph is None or workers < 1:
        return None
    return 100.0 * many_vph / (workers * one_vph)


def _f(v: float | None, fmt: str = ".2f", suffix: str = "") -> str:
    return "–" if v is None else f"{v:{fmt}}{suffix}"


def stage_table(rows: list[dict[str, Any]], workers: int) -> list[str]:
    """The per-stage table as plain text lines."""
    lines = [f"{'stage':16s} {'1-GPU s':>9s} {f'{workers}-GPU s':>9s} {'speed-up':>9s} {'efficiency':>10s}"]
    for r in rows:
        lines.append(f"{r['stage']:16s} {_f(r['one_s']):>9s} {_f(r['many_s']):>9s} {_f(r['speed_up'], '.2f', 'x'):>9s} "
                     f"{_f(None if r['efficiency'] is None else 100 * r['efficiency'], '.0f', '%'):>10s}")
    return lines


def compare_lines(cmp: dict[str, Any]) -> list[str]:
    """One line per compared output: the largest difference and the array it is in."""
    lines = []
    for name in COMPARED:
        c = cmp.get(name, {})
        if c.get("missing") or c.get("max_abs") is None:
            lines.append(f"{name}: missing in a run")
            continue
        worst = max(c["arrays"], key=c["arrays"].get) if c["max_abs"] else None
        where = f" (largest in {worst})" if worst else " (all equal)"
        lines.append(f"{name}: max abs difference {c['max_abs']:.3g} over {len(c['arrays'])} arrays{where}")
    r = cmp.get("render", {})
    lines.append("render_4d.mp4: missing in a run" if r.get("missing") else
                 f"render_4d.mp4: max abs difference {r['max_abs']:.3g} over {r['frames']} decoded frames, "
                 f"bytes {'identical' if r['bytes_identical'] else 'differ'}")
    return lines


def batch_lines(one: dict | None, many: dict | None, workers: int) -> list[str]:
    """The batch table: per worker count videos, seconds, videos/hour and the % of linear."""
    lines = [f"{'workers':>7s} {'videos':>6s} {'done':>4s} {'batch s':>8s} {'videos/h':>9s} {'% of linear':>11s}"]
    pct = linear_pct(one and one["videos_per_hour"], many and many["videos_per_hour"], workers)
    for r, p in ((one, None), (many, pct)):
        if r:
            lines.append(f"{r['workers']:7d} {r['videos']:6d} {r['done']:4d} {r['batch_s']:8.1f} "
                         f"{r['videos_per_hour']:9.1f} {_f(p, '.0f', '%'):>11s}")
    return lines


def markdown(state: dict[str, Any], workers: int, machine: str, command: str) -> list[str]:
    """The block for BENCHMARKS.md: setting, per-stage table, agreement, batch table, targets."""
    s = state.get("setting", {})
    clip, batch = state.get("clip", {}), state.get("batch", {})
    one, many = clip.get("1"), clip.get("N")
    warm = f"warm-up: {s['warmup_frames']} frames on each worker first" if s.get("warmup_frames") else "no warm-up"
    frames = f"its first {s['batch_frames']} frames" if s.get("batch_frames") else "every frame"
    lines = [f"{machine}, `{command}`: one {s.get('people')}-person x {s.get('frames')}-frame {s.get('size')} clip, "
             f"{s.get('steps')} amodal steps, occlusion {s.get('occlusion')}, split over 1 and {workers} workers "
             f"({warm}); batch: copies of the clip, {s.get('one_copies')} on 1 worker and {s.get('copies')} on {workers}, "
             f"{frames} at {s.get('batch_steps')} steps.", ""]
    if one and many:
        rows = stage_rows(one["seconds"], many["seconds"], workers)
        lines += [f"| stage | 1 GPU s | {workers} GPUs s | speed-up | efficiency |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        for r in rows:
            name = f"**{r['stage']}**" if r["stage"] == "total" else r["stage"]
            eff = None if r["efficiency"] is None else 100 * r["efficiency"]
            lines.append(f"| {name} | {_f(r['one_s'])} | {_f(r['many_s'])} | {_f(r['speed_up'], '.2f', 'x')} | "
                         f"{_f(eff, '.0f', '%')} |")
        lines.append("")
        for r in (one, many):
            if r.get("shards"):
                lines.append(f"- shards each worker ran, {r['workers']} worker(s): "
                             + ", ".join(f"{k} {v}" for k, v in r["shards"].items()))
        if "compare" in state:
            lines += [f"- {line}" for line in compare_lines(state["compare"])]
    b1, bn = batch.get("1"), batch.get("N")
    if b1 or bn:
        pct = linear_pct(b1 and b1["videos_per_hour"], bn and bn["videos_per_hour"], workers)
        lines += ["", "| workers | videos | batch s | videos/h | % of linear |", "| ---: | ---: | ---: | ---: | ---: |"]
        for r, p in ((b1, None), (bn, pct)):
            if r:
                lines.append(f"| {r['workers']} | {r['done']}/{r['videos']} | {r['batch_s']:.1f} | "
                             f"{r['videos_per_hour']:.1f} | {_f(p, '.0f', '%')} |")
    return lines


def target_lines(state: dict[str, Any], workers: int) -> list[str]:
    """Issue #23's targets against what was measured (met / missed, or not measured)."""
    clip, batch = state.get("clip", {}), state.get("batch", {})
    lines = []
    if clip.get("1") and clip.get("N"):
        speed = clip["1"]["seconds"]["total"] / clip["N"]["seconds"]["total"]
        verdict = ("met" if speed >= 3 else "missed") if workers == 4 else \
            f"target is for 4 GPUs, measured on {workers}"
        lines.append(f"single clip: {speed:.2f}x on {workers} GPUs (target >= 3x on 4): {verdict}")
    if batch.get("1") and batch.get("N"):
        pct = linear_pct(batch["1"]["videos_per_hour"], batch["N"]["videos_per_hour"], workers)
        lines.append(f"batch: {_f(pct, '.0f', '%')} of linear on {workers} GPUs (target >= 85%): "
                     f"{'met' if pct is not None and pct >= 85 else 'missed'}")
    return lines
