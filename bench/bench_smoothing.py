"""Smoother quality and speed on synthetic ground truth (CPU).

Synthetic people move their 3D keypoints along smooth random trajectories (sums of
0.1-1.2 Hz sinusoids at 30 fps); the "estimates" add per-frame jitter, whole-frame outliers
and dropped spans (missing frames). Methods, side by side:

- raw: the estimates, last value held across drops (what a pipeline without smoothing shows)
- core gaussian / core savgol: ComfyUI core SAM3DBody_Smooth's symmetric windows (window 7,
  sigma = window/5 / cubic Savitzky-Golay), with its last-value hold across missing frames
- upstream EMA: exponential moving average alpha = 0.18 (upstream's static-segment EMA)
  with the same hold
- ours offline (Kalman + RTS) and ours causal (forward Kalman only, innovation-gated), the
  causal one at the offline window and at ``--causal-window`` (a one-sided filter lags by
  about its span, so streaming wants a shorter one)

Metrics over every frame of each track's span (drops included): MPJPE (mm), acceleration
error (mm/frame^2, |second difference of estimate - that of the truth|), MPJPE on the
dropped frames only, and frozen frames (dropped frames whose output equals the previous
frame's). Then the time to smooth 10 people x 10,000 frames of full MHR bodies (669 signals
per person), wall clock and process CPU seconds, best of ``--repeats``.

Run: python -m bench.bench_smoothing [--people 4] [--frames 600] [--seed 0] [--threads 0]
     python -m bench.bench_smoothing --tiny   (seconds: small sizes, for a smoke test)
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bench.rows import RowWriter, add_rows_args
from body4d_core.data import PARAM_DIMS, Bodies, BodyFlag
from body4d_core.smoothing import SmoothSettings, smooth_bodies

FPS = 30.0
K = 24  # keypoints per person in the quality test


def make_truth(rng: np.random.Generator, n: int, t: int) -> np.ndarray:
    """Smooth ground-truth keypoints [N, T, K, 3] in metres."""
    time_s = np.arange(t) / FPS
    out = np.zeros((n, t, K, 3))
    for _ in range(6):
        freq = rng.uniform(0.1, 1.2, size=(n, 1, K, 3))
        amp = rng.uniform(0.01, 0.08, size=(n, 1, K, 3))
        phase = rng.uniform(0, 2 * np.pi, size=(n, 1, K, 3))
        out += amp * np.sin(2 * np.pi * freq * time_s[None, :, None, None] + phase)
    return out + rng.normal(scale=0.3, size=(n, 1, K, 3))


def corrupt(rng: np.random.Generator, truth: np.ndarray, noise: float, outlier_rate: float,
            drops: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy estimates and the observed mask [N, T]."""
    n, t = truth.shape[:2]
    est = truth + rng.normal(scale=noise, size=truth.shape)
    bad = rng.random((n, t)) < outlier_rate
    est[bad] += rng.normal(scale=0.12, size=(int(bad.sum()), 1, 3))
    observed = np.ones((n, t), bool)
    for i in range(n):
        for _ in range(drops):
            start = int(rng.integers(10, t - 40))
            observed[i, start:start + int(rng.integers(5, 25))] = False
    est[~observed] = np.nan
    return est, observed


def hold_last(est: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """Fill missing frames with the previous observed value (core's and upstream's fill)."""
    out = est.copy()
    for i in range(est.shape[0]):
        idx = np.where(observed[i], np.arange(est.shape[1]), 0)
        np.maximum.accumulate(idx, out=idx)
        out[i] = est[i, idx]
    return out


def window_filter(est: np.ndarray, observed: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Symmetric FIR over time with edge padding, applied after the last-value hold."""
    x = hold_last(est, observed)
    pad = len(kernel) // 2
    padded = np.concatenate([np.repeat(x[:, :1], pad, 1), x, np.repeat(x[:, -1:], pad, 1)], 1)
    out = np.zeros_like(x)
    for j, w in enumerate(kernel):
        out += w * padded[:, j:j + x.shape[1]]
    return out


def gaussian_kernel(window: int = 7) -> np.ndarray:
    sigma = max(1.0, window / 5.0)
    x = np.arange(window) - (window - 1) / 2.0
    k = np.exp(-(x ** 2) / (2 * sigma ** 2))
    return k / k.sum()


def savgol_kernel(window: int = 7, order: int = 3) -> np.ndarray:
    from scipy.signal import savgol_coeffs

    return savgol_coeffs(window, order)


def ema(est: np.ndarray, observed: np.ndarray, alpha: float = 0.18) -> np.ndarray:
    x = hold_last(est, observed)
    out = np.empty_like(x)
    out[:, 0] = x[:, 0]
    for i in range(1, x.shape[1]):
        out[:, i] = alpha * x[:, i] + (1 - alpha) * out[:, i - 1]
    return out


def ours(est: np.ndarray, observed: np.ndarray, mode: str, window: float, **kw) -> np.ndarray:
    n, t = observed.shape
    b = Bodies.empty(np.arange(1, n + 1), t, (480, 640))
    b = b.replace(flags=np.where(observed, BodyFlag.VISIBLE, BodyFlag.MISSING).astype(np.uint8),
                  keypoints_3d=np.nan_to_num(est).astype(np.float32))
    out = smooth_bodies(b, SmoothSettings(mode=mode, window=window, max_gap=1000, **kw))
    return out.keypoints_3d.astype(np.float64)


def metrics(pred: np.ndarray, truth: np.ndarray, observed: np.ndarray) -> dict[str, float]:
    err = np.linalg.norm(pred - truth, axis=-1).mean(-1) * 1000  # [N, T] mm
    acc = lambda x: x[:, 2:] - 2 * x[:, 1:-1] + x[:, :-2]  # noqa: E731
    acc_err = np.linalg.norm(acc(pred) - acc(truth), axis=-1).mean() * 1000
    gap = ~observed
    moved = np.abs(np.diff(pred, axis=1)).max(axis=(-1, -2)) > 1e-9
    frozen = gap[:, 1:] & ~moved
    return {"mpjpe": float(err.mean()), "accel": float(acc_err),
            "gap_mpjpe": float(err[gap].mean()) if gap.any() else 0.0, "frozen": int(frozen.sum())}


def timing(n: int = 10, t: int = 10_000, mode: str = "offline", repeats: int = 1,
           confidence: bool = False) -> tuple[float, float]:
    """(wall, CPU) seconds to smooth n people x t frames of full MHR bodies (params + 70 keypoints
    3D/2D), the best of ``repeats`` runs. ``confidence``: random per-frame confidences, so every
    person has an observation pattern of their own (no shared gain recursion)."""
    rng = np.random.default_rng(0)
    params = {k: rng.normal(size=(n, t, d)).astype(np.float32) * 0.1 for k, d in PARAM_DIMS.items()}
    flags = np.full((n, t), BodyFlag.VISIBLE, np.uint8)
    flags[:, ::50] = BodyFlag.OCCLUDED
    flags[:, 500:520] = BodyFlag.MISSING
    b = Bodies(np.arange(1, n + 1), flags, params, (480, 640),
               keypoints_3d=rng.normal(size=(n, t, 70, 3)).astype(np.float32),
               keypoints_2d=rng.normal(size=(n, t, 70, 2)).astype(np.float32),
               confidence=rng.uniform(0.3, 1.0, size=(n, t)).astype(np.float32) if confidence else None)
    smooth_bodies(b.replace(flags=b.flags[:, :64].copy(), params={k: v[:, :64] for k, v in b.params.items()},
                            keypoints_3d=b.keypoints_3d[:, :64], keypoints_2d=b.keypoints_2d[:, :64],
                            confidence=None if b.confidence is None else b.confidence[:, :64]),
                  SmoothSettings(mode=mode))  # warm-up: lazy imports
    best = (float("inf"), float("inf"))
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        smooth_bodies(b, SmoothSettings(mode=mode))
        best = min(best, (time.perf_counter() - wall, time.process_time() - cpu))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--people", type=int, default=4)
    ap.add_argument("--frames", type=int, default=600)
    ap.add_argument("--noise-mm", type=float, default=15.0)
    ap.add_argument("--outliers", type=float, default=0.02)
    ap.add_argument("--drops", type=int, default=3)
    ap.add_argument("--window", type=float, default=SmoothSettings().window)
    ap.add_argument("--causal-window", type=float, default=1.5, help="the extra causal row's window")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--timing-frames", type=int, default=10_000, help="frames per person in the timing run")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--repeats", type=int, default=3, help="timing runs (best is reported)")
    ap.add_argument("--tiny", action="store_true", help="small sizes: a smoke test in seconds")
    add_rows_args(ap)
    args = ap.parse_args()
    if args.tiny:
        args.people, args.frames, args.timing_frames, args.repeats = 2, 120, 500, 1
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    rng = np.random.default_rng(args.seed)
    truth = make_truth(rng, args.people, args.frames)
    est, observed = corrupt(rng, truth, args.noise_mm / 1000, args.outliers, args.drops)
    methods = {
        "raw (hold across drops)": lambda: hold_last(est, observed),
        "core gaussian w7": lambda: window_filter(est, observed, gaussian_kernel(7)),
        "core savgol w7 o3": lambda: window_filter(est, observed, savgol_kernel(7, 3)),
        "upstream EMA a=0.18": lambda: ema(est, observed),
        f"ours offline (RTS, w={args.window:g})": lambda: ours(est, observed, "offline", args.window),
        f"ours causal (w={args.window:g})": lambda: ours(est, observed, "causal", args.window),
        f"ours causal, extrapolation gate (w={args.window:g})": lambda: ours(est, observed, "causal", args.window, gate_passes=0),
        f"ours causal (w={args.causal_window:g})": lambda: ours(est, observed, "causal", args.causal_window),
    }
    print(f"synthetic: {args.people} people x {args.frames} frames, {K} keypoints, noise {args.noise_mm:g} mm, "
          f"outliers {args.outliers:.0%}, {args.drops} drops/person ({(~observed).mean():.1%} frames missing)")
    print(f"{'method':<40}{'MPJPE mm':>10}{'accel mm/f2':>13}{'gap MPJPE':>11}{'frozen':>8}")
    out = RowWriter.from_args("bench_smoothing", args, "cpu")
    extra = {"people": args.people, "frames": args.frames, "noise_mm": args.noise_mm, "outliers": args.outliers,
             "drops": args.drops, "seed": args.seed}
    for name, fn in methods.items():
        m = metrics(fn(), truth, observed)
        print(f"{name:<40}{m['mpjpe']:>10.2f}{m['accel']:>13.2f}{m['gap_mpjpe']:>11.2f}{m['frozen']:>8d}")
        for metric, unit in (("mpjpe", "mm"), ("accel", "mm/frame^2"), ("gap_mpjpe", "mm"), ("frozen", "frames")):
            out.add(name, metric, m[metric], unit, **extra)
    if not args.skip_timing:
        import torch

        for conf in (False, True):
            for mode in ("offline", "causal"):
                wall, cpu = timing(t=args.timing_frames, mode=mode, repeats=args.repeats, confidence=conf)
                what = "per-frame confidence" if conf else "shared flags"
                print(f"timing {mode}, {what}: 10 people x {args.timing_frames:,} frames (669 signals each): "
                      f"{wall:.2f} s wall, {cpu:.2f} s CPU ({torch.get_num_threads()} torch threads)")
                out.add(f"timing {mode}, {what}", "wall_s", wall, "s", cpu_s=cpu, people=10,
                        frames=args.timing_frames, threads=torch.get_num_threads())


if __name__ == "__main__":
    main()
