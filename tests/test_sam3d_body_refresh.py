"""Geometry regenerated from parameters by the rig matches inference, and follows smoothed parameters."""

import numpy as np
import pytest
from PIL import Image

from body4d_core.data import Camera
from body4d_core.sam3d_body import BodyItem, bodies_from_results, estimate_bodies, tiny_config
from body4d_core.sam3d_body.refresh import refresh_geometry, refresher
from body4d_core.testing.body import random_model
from body4d_core.smoothing import SmoothSettings, smooth_bodies

from .media import DANCING_JPG, DANCING_MASK, need


@pytest.fixture(scope="module")
def estimated():
    img = Image.open(need(DANCING_JPG)).convert("RGB")
    img = img.resize((img.width // 6, img.height // 6))
    m = np.array(Image.open(need(DANCING_MASK)).convert("L").resize(img.size, Image.NEAREST)) > 127
    ys, xs = np.nonzero(m)
    box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
    frames = np.stack([np.array(img)] * 5)
    items = [BodyItem(t, 2, [box[0] + t, box[1], box[2] + t, box[3]], m) for t in (0, 1, 3, 4)]
    model = random_model(tiny_config(), seed=0)
    cam = Camera.default(frames.shape[1:3], 5)
    res = estimate_bodies(model, frames, items, cam.intrinsics, mode="body", return_vertices=True)
    faces = model.faces.detach().cpu().numpy()
    return model, cam, bodies_from_results(items, res, 5, frames.shape[1:3], faces)


def test_refresh_reproduces_inference_geometry(estimated):
    model, cam, bodies = estimated
    again = refresh_geometry(model, bodies, cam)
    seen = bodies.present
    assert np.allclose(again.vertices[seen], bodies.vertices[seen], atol=1e-5)
    assert np.allclose(again.keypoints_3d[seen], bodies.keypoints_3d[seen], atol=1e-5)
    assert np.allclose(again.keypoints_2d[seen], bodies.keypoints_2d[seen], atol=1e-3)
    assert np.allclose(again.extras["model_params"][seen], bodies.extras["model_params"][seen], atol=1e-5)
    assert not again.vertices[~seen].any()


def test_smoothing_with_refresh_gives_geometry_of_the_smoothed_parameters(estimated):
    model, cam, bodies = estimated
    out = smooth_bodies(bodies, SmoothSettings(), refresh=refresher(model, cam))
    assert out.present[0, 2]  # the gap frame is bridged ...
    direct = refresh_geometry(model, out, cam)  # ... and its mesh is the rig's output for its parameters
    assert np.allclose(out.vertices, direct.vertices, atol=1e-6)
    assert np.abs(out.vertices[0, 2]).sum() > 0
