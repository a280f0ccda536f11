"""Per-identity Kalman / RTS smoothing of MHR bodies (docs/ARCHITECTURE.md, Stage map).

Every object id is smoothed on its own. Each scalar signal (a pose parameter, a rotation
vector component, a translation or keypoint coordinate) follows a constant-velocity (or
constant-acceleration) model driven by white noise; observations are the per-frame
estimates with a noise level that grows on frames estimated from completed (occluded)
input, on low-confidence frames and on frames that look like outliers. The forward Kalman
pass is causal; the offline mode adds the Rauch-Tung-Striebel backward pass.

Speed: the process and observation noises of one identity are the same up to a per-signal
scale, so the Kalman and RTS gains depend only on (identity, frame), not on the signal. The
2x2 (or 3x3) covariance recursion runs once per identity (once per distinct observation
pattern), and the whole smoother, a linear map from observations to positions, is composed
per block of L frames: a block's output is W y_block + V cf + U cb, where cf / cb are the
filter state entering the block and the smoothed state after it. Hundreds of signals then
go through one batched L x L matrix product per block plus two short recursions over
blocks (exactly the sequential Kalman + RTS result, up to float32 rounding).

Outliers: offline, a frame whose parameter / keypoint blocks jump as a whole against their
neighbours (robust z-score) gets a larger observation variance. Causal, a frame is judged
by its innovation against the forward filter's prediction from earlier frames only (scaled
by the filter's predicted spread, so the frames right after a gap are not rejected), and
the filter is rerun with those weights.

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
from .rotations import euler_xyz_to_rotvec, rotvec_to_euler_xyz, unwrap_rotvecs
from .runtime import NULL_HOOKS, Hooks

log = logging.getLogger(__name__)

# Parameter blocks filtered as ordinary signals; "global_rot" is handled on SO(3).
LINEAR_BLOCKS = ("body_pose", "hand_pose", "expr", "cam_t")
LOCKED_BLOCKS = ("shape", "scale")
ANGLE_BLOCKS = ("body_pose",)  # phase-unwrapped before filtering
EULER_CONVENTION = "xyz"  # MHR global_rot: extrinsic x-y-z Euler angles (roma's "xyz"), R = Rz Ry Rx


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
    gate_passes: int = 1  # causal mode: filter passes of the innovation gate (0 = extrapolation residuals)

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
        if self.gate_passes < 0:
            raise InputError(f"gate_passes must be >= 0, got {self.gate_passes}")
        if not 0.0 < self.gap_damping <= 1.0:
            raise InputError(f"gap_damping must be in (0, 1], got {self.gap_damping}")


# --------------------------------------------------------------------------- the filter

PRIOR_VAR = 1e8  # flat prior on the state before a track's first observation
_INF = float("inf")


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


def _riccati(obs_var: np.ndarray, F: np.ndarray, Q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Kalman gains [T, S] and filtered / predicted covariances [T, S, S] of one identity.

    Observation variance inf = no observation; H = [1, 0, ...]. The recursion runs on
    Python floats over the packed upper triangle (closed-form F P F^T of the velocity and
    acceleration models, ~1 us a frame) and, inside a run of equal variances, stops once
    the covariance has reached its fixed point (the rest of the run repeats it). Frames
    before the first observation keep the flat prior.
    """
    t, s = obs_var.shape[0], F.shape[0]
    observed = np.isfinite(obs_var)
    first = int(np.argmax(observed)) if observed.any() else t
    tri = [(a, b) for a in range(s) for b in range(a, s)]  # packed upper triangle
    qv = tuple(float(Q[a, b]) for a, b in tri)
    rv = obs_var.tolist()
    if s == 2:
        rows, rep = _recursion_cv(rv, qv, first)
    else:
        rows, rep = _recursion_ca(rv, qv, first)
    K = np.zeros((t, s))
    P_f = np.broadcast_to(np.eye(s) * PRIOR_VAR, (t, s, s)).copy()
    P_p = P_f.copy()
    if rep:
        table = np.array(rows)[np.repeat(np.arange(len(rep)), rep)]
        sl = slice(first, first + table.shape[0])
        m = len(tri)
        ia, ib = np.array(tri).T
        K[sl] = table[:, :s]
        for dst, packed in ((P_f, table[:, s:s + m]), (P_p, table[:, s + m:])):
            dst[sl, ia, ib] = packed
            dst[sl, ib, ia] = packed
    return K, P_f, P_p


def _recursion_cv(rv: list[float], q: tuple, first: int) -> tuple[list[tuple], list[int]]:
    """Constant-velocity covariance recursion from frame ``first``, inlined for speed.

    Returns one row (k0, k1, filtered 00, 01, 11, predicted 00, 01, 11) per computed frame
    and how many frames each row stands for (a converged run of equal variances repeats).
    """
    t = len(rv)
    q0, q1, q2 = q
    a, b, c = PRIOR_VAR, 0.0, PRIOR_VAR
    rows: list[tuple] = []
    rep: list[int] = []
    i = first
    prev_r = None
    while i < t:
        if i != first:
            a, b, c = a + 2.0 * b + c + q0, b + c + q1, c + q2
        r = rv[i]
        if r == _INF:
            rows.append((0.0, 0.0, a, b, c, a, b, c))
            rep.append(1)
            i += 1
            prev_r = r
            continue
        den = a + r
        k0, k1 = a / den, b / den
        fa, fb, fc = a - k0 * a, b - k0 * b, c - k1 * b
        rows.append((k0, k1, fa, fb, fc, a, b, c))
        n = 1
        if r == prev_r and abs(fa - rows[-2][2]) <= 1e-10 * fa and abs(fc - rows[-2][4]) <= 1e-10 * fc:
            while i + n < t and rv[i + n] == r:  # converged: the rest of this run repeats the row
                n += 1
        rep.append(n)
        i += n
        prev_r = r
        a, b, c = fa, fb, fc
    return rows, rep


def _recursion_ca(rv: list[float], q: tuple, first: int) -> tuple[list[tuple], list[int]]:
    """Constant-acceleration covariance recursion (``_step_ca`` per frame); rows as in ``_recursion_cv``."""
    t = len(rv)
    P = (PRIOR_VAR, 0.0, 0.0, PRIOR_VAR, 0.0, PRIOR_VAR)
    rows: list[tuple] = []
    rep: list[int] = []
    i = first
    while i < t:
        r = rv[i]
        row = _step_ca(P, q, r, i == first)
        Pn = row[3:9]  # after the 3 gains: the packed filtered covariance
        n = 1
        if i > first and r != _INF and rv[i - 1] == r and abs(Pn[0] - P[0]) <= 1e-10 * P[0] \
                and abs(Pn[-1] - P[-1]) <= 1e-10 * P[-1]:
            while i + n < t and rv[i + n] == r:
                n += 1
        rows.append(row)
        rep.append(n)
        P = Pn
        i += n
    return rows, rep


def _step_ca(P: tuple, q: tuple, r: float, first: bool) -> tuple:
    """One constant-acceleration step on the packed upper triangle (00, 01, 02, 11, 12, 22)."""
    p00, p01, p02, p11, p12, p22 = P
    if not first:  # F P F^T + Q for F = [[1, 1, 1/2], [0, 1, 1], [0, 0, 1]]
        g00, g01, g02 = p00 + p01 + 0.5 * p02, p01 + p11 + 0.5 * p12, p02 + p12 + 0.5 * p22
        g11, g12 = p11 + p12, p12 + p22
        p00, p01, p02 = g00 + g01 + 0.5 * g02 + q[0], g01 + g02 + q[1], g02 + q[2]
        p11, p12, p22 = g11 + g12 + q[3], g12 + q[4], p22 + q[5]
    pred = (p00, p01, p02, p11, p12, p22)
    if r == _INF:
        return (0.0, 0.0, 0.0) + pred + pred
    den = p00 + r
    k0, k1, k2 = p00 / den, p01 / den, p02 / den
    return (k0, k1, k2, p00 - k0 * p00, p01 - k0 * p01, p02 - k0 * p02,
            p11 - k1 * p01, p12 - k1 * p02, p22 - k2 * p02) + pred


def _gains(obs_var: np.ndarray, F: np.ndarray, Q: np.ndarray, smooth: bool, memo: dict | None = None
           ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Kalman gains K [U, T, S], RTS gains C [U, T, S, S] (C_t couples frame t to t+1) of the
    U distinct observation patterns, and each identity's pattern index [N].

    Identities with the same observation variances share one Riccati recursion; ``memo``
    (pattern bytes -> ``_riccati`` result, for one F, Q) shares them across calls too.
    """
    t = obs_var.shape[1]
    s = F.shape[0]
    groups: dict[bytes, int] = {}
    firsts: list[int] = []
    inverse = np.empty(obs_var.shape[0], np.int64)
    for i, row in enumerate(obs_var):
        inverse[i] = groups.setdefault(row.tobytes(), len(groups))
        if inverse[i] == len(firsts):
            firsts.append(i)
    uniq = obs_var[firsts]
    runs = [_riccati_memo(row, F, Q, memo) for row in uniq]
    K = np.stack([r[0] for r in runs])
    if not smooth:
        return K, None, inverse
    P_f = np.stack([r[1] for r in runs])
    P_p = np.stack([r[2] for r in runs])
    C = np.zeros((len(uniq), t, s, s))
    if t > 1:
        # C_t = P_f[t] F^T P_p[t+1]^-1, i.e. C_t^T = solve(P_p[t+1], F P_f[t]) (both symmetric)
        C[:, :-1] = np.swapaxes(np.linalg.solve(P_p[:, 1:], F @ P_f[:, :-1]), -1, -2)
    return K, C, inverse


def _riccati_memo(row: np.ndarray, F: np.ndarray, Q: np.ndarray, memo: dict | None) -> tuple:
    """``_riccati`` of one pattern, looked up in / stored into ``memo`` when given."""
    if memo is None:
        return _riccati(row, F, Q)
    key = row.tobytes()
    if key not in memo:
        memo[key] = _riccati(row, F, Q)
    return memo[key]


def _mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Batched product of small matrices [..., i, j] @ [..., j, k] (elementwise: fast for tiny j)."""
    return sum(a[..., :, j, None] * b[..., None, j, :] for j in range(a.shape[-1]))


def _prepare_recurrence(M: np.ndarray, G: np.ndarray, L: int) -> tuple[np.ndarray, np.ndarray]:
    """Block operators of z_i = M_i z_(i-1) + G_i u_i over blocks of L steps (T divisible by L).

    Within a block, z_a = sum_b Big[a, b] u_b + Pre[a] z_in with Big[a, b] = M_a...M_(b+1) G_b
    and Pre[a] = M_a...M_0. Returns Big [N, nb, L*S, L*P] (rows (a, s), columns (b, p)) and
    Pre [N, nb, L*S, S].
    """
    n, t, s, _ = M.shape
    p = G.shape[-1]
    nb = t // L
    Mb = M.reshape(n, nb, L, s, s)
    Gb = G.reshape(n, nb, L, s, p)
    big = np.zeros((n, nb, L, L, s, p))
    ar = np.arange(L)
    big[:, :, ar, ar] = Gb
    prod = np.broadcast_to(np.eye(s), (n, nb, L, s, s))
    for k in range(1, L):
        prod = _mm(Mb[:, :, k:], prod[:, :, :-1])
        big[:, :, ar[k:], ar[:L - k]] = _mm(prod, Gb[:, :, :L - k])
    pre = np.empty((n, nb, L, s, s))
    pre[:, :, 0] = Mb[:, :, 0]
    for a in range(1, L):
        pre[:, :, a] = _mm(Mb[:, :, a], pre[:, :, a - 1])
    return big.transpose(0, 1, 2, 4, 3, 5).reshape(n, nb, L * s, L * p), pre.reshape(n, nb, L * s, s)


@dataclass
class _Operators:
    """Per-block linear maps of one kalman_smooth call (blocks of L frames, nb blocks per identity).

    The output positions of a block are ``W y + V cf + U cb``: its inputs y, the filter state
    entering it (cf) and, offline, the smoothed state just after it (cb). The carries follow
    short recursions over blocks: ``cf_b = Ly_(b-1) + A_(b-1) cf_(b-1)`` and offline
    ``cb_b = Ey_(b+1) + B_(b+1) cf_(b+1) + D_(b+1) cb_(b+1)`` (Ly, Ey: rows of ``edge @ y``).
    """

    L: int
    s: int
    W: torch.Tensor  # [N*nb, L, L]
    edge: torch.Tensor  # [N*nb, S or 2S, L]: the last filtered state, then (offline) the first smoothed one
    V: torch.Tensor  # [N*nb, L, S]
    A: np.ndarray  # [N, nb, S, S]
    U: torch.Tensor | None = None  # [N*nb, L, S]
    B: np.ndarray | None = None  # [N, nb, S, S]
    D: np.ndarray | None = None  # [N, nb, S, S]


def _operators(obs_var: np.ndarray, motion: str, window: float, causal: bool, L: int,
               signals: int = 0, memo: dict | None = None) -> _Operators:
    """Gains of every identity composed into the per-block maps of ``_Operators``.

    With ``signals`` given and many distinct observation patterns, L is halved: building the
    maps costs ~L per pattern, applying them ~L per signal (measured on a 2-core CPU, 669
    signals: halving pays off once more than ~2/5 of the identities have their own pattern).
    """
    F, Q = _model(2 if motion == "velocity" else 3, window)
    n, t = obs_var.shape
    s = F.shape[0]
    smooth = not causal and t > 1
    K, C, inverse = _gains(obs_var, F, Q, smooth, memo)
    nu = K.shape[0]  # operators are built once per distinct observation pattern
    if signals and L >= 8 and nu * 669 * 5 > 2 * n * signals:
        L //= 2
    tp = -(-t // L) * L
    nb = tp // L
    eye = np.eye(s)
    # forward: x_i = (I - K_i H) F x_(i-1) + K_i y_i; padded frames hold the state
    M = np.broadcast_to(eye, (nu, tp, s, s)).copy()
    M[:, :t] = _mm(eye - K[..., :, None] * eye[0], np.broadcast_to(F, (nu, t, s, s)))
    G = np.zeros((nu, tp, s, 1))
    G[:, :t, :, 0] = K
    fwd, fpre = _prepare_recurrence(M, G, L)  # [nu, nb, L*S, L], [nu, nb, L*S, S]
    pos = np.arange(L) * s
    last = np.arange((L - 1) * s, L * s)

    def per_id(a: np.ndarray) -> torch.Tensor:  # [nu, nb, r, c] -> float32 [N*nb, r, c]
        return torch.from_numpy(a.astype(np.float32)[inverse].reshape(n * nb, *a.shape[2:]))

    A = fpre[:, :, last].astype(np.float32)[inverse]  # [N, nb, S, S]
    if not smooth:
        return _Operators(L, s, per_id(fwd[:, :, pos]), per_id(fwd[:, :, last]), per_id(fpre[:, :, pos]), A)
    # backward (RTS): xs_i = C_i xs_(i+1) + (I - C_i F) xf_i, prepared in reversed time and
    # flipped back to forward order
    Gb = np.zeros((nu, tp, s, s))
    Gb[:, :t] = eye - _mm(C, np.broadcast_to(F, (nu, t, s, s)))
    Gb[:, t - 1] = eye
    Mb = np.zeros((nu, tp, s, s))
    Mb[:, :t - 1] = C[:, :-1]
    big_r, pre_r = _prepare_recurrence(Mb[:, ::-1], Gb[:, ::-1], L)
    bwd = big_r.reshape(nu, nb, L, s, L, s)[:, ::-1, ::-1, :, ::-1, :].reshape(nu, nb, L * s, L * s)
    bpre = pre_r.reshape(nu, nb, L, s, s)[:, ::-1, ::-1].reshape(nu, nb, L * s, s)
    first = np.arange(s)
    bf = bwd @ fwd  # [nu, nb, L*S, L]: smoothed states of a block from its inputs (no carries)
    bfp = bwd @ fpre  # [nu, nb, L*S, S]: ... from the filter state entering it
    return _Operators(
        L, s, W=per_id(bf[:, :, pos]), edge=per_id(np.concatenate([fwd[:, :, last], bf[:, :, first]], 2)),
        V=per_id(bfp[:, :, pos]), A=A, U=per_id(bpre[:, :, pos]),
        B=bfp[:, :, first].astype(np.float32)[inverse], D=bpre[:, :, first].astype(np.float32)[inverse])


def _carries(ops: _Operators, ey: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Forward (and backward) carries [N*nb, S, D] from the edge rows ey [N, nb, S or 2S, D].

    Short loops over blocks on small arrays (numpy: far less per-call overhead than torch).
    """
    n, nb, _, d = ey.shape
    s = ops.s
    cf = np.zeros((n, nb, s, d), np.float32)
    tmp = np.empty((n, s, d), np.float32)
    for b in range(1, nb):
        np.matmul(ops.A[:, b - 1], cf[:, b - 1], out=tmp)
        np.add(tmp, ey[:, b - 1, :s], out=cf[:, b])
    flat = lambda c: torch.from_numpy(c.reshape(n * nb, s, d))  # noqa: E731
    if ops.U is None:
        return flat(cf), None
    e = ey[:, :, s:] + np.matmul(ops.B, cf)  # first smoothed state of each block, less D cb
    cb = np.zeros((n, nb, s, d), np.float32)
    for b in range(nb - 2, -1, -1):
        np.matmul(ops.D[:, b + 1], cb[:, b + 1], out=tmp)
        np.add(tmp, e[:, b + 1], out=cb[:, b])
    return flat(cf), flat(cb)


def _run(ops: _Operators, u: np.ndarray, group: int = 256) -> np.ndarray:
    """Apply the operators to finite float32 signals u [N, T, D]; returns positions [N, T, D].

    The positions overwrite u (a block's output depends on its own inputs and the carries
    only), ``group`` blocks at a time, so no signal-sized array is allocated.
    """
    n, t, d = u.shape
    L = ops.L
    tp = -(-t // L) * L
    nb = tp // L
    if tp != t:
        u = np.concatenate([u, np.zeros((n, tp - t, d), np.float32)], 1)
    ut = torch.from_numpy(u).view(n * nb, L, d)
    cf, cb = _carries(ops, torch.bmm(ops.edge, ut).view(n, nb, -1, d).numpy())
    for a in range(0, n * nb, group):
        b = min(a + group, n * nb)
        res = torch.bmm(ops.W[a:b], ut[a:b])
        res.baddbmm_(ops.V[a:b], cf[a:b])
        if cb is not None:
            res.baddbmm_(ops.U[a:b], cb[a:b])
        ut[a:b] = res
    return u[:, :t]


def kalman_smooth(
    y: np.ndarray,
    obs_var: np.ndarray,
    window: float = 4.0,
    motion: str = "velocity",
    causal: bool = False,
    block: int = 16,
) -> np.ndarray:
    """Smooth signals y [N, T, D] with per-(identity, frame) observation variances [N, T].

    ``obs_var`` = inf marks frames without an observation: the filter predicts through them
    (their values in ``y`` are ignored). Returns float32 [N, T, D]. Causal mode uses the
    forward filter only (no future frame). The gains are computed once per identity and
    shared by all its signals; the signals then advance ``block`` frames per batched matrix
    product.
    """
    given = y
    y = np.asarray(y, dtype=np.float32)  # no copy when already float32
    if y.ndim != 3:
        raise InputError(f"kalman_smooth needs signals [N, T, D], got shape {y.shape}")
    n, t, d = y.shape
    obs_var = np.asarray(obs_var, dtype=np.float64)
    if obs_var.shape != (n, t):
        raise InputError(f"observation variances must be [N, T] = {(n, t)}, got {obs_var.shape}")
    if n == 0 or t == 0 or d == 0:
        return y.copy()
    u = _finite_inputs(y, np.isfinite(obs_var))
    return _smooth_signals(u.copy() if u is given else u, obs_var, window, motion, causal, block)


def _smooth_signals(u: np.ndarray, obs_var: np.ndarray, window: float, motion: str, causal: bool,
                    block: int = 16, memo: dict | None = None) -> np.ndarray:
    """kalman_smooth on finite float32 signals u [N, T, D] (any finite value on unobserved frames).

    Overwrites u with the result (and returns it).
    """
    ops = _operators(obs_var, motion, window, causal, max(1, min(block, u.shape[1])), u.shape[2], memo)
    return _run(ops, u)


def _finite_inputs(y: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """y with unobserved frames and non-finite values set to 0 (copied only when needed)."""
    if not observed.all():
        y = y.copy()
        y[~observed] = 0.0
    if not np.isfinite(y.sum(dtype=np.float64)):
        y = np.nan_to_num(y, nan=0.0, posinf=0.0, neginf=0.0)
    return y


# --------------------------------------------------------------------------- robust weights


def _score_columns(blocks: list[slice], per_block: int) -> tuple[np.ndarray, list[slice]]:
    """Up to ``per_block`` evenly spread columns of each block, and each block's range in them."""
    cols: list[np.ndarray] = []
    ranges: list[slice] = []
    start = 0
    for sl in blocks:
        width = sl.stop - sl.start
        pick = np.unique(np.linspace(sl.start, sl.stop - 1, min(width, per_block)).round().astype(int))
        cols.append(pick)
        ranges.append(slice(start, start + pick.size))
        start += pick.size
    return np.concatenate(cols), ranges


def _robust_scores(y: np.ndarray, observed: np.ndarray, causal: bool, blocks: list[slice] | None = None,
                   threshold: float = 4.0, per_block: int = 32, predicted: np.ndarray | None = None,
                   spread: np.ndarray | None = None) -> np.ndarray:
    """Per-frame outlier scores [N, T]: max over blocks of the median over a block's signals of
    |residual| / scale (a frame is an outlier when a block jumps as a whole).

    The residual is against the mean of the neighbouring observed frames (offline), or
    against ``predicted`` [N, T, C] (causal: each frame's prediction from earlier frames only,
    on the score columns, its residuals divided by ``spread`` [N, T], the prediction's relative
    standard deviation) or else the linear extrapolation of the two previous observations.
    The scale is the median absolute residual over the clip (offline) or its running mean
    over past frames (causal). A block is judged on up to ``per_block`` evenly spread signals
    (its whole-frame jumps show on any of them). Only scores above ``threshold`` are computed
    exactly; the rest are reported as 0. Unobserved frames, and tracks too short to judge, get 0.
    """
    n, t, d = y.shape
    cols, ranges = _score_columns(blocks or [slice(0, d)], per_block)
    scores = np.zeros(observed.shape)
    for i in range(n):
        idx = np.flatnonzero(observed[i])
        if idx.size < 8:
            continue
        if cols.size == d:  # every column (already a subsample): no gather
            obs = y[i] if idx.size == t else y[i, idx]
        else:
            obs = y[i][:, cols] if idx.size == t else y[i][np.ix_(idx, cols)]  # [M, C] float32
        every = idx.size == t
        if causal:
            from scipy.signal import lfilter

            if predicted is not None:
                res = np.abs(obs - (predicted[i] if every else predicted[i, idx]))
                if spread is not None:
                    res /= (spread[i] if every else spread[i, idx])[:, None].astype(np.float32)
                res[0] = 0.0
            else:
                res = np.zeros_like(obs)
                res[2:] = np.abs(obs[2:] - (2.0 * obs[1:-1] - obs[:-2]))
            ema = lfilter([0.05], [1.0, -0.95], np.ascontiguousarray(res.T), axis=-1).T  # time-contiguous: fast
            scale = np.empty_like(res)
            scale[:8] = np.inf  # warm-up: never flag the first frames
            scale[8:] = ema[7:-1] / 0.95 * 1.2533  # mean |r| -> sigma for a normal law
        else:
            res = np.zeros_like(obs)
            res[1:-1] = np.abs(obs[1:-1] - 0.5 * (obs[:-2] + obs[2:]))
            res[0], res[-1] = np.abs(obs[0] - obs[1]), np.abs(obs[-1] - obs[-2])
            scale = 1.4826 * np.median(res[:: max(1, len(res) // 2000)], axis=0, keepdims=True)  # subsampled
        z = res / np.maximum(scale, 1e-6)
        best = np.zeros(z.shape[0], np.float32)
        for sl in ranges:
            zb = z[:, sl]
            # the block median exceeds `threshold` iff more than half its signals do: find those
            # frames cheaply, then take exact medians only there
            hot = np.flatnonzero((zb > threshold).mean(axis=-1) > 0.5)
            if hot.size:
                best[hot] = np.maximum(best[hot], np.median(zb[hot], axis=-1))
        scores[i, idx] = best
    return scores


def _causal_gate(y: np.ndarray, observed: np.ndarray, obs_var: np.ndarray, blocks: list[slice],
                 settings: SmoothSettings, memo: dict | None = None, per_block: int = 32) -> np.ndarray:
    """Causal outlier gating by innovation: observation variances [N, T] with outliers down-weighted.

    Each frame is compared with the forward filter's prediction from the frames before it
    (2 x_(t-1) - x_(t-2) of the filtered positions); frames whose blocks jump by more than
    ``outlier_threshold`` robust sigmas get their variance inflated. The filter is rerun with
    those weights for ``gate_passes`` rounds (so a rejected outlier no longer biases the next
    frame's prediction). Runs on the score columns only; uses no future frame.
    """
    cols, sub_blocks = _score_columns(blocks, per_block)  # each block's range within the score columns
    sub = np.ascontiguousarray(y[:, :, cols])
    thr = settings.outlier_threshold
    spread = _innovation_spread(obs_var, settings, memo)
    var = obs_var
    for _ in range(settings.gate_passes):
        pos = _smooth_signals(sub.copy(), var, settings.window, settings.motion, True, memo=memo)
        pred = np.empty_like(pos)  # 2 x_(t-1) - x_(t-2), computed in place
        pred[:, :2] = 0.0
        np.multiply(pos[:, 1:-1], 2.0, out=pred[:, 2:])
        pred[:, 2:] -= pos[:, :-2]
        del pos
        score = _robust_scores(sub, observed, True, sub_blocks, thr, per_block=sub.shape[-1], predicted=pred,
                               spread=spread)
        var = obs_var * _gate_weights(score, thr)
    return var


def _innovation_spread(obs_var: np.ndarray, settings: SmoothSettings, memo: dict | None = None) -> np.ndarray:
    """Relative standard deviation [N, T] of each frame's innovation: sqrt(P_pred + r) over its
    steady-state value for r = 1. Large right after a gap or the track start (the prediction
    is uncertain, a big innovation is no sign of an outlier) and on down-weighted frames.
    Depends on past and current frames only."""
    F, Q = _model(2 if settings.motion == "velocity" else 3, settings.window)
    steady = np.ones(64)
    ref = np.sqrt(_riccati(steady, F, Q)[2][-1, 0, 0] + 1.0)
    out = np.ones(obs_var.shape)
    for i, row in enumerate(obs_var):
        seen = np.isfinite(row)
        if seen.any():
            P_p = _riccati_memo(row, F, Q, memo)[2]
            out[i] = np.where(seen, np.sqrt(P_p[:, 0, 0] + np.where(seen, row, 0.0)) / ref, 1.0)
    return out


def _gate_weights(score: np.ndarray, thr: float) -> np.ndarray:
    """Variance factor of a robust score: 1 below ``thr``, growing as (score / thr)^4 above."""
    return np.where(score > thr, (score / thr) ** 4, 1.0)


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


def _unwrap_angles(block: np.ndarray) -> None:
    """Phase-unwrap angle signals [M, D] along time in place (only when some step exceeds pi)."""
    if block.shape[0] > 1 and np.abs(np.diff(block, axis=0)).max() > np.pi:
        block[:] = np.unwrap(block.astype(np.float64), axis=0)


def _signals(bodies: Bodies, observed: np.ndarray) -> tuple[np.ndarray, list[tuple[str, slice]]]:
    """Every smoothed quantity of a Bodies in one float32 buffer y [N, T, D] plus its layout.

    Unobserved frames and non-finite values are 0 in y (the filter ignores them anyway).
    """
    n, t = observed.shape
    parts: list[tuple[str, np.ndarray | None]] = [("global_rot", None)]
    parts += [(name, bodies.params[name]) for name in LINEAR_BLOCKS]
    parts += [(name, getattr(bodies, name)) for name in ("keypoints_3d", "keypoints_2d") if getattr(bodies, name) is not None]
    widths = [3 if arr is None else int(np.prod(arr.shape[2:])) for _, arr in parts]
    edges = np.cumsum([0] + widths).tolist()
    layout = [(name, slice(a, b)) for (name, _), a, b in zip(parts, edges[:-1], edges[1:])]
    y = np.empty((n, t, edges[-1]), np.float32)
    for (name, arr), (_, sl) in zip(parts, layout):
        if arr is not None:
            y[..., sl] = arr.reshape(n, t, -1)
    for i in range(n):
        idx = np.flatnonzero(observed[i])
        if idx.size == 0:
            continue
        y[i, idx, :3] = unwrap_rotvecs(euler_xyz_to_rotvec(bodies.params["global_rot"][i, idx]))
        for name, sl in layout:
            if name in ANGLE_BLOCKS:
                block = y[i, idx, sl] if idx.size < t else y[i, :, sl]
                _unwrap_angles(block)
                if idx.size < t:
                    y[i, idx, sl] = block
    y[~observed] = 0.0
    if not np.isfinite(y.sum()):
        np.nan_to_num(y, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    return y, layout


def smooth_bodies(bodies: Bodies, settings: SmoothSettings | None = None,
                  refresh: Callable[[Bodies], Bodies] | None = None, hooks: Hooks = NULL_HOOKS) -> Bodies:
    """Kalman/RTS-smooth every identity of ``bodies``; returns a new Bodies.

    Observed frames keep their flags; bridged gap frames get FILLED. Shape and scale are
    locked per identity. Frames that stay missing are zeros (as the contract says).
    ``refresh`` (e.g. the MHR rig) regenerates vertices, keypoints and extras such as
    ``model_params`` from the smoothed parameters; without it, keypoints and vertices are
    smoothed with the same filter (consistent to first order) and extras pass through.
    The work is vectorised over identities, so ``hooks`` sees one check and one progress step per phase.
    """
    phases = 5 if bodies.vertices is not None and refresh is None else 4

    def phase(k: int) -> None:
        hooks.check_interrupt()
        hooks.progress(k, phases)

    settings = settings or SmoothSettings()
    causal = settings.mode == "causal"
    flags = bodies.flags
    observed = (flags & (BodyFlag.VISIBLE | BodyFlag.OCCLUDED)) != 0
    n, t = observed.shape
    if not observed.any():
        raise InputError("Kalman Smooth: the bodies hold no observed frame (every person is missing); "
                         "check the tracks and the body estimation step")
    phase(0)
    obs_var = _observation_variances(bodies, settings)
    y, layout = _signals(bodies, observed)
    memo: dict[bytes, tuple] = {}  # Riccati runs of this call's observation patterns
    if settings.outlier_threshold > 0 and causal and settings.gate_passes > 0:
        obs_var = _causal_gate(y, observed, obs_var, [sl for _, sl in layout], settings, memo)
    elif settings.outlier_threshold > 0:
        score = _robust_scores(y, observed, causal, [sl for _, sl in layout], settings.outlier_threshold)
        thr = settings.outlier_threshold
        obs_var = obs_var * np.where(score > thr, (score / thr) ** 2, 1.0)
    phase(1)
    out = _smooth_signals(y, obs_var, settings.window, settings.motion, causal, memo=memo)
    del y
    phase(2)
    if causal:
        _damp_gaps(out, observed, settings.gap_damping)

    fill = _gap_fill_mask(observed, settings.max_gap, causal)
    keep = observed | fill
    new_flags = np.where(fill, np.uint8(BodyFlag.FILLED), flags).astype(np.uint8)
    new_flags[~keep] = BodyFlag.MISSING
    out[~keep] = 0.0

    params = dict(bodies.params)
    geometry: dict[str, np.ndarray] = {}
    for name, sl in layout:
        block = out[..., sl]
        if name == "global_rot":
            euler = np.zeros((n, t, 3), np.float32)
            euler[keep] = rotvec_to_euler_xyz(block[keep])
            params[name] = euler
        elif name in params:
            if name in ANGLE_BLOCKS:  # back to the principal range the model produced
                block += np.float32(np.pi)
                np.remainder(block, np.float32(2 * np.pi), out=block)
                block -= np.float32(np.pi)
                block[~keep] = 0.0
            params[name] = block  # views into one buffer: no copy of the signals
        else:
            geometry[name] = block.reshape(getattr(bodies, name).shape)
    for name in LOCKED_BLOCKS:
        params[name] = _locked(bodies.params[name], flags, keep) if settings.lock_shape else \
            np.where(keep[..., None], bodies.params[name], 0.0).astype(np.float32)
    confidence = None
    if bodies.confidence is not None:
        confidence = np.where(observed, bodies.confidence, 0.0).astype(np.float32)
    extras = dict(bodies.extras)
    if (~keep & (flags != BodyFlag.MISSING)).any():  # frames dropped here: clear their extras
        extras = {k: np.where(keep.reshape(n, t, *([1] * (v.ndim - 2))), v, np.zeros_like(v))
                  for k, v in extras.items()}
    phase(3)
    if bodies.vertices is not None and refresh is None:
        nv = bodies.vertices.shape[2]
        verts = kalman_smooth(bodies.vertices.reshape(n, t, nv * 3), obs_var, settings.window, settings.motion, causal)
        if causal:
            _damp_gaps(verts, observed, settings.gap_damping)
        verts[~keep] = 0.0
        geometry["vertices"] = verts.reshape(n, t, nv, 3)
        phase(4)
    out_bodies = bodies.replace(flags=new_flags, params=params, confidence=confidence, extras=extras, **geometry)
    out_bodies = refresh(out_bodies) if refresh is not None else out_bodies
    hooks.progress(phases, phases)
    return out_bodies


def _locked(values: np.ndarray, flags: np.ndarray, keep: np.ndarray, most: int = 2001) -> np.ndarray:
    """Per identity: the median over visible frames (else occluded ones), on every kept frame.

    Long tracks use ``most`` evenly spaced frames of those (the median of a still quantity
    does not need all of them).
    """
    out = np.zeros_like(values, dtype=np.float32)
    for i in range(values.shape[0]):
        vis = np.flatnonzero((flags[i] & BodyFlag.VISIBLE) != 0)
        if vis.size == 0:
            vis = np.flatnonzero((flags[i] & BodyFlag.OCCLUDED) != 0)
        if vis.size == 0:
            continue
        if vis.size > most:
            vis = vis[np.linspace(0, vis.size - 1, most).round().astype(int)]
        out[i, keep[i]] = np.median(values[i, vis], axis=0)
    return out
