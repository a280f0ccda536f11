"""Floor and gravity: RANSAC plane fit among walls and outliers, floor from feet, world axes."""

from __future__ import annotations

import numpy as np
import pytest

from body4d_core.world.floor import Floor, agree, feet_on, floor_from_depth, floor_from_feet, ransac_plane, world_axes


def _tilted_room(rng: np.random.Generator, tilt_deg: float = 12.0, cam_height: float = 1.5):
    """Points of a floor, a wall and clutter in a camera tilted down by ``tilt_deg`` (OpenCV axes)."""
    a = np.radians(tilt_deg)
    up = np.array([0.0, -np.cos(a), -np.sin(a)])  # world up seen from a camera pitched down
    e1 = np.array([1.0, 0.0, 0.0])
    e2 = np.cross(up, e1)
    e2 /= np.linalg.norm(e2)
    floor_pts = -cam_height * up + rng.uniform(-4, 4, (3000, 1)) * e1 + rng.uniform(1, 10, (3000, 1)) * -e2
    floor_pts += rng.normal(0, 0.01, floor_pts.shape)
    wall = -cam_height * up + 10 * -e2 + rng.uniform(-4, 4, (2000, 1)) * e1 + rng.uniform(0, 3, (2000, 1)) * up
    clutter = rng.uniform(-4, 4, (800, 3)) + np.array([0, 0, 5])
    return np.concatenate([floor_pts, wall, clutter]), up, cam_height


def test_ransac_recovers_floor_among_wall_and_clutter():
    pts, up, h = _tilted_room(np.random.default_rng(0))
    n, d, inl = ransac_plane(pts, up + np.array([0.1, 0.05, 0.0]))  # a rough up prior is enough
    assert np.degrees(np.arccos(n @ up)) < 0.5
    assert abs(d - h) < 0.01
    assert inl[:3000].mean() > 0.9 and inl[3000:5000].mean() < 0.05


def test_ransac_needs_an_upright_plane():
    pts, up, _ = _tilted_room(np.random.default_rng(1))
    wall_only = pts[3000:5000]
    assert ransac_plane(wall_only, up) is None  # a vertical wall is never taken for the floor


def test_floor_from_depth_keeps_points_near_feet():
    pts, up, h = _tilted_room(np.random.default_rng(2))
    e2 = np.cross(up, [1.0, 0.0, 0.0])
    feet = (-h * up - 5.0 * e2 / np.linalg.norm(e2))[None]
    fl = floor_from_depth(pts, up, feet)
    assert fl is not None and fl.source == "depth"
    assert abs(fl.height(feet)[0]) < 0.05 and fl.confidence > 0.5


def test_floor_from_feet_line_uses_up_prior():
    up = np.array([0.0, -1.0, 0.0])
    xs = np.linspace(-2, 2, 60)
    feet = np.stack([xs, np.full(60, 1.4), np.full(60, 6.0)], 1)  # one person walking a line, y down = 1.4 m below
    fl = floor_from_feet(feet, up, sole=0.02)
    assert fl.source == "feet"
    assert np.allclose(fl.normal, up)
    assert abs(fl.offset - 1.42) < 1e-6  # camera height = foot depth below + sole


def test_world_axes_put_floor_at_zero_and_origin_under_point():
    n = np.array([0.0, -0.98, -0.2])
    n /= np.linalg.norm(n)
    fl = Floor(n, 1.5, 1.0, "depth")
    origin = np.array([0.3, 0.5, 6.0])
    A, b = world_axes(fl, origin)
    assert np.isclose(np.linalg.det(A), 1.0) and np.allclose(A @ A.T, np.eye(3))
    o = A @ origin + b
    assert np.allclose(o[[0, 2]], 0.0) and np.isclose(o[1], fl.height(origin))
    on_floor = origin - fl.height(origin) * n + np.array([1.0, 0, 0]) - (n[0]) * n
    assert abs((A @ on_floor + b)[1] - fl.height(on_floor)) < 1e-9


@pytest.mark.parametrize("angle,dh,same", [(3.0, 0.05, True), (20.0, 0.0, False), (0.0, 0.4, False)])
def test_agree(angle, dh, same):
    a = Floor(np.array([0.0, -1.0, 0.0]), 1.5, 1.0, "depth")
    r = np.radians(angle)
    b = Floor(np.array([0.0, -np.cos(r), -np.sin(r)]), 1.5 + dh, 1.0, "feet")
    assert agree(a, b) is same


def test_feet_on_floor_check():
    fl = Floor(np.array([0.0, -1.0, 0.0]), 1.5, 1.0, "depth")
    rng = np.random.default_rng(0)
    feet = np.stack([rng.uniform(-2, 2, 50), 1.5 - 0.02 + rng.normal(0, 0.01, 50), rng.uniform(4, 8, 50)], 1)
    assert feet_on(fl, feet, sole=0.02)
    assert not feet_on(fl, feet - np.array([0, 0.4, 0]), sole=0.02)  # feet 40 cm above the plane
    assert feet_on(fl, feet[:5] - np.array([0, 0.4, 0]), sole=0.02)  # too few feet to object
