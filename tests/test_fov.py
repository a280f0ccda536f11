"""Tests for body4d_core.fov: focal/FOV maths, MOGE_GEOMETRY input, tiny random MoGe-2 end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from body4d_core import fov
from body4d_core.data import Camera
from body4d_core.errors import Body4DError, InputError, MissingWeightsError, WeightsMismatchError
from body4d_core.testing.moge import TINY_MOGE_CONFIG, build_tiny_moge

from .media import PHOTO, need


def _has_moge() -> bool:
    try:
        import moge.model.v2  # noqa: F401
    except ImportError:
        return False
    return True


needs_moge = pytest.mark.skipif(not _has_moge(), reason="moge package not installed (pip install --no-deps "
                                                           "dlr-moge==2.0.0 dlr-utils3d==1.3)")


# --------------------------------------------------------------------------- maths


def test_fallback_focal_is_exact():
    assert fov.fallback_focal((1080, 1920)) == math.sqrt(1080 ** 2 + 1920 ** 2)
    assert fov.fallback_focal((3, 4)) == 5.0
    cam = fov.resolve_camera((3, 4), 7)
    assert cam.source == "default" and cam.num_frames == 7
    np.testing.assert_array_equal(cam.intrinsics, np.tile([5.0, 5.0, 2.0, 1.5], (7, 1)).astype(np.float32))
    # 16:9 fallback is a ~58.7 deg vertical FOV (upstream note says about 53 for the diagonal-ish guess)
    assert abs(fov.fov_from_focal(fov.fallback_focal((1080, 1920)), 1080) - 2 * math.degrees(
        math.atan(540 / math.hypot(1080, 1920)))) < 1e-12


@pytest.mark.parametrize("deg, height", [(10.0, 480), (45.0, 1080), (60.0, 350), (120.0, 720), (170.0, 64)])
def test_fov_focal_round_trip(deg, height):
    f = fov.focal_from_fov(deg, height)
    assert abs(fov.fov_from_focal(f, height) - deg) < 1e-9
    assert abs(f - height / 2 / math.tan(math.radians(deg) / 2)) < 1e-9
    cam = fov.camera_from_fov(deg, (height, 2 * height), 3)
    assert cam.source == "manual"
    assert abs(cam.fov_y_deg(2) - deg) < 1e-3
    np.testing.assert_allclose(cam.intrinsics[:, 2:], [[height, height / 2]] * 3)


def test_fov_focal_errors():
    with pytest.raises(InputError, match=r"\(0, 180\)"):
        fov.focal_from_fov(180.0, 100)
    with pytest.raises(InputError, match="positive"):
        fov.fov_from_focal(0.0, 100)


def test_pixel_intrinsics_follow_upstream():
    # MoGe normalised K: fx_n = fx / W, fy_n = fy / H, centre 0.5; upstream keeps fy for both axes.
    k = torch.tensor([[[0.9, 0.0, 0.5], [0.0, 1.6, 0.5], [0.0, 0.0, 1.0]]])
    rows = fov.pixel_intrinsics(k, (300, 500))
    np.testing.assert_allclose(rows, [[480.0, 480.0, 250.0, 150.0]], rtol=1e-6)


def test_camera_from_focals_median_interp_and_bad_estimates():
    cam = fov.camera_from_focals([0, 10, 20], np.array([400.0, 500.0, 450.0]), (300, 400), 25)
    np.testing.assert_allclose(cam.intrinsics[:, 1], 450.0)
    per = fov.camera_from_focals([0, 10, 20], np.array([400.0, 500.0, 450.0]), (300, 400), 25, per_frame=True)
    np.testing.assert_allclose(per.intrinsics[[0, 5, 10, 15, 20, 24], 1], [400, 450, 500, 475, 450, 450])
    # negative / NaN / absurd (FOV < 5 deg) estimates are dropped ...
    cam = fov.camera_from_focals([0, 1, 2, 3], np.array([-3.0, np.nan, 1e6, 420.0]), (300, 400), 4)
    np.testing.assert_allclose(cam.intrinsics[:, 1], 420.0)
    assert cam.source == "estimated"
    # ... and if nothing is left, the documented fallback is used
    cam = fov.camera_from_focals([0], np.array([-3.0]), (300, 400), 4)
    assert cam.source == "default" and cam.intrinsics[0, 0] == np.float32(500.0)


def test_sample_frames():
    assert fov.sample_frames(81, "first") == [0]
    assert fov.sample_frames(81, "every_n", 30) == [0, 30, 60]
    assert fov.sample_frames(3, "all") == [0, 1, 2]
    with pytest.raises(InputError, match="unknown FOV mode"):
        fov.sample_frames(3, "median")
    with pytest.raises(InputError, match="every_n must be >= 1"):
        fov.sample_frames(3, "every_n", 0)


# --------------------------------------------------------------------------- other sources


def _geometry(b: int, h: int, w: int, fy_n: float = 1.2) -> dict:
    k = torch.tensor([[0.8, 0.0, 0.5], [0.0, fy_n, 0.5], [0.0, 0.0, 1.0]]).repeat(b, 1, 1)
    return {"intrinsics": k, "image": torch.zeros(b, h, w, 3), "depth": torch.ones(b, h, w)}


def test_moge_geometry_single_frame_broadcasts():
    cam = fov.camera_from_moge_geometry(_geometry(1, 120, 160), (240, 320), 9)
    assert cam.source == "moge_geometry" and cam.num_frames == 9
    # normalised intrinsics transfer to the clip's size: fy = 1.2 * 240
    np.testing.assert_allclose(cam.intrinsics, np.tile([288.0, 288.0, 160.0, 120.0], (9, 1)), rtol=1e-6)


def test_moge_geometry_per_frame_and_median():
    g = _geometry(3, 60, 80)
    g["intrinsics"][:, 1, 1] = torch.tensor([1.0, 2.0, 1.5])
    np.testing.assert_allclose(fov.camera_from_moge_geometry(g, (60, 80), 3).intrinsics[:, 1], 90.0)
    per = fov.camera_from_moge_geometry(g, (60, 80), 3, per_frame=True)
    np.testing.assert_allclose(per.intrinsics[:, 1], [60.0, 120.0, 90.0])


def test_moge_geometry_errors():
    with pytest.raises(InputError, match="holds 2 frames but the clip has 5"):
        fov.camera_from_moge_geometry(_geometry(2, 60, 80), (60, 80), 5)
    with pytest.raises(InputError, match="no intrinsics"):
        fov.camera_from_moge_geometry({"points": torch.zeros(1, 4, 4, 3)}, (60, 80), 5)
    with pytest.raises(InputError, match="another aspect ratio"):
        fov.camera_from_moge_geometry(_geometry(1, 60, 60), (60, 80), 5)
    bad = _geometry(1, 60, 80)
    bad["intrinsics"] = torch.zeros(1, 2, 2)
    with pytest.raises(InputError, match=r"\(B, 3, 3\)"):
        fov.camera_from_moge_geometry(bad, (60, 80), 5)


def test_resolve_camera_priority():
    calls = []

    def estimate():
        calls.append(1)
        return Camera.from_focal(111.0, (60, 80), 2, "estimated")

    g = _geometry(1, 60, 80)
    assert fov.resolve_camera((60, 80), 2, manual_fov=50.0, fov=30.0, moge_geometry=g, estimate=estimate).source == "manual"
    assert abs(fov.resolve_camera((60, 80), 2, fov=30.0, moge_geometry=g).fov_y_deg() - 30.0) < 1e-3
    assert fov.resolve_camera((60, 80), 2, moge_geometry=g, estimate=estimate).source == "moge_geometry"
    assert fov.resolve_camera((60, 80), 2, estimate=estimate).intrinsics[0, 0] == np.float32(111.0)
    assert calls == [1]
    assert fov.resolve_camera((60, 80), 2).source == "default"


def test_camera_frame_count_and_size_mismatch():
    cam = Camera.from_focal(100.0, (60, 80), 4, "manual")
    with pytest.raises(InputError, match="Camera has 4 frames but the clip has 5"):
        fov.check_camera_frames(cam, 5)
    with pytest.raises(InputError, match="camera is for 80x60 frames but the frames are 40x30"):
        fov.check_camera_frames(cam, 4, (30, 40))
    one = Camera.from_focal(100.0, (60, 80), 1, "manual")
    assert fov.check_camera_frames(one, 6, (60, 80)).num_frames == 6


# --------------------------------------------------------------------------- MoGe-2 model


def test_missing_weights_error(tmp_path):
    with pytest.raises(MissingWeightsError) as err:
        fov.load_moge(search_dirs=[tmp_path])
    msg = str(err.value)
    assert "model.pt" in msg and "moge-2-vitl-normal" in msg and "python -m body4d_core setup --models moge" in msg


def test_not_a_moge_checkpoint(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(WeightsMismatchError, match="not an official MoGe-2 model.pt"):
        fov.load_moge_checkpoint(path)
    path.write_bytes(b"garbage")
    with pytest.raises(WeightsMismatchError, match="could not be read"):
        fov.load_moge_checkpoint(path)


def _load_image() -> np.ndarray:
    """The repository's test photo cropped to 350x280 (not square, so a swapped height/width shows)."""
    from PIL import Image

    im = Image.open(need(PHOTO)).convert("RGB").crop((0, 35, 350, 315))
    return np.asarray(im, dtype=np.uint8)


@pytest.fixture(scope="module")
def tiny_moge():
    model = build_tiny_moge(seed=0)
    # Random weights give a focal of arbitrary sign; negating the points head's x, y outputs
    # flips it (xy -> -xy gives focal -> -focal), so the valid-estimate path is exercised.
    probe = torch.rand(1, 3, 56, 84, generator=torch.Generator().manual_seed(0))
    if fov.estimate_normalized_intrinsics(model, probe)[0, 1, 1] < 0:
        last = model.points_head.output_blocks[-1]
        with torch.no_grad():
            last.weight[:2].neg_()
            last.bias[:2].neg_()
    return model


@needs_moge
def test_tiny_moge_end_to_end_on_dancing(tiny_moge, tmp_path):
    img = _load_image()
    h, w = img.shape[:2]
    frames = np.stack([img, img[:, ::-1]])  # 2 frames, uint8
    batch = torch.from_numpy(frames).float().permute(0, 3, 1, 2) / 255.0
    reference = tiny_moge.infer(batch, use_fp16=False)["intrinsics"]  # MoGe's own call, as upstream makes it
    expect = reference[:, 1, 1].numpy() * h

    cam = fov.estimate_camera(tiny_moge, frames, mode="all", per_frame=True, batch_size=1)
    assert cam.source == "estimated" and cam.image_size == (h, w) and cam.num_frames == 2
    np.testing.assert_allclose(cam.intrinsics[:, 1], expect, rtol=1e-4)
    np.testing.assert_allclose(cam.intrinsics[:, 0], cam.intrinsics[:, 1])
    np.testing.assert_allclose(cam.intrinsics[:, 2:], [[w / 2, h / 2]] * 2)

    # "first" on a ComfyUI-style float IMAGE gives frame 0's estimate for every frame
    image = torch.from_numpy(np.repeat(frames[:1], 3, axis=0)).float() / 255.0
    first = fov.estimate_camera(tiny_moge, image, mode="first")
    np.testing.assert_allclose(first.intrinsics[:, 1], expect[0], rtol=1e-4)



@needs_moge
def test_official_checkpoint_layout_loads(tiny_moge, tmp_path):
    path = tmp_path / "moge-2-vitl-normal" / "model.pt"
    path.parent.mkdir()
    torch.save({"model_config": TINY_MOGE_CONFIG, "model": tiny_moge.state_dict()}, path)
    import torch.nn.init as init

    uniform = init.uniform_
    loaded = fov.load_moge(search_dirs=[tmp_path])
    assert init.uniform_ is uniform  # the no-init shortcut used while loading is undone
    ref = tiny_moge.state_dict()
    got = loaded.state_dict()
    assert set(got) == set(ref)
    assert all(torch.equal(got[k], ref[k]) for k in ref)
    assert not loaded.training


@needs_moge
def test_checkpoint_missing_weights_is_a_mismatch(tiny_moge, tmp_path):
    state = {k: v for k, v in tiny_moge.state_dict().items() if not k.startswith("points_head")}
    path = tmp_path / "model.pt"
    torch.save({"model_config": TINY_MOGE_CONFIG, "model": state}, path)
    with pytest.raises(WeightsMismatchError, match="weights missing"):
        fov.load_moge_checkpoint(path)


def test_moge_missing_package_message(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("moge"):
            raise ImportError("No module named 'moge'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(Body4DError, match="dlr-moge==2.0.0"):
        build_tiny_moge()


def test_estimate_camera_rejects_bad_frames():
    with pytest.raises(InputError, match=r"\[T, H, W, C\]"):
        fov.estimate_camera(torch.nn.Linear(1, 1), np.zeros((4, 4, 3), np.uint8))


# --------------------------------------------------------------------------- nodes (over the ComfyUI stand-in)



@pytest.fixture()
def fov_node(pack):
    import importlib

    return importlib.import_module(f"{pack.__name__}.nodes.fov")


def test_fov_node_sources(fov_node):
    frames = torch.rand(4, 30, 40, 3)
    cam, deg = fov_node.FOV.execute(frames, manual_fov=60.0).args
    assert cam.source == "manual" and cam.num_frames == 4 and abs(deg - 60.0) < 1e-3
    cam, deg = fov_node.FOV.execute(frames, fov=40.0).args
    assert cam.source == "manual" and abs(deg - 40.0) < 1e-3
    cam, deg = fov_node.FOV.execute(frames, moge_geometry=_geometry(1, 60, 80, fy_n=1.0)).args
    assert cam.source == "moge_geometry" and abs(deg - 2 * math.degrees(math.atan(0.5))) < 1e-4
    cam, deg = fov_node.FOV.execute(frames).args
    assert cam.source == "default" and cam.intrinsics[0, 1] == np.float32(50.0)


def test_fov_node_errors(fov_node):
    with pytest.raises(Exception, match="holds 2 frames but the clip has 4"):
        fov_node.FOV.execute(torch.rand(4, 60, 80, 3), moge_geometry=_geometry(2, 60, 80))
    with pytest.raises(Exception, match=r"IMAGE batch \[T, H, W, 3\]"):
        fov_node.FOV.execute(torch.rand(60, 80, 3))


def test_load_moge_node_missing_weights(fov_node, pack):
    import folder_paths

    asyncio_run_on_load(pack)
    with pytest.raises(Exception, match="python -m body4d_core setup --models moge") as err:
        fov_node.LoadMoGe.execute(checkpoint="moge-2-vitl-normal")
    assert type(err.value).__name__ == "MissingWeightsError"
    assert "moge" in folder_paths.folder_names_and_paths


def asyncio_run_on_load(pack):
    import asyncio

    ext = asyncio.run(pack.comfy_entrypoint())
    asyncio.run(ext.on_load())


@needs_moge
def test_load_moge_node_and_fov_estimate(fov_node, pack, tiny_moge):
    import os

    import folder_paths

    asyncio_run_on_load(pack)
    target = os.path.join(folder_paths.get_folder_paths("moge")[0], "moge-2-vitl-normal")
    os.makedirs(target, exist_ok=True)
    torch.save({"model_config": TINY_MOGE_CONFIG, "model": tiny_moge.state_dict()}, os.path.join(target, "model.pt"))
    assert "moge-2-vitl-normal" in fov_node.LoadMoGe.GET_SCHEMA().inputs[0].kwargs["options"]
    (handle,) = fov_node.LoadMoGe.execute(checkpoint="moge-2-vitl-normal").args
    frames = torch.rand(3, 42, 56, 3, generator=torch.Generator().manual_seed(1))
    cam, deg = fov_node.FOV.execute(frames, moge_model=handle, mode="first").args
    expect = fov.estimate_camera(tiny_moge, frames, mode="first")
    assert cam.num_frames == 3 and cam.source == expect.source
    np.testing.assert_allclose(cam.intrinsics, expect.intrinsics, rtol=1e-4)
    assert abs(deg - expect.fov_y_deg()) < 1e-3


def _comfy_style(state: dict) -> dict:
    """The backbone keys as ComfyUI core's DINOv2 port names them (query/key/value split), fp16."""
    out = {}
    for k, v in state.items():
        v = v.half() if v.is_floating_point() else v
        pre = "encoder.backbone."
        rel = k[len(pre):] if k.startswith(pre) else None
        if rel is None:
            out[k] = v
        elif rel in fov._BACKBONE_NAMES:
            out[pre + fov._BACKBONE_NAMES[rel]] = v
        elif rel.startswith("blocks."):
            _, idx, sub = rel.split(".", 2)
            if sub.startswith("attn.qkv."):
                for name, part in zip(("query", "key", "value"), v.chunk(3, 0)):
                    out[f"{pre}encoder.layer.{idx}.attention.attention.{name}.{sub.rsplit('.', 1)[1]}"] = part
                continue
            for moge_name, comfy_name in fov._BLOCK_NAMES:
                sub = sub.replace(moge_name, comfy_name)
            out[f"{pre}encoder.layer.{idx}.{sub}"] = v
        else:
            out[k] = v
    return out


@needs_moge
def test_core_style_safetensors_load(tiny_moge, tmp_path):
    from safetensors.torch import save_file

    ref = tiny_moge.state_dict()
    comfy = _comfy_style(ref)
    assert not any(".blocks." in k for k in comfy) and any("attention.attention.query" in k for k in comfy)
    back = fov.meta_backbone_keys(comfy)
    assert set(back) == set(ref)
    path = tmp_path / "moge_2_tiny_fp16.safetensors"
    save_file({k: v.contiguous() for k, v in comfy.items()}, str(path))
    model = fov.load_moge_checkpoint(path, config=TINY_MOGE_CONFIG)
    got = model.state_dict()
    assert all(got[k].dtype == torch.float32 for k in got if got[k].is_floating_point())
    for k in ref:
        torch.testing.assert_close(got[k], ref[k].half().float(), rtol=0, atol=0)
    path.write_bytes(b"not safetensors")
    with pytest.raises(WeightsMismatchError, match="could not be read as safetensors"):
        fov.load_moge_checkpoint(path, config=TINY_MOGE_CONFIG)


@needs_moge
def test_load_moge_node_offers_core_safetensors(fov_node, pack, tiny_moge):
    import os

    import folder_paths
    from safetensors.torch import save_file

    core_dir = os.path.join(folder_paths.models_dir, "geometry_estimation")
    os.makedirs(core_dir, exist_ok=True)
    folder_paths.add_model_folder_path("geometry_estimation", core_dir)
    save_file({k: v.contiguous() for k, v in _comfy_style(tiny_moge.state_dict()).items()},
              os.path.join(core_dir, "moge_2_tiny_fp16.safetensors"))
    options = fov_node.LoadMoGe.GET_SCHEMA().inputs[0].kwargs["options"]
    assert "geometry_estimation/moge_2_tiny_fp16.safetensors" in options
    # the file is routed to the safetensors loader, which expects the ViT-L layout: a clear mismatch here
    with pytest.raises(Exception, match="does not match the MoGe-2 architecture") as err:
        fov_node.LoadMoGe.execute(checkpoint="geometry_estimation/moge_2_tiny_fp16.safetensors")
    assert type(err.value).__name__ == "WeightsMismatchError"
    with pytest.raises(Exception, match="not a file inside models/geometry_estimation"):
        fov_node.LoadMoGe.execute(checkpoint="geometry_estimation/../moge/x.safetensors")


def test_per_frame_focals_drop_single_frame_outliers_but_follow_a_zoom():
    zoom = np.linspace(400.0, 600.0, 9)
    jitter = zoom.copy()
    jitter[4] = 900.0  # one bad estimate
    cam = fov.camera_from_focals(range(9), jitter, (480, 640), 9, per_frame=True)
    # the 400 px outlier is gone: every frame is within one zoom step of the truth, the ends exact
    assert np.abs(cam.intrinsics[:, 1] - zoom).max() <= 25.0 + 1e-3
    np.testing.assert_allclose(cam.intrinsics[[0, 1, 7, 8], 1], zoom[[0, 1, 7, 8]], rtol=1e-6)
    np.testing.assert_allclose(fov.running_median(np.array([1.0, 9.0, 2.0, 3.0]), 5), [1.0, 2.0, 3.0, 3.0])
