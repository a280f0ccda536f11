"""body4d_core.rotations: round trips, independent references, the MHR Euler convention, numpy == torch."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import roma
import torch

from body4d_core import rotations as R

Rotation = pytest.importorskip("scipy.spatial.transform").Rotation

DTYPES = (torch.float32, torch.float64)
TOL = {torch.float32: 2e-5, torch.float64: 1e-12}


def _rng_euler(n: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """Euler angles away from gimbal lock (|pitch| < 1.4)."""
    g = torch.Generator().manual_seed(seed)
    span = torch.tensor([3.1, 1.4, 3.1], dtype=torch.float64)
    e = (torch.rand(n, 3, generator=g, dtype=torch.float64) - 0.5) * 2 * span
    return e.to(dtype)


def _rotmats(n: int, dtype: torch.dtype, seed: int = 1) -> torch.Tensor:
    return roma.random_rotmat(n, dtype=dtype, generator=torch.Generator().manual_seed(seed))


def _rx(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _ry(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rz(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


# --------------------------------------------------------------------------- the Euler convention, pinned by hand


def test_euler_xyz_hand_cases() -> None:
    """Rotating by 90 degrees about one axis moves the basis vectors where the right-hand rule says."""
    quarter = math.pi / 2
    m = R.euler_xyz_to_rotmat(torch.eye(3, dtype=torch.float64) * quarter)
    want = torch.tensor([[[1, 0, 0], [0, 0, -1], [0, 1, 0]],  # x: y -> z
                         [[0, 0, 1], [0, 1, 0], [-1, 0, 0]],  # y: z -> x
                         [[0, -1, 0], [1, 0, 0], [0, 0, 1]]], dtype=torch.float64)  # z: x -> y
    torch.testing.assert_close(m, want, atol=1e-15, rtol=0)
    # extrinsic order: x first, then y, then z  ->  R = Rz Ry Rx (not Rx Ry Rz)
    a, b, c = 0.3, -0.5, 1.1
    got = R.euler_xyz_to_rotmat(torch.tensor([a, b, c], dtype=torch.float64)).numpy()
    np.testing.assert_allclose(got, _rz(c) @ _ry(b) @ _rx(a), atol=1e-15)
    assert not np.allclose(got, _rx(a) @ _ry(b) @ _rz(c), atol=1e-3)
    # XZY is intrinsic: R = Rx(a) Rz(b) Ry(c)
    got = R.euler_XZY_to_rotmat(torch.tensor([a, b, c], dtype=torch.float64)).numpy()
    np.testing.assert_allclose(got, _rx(a) @ _rz(b) @ _ry(c), atol=1e-15)
    # ZYX reads Rz(a) Ry(b) Rx(c): the xyz angles reversed
    zyx = R.rotmat_to_euler_ZYX(torch.tensor(_rz(a) @ _ry(b) @ _rx(c)))
    torch.testing.assert_close(zyx, torch.tensor([a, b, c], dtype=torch.float64), atol=1e-14, rtol=0)
    # quaternion of a 90-degree turn about z, xyzw
    q = R.euler_xyz_to_quat(torch.tensor([0.0, 0.0, quarter], dtype=torch.float64))
    torch.testing.assert_close(q, torch.tensor([0.0, 0.0, math.sqrt(0.5), math.sqrt(0.5)], dtype=torch.float64))


@pytest.mark.parametrize("dtype", DTYPES)
def test_euler_matches_scipy(dtype: torch.dtype) -> None:
    """Each Euler entry point against scipy's conventions of the same name."""
    e = _rng_euler(300, dtype)
    e64 = e.double().numpy()
    tol = TOL[dtype]
    for seq, fn in (("xyz", R.euler_xyz_to_rotmat), ("XZY", R.euler_XZY_to_rotmat)):
        np.testing.assert_allclose(fn(e).double().numpy(), Rotation.from_euler(seq, e64).as_matrix(), atol=tol * 10)
    m = _rotmats(300, dtype)
    m64 = m.double().numpy()
    for seq, fn in (("ZYX", R.rotmat_to_euler_ZYX), ("XZY", R.rotmat_to_euler_XZY), ("xyz", R.rotmat_to_euler_xyz)):
        np.testing.assert_allclose(fn(m).double().numpy(), Rotation.from_matrix(m64).as_euler(seq), atol=tol * 100)
    # quaternions: scipy is xyzw too
    q = R.euler_xyz_to_quat(e).double().numpy()
    want = Rotation.from_euler("xyz", e64).as_quat()
    np.testing.assert_allclose(q * np.sign(q[:, 3:]), want * np.sign(want[:, 3:]), atol=tol * 10)
    rv = R.euler_xyz_to_rotvec(e).double().numpy()
    np.testing.assert_allclose(rv, Rotation.from_euler("xyz", e64).as_rotvec(), atol=tol * 100)


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trips(dtype: torch.dtype) -> None:
    """Every to/from pair inverts the other on valid inputs, batch shapes kept, dtype kept."""
    tol = TOL[dtype] * 50
    e = _rng_euler(60, dtype).reshape(3, 20, 3)
    for fwd, back in ((R.euler_xyz_to_rotmat, R.rotmat_to_euler_xyz), (R.euler_XZY_to_rotmat, R.rotmat_to_euler_XZY)):
        m = fwd(e)
        assert m.shape == (3, 20, 3, 3) and m.dtype == dtype
        out = back(m)
        assert out.shape == e.shape and out.dtype == dtype
        torch.testing.assert_close(out, e, atol=tol, rtol=0)
    rv = R.euler_xyz_to_rotvec(e)
    assert rv.shape == e.shape and rv.dtype == dtype
    torch.testing.assert_close(R.rotvec_to_euler_xyz(rv), e, atol=tol, rtol=0)
    m = _rotmats(40, dtype).reshape(2, 20, 3, 3)
    q = R.rotmat_to_quat(m)
    assert q.shape == (2, 20, 4) and (q[..., 3] >= 0).all()
    torch.testing.assert_close(R.quat_xyzw_to_rotmat(q), m, atol=tol, rtol=0)
    six = R.rotmat_to_rot6d(m)
    assert six.shape == (2, 20, 6)
    torch.testing.assert_close(R.rot6d_to_rotmat(six).reshape(m.shape), m, atol=tol, rtol=0)
    # the 6D features of MHR's correctives are the same two columns, minus the identity's
    delta = R.euler_xyz_to_rot6d_delta(e)
    eye6 = torch.tensor([1.0, 0, 0, 0, 1, 0], dtype=dtype)
    torch.testing.assert_close(delta + eye6, R.rotmat_to_rot6d(R.euler_xyz_to_rotmat(e)), atol=tol, rtol=0)


def test_gimbal_lock_rotvec_to_euler() -> None:
    """At pitch +-pi/2 the angles still rebuild the same rotation (all yaw in the first angle)."""
    lock = np.array([[0.3, np.pi / 2, 0.2], [0.1, -np.pi / 2, -0.4], [2.0, np.pi / 2, -1.0]])
    back = R.rotvec_to_euler_xyz(R.euler_xyz_to_rotvec(lock))
    np.testing.assert_allclose(R.euler_xyz_to_rotmat(back), R.euler_xyz_to_rotmat(lock), atol=1e-6)
    assert np.all(back[:, 2] == 0.0)


def test_rotvec_small_and_large_angles() -> None:
    """Identity and a half turn: the closed forms, with no division by a zero axis."""
    np.testing.assert_array_equal(R.euler_xyz_to_rotvec(np.zeros((2, 3))), np.zeros((2, 3)))
    np.testing.assert_array_equal(R.rotvec_to_euler_xyz(np.zeros((2, 3))), np.zeros((2, 3)))
    rv = R.euler_xyz_to_rotvec(np.array([0.0, 0.0, math.pi]))
    np.testing.assert_allclose(np.abs(rv), [0.0, 0.0, math.pi], atol=1e-12)
    tiny = R.euler_xyz_to_rotvec(np.array([1e-9, 0.0, 0.0]))
    np.testing.assert_allclose(tiny, [1e-9, 0.0, 0.0], rtol=1e-9)


def test_unwrap_rotvecs_makes_a_spin_straight() -> None:
    """A constant spin through the +-pi seam becomes a straight line of rotation vectors."""
    ang = np.linspace(0.0, 3 * np.pi, 40)
    raw = R.euler_xyz_to_rotvec(np.stack([np.zeros_like(ang), np.zeros_like(ang), ang], -1))
    assert np.abs(np.diff(raw[:, 2])).max() > 3.0  # the principal vectors jump at the seam
    out = R.unwrap_rotvecs(raw)
    np.testing.assert_allclose(out[:, 2], ang, atol=1e-9)


# --------------------------------------------------------------------------- quaternions, 6D, angles vs references


@pytest.mark.parametrize("dtype", DTYPES)
def test_quaternions_against_references(dtype: torch.dtype) -> None:
    """Products, rotation of vectors, conjugates and matrices against scipy / roma."""
    g = torch.Generator().manual_seed(3)
    a, b = roma.random_unitquat(50, dtype=dtype, generator=g), roma.random_unitquat(50, dtype=dtype, generator=g)
    v = torch.randn(50, 3, dtype=dtype, generator=g)
    tol = TOL[dtype] * 10
    ra, rb = Rotation.from_quat(a.double().numpy()), Rotation.from_quat(b.double().numpy())
    ab = R.quat_mul(a, b).double().numpy()
    want = (ra * rb).as_quat()
    np.testing.assert_allclose(ab * np.sign(ab[:, 3:]), want * np.sign(want[:, 3:]), atol=tol)
    np.testing.assert_allclose(R.quat_rotate(a, v).double().numpy(), ra.apply(v.double().numpy()), atol=tol)
    np.testing.assert_allclose(R.quat_xyzw_to_rotmat(a).double().numpy(), ra.as_matrix(), atol=tol)
    identity = torch.tensor([0.0, 0, 0, 1], dtype=dtype).expand(50, 4)
    torch.testing.assert_close(R.quat_mul(a, R.quat_conjugate(a)), identity, atol=tol, rtol=0)
    assert torch.equal(R.quat_conjugate(a), roma.quat_conjugation(a))
    m = ra.as_matrix()
    q = R.rotmat_to_quat(m)
    want = ra.as_quat()
    np.testing.assert_allclose(q, want * np.sign(want[:, 3:]), atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rot6d_and_angles(dtype: torch.dtype) -> None:
    """6D -> matrix is Gram-Schmidt (orthonormal, det +1, first column along u); angles vs geodesic distance."""
    x = torch.randn(64, 6, dtype=dtype, generator=torch.Generator().manual_seed(5))
    m = R.rot6d_to_rotmat(x)
    eye = torch.eye(3, dtype=dtype).expand(64, 3, 3)
    torch.testing.assert_close(m.transpose(-1, -2) @ m, eye, atol=TOL[dtype] * 10, rtol=0)
    torch.testing.assert_close(torch.linalg.det(m), torch.ones(64, dtype=dtype), atol=TOL[dtype] * 10, rtol=0)
    torch.testing.assert_close(m[:, :, 0], x[:, :3] / x[:, :3].norm(dim=-1, keepdim=True), atol=TOL[dtype], rtol=0)
    # MHR's 6D: x = u, z from u x v; its Euler angles rebuild that frame
    e = R.sixd_to_euler_xyz(x)
    mm = R.euler_xyz_to_rotmat(e)
    torch.testing.assert_close(mm[:, :, 0], m[:, :, 0], atol=TOL[dtype] * 50, rtol=0)
    z = torch.linalg.cross(x[:, :3], x[:, 3:])
    torch.testing.assert_close(mm[:, :, 2], z / z.norm(dim=-1, keepdim=True), atol=TOL[dtype] * 50, rtol=0)
    a, b = _rotmats(64, dtype, 7), _rotmats(64, dtype, 8)
    want = roma.rotmat_geodesic_distance(a.double(), b.double())
    atol = 1e-3 if dtype == torch.float32 else 1e-7  # acos near pi amplifies float32 rounding
    torch.testing.assert_close(R.rotation_angle(a, b).double(), want, atol=atol, rtol=0)
    a64, b64 = _rotmats(64, torch.float64, 7), _rotmats(64, torch.float64, 8)
    want = roma.rotmat_geodesic_distance(a64, b64).numpy()
    np.testing.assert_allclose(R.rotation_angle(a64.numpy(), b64.numpy()), want, atol=1e-7)


# --------------------------------------------------------------------------- numpy and torch agree


@pytest.mark.parametrize("np_dtype", (np.float32, np.float64))
def test_numpy_and_torch_entry_points_agree(np_dtype: type) -> None:
    """Every function offered for both libraries gives the same numbers (to rounding) and the input's kind."""
    rng = np.random.default_rng(11)
    e = ((rng.random((5, 7, 3)) - 0.5) * np.array([6.2, 2.8, 6.2])).astype(np_dtype)
    et = torch.from_numpy(e)
    tol = 2e-5 if np_dtype == np.float32 else 1e-12
    pairs = [
        (R.euler_xyz_to_rotmat(e), R.euler_xyz_to_rotmat(et)),
        (R.euler_XZY_to_rotmat(e), R.euler_XZY_to_rotmat(et)),
        (R.euler_xyz_to_quat_np(e), R.euler_xyz_to_quat(et)),
        (R.rotmat_to_euler_ZYX(R.euler_xyz_to_rotmat(e)), R.rotmat_to_euler_ZYX(R.euler_xyz_to_rotmat(et))),
        (R.rotmat_to_euler_XZY(R.euler_xyz_to_rotmat(e)), R.rotmat_to_euler_XZY(R.euler_xyz_to_rotmat(et))),
        (R.rotvec_to_euler_xyz(R.euler_xyz_to_rotvec(e)), R.rotvec_to_euler_xyz(R.euler_xyz_to_rotvec(et))),
    ]
    q = R.euler_xyz_to_quat_np(e)
    qt = torch.from_numpy(q)
    v = rng.standard_normal((5, 7, 3)).astype(np_dtype)
    pairs += [
        (R.quat_mul_np(q, q[::-1].copy()), R.quat_mul(qt, qt.flip(0))),
        (R.quat_rotate_np(q, v), R.quat_rotate(qt, torch.from_numpy(v))),
        (R.quat_xyzw_to_rotmat(q), R.quat_xyzw_to_rotmat(qt)),
        (R.quat_canonical(q), R.quat_canonical(qt)),
        (R.rotmat_to_quat(R.quat_xyzw_to_rotmat(q)), R.rotmat_to_quat(R.quat_xyzw_to_rotmat(qt))),
    ]
    for i, (a, b) in enumerate(pairs):
        assert isinstance(a, np.ndarray) and isinstance(b, torch.Tensor), i
        assert a.shape == tuple(b.shape), i
        np.testing.assert_allclose(a.astype(np.float64), b.double().numpy(), atol=tol * 50, err_msg=str(i))
    # numpy rotvec / quaternion-from-matrix work in float64 whatever comes in; torch keeps the dtype
    assert R.euler_xyz_to_rotvec(e).dtype == np.float64 and R.euler_xyz_to_rotvec(et).dtype == et.dtype
    assert R.euler_xyz_to_rotmat(e).dtype == np_dtype


def test_rig_rotations_script() -> None:
    """The quaternion helpers the MHR rig calls compile under TorchScript (the rig files are scripted)."""
    q = torch.tensor([[0.1, 0.2, 0.3, 0.9]])
    e = torch.tensor([[0.3, -0.5, 1.1]])
    with warnings.catch_warnings():  # torch.jit.script's deprecation notice
        warnings.simplefilter("ignore", FutureWarning)
        for fn, args in ((R.quat_mul, (q, q)), (R.quat_rotate, (q, e)), (R.quat_conjugate, (q,)),
                         (R.euler_xyz_to_quat, (e,)), (R.euler_xyz_to_rot6d_delta, (e,))):
            assert torch.equal(torch.jit.script(fn)(*args), fn(*args)), fn.__name__


def test_quat_continuous_keeps_one_hemisphere() -> None:
    """Keys of a slow spin given with alternating signs come back with consecutive dot products > 0."""
    ang = np.linspace(0.0, 4 * np.pi, 30)
    q = R.euler_xyz_to_quat_np(np.stack([np.zeros_like(ang), ang, np.zeros_like(ang)], -1))
    flipped = q * np.where(np.arange(30) % 2, -1.0, 1.0)[:, None]
    out = R.quat_continuous(flipped.copy())
    assert ((out[1:] * out[:-1]).sum(-1) > 0).all()
    np.testing.assert_allclose(np.abs((out * q).sum(-1)), 1.0, atol=1e-12)  # same rotations
    assert not ((flipped[1:] * flipped[:-1]).sum(-1) > 0).all()


def test_premultiply_euler_is_the_matrix_product() -> None:
    e = _rng_euler(200, torch.float64, seed=3).numpy()
    m = _rotmats(200, torch.float64, seed=4).numpy()
    out = R.premultiply_euler_xyz(m, e)
    want = np.stack([m[i] @ _rz(e[i, 2]) @ _ry(e[i, 1]) @ _rx(e[i, 0]) for i in range(len(e))])
    got = np.stack([_rz(a[2]) @ _ry(a[1]) @ _rx(a[0]) for a in out])
    assert np.abs(got - want).max() < 1e-10
    assert not np.allclose(out, e)  # the rotation was applied
