"""Kalman / RTS smoother: exact behaviour on signals with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from body4d_core.data import Bodies, BodyFlag
from body4d_core.errors import InputError
from body4d_core.rotations import euler_xyz_to_rotvec as euler_to_rotvec
from body4d_core.rotations import rotvec_to_euler_xyz as rotvec_to_euler
from body4d_core.rotations import unwrap_rotvecs
from body4d_core.smoothing import (
    SmoothSettings,
    kalman_smooth,
    smooth_bodies,
)


def _naive(y: np.ndarray, r: np.ndarray, window: float, causal: bool, order: int = 2) -> np.ndarray:
    """Textbook per-signal Kalman + RTS (float64, one frame at a time); order 2 = velocity, 3 = acceleration."""
    from body4d_core.smoothing import _model

    F, Q = _model(order, window)
    n, t, d = y.shape
    out = np.zeros_like(y, dtype=np.float64)
    for i in range(n):
        x, P = np.zeros((order, d)), np.eye(order) * 1e8
        first = int(np.argmax(np.isfinite(r[i])))
        xs, Ps, Pps = [], [], []
        for k in range(t):
            xp, Pp = (x, P) if k <= first else (F @ x, F @ P @ F.T + Q)
            if np.isfinite(r[i, k]):
                g = Pp[:, 0] / (Pp[0, 0] + r[i, k])
                x, P = xp + np.outer(g, y[i, k] - xp[0]), Pp - np.outer(g, Pp[0])
            else:
                x, P = xp, Pp
            xs.append(x), Ps.append(P), Pps.append(Pp)
        if causal:
            out[i] = [s[0] for s in xs]
            continue
        sm = xs[-1]
        out[i, -1] = sm[0]
        for k in range(t - 2, -1, -1):
            C = Ps[k] @ F.T @ np.linalg.inv(Pps[k + 1])
            sm = xs[k] + C @ (sm - F @ xs[k])
            out[i, k] = sm[0]
    return out


@pytest.mark.parametrize("causal", [False, True])
def test_blocked_solver_matches_textbook_filter(causal: bool) -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(size=(3, 57, 4)).cumsum(1)
    r = np.ones((3, 57))
    r[0, 10:20] = np.inf
    r[1, :5] = np.inf
    r[2, 30] = 5.0
    r[2, 40:] = 2.0
    got = kalman_smooth(y, r, window=3.0, causal=causal)
    want = _naive(y, r, 3.0, causal)
    np.testing.assert_allclose(got, want, atol=2e-4)


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("t", [203, 7])
def test_shared_gain_solver_matches_textbook_to_1e6(order: int, causal: bool, t: int) -> None:
    """Gaps, a late start, an early end, per-frame noise levels, identical rows: within 1e-6 of the signal
    magnitude (float32; the acceleration model's extrapolation weights across a gap on a 7-frame track
    cancel more, 5e-6 there)."""
    rng = np.random.default_rng(order * 10 + t)
    y = 4.0 + rng.normal(size=(4, t, 5)).cumsum(1) * 0.2
    r = rng.uniform(0.5, 3.0, size=(4, t))
    r[0, 2:5] = np.inf
    r[1, :3] = np.inf
    r[1, -2:] = np.inf
    r[3] = r[2]  # two identities sharing one observation pattern share one recursion
    y[r == np.inf] = np.nan  # values on unobserved frames are ignored
    motion = "velocity" if order == 2 else "acceleration"
    got = kalman_smooth(y, r, window=2.5, motion=motion, causal=causal, block=4)
    want = _naive(np.nan_to_num(y), r, 2.5, causal, order)
    assert got.dtype == np.float32 and got.shape == y.shape
    tol = 1e-6 if order == 2 or t > 100 else 5e-6
    np.testing.assert_allclose(got, want, rtol=0, atol=tol * np.abs(want).max())


@pytest.mark.parametrize("motion", ["velocity", "acceleration"])
@pytest.mark.parametrize("causal", [False, True])
def test_constant_velocity_passes_unchanged(motion: str, causal: bool) -> None:
    t = np.arange(200, dtype=np.float64)
    y = np.stack([0.5 * t - 3.0, -0.01 * t + 2.0], -1)[None]
    out = kalman_smooth(y, np.ones((1, 200)), window=6.0, motion=motion, causal=causal)
    np.testing.assert_allclose(out[0, 5:], y[0, 5:], atol=1e-3)


def test_gap_is_interpolated_not_held() -> None:
    t = np.arange(60, dtype=np.float64)
    y = (0.1 * t)[None, :, None]
    r = np.ones((1, 60))
    r[0, 20:35] = np.inf
    out = kalman_smooth(np.where(np.isfinite(r)[..., None], y, np.nan), r, window=4.0)
    np.testing.assert_allclose(out[0, 20:35, 0], 0.1 * t[20:35], atol=1e-3)
    assert np.all(np.diff(out[0, 19:36, 0]) > 0.09)  # moving every frame, never frozen


def test_causal_uses_no_future_frame() -> None:
    rng = np.random.default_rng(1)
    y = rng.normal(size=(2, 80, 3)).cumsum(1)
    y2 = y.copy()
    y2[:, 50:] += rng.normal(size=(2, 30, 3)) * 10
    r = np.ones((2, 80))
    a = kalman_smooth(y, r, causal=True)
    b = kalman_smooth(y2, r, causal=True)
    np.testing.assert_array_equal(a[:, :50], b[:, :50])
    assert np.abs(a[:, 50:] - b[:, 50:]).max() > 1.0
    off_a, off_b = kalman_smooth(y, r), kalman_smooth(y2, r)
    assert np.abs(off_a[:, 45:50] - off_b[:, 45:50]).max() > 1e-3  # offline does look ahead


@pytest.mark.parametrize("passes", [0, 1, 2])
def test_causal_bodies_use_no_future_frame(passes: int) -> None:
    """Whole pipeline in causal mode (gating, gap filling, damping): changing frames >= 40 never moves earlier output."""
    rng = np.random.default_rng(5)
    b = _bodies(n=2, t=70)
    p = {k: v + rng.normal(scale=0.01, size=v.shape).astype(np.float32) for k, v in b.params.items()}
    flags = b.flags.copy()
    flags[0, 20:26] = BodyFlag.MISSING
    flags[1, 44:50] = BodyFlag.MISSING
    kp = b.keypoints_2d + rng.normal(size=b.keypoints_2d.shape).astype(np.float32)
    a = b.replace(params=p, flags=flags, keypoints_2d=kp)
    p2 = {k: v.copy() for k, v in p.items()}
    for v in p2.values():
        v[:, 40:] += rng.normal(scale=0.5, size=v[:, 40:].shape).astype(np.float32)
    p2["cam_t"][:, 55] += 3.0  # an outlier after the cut
    flags2 = flags.copy()
    flags2[:, 60:] = BodyFlag.MISSING
    kp2 = kp.copy()
    kp2[:, 40:] *= 3.0
    c = b.replace(params=p2, flags=flags2, keypoints_2d=kp2)
    settings = SmoothSettings(mode="causal", gate_passes=passes, lock_shape=False)
    out_a, out_c = smooth_bodies(a, settings), smooth_bodies(c, settings)
    for name in ("global_rot", "body_pose", "cam_t", "hand_pose"):
        np.testing.assert_array_equal(out_a.params[name][:, :40], out_c.params[name][:, :40])
    np.testing.assert_array_equal(out_a.keypoints_2d[:, :40], out_c.keypoints_2d[:, :40])
    np.testing.assert_array_equal(out_a.flags[:, :40], out_c.flags[:, :40])
    assert np.abs(out_a.params["cam_t"][:, 40:] - out_c.params["cam_t"][:, 40:]).max() > 0.1


def test_causal_innovation_gate_rejects_outlier() -> None:
    b = _bodies(n=1, t=80)
    p = {k: v.copy() for k, v in b.params.items()}
    p["cam_t"][0, 50] += 2.0
    p["body_pose"][0, 50] += 1.0
    kp = b.keypoints_2d.copy()
    kp[0, 50] += 200.0
    bad = b.replace(params=p, keypoints_2d=kp)
    gated = smooth_bodies(bad, SmoothSettings(mode="causal"))
    loose = smooth_bodies(bad, SmoothSettings(mode="causal", outlier_threshold=0))
    err = lambda out: np.abs(out.params["cam_t"][0, 50:53] - b.params["cam_t"][0, 50:53]).max()  # noqa: E731
    assert err(gated) < 0.02 < 0.3 < err(loose)


def test_noise_is_reduced() -> None:
    rng = np.random.default_rng(2)
    t = np.arange(300)
    truth = np.sin(t / 20.0)[None, :, None]
    noisy = truth + rng.normal(scale=0.05, size=truth.shape)
    out = kalman_smooth(noisy, np.ones((1, 300)), window=4.0)
    assert np.abs(out - truth).mean() < 0.5 * np.abs(noisy - truth).mean()


def test_rotation_conversions_match_roma() -> None:
    """Our numpy Euler <-> rotation-vector maps agree with roma's "xyz" (extrinsic) convention."""
    roma = pytest.importorskip("roma")
    import torch

    rng = np.random.default_rng(4)
    e = rng.uniform(-np.pi, np.pi, size=(500, 3))
    e[:, 1] *= 0.49
    want = roma.rotmat_to_rotvec(roma.euler_to_rotmat("xyz", torch.tensor(e))).numpy()
    np.testing.assert_allclose(euler_to_rotvec(e), want, atol=1e-9)
    rv = roma.rotmat_to_rotvec(roma.random_rotmat(500, dtype=torch.float64)).numpy()
    rv[:3] *= 1e-10  # tiny angles
    want = roma.rotmat_to_euler("xyz", roma.rotvec_to_rotmat(torch.tensor(rv))).numpy()
    np.testing.assert_allclose(rotvec_to_euler(rv), want, atol=1e-9)
    lock = np.array([[0.3, np.pi / 2, 0.2], [-1.0, -np.pi / 2, 2.5]])  # gimbal lock: same rotation
    back = roma.euler_to_rotmat("xyz", torch.tensor(rotvec_to_euler(euler_to_rotvec(lock))))
    np.testing.assert_allclose(back.numpy(), roma.euler_to_rotmat("xyz", torch.tensor(lock)).numpy(), atol=1e-6)


def test_rotvec_unwrap_makes_spins_linear() -> None:
    ang = 0.3 * np.arange(40)  # spins past pi several times
    rv = np.stack([np.zeros_like(ang), ang, np.zeros_like(ang)], -1)
    raw = euler_to_rotvec(rotvec_to_euler(rv))
    assert np.abs(raw).max() <= np.pi + 1e-6
    np.testing.assert_allclose(unwrap_rotvecs(raw), rv, atol=1e-6)


def _bodies(n: int = 2, t: int = 50) -> Bodies:
    b = Bodies.empty(list(range(3, 3 + n)), t, (100, 120))
    tt = np.arange(t)
    p = {k: v.copy() for k, v in b.params.items()}
    p["cam_t"][:] = np.stack([0.01 * tt, 0.02 * tt, 3 + 0.005 * tt], -1)[None]
    p["body_pose"][:] = (0.01 * tt)[None, :, None]
    p["global_rot"][:] = rotvec_to_euler(np.stack([0 * tt, 0.2 * tt, 0 * tt], -1))[None]
    for i in range(n):
        p["shape"][i] = float(i + 1)
        p["scale"][i] = -float(i + 1)
    flags = np.full((n, t), BodyFlag.VISIBLE, np.uint8)
    return b.replace(flags=flags, params=p, keypoints_2d=np.tile((5.0 * tt)[None, :, None, None], (n, 1, 70, 2)))


def test_bodies_constant_motion_and_gap_flags() -> None:
    b = _bodies()
    flags = b.flags.copy()
    flags[0, 20:25] = BodyFlag.MISSING
    flags[1, 30:32] = BodyFlag.OCCLUDED
    p = {k: v.copy() for k, v in b.params.items()}
    p["cam_t"][0, 20:25] = 0.0  # undefined values on missing frames must not leak in
    out = smooth_bodies(b.replace(flags=flags, params=p))
    np.testing.assert_allclose(out.params["cam_t"], b.params["cam_t"], atol=1e-5)
    np.testing.assert_allclose(out.params["body_pose"], b.params["body_pose"], atol=1e-5)
    np.testing.assert_allclose(out.keypoints_2d, b.keypoints_2d, atol=1e-2)
    rv = unwrap_rotvecs(euler_to_rotvec(out.params["global_rot"][0]))
    np.testing.assert_allclose(rv[:, 1], 0.2 * np.arange(50), atol=1e-5)
    assert (out.flags[0, 20:25] == BodyFlag.FILLED).all()
    assert (out.flags[1, 30:32] == BodyFlag.OCCLUDED).all()
    assert (out.flags[0, :20] == BodyFlag.VISIBLE).all()


def test_shape_locked_per_identity_with_median() -> None:
    b = _bodies(n=3)
    p = {k: v.copy() for k, v in b.params.items()}
    p["shape"][1, 7] = 100.0  # one outlier frame
    flags = b.flags.copy()
    flags[2, :10] = BodyFlag.OCCLUDED
    p["shape"][2, :10] = 50.0  # occluded frames must not vote when visible ones exist
    out = smooth_bodies(b.replace(params=p, flags=flags))
    for i, want in enumerate([1.0, 2.0, 3.0]):
        np.testing.assert_array_equal(out.params["shape"][i], np.full((50, 45), want, np.float32))
        np.testing.assert_array_equal(out.params["scale"][i], np.full((50, 28), -want, np.float32))


def test_outlier_frame_is_downweighted() -> None:
    b = _bodies(n=1, t=60)
    p = {k: v.copy() for k, v in b.params.items()}
    p["cam_t"][0, 30] += 5.0
    p["body_pose"][0, 30] += 2.0
    out = smooth_bodies(b.replace(params=p))
    assert np.abs(out.params["cam_t"][0, 30] - b.params["cam_t"][0, 30]).max() < 0.05
    loose = smooth_bodies(b.replace(params=p), SmoothSettings(outlier_threshold=0))
    assert np.abs(loose.params["cam_t"][0, 30] - b.params["cam_t"][0, 30]).max() > 0.3


def test_long_gap_and_track_edges_stay_missing() -> None:
    b = _bodies(n=1, t=100)
    flags = b.flags.copy()
    flags[0, :10] = BodyFlag.MISSING
    flags[0, 30:80] = BodyFlag.MISSING
    flags[0, 95:] = BodyFlag.MISSING
    out = smooth_bodies(b.replace(flags=flags), SmoothSettings(max_gap=20))
    assert (out.flags[0, :10] == BodyFlag.MISSING).all() and (out.flags[0, 95:] == BodyFlag.MISSING).all()
    assert (out.flags[0, 30:80] == BodyFlag.MISSING).all()
    assert (out.params["cam_t"][0, 30:80] == 0).all()
    short = smooth_bodies(_bodies(n=1, t=6).replace(flags=np.array([[0, 0, 1, 1, 1, 0]], np.uint8)))
    assert short.flags.tolist() == [[0, 0, 1, 1, 1, 0]]  # track edges are never invented (default max_gap)
    causal = smooth_bodies(b.replace(flags=flags), SmoothSettings(mode="causal", max_gap=5))
    assert (causal.flags[0, 30:35] == BodyFlag.FILLED).all() and (causal.flags[0, 35:80] == BodyFlag.MISSING).all()


def test_bad_input_errors() -> None:
    b = _bodies(n=1, t=5)
    with pytest.raises(InputError, match="no observed frame"):
        smooth_bodies(b.replace(flags=np.zeros((1, 5), np.uint8)))
    with pytest.raises(InputError, match="mode"):
        SmoothSettings(mode="future")
    with pytest.raises(InputError, match="window"):
        SmoothSettings(window=0)
    with pytest.raises(InputError, match="gate_passes"):
        SmoothSettings(gate_passes=-1)
    with pytest.raises(InputError, match=r"\[N, T\]"):
        kalman_smooth(np.zeros((1, 5, 2)), np.ones((2, 5)))


def test_single_frame_and_short_tracks() -> None:
    out = smooth_bodies(_bodies(n=2, t=1))
    np.testing.assert_allclose(out.params["cam_t"][:, 0], [[0, 0, 3]] * 2, atol=1e-5)


def test_vertices_smoothed_or_refreshed() -> None:
    b = _bodies(n=1, t=30)
    v = np.zeros((1, 30, 5, 3), np.float32)
    v[..., 0] = (0.01 * np.arange(30))[None, :, None]  # constant velocity
    noisy = v.copy()
    noisy[0, 15, :, 0] += 0.05
    flags = b.flags.copy()
    flags[0, 10] = BodyFlag.MISSING
    out = smooth_bodies(b.replace(vertices=noisy, flags=flags))
    assert np.abs(out.vertices[0, 15] - v[0, 15]).max() < 0.02
    np.testing.assert_allclose(out.vertices[0, 10], v[0, 10], atol=5e-3)  # bridged, not held
    assert np.abs(out.vertices[0, 10, :, 0] - out.vertices[0, 9, :, 0]).min() > 0.005
    seen = []

    def refresh(bodies: Bodies) -> Bodies:
        seen.append(bodies.flags[0, 10])
        return bodies.replace(vertices=np.ones_like(bodies.vertices))

    out = smooth_bodies(b.replace(vertices=noisy, flags=flags), refresh=refresh)
    assert seen == [BodyFlag.FILLED] and (out.vertices == 1).all()


def test_causal_gap_keeps_moving_but_decelerates() -> None:
    b = _bodies(n=1, t=60)
    flags = b.flags.copy()
    flags[0, 30:50] = BodyFlag.MISSING
    out = smooth_bodies(b.replace(flags=flags), SmoothSettings(mode="causal", max_gap=30, gap_damping=0.7))
    x = out.params["cam_t"][0, 29:50, 0]
    step = np.diff(x)
    assert (step > 0).all()  # never frozen
    np.testing.assert_allclose(step[:4], 0.01 * 0.7 ** np.arange(1, 5), rtol=1e-3)  # velocity decays by 0.7
    assert x[-1] - x[0] < 0.01 * 0.7 / 0.3 + 1e-6  # bounded drift
    undamped = smooth_bodies(b.replace(flags=flags), SmoothSettings(mode="causal", max_gap=30, gap_damping=1.0))
    np.testing.assert_allclose(undamped.params["cam_t"][0, 30:50], b.params["cam_t"][0, 30:50], atol=1e-4)
