"""Per-identity Kalman / RTS smoothing of MHR bodies (DESIGN.md §6, issue 6).

Every object id is smoothed on its own. Each scalar signal (a pose parameter, a rotation
vector component, a translation or keypoint coordinate) follows a constant-velocity (or
constant-acceleration) model driven by white noise; observations are the per-frame
estimates with a noise level that grows on frames estimated from completed (occluded)
input, on low-confidence frames and on frames that look like outliers. The forward Kalman
pass is causal; the offline mode adds the Rauch-Tung-Striebel backward pass.

Speed: the process and observation noises of one identity are the same up to a per-signal
scale, so the Kalman gains depend only on (identity, frame), not on the signal. The 2x2
(or 3x3) covariance recursion runs once per identity and the hundreds of signals are
updated together with a few vector operations per frame.

Rotations: the global rotation (MHR Euler "xyz", extrinsic) is turned into a rotation
vector unwrapped along time (axis sign and 2*pi jumps made continuous), smoothed in that
space and mapped back, so spins and the +-pi seam never produce the jumps raw Euler angles
have. Joint angles of the body pose are phase-unwrapped before smoothing. Shape and scale
are not smoothed but locked per identity to the median over its visible frames.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .data import BodyFlag, Bodies
from .errors import InputError

log = logging.getLogger(__name__)

# Parameter blocks filtered as ordinary signals; "global_rot" is handled on SO(3).
LINEAR_BLOCKS = ("body_pose", "hand_pose", "expr", "cam_t")
LOCKED_BLOCKS = ("shape", "scale")
ANGLE_BLOCKS = ("body_pose",)  # phase-unwrapped before filtering
EULER_CONVENTION = "xyz"  # MHR global_rot: roma's extrinsic x-y-z Euler angles


@dataclass
class SmoothSettings:
    """Knobs of the smoother (defaults tuned on bench/bench_smoothing.py)."""

    mode: str = "offline"  # offline (forward + RTS) | causal (forward only)
    motion: str = "velocity"  # velocity | acceleration
    window: float = 2.5  # smoothing span parameter in frames (bigger = smoother, more lag)
    occluded_noise: float = 4.0  # observation variance factor on OCCLUDED frames
    outlier_threshold: float = 4.0  # robust z-score above which a frame is down-weighted
    max_gap: int = 60  # longest run of missing frames bridged (0 = never bridge)
    lock_shape: bool = True  # shape and scale: per-identity median over visible frames
    gap_damping: float = 0.7  # causal mode: per-frame decay of the velocity extrapolated into a gap

    def __post_init__(self) -> None:
        if self.mode not in ("offline", "causal"):
            raise InputError(f"smoothing mode must be 'offline' or 'causal', got {self.mode!r}")
        if self.motion not in ("velocity", "acceleration"):
            raise InputError(f"motion model must be 'velocity' or 'acceleration', got {self.motion!r}")
        if not self.window > 0:
            raise InputError(f"smoothing window must be > 0 frames, got {self.window}")
        if not self.occluded_noise >= 1:
            raise InputError(f"occluded_noise must be >= 1, got {self.occluded_noise}")
        if self.max_gap < 0:
            raise InputError(f"max_gap must be >= 0, got {self.max_gap}")
        if not 0.0 < self.gap_damping <= 1.0:
            raise InputError(f"gap_damping must be in (0, 1], got {self.gap_damping}")


# --------------------------------------------------------------------------- the filter


def _model(order: int, window: float) -> tuple[np.ndarray, np.ndarray]:
    """Transition F and process noise Q (unit observation noise) for a window in frames."""
    if order == 2:
        F = np.array([[1.0, 1.0], [0.0, 1.0]])
        # white-noise acceleration; the RTS smoother then acts like a cubic smoothing
        # spline whose span is ~ (r / q) ** (1/4) frames.
        q = window ** -4.0
        Q = q * np.array([[1 / 3, 1 / 2], [1 / 2, 1.0]])
    else:
        F = np.array([[1.0, 1.0, 0.5], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
        q = window ** -6.0
        Q = q * np.array([[1 / 20, 1 / 8, 1 / 6], [1 / 8, 1 / 3, 1 / 2], [1 / 6, 1 / 2, 1.0]])
    return F, Q


def _covariances_one(obs_var: np.ndarray, F: np.ndarray, Q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Kalman gains [T,S] and filtered / predicted covariances [T,S,S] of one identity.

    Observation variance inf = no observation. The Riccati recursion runs on Python floats
    (a few hundred ns a step) and skips the rest of a run of equal variances once it has
    reached its fixed point. Frames before the first observation keep a flat prior.
    """
    t = obs_var.shape[0]
    s = F.shape[0]
    prior = 1e8
    observed = np.isfinite(obs_var)
    first = int(np.argmax(observed)) if observed.any() else t
    run_end = np.append(np.flatnonzero(obs_var[1:] != obs_var[:-1]) + 1, t).tolist()
    rv = obs_var.tolist()
    Fl, Ql = F.tolist(), Q.tolist()
    rng = range(s)
    P = [[prior if i == j else 0.0 for j in rng] for i in rng]
    rows_k: list[list[float]] = []
    rows_f: list[list[list[float]]] = []
    rows_p: list[list[list[float]]] = []
    frames: list[int] = []
    repeat: list[int] = []
    ri = 0
    i = first
    inf = float("inf")
    zero_k = [0.0] * s
    cv = s == 2
    if cv:
        q00, q01, q11 = Ql[0][0], Ql[0][1], Ql[1][1]
    while i < t:
        if i == first:
            Pp = P
        elif cv:  # closed form of F P F^T + Q for F = [[1, 1], [0, 1]]
            a, b, c = P[0][0], P[0][1], P[1][1]
            pa, pb = a + 2.0 * b + c + q00, b + c + q01
            Pp = [[pa, pb], [pb, c + q11]]
        else:
            FP = [[sum(Fl[a][m] * P[m][b] for m in rng) for b in rng] for a in rng]
            Pp = [[sum(FP[a][m] * Fl[b][m] for m in rng) + Ql[a][b] for b in rng] for a in rng]
        r = rv[i]
        if r != inf:
            den = Pp[0][0] + r
            k = [Pp[a][0] / den for a in rng]
            Pn = [[Pp[a][b] - k[a] * Pp[0][b] for b in rng] for a in rng]
        else:
            k = zero_k
            Pn = Pp
        while run_end[ri] <= i:
            ri += 1
        converged = (i > first and r != inf and rv[i - 1] == r
                     and abs(Pn[0][0] - P[0][0]) <= 1e-9 * P[0][0] and abs(Pn[-1][-1] - P[-1][-1]) <= 1e-9 * P[-1][-1])
        stop = run_end[ri] if converged else i + 1
        rows_k.append(k)
        rows_f.append(Pn)
        rows_p.append(Pp)
        frames.append(i)
        repeat.append(stop - i)
        P = Pn
        i = stop
    K = np.zeros((t, s))
    P_f = np.broadcast_to(np.eye(s) * prior, (t, s, s)).copy()
    P_p = P_f.copy()
    if frames:
        idx = np.repeat(np.arange(len(frames)), repeat)
        sl = slice(first, first + idx.size)
        K[sl] = np.asarray(rows_k)[idx]
        P_f[sl] = np.asarray(rows_f)[idx]
        P_p[sl] = np.asarray(rows_p)[idx]
    return K, P_f, P_p


def _prepare_recurrence(M: np.ndarray, G: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Block operators of z_i = M_i z_(i-1) + G_i u_i (z_-1 = 0), for ``_apply_recurrence``.

    Within a block of L steps, z = Big @ u + Pre @ z_in with Big[a, b] = M_a...M_(b+1) G_b
    and Pre[a] = M_a...M_0. Building them once lets hundreds of signals be solved with one
    batched matrix product per block instead of one Python step per frame.
    """
    n, t, s, _ = M.shape
    p = G.shape[-1]
    L = max(1, min(block, t))
    nb = -(-t // L)
    pad = nb * L - t
    if pad:
        M = np.concatenate([M, np.broadcast_to(np.eye(s), (n, pad, s, s))], 1)
        G = np.concatenate([G, np.zeros((n, pad, s, p))], 1)
    Mb = M.reshape(n, nb, L, s, s)
    Gb = G.reshape(n, nb, L, s, p)
    big = np.zeros((n, nb, L, L, s, p))
    ar = np.arange(L)
    big[:, :, ar, ar] = Gb
    diag = np.broadcast_to(np.eye(s), (n, nb, L, s, s))
    for k in range(1, L):
        diag = Mb[:, :, k:] @ diag[:, :, :-1]
        big[:, :, ar[k:], ar[:L - k]] = diag @ Gb[:, :, :L - k]
    pre = np.empty((n, nb, L, s, s))
    pre[:, :, 0] = Mb[:, :, 0]
    for a in range(1, L):
        pre[:, :, a] = Mb[:, :, a] @ pre[:, :, a - 1]
    big = np.ascontiguousarray(big.transpose(0, 1, 2, 4, 3, 5).reshape(n, nb, L * s, L * p), dtype=np.float32)
    return big, pre.astype(np.float32), t


def _apply_recurrence(big: np.ndarray, pre: np.ndarray, t: int, u: np.ndarray) -> np.ndarray:
    """Solve the prepared recurrence for inputs u [N, T, P, D]; returns z [N, T, S, D]."""
    n, nb, L, s, _ = pre.shape
    p, d = u.shape[2], u.shape[3]
    pad = nb * L - t
    ut = torch.from_numpy(u)
    if pad:
        ut = torch.cat([ut, ut.new_zeros((n, pad, p, d))], 1)
    z = torch.matmul(torch.from_numpy(big), ut.reshape(n, nb, L * p, d)).reshape(n, nb, L, s, d)
    pre_t = torch.from_numpy(pre)
    # carry the state across blocks using only each block's last row, then fix all rows at once
    carries = z.new_zeros((n, nb, s, d))
    carry = z.new_zeros((n, s, d))
    for b in range(1, nb):
        carry = pre_t[:, b - 1, -1] @ carry + z[:, b - 1, -1]
        carries[:, b] = carry
    z += torch.bmm(pre_t.reshape(n * nb, L * s, s), carries.reshape(n * nb, s, d)).reshape(n, nb, L, s, d)
    return z.reshape(n, nb * L, s, d)[:, :t].numpy()


def kalman_smooth(
    y: np.ndarray,
    obs_var: np.ndarray,
    window: float = 4.0,
    motion: str = "velocity",
    causal: bool = False,
    block: int = 8,
    chunk_elems: int = 4_000_000,
) -> np.ndarray:
    """Smooth signals y [N, T, D] with per-(identity, frame) observation variances [N, T].

    ``obs_var`` = inf marks frames without an observation: the filter predicts through them.
    Returns float32 [N, T, D]. Causal mode uses the forward filter only (no future frame).
    """
    y = np.asarray(y, dtype=np.float32)  # no copy when already float32
    if y.ndim != 3:
        raise InputError(f"kalman_smooth needs signals [N, T, D], got shape {y.shape}")
    n, t, d = y.shape
    obs_var = np.asarray(obs_var, dtype=np.float64)
    if obs_var.shape != (n, t):
        raise InputError(f"observation variances must be [N, T] = {(n, t)}, got {obs_var.shape}")
    if n == 0 or t == 0 or d == 0:
        return y.copy()
    F, Q = _model(2 if motion == "velocity" else 3, window)
    S = F.shape[0]
    K, P_f, P_p = (np.stack(a) for a in zip(*(_covariances_one(obs_var[i], F, Q) for i in range(n))))
    eye = np.eye(S)
    # forward filter: x_i = (I - K_i H) F x_(i-1) + K_i y_i  with H = [1, 0, ...]
    M_f = (eye - K[..., :, None] * eye[0]) @ F
    fwd = _prepare_recurrence(M_f, K[..., None], block)
    smooth = not causal and t > 1
    if smooth:
        # RTS: xs_i = C_i xs_(i+1) + (I - C_i F) xf_i, solved in reversed time
        C = P_f[:, :-1] @ F.T @ np.linalg.inv(P_p[:, 1:])  # [N, T-1, S, S]
        M_b = np.concatenate([np.zeros((n, 1, S, S)), C[:, ::-1]], 1)
        G_b = np.concatenate([np.broadcast_to(eye, (n, 1, S, S)), (eye - C @ F)[:, ::-1]], 1)
        bwd = _prepare_recurrence(M_b, G_b, block)
    out = np.empty((n, t, d), np.float32)
    step = max(1, chunk_elems // (n * t))
    for c0 in range(0, d, step):
        yc = y[:, :, c0:c0 + step]
        yc = np.ascontiguousarray(np.where(np.isfinite(yc), yc, np.float32(0.0))[:, :, None])
        xf = _apply_recurrence(*fwd, yc)  # [N, T, S, Dc]
        if not smooth:
            out[:, :, c0:c0 + step] = xf[:, :, 0]
            continue
        xs = _apply_recurrence(*bwd, np.ascontiguousarray(xf[:, ::-1]))
        out[:, :, c0:c0 + step] = xs[:, ::-1, 0]
    return out


# --------------------------------------------------------------------------- rotations


def euler_to_rotvec(euler: np.ndarray) -> np.ndarray:
    """MHR Euler angles [..., 3] -> rotation vectors [..., 3]."""
    import roma

    e = torch.as_tensor(np.asarray(euler, dtype=np.float64))
    return roma.rotmat_to_rotvec(roma.euler_to_rotmat(EULER_CONVENTION, e)).numpy()


def rotvec_to_euler(rotvec: np.ndarray) -> np.ndarray:
    """Rotation vectors [..., 3] -> MHR Euler angles [..., 3]."""
    import roma

    r = torch.as_tensor(np.asarray(rotvec, dtype=np.float64))
    return roma.rotmat_to_euler(EULER_CONVENTION, roma.rotvec_to_rotmat(r)).numpy()


def unwrap_rotvecs(rv: np.ndarray) -> np.ndarray:
    """Make a sequence of rotation vectors [T, 3] continuous in time.

    A rotation has the vectors (theta + 2*pi*k) * u and (-theta + 2*pi*k) * (-u); we flip
    the axis to agree with the previous frame and unwrap the signed angle, so constant-rate
    spins become straight lines through the +-pi seam.
    """
    rv = np.asarray(rv, dtype=np.float64)
    if rv.shape[0] < 2:
        return rv.copy()
    theta = np.linalg.norm(rv, axis=-1)
    axis = rv / np.maximum(theta, 1e-12)[:, None]
    # near-zero angles have no reliable axis: borrow the previous reliable one
    reliable = theta > 1e-6
    idx = np.where(reliable, np.arange(len(theta)), 0)
    np.maximum.accumulate(idx, out=idx)
    axis = np.where(reliable[:, None], axis, axis[idx])
    dots = np.einsum("ti,ti->t", axis[1:], axis[:-1])
    sign = np.concatenate([[1.0], np.cumprod(np.where(dots < 0, -1.0, 1.0))])
    axis = axis * sign[:, None]
    angle = np.unwrap(theta * sign)
    return angle[:, None] * axis


# --------------------------------------------------------------------------- robust weights


def _robust_scores(y: np.ndarray, observed: np.ndarray, causal: bool, blocks: list[slice] | None = None,
                   threshold: float = 4.0) -> np.ndarray:
    """Per-frame outlier scores [N, T]: max over blocks of the median over a block's signals of
    |residual| / scale (a frame is an outlier when a block jumps as a whole).

    The residual is against the mean of the neighbouring observed frames (offline) or the
    linear extrapolation of the two previous ones (causal); the scale is the median absolute
    residual over the clip (offline) or its running mean over past frames (causal).
    Only scores above ``threshold`` are computed exactly; the rest are reported as 0.
    Unobserved frames, and tracks too short to judge, get 0.
    """
    from scipy.signal import lfilter

    n = y.shape[0]
    scores = np.zeros(observed.shape)
    for i in range(n):
        idx = np.flatnonzero(observed[i])
        if idx.size < 8:
            continue
        obs = y[i, idx].astype(np.float32)  # [M, D]
        res = np.zeros_like(obs)
        if causal:
            res[2:] = np.abs(obs[2:] - (2.0 * obs[1:-1] - obs[:-2]))
            ema = lfilter([0.05], [1.0, -0.95], res, axis=0)
            scale = np.empty_like(res)
            scale[:8] = np.inf  # warm-up: never flag the first frames
            scale[8:] = ema[7:-1] / 0.95 * 1.2533  # mean |r| -> sigma for a normal law
        else:
            res[1:-1] = np.abs(obs[1:-1] - 0.5 * (obs[:-2] + obs[2:]))
            res[0], res[-1] = np.abs(obs[0] - obs[1]), np.abs(obs[-1] - obs[-2])
            scale = 1.4826 * np.median(res[:: max(1, len(res) // 2000)], axis=0, keepdims=True)  # subsampled
        z = res / np.maximum(scale, 1e-6)
        best = np.zeros(z.shape[0], np.float32)
        for sl in blocks or [slice(None)]:
            zb = z[:, sl]
            # the block median exceeds `threshold` iff more than half its signals do: find those
            # frames cheaply, then take exact medians only there
            hot = np.flatnonzero((zb > threshold).mean(axis=-1) > 0.5)
            if hot.size:
                best[hot] = np.maximum(best[hot], np.median(zb[hot], axis=-1))
        scores[i, idx] = best
    return scores


# --------------------------------------------------------------------------- Bodies


def _observation_variances(bodies: Bodies, settings: SmoothSettings) -> np.ndarray:
    """Relative observation variance [N, T]: 1 visible, x occluded_noise, / confidence, inf missing."""
    flags = bodies.flags
    observed = (flags & (BodyFlag.VISIBLE | BodyFlag.OCCLUDED)) != 0
    var = np.ones(flags.shape)
    var[(flags & BodyFlag.OCCLUDED) != 0] *= settings.occluded_noise
    if bodies.confidence is not None:
        var /= np.clip(bodies.confidence.astype(np.float64), 0.05, 1.0)
    var[~observed] = np.inf
    return var


def _damp_gaps(out: np.ndarray, observed: np.ndarray, rho: float) -> np.ndarray:
    """Causal gap frames: decay the extrapolated velocity by rho per frame (in place, returns out).

    With no observation the forward filter moves on at the last velocity v, so k frames into
    a gap it sits at p + k v. Here it goes to p + v (rho + ... + rho^k) instead: it keeps
    moving (never frozen) but does not run away on long gaps. Uses only past frames.
    """
    if rho >= 1.0:
        return out
    n, t = observed.shape
    frames = np.arange(t)
    for i in range(n):
        last = np.where(observed[i], frames, -1)
        np.maximum.accumulate(last, out=last)
        gap = ~observed[i] & (last >= 0)
        if not gap.any():
            continue
        k = (frames - last)[gap].astype(np.float64)
        factor = (rho * (1.0 - rho ** k) / (1.0 - rho) / k).astype(np.float32)
        anchor = out[i, last[gap]]
        out[i, gap] = anchor + (out[i, gap] - anchor) * factor.reshape(-1, *([1] * (out.ndim - 2)))
    return out


def _gap_fill_mask(observed: np.ndarray, max_gap: int, causal: bool) -> np.ndarray:
    """bool [N, T]: unobserved frames the smoother should fill.

    Offline: interior gaps (between two observations) of length <= max_gap. Causal: up to
    max_gap frames after the last observation (the future is unknown).
    """
    n, t = observed.shape
    fill = np.zeros((n, t), bool)
    if max_gap <= 0:
        return fill
    frames = np.arange(t)
    for i in range(n):
        idx = np.flatnonzero(observed[i])
        if idx.size == 0:
            continue
        last = np.where(observed[i], frames, -1)
        np.maximum.accumulate(last, out=last)
        since = frames - last
        after = last >= 0
        if causal:
            fill[i] = after & ~observed[i] & (since <= max_gap)
        else:
            nxt = np.where(observed[i], frames, t)
            nxt = np.minimum.accumulate(nxt[::-1])[::-1]
            gap_len = np.where(after & (nxt < t), nxt - last - 1, np.iinfo(np.int64).max)
            fill[i] = ~observed[i] & (gap_len <= max_gap)
    return fill


def _signals(bodies: Bodies, observed: np.ndarray) -> tuple[np.ndarray, list[tuple[str, slice]]]:
    """Stack every smoothed quantity of a Bodies into y [N, T, D] plus a layout."""
    parts: list[np.ndarray] = []
    layout: list[tuple[str, slice]] = []
    n, t = observed.shape
    start = 0

    def add(name: str, arr: np.ndarray) -> None:
        nonlocal start
        arr = arr.reshape(n, t, -1).astype(np.float32)
        parts.append(arr)
        layout.append((name, slice(start, start + arr.shape[-1])))
        start += arr.shape[-1]

    rv = np.zeros((n, t, 3), np.float64)
    for i in range(n):
        idx = np.flatnonzero(observed[i])
        if idx.size:
            rv[i, idx] = unwrap_rotvecs(euler_to_rotvec(bodies.params["global_rot"][i, idx]))
    add("global_rot", rv)
    for name in LINEAR_BLOCKS:
        arr = bodies.params[name].astype(np.float64)
        if name in ANGLE_BLOCKS:
            arr = arr.copy()
            for i in range(n):
                idx = np.flatnonzero(observed[i])
                if idx.size > 1:
                    arr[i, idx] = np.unwrap(arr[i, idx], axis=0)
        add(name, arr)
    for name in ("keypoints_3d", "keypoints_2d"):
        arr = getattr(bodies, name)
        if arr is not None:
            add(name, arr)
    return np.concatenate(parts, axis=-1), layout


def smooth_bodies(bodies: Bodies, settings: SmoothSettings | None = None,
                  refresh: Callable[[Bodies], Bodies] | None = None) -> Bodies:
    """Kalman/RTS-smooth every identity of ``bodies``; returns a new Bodies.

    Observed frames keep their flags; bridged gap frames get FILLED. Shape and scale are
    locked per identity. Frames that stay missing are zeros (as the contract says).
    ``refresh`` (e.g. the MHR rig) regenerates vertices, keypoints and extras such as
    ``model_params`` from the smoothed parameters; without it, keypoints and vertices are
    smoothed with the same filter (consistent to first order) and extras pass through.
    """
    settings = settings or SmoothSettings()
    causal = settings.mode == "causal"
    flags = bodies.flags
    observed = (flags & (BodyFlag.VISIBLE | BodyFlag.OCCLUDED)) != 0
    n, t = observed.shape
    if not observed.any():
        raise InputError("Kalman Smooth: the bodies hold no observed frame (every person is missing); "
                         "check the tracks and the body estimation step")
    obs_var = _observation_variances(bodies, settings)
    y, layout = _signals(bodies, observed)
    if settings.outlier_threshold > 0:
        score = _robust_scores(y, observed, causal, [sl for _, sl in layout], settings.outlier_threshold)
        thr = settings.outlier_threshold
        obs_var = obs_var * np.where(score > thr, (score / thr) ** 2, 1.0)
    out = kalman_smooth(y, obs_var, settings.window, settings.motion, causal)
    if causal:
        _damp_gaps(out, observed, settings.gap_damping)

    fill = _gap_fill_mask(observed, settings.max_gap, causal)
    keep = observed | fill
    new_flags = np.where(fill, np.uint8(BodyFlag.FILLED), flags).astype(np.uint8)
    new_flags[~keep] = BodyFlag.MISSING
    out[~keep] = 0.0

    params = {k: v.copy() for k, v in bodies.params.items()}
    geometry: dict[str, np.ndarray] = {}
    for name, sl in layout:
        block = out[..., sl]
        if name == "global_rot":
            euler = np.zeros((n, t, 3), np.float32)
            euler[keep] = rotvec_to_euler(block[keep].astype(np.float64)).astype(np.float32)
            params[name] = euler
        elif name in params:
            if name in ANGLE_BLOCKS:  # back to the principal range the model produced
                block = (block + np.pi) % (2 * np.pi) - np.pi
                block[~keep] = 0.0
            params[name] = block.astype(np.float32)
        else:
            shape = getattr(bodies, name).shape
            geometry[name] = block.reshape(shape).astype(np.float32)
    for name in LOCKED_BLOCKS:
        params[name] = _locked(bodies.params[name], flags, keep) if settings.lock_shape else \
            np.where(keep[..., None], bodies.params[name], 0.0).astype(np.float32)
    confidence = None
    if bodies.confidence is not None:
        confidence = np.where(observed, bodies.confidence, 0.0).astype(np.float32)
    extras = {k: np.where(keep.reshape(n, t, *([1] * (v.ndim - 2))), v, np.zeros_like(v))
              for k, v in bodies.extras.items()}
    if bodies.vertices is not None and refresh is None:
        nv = bodies.vertices.shape[2]
        verts = kalman_smooth(bodies.vertices.reshape(n, t, nv * 3), obs_var, settings.window, settings.motion, causal)
        if causal:
            _damp_gaps(verts, observed, settings.gap_damping)
        verts[~keep] = 0.0
        geometry["vertices"] = verts.reshape(n, t, nv, 3)
    out_bodies = bodies.replace(flags=new_flags, params=params, confidence=confidence, extras=extras, **geometry)
    return refresh(out_bodies) if refresh is not None else out_bodies


def _locked(values: np.ndarray, flags: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Per identity: the median over visible frames (else occluded ones), on every kept frame."""
    out = np.zeros_like(values, dtype=np.float32)
    for i in range(values.shape[0]):
        vis = (flags[i] & BodyFlag.VISIBLE) != 0
        if not vis.any():
            vis = (flags[i] & BodyFlag.OCCLUDED) != 0
        if not vis.any():
            continue
        out[i, keep[i]] = np.median(values[i, vis], axis=0)
    return out
