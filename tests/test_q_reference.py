"""Geometry against numbers produced by the official implementations (fixtures, not their code).

tests/fixtures/reference/sam3d_body_camera.npz was written by bench/reference/gen_sam3d_body_camera.py
from the official SAM-3D-Body camera head with seeded random weights: pose tokens -> (s, tx, ty)
-> camera translation -> 2D keypoints, for off-centre boxes on a non-square 480 x 270 image with
the principal point off the image centre. Our head gets the same weights and inputs; a sign
flip, an x/y swap or the wrong image centre moves the numbers far beyond the tolerance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from body4d_core.sam3d_body.heads import CameraHead, project

FIX = Path(__file__).resolve().parent / "fixtures" / "reference"


@pytest.fixture(scope="module")
def camera_ref():
    with np.load(FIX / "sam3d_body_camera.npz") as z:
        return {k: torch.from_numpy(z[k]) for k in z.files}


def _our_head(ref) -> CameraHead:
    dim, depth, div = ref["dims"].tolist()
    head = CameraHead(dim, depth, div).eval()
    state = {k[2:]: v for k, v in ref.items() if k.startswith("w.")}
    head.load_state_dict(state, strict=True)
    return head


def test_camera_head_weak_perspective_matches_official(camera_ref):
    ref = camera_ref
    with torch.no_grad():
        cam = _our_head(ref)(ref["tokens"], ref["init"])
    torch.testing.assert_close(cam, ref["pred_cam"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("intrin_center", [False, True])
def test_camera_translation_and_keypoints_match_official(camera_ref, intrin_center):
    """Tolerance: 1e-4 relative (float32 rounding); the smallest planted change (a sign) moves it by > 1e-1."""
    ref = camera_ref
    head = _our_head(ref)
    with torch.no_grad():
        cam_t = head.cam_t(ref["pred_cam"], ref["centre"], ref["size"], ref["cam_int"], ref["img_wh"], intrin_center)
        kp2d, depth = project(ref["points"], cam_t, ref["cam_int"])
    k = int(intrin_center)
    torch.testing.assert_close(cam_t, ref[f"cam_t_{k}"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(kp2d, ref[f"kp2d_{k}"], atol=1e-2, rtol=1e-4)
    assert (depth > 0).all()


def test_reference_cases_are_asymmetric(camera_ref):
    """The fixture can tell x from y and the image centre from the principal point."""
    ref = camera_ref
    w, h = ref["img_wh"][0].tolist()
    assert w != h and (ref["cam_int"][:, 0, 2] != w / 2).all() and (ref["cam_int"][:, 1, 2] != h / 2).all()
    assert not torch.allclose(ref["cam_t_0"], ref["cam_t_1"], atol=1e-2)
    c = ref["centre"]
    assert (c[:, 0] < w / 2).any() and (c[:, 0] > w / 2).any() and (c[:, 1] < h / 2).any() and (c[:, 1] > h / 2).any()


# ----------------------------------------------------------------- MoGe-2 FOV


def _has_moge() -> bool:
    import importlib.util

    return importlib.util.find_spec("moge") is not None


@pytest.mark.skipif(not _has_moge(), reason="the moge package is not installed (pip install --no-deps "
                                            "dlr-moge==2.0.0 dlr-utils3d==1.3)")
@pytest.mark.parametrize("level", [0, 9])
def test_moge_focal_matches_official_infer(level):
    """bench/reference/gen_moge_fov.py: official MoGe-2 infer on a non-square image, seed-built tiny weights.
    Our estimate_camera on the same weights and frame gives the official pixel focal (fy * H) to 1e-3."""
    from body4d_core.fov import build_moge, estimate_camera
    from body4d_core.testing.moge import TINY_MOGE_CONFIG

    with np.load(FIX / "moge2_fov.npz") as z:
        ref = {k: z[k] for k in z.files}
    img = ref["image"]
    h, w = img.shape[:2]
    assert h != w
    model = build_moge(TINY_MOGE_CONFIG, seed=int(ref["seed"]))
    frames = np.stack([img, img[::-1]])  # frame 0 is the reference; mode "first" must use only it
    cam = estimate_camera(model, frames, mode="first", resolution_level=level)
    fx, fy, cx, cy = ref[f"pixel_{level}"].tolist()
    assert cam.intrinsics[0, 1] == pytest.approx(fy, rel=1e-3)
    assert cam.intrinsics[1, 1] == pytest.approx(fy, rel=1e-3)
    assert cam.intrinsics[0, 2:].tolist() == [w / 2, h / 2] == [cx, cy]
    assert cam.fov_y_deg() == pytest.approx(np.degrees(2 * np.arctan(h / 2 / fy)), rel=1e-3)


# ----------------------------------------------------------------- Diffusion-VAS sampler


@pytest.fixture(scope="module")
def vas_reference():
    """The fixture's numbers and our pipeline on its seed-built networks (built once per module)."""
    from body4d_core.amodal.sampler import VASPipeline
    from body4d_core.testing.amodal import build_vas_parts

    with np.load(FIX / "diffusion_vas.npz") as z:
        ref = {k: z[k] for k in z.files}
    parts = build_vas_parts("tiny", seed=int(ref["seed"]))
    return ref, VASPipeline(parts["unet"], parts["vae"], parts["image_encoder"], parts["scheduler"])


@pytest.mark.parametrize("guidance", [1.5, 3.0])
def test_vas_sampler_matches_official_pipeline(vas_reference, guidance):
    """bench/reference/gen_diffusion_vas.py: the official DiffusionVASPipeline on the seed-built tiny networks,
    a non-square 2-frame video with an off-centre mask. Ours (upstream embedding layout) agrees to 1e-4."""
    from body4d_core.amodal.config import SamplerConfig

    ref, pipe = vas_reference
    a, b = torch.from_numpy(ref["cond_a"]), torch.from_numpy(ref["cond_b"])
    smp = SamplerConfig(steps=int(ref["steps"]), guidance=guidance, motion_bucket_id=127, fps=8,
                        noise_aug_strength=0.02, decode_chunk_size=a.shape[1], embed_order="upstream")
    out = pipe.generate(a, b, [int(ref["noise_seed"])], smp)
    want = torch.from_numpy(ref[f"frames_{guidance}"])
    assert out.shape == want.shape
    torch.testing.assert_close(out, want, atol=1e-4, rtol=0)
    other = torch.from_numpy(ref[f"frames_{3.0 if guidance == 1.5 else 1.5}"])
    assert (other - want).abs().max() > 1e-3  # the two references differ: guidance is visible in them


# ----------------------------------------------------------------- occlusion rules on a wide frame


def test_occlusion_border_and_extent_rules_keep_height_and_width_apart():
    """On a 40 x 200 frame with a 10% border the bands are 4 rows and 20 columns: each case below flips
    when the two are swapped, in the per-frame rule and in the vectorised scorer alike."""
    from body4d_core.amodal.config import OcclusionConfig
    from body4d_core.amodal.occlusion import Exempt, frame_exemption, in_border, is_long_or_wide, score_frames

    h, w = 40, 200
    cfg = OcclusionConfig(border_fraction=0.1)

    def mask(rows, cols):
        m = np.zeros((h, w), bool)
        m[rows, cols] = True
        return m

    left_band = mask(slice(10, 31), slice(5, 16))  # inside the 20-column band, far from the 4-row bands
    upper_middle = mask(slice(6, 16), slice(60, 101))  # clear of the 4-row band (a 20-row band would hold it)
    assert in_border(left_band, 0.1) and not in_border(upper_middle, 0.1)
    tall = mask(slice(5, 36), slice(90, 111))  # spans 31/40 of the height, 21/200 of the width
    wide = mask(slice(15, 25), slice(20, 121))  # 10/40 of the height, 101/200 of the width
    assert is_long_or_wide(tall, 0.7) and not is_long_or_wide(wide, 0.7)
    big = mask(slice(8, 34), slice(40, 151))  # 26/40 of the height, 111/200 of the width: neither long nor wide
    cases = [(left_band, big, Exempt.BORDER), (upper_middle, big, Exempt.NONE), (upper_middle, tall | upper_middle,
                                                                                 Exempt.LONG_OR_WIDE)]
    vis = np.stack([c[0] for c in cases])
    amo = np.stack([c[1] for c in cases])
    _, codes = score_frames(vis, amo, cfg)
    for k, (v, a, want) in enumerate(cases):
        assert frame_exemption(v, a, cfg) == want, k
        assert codes[k] == int(want), k
