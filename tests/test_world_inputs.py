"""World-stage inputs: person masks from tracks, depth from MoGe geometry / a MoGe-like model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from body4d_core.data import Tracks
from body4d_core.errors import InputError
from body4d_core.world.inputs import depth_from_geometry, moge_depth, people_from_tracks


def test_people_union_and_resize():
    m = np.zeros((2, 3, 8, 10), bool)
    m[0, :, 1:3, 1:3] = True
    m[1, 1, 5:7, 6:9] = True
    tr = Tracks.from_masks([1, 2], m)
    out = people_from_tracks(tr, 3, (8, 10))
    assert out.shape == (3, 8, 10) and out[1, 5, 6] and out[0, 1, 1] and not out[0, 5, 6]
    big = people_from_tracks(tr, 3, (16, 20))
    assert big.shape == (3, 16, 20) and big[1, 11, 13]
    with pytest.raises(InputError, match="frames"):
        people_from_tracks(tr, 4, (8, 10))
    assert people_from_tracks(None, 3, (8, 10)) is None


def test_depth_from_geometry_points_mask_and_single_frame():
    pts = torch.zeros(1, 4, 6, 3)
    pts[..., 2] = 3.0
    mask = torch.ones(1, 4, 6, dtype=torch.bool)
    mask[0, 0, 0] = False
    d = depth_from_geometry({"points": pts, "mask": mask}, 5, (8, 12))
    assert d.shape == (5, 8, 12)
    assert np.isnan(d[1:]).all() and np.isnan(d[0, 0, 0]) and np.nanmin(d[0]) == 3.0
    with pytest.raises(InputError, match="depth"):
        depth_from_geometry({"depth": torch.ones(3, 4, 6)}, 5, (4, 6))
    with pytest.raises(InputError, match="neither"):
        depth_from_geometry({"intrinsics": torch.eye(3)}, 5, (4, 6))


class _FakeMoGe(torch.nn.Module):
    """Returns depth = 2 + frame mean brightness, so each frame's depth is identifiable."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.calls = 0

    def infer(self, images, **_):
        self.calls += 1
        b, _, h, w = images.shape
        d = 2.0 + images.mean(dim=(1, 2, 3))[:, None, None].expand(b, h, w)
        return {"depth": d.clone(), "mask": torch.ones(b, h, w, dtype=torch.bool)}


def test_moge_depth_runs_on_sampled_frames():
    frames = np.stack([np.full((6, 8, 3), 25 * i, np.uint8) for i in range(7)])
    model = _FakeMoGe()
    d = moge_depth(model, frames, every_n=3, batch_size=2)
    assert d.shape == (7, 6, 8) and model.calls == 2  # frames 0, 3, 6 in batches of 2
    for i in range(7):
        if i % 3:
            assert np.isnan(d[i]).all()
        else:
            assert np.allclose(d[i], 2.0 + 25 * i / 255.0, atol=1e-5)


def test_moge_depth_hides_only_moges_cpu_autocast_warning():
    """MoGe's infer warns about its fp32 CPU autocast block on every CPU call: that one warning is hidden, others
    still reach the user."""
    import warnings

    from body4d_core.fov import MOGE_CPU_AUTOCAST_WARNING

    class Noisy(_FakeMoGe):
        def infer(self, *args, **kwargs):
            warnings.warn(MOGE_CPU_AUTOCAST_WARNING + ". Disabling autocast.", UserWarning)
            warnings.warn("something else", UserWarning)
            return super().infer(*args, **kwargs)

    frames = np.zeros((2, 6, 8, 3), np.uint8)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        moge_depth(Noisy(), frames)
    assert [str(w.message) for w in seen] == ["something else"]
