"""SAM-3D-Body: geometry helpers, the ViT against transformers, end-to-end batched inference on a real photo."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from body4d_core.data import BodyFlag, Camera
from body4d_core.errors import InputError
from body4d_core.sam3d_body import BodyItem, bodies_from_results, estimate_bodies, tiny_config
from body4d_core.sam3d_body import crop as C
from body4d_core import rotations as R
from body4d_core.sam3d_body import pose_packing as pp
from body4d_core.testing.body import random_model
from body4d_core.sam3d_body.vit import DinoV3ViT

from .media import PHOTO, PHOTO_MASK, need



@pytest.fixture(scope="module")
def photo() -> tuple[np.ndarray, np.ndarray, list[float]]:
    """The repository's test photo (350x350), its person mask and the mask's box."""
    img = Image.open(need(PHOTO)).convert("RGB")
    mask = Image.open(need(PHOTO_MASK)).convert("L")
    m = np.array(mask) > 127
    ys, xs = np.nonzero(m)
    return np.array(img), m, [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


@pytest.fixture(scope="module")
def model():
    return random_model(tiny_config(), seed=0)


def _items(photo, n: int = 4) -> tuple[np.ndarray, list[BodyItem]]:
    img, mask, box = photo
    frames = np.stack([img, img[:, ::-1].copy(), img, img])[:n]
    x0, y0, x1, y1 = box
    w = frames.shape[2]
    items = [
        BodyItem(0, 7, box, mask),
        BodyItem(1, 7, [w - x1, y0, w - x0, y1], mask[:, ::-1].copy()),
        BodyItem(2, 3, [x0 + 5, y0 + 10, x1 - 5, y1], None),
        BodyItem(3, 3, box, mask, occluded=True),
    ]
    return frames, items[:n]


# ------------------------------------------------------------------ maths


def test_euler_conventions_round_trip() -> None:
    torch.manual_seed(0)
    e = (torch.rand(200, 3, dtype=torch.float64) - 0.5) * torch.tensor([3.0, 1.4, 3.0], dtype=torch.float64)
    assert torch.allclose(R.rotmat_to_euler_XZY(R.euler_XZY_to_rotmat(e)), e, atol=1e-9)
    assert torch.allclose(R.rotmat_to_euler_xyz(R.euler_xyz_to_rotmat(e.flip(-1))), e.flip(-1), atol=1e-9)
    m = R.euler_xyz_to_rotmat(e)
    assert torch.allclose(R.rotmat_to_euler_ZYX(m), e.flip(-1), atol=1e-9)  # intrinsic ZYX = reversed extrinsic xyz
    a = R.rotation_angle(R.euler_xyz_to_rotmat(torch.tensor([[0.3, 0.0, 0.0]])), torch.eye(3)[None])
    assert a.item() == pytest.approx(0.3, abs=1e-6)


def test_rotations_match_roma() -> None:
    roma = pytest.importorskip("roma")
    m = roma.random_rotmat(300).double()
    assert torch.allclose(R.rotmat_to_euler_ZYX(m), roma.rotmat_to_euler("ZYX", m), atol=1e-5)
    assert torch.allclose(R.rotmat_to_euler_XZY(m), roma.rotmat_to_euler("XZY", m), atol=1e-5)
    x = torch.randn(50, 6, dtype=torch.float64)
    assert torch.allclose(R.rot6d_to_rotmat(x), roma.special_gramschmidt(x.reshape(-1, 2, 3).permute(0, 2, 1)))
    q = roma.random_unitquat(50).double()
    assert torch.allclose(R.quat_xyzw_to_rotmat(q), roma.unitquat_to_rotmat(q))


def test_body_pose_packing_round_trip() -> None:
    p = (torch.rand(3, 133, dtype=torch.float64) - 0.5) * 2
    assert torch.allclose(pp.body_cont_to_params(pp.body_params_to_cont(p)), p, atol=1e-9)
    hand = torch.zeros(2, 54)
    hand[:, [0, 4]] = 1.0  # identity 6D blocks / zero angles -> all-zero hand params
    assert pp.hand_cont_to_params(hand).shape == (2, 27)


def test_crop_boxes_square_and_affine() -> None:
    boxes = torch.tensor([[10.0, 20.0, 110.0, 320.0], [0.0, 0.0, 400.0, 100.0]], dtype=torch.float64)
    centre, side = C.crop_boxes(boxes, 1.25)
    assert centre.tolist() == [[60.0, 170.0], [200.0, 50.0]]
    # tall box: height 300*1.25 dominates; wide box: width 500 -> 3:4 height 666.7 -> square 666.7
    assert side[0].item() == pytest.approx(375.0)
    assert side[1].item() == pytest.approx(500 / 0.75)
    a = C.affine_matrices(centre, side, 64)
    corner = torch.stack([centre[:, 0] - side / 2, centre[:, 1] - side / 2, torch.ones(2, dtype=torch.float64)], 1)
    mapped = torch.einsum("bij,bj->bi", a, corner)
    assert torch.allclose(mapped, torch.zeros(2, 2, dtype=torch.float64), atol=1e-9)


def test_warp_samples_the_right_pixels() -> None:
    img = torch.zeros(1, 1, 50, 80)
    img[0, 0, 10:20, 30:40] = 1.0
    box = torch.tensor([[30.0, 10.0, 40.0, 20.0]], dtype=torch.float64)
    centre, side = C.crop_boxes(box, 1.0)
    a = C.affine_matrices(centre, side, 40)
    crop = C.warp(img, C.sample_grid(a, 40, (50, 80)))
    # the 10x10 box becomes a 3:4-then-square 13.33 px crop: the square sits in the middle of it
    assert crop[0, 0, 20, 20].item() == pytest.approx(1.0)
    assert crop[0, 0, 1, 1].item() == pytest.approx(0.0)
    flipped = C.warp(img.flip(-1), C.sample_grid(a, 40, (50, 80), flip=True))
    assert torch.allclose(flipped, crop, atol=1e-5)


def test_windowed_mask_warp_equals_full_warp() -> None:
    rng = np.random.default_rng(1)
    mask = rng.random((70, 90)) > 0.5
    boxes = torch.tensor([[20.0, 10.0, 50.0, 60.0], [-30.0, -5.0, 10.0, 40.0], [80.0, 60.0, 95.0, 75.0]],
                         dtype=torch.float64)
    centre, side = C.crop_boxes(boxes, 1.25)
    grid = C.sample_grid(C.affine_matrices(centre, side, 32), 32, (70, 90))
    full = C.warp(torch.from_numpy(mask).float()[None, None], grid)
    for i in range(3):
        win = C.warp_window(mask, grid[i], torch.device("cpu"))
        assert torch.allclose(win, full[i], atol=1e-5), i


# ------------------------------------------------------------------ backbone vs transformers


def test_vit_matches_transformers_dinov3() -> None:
    tf = pytest.importorskip("transformers")
    torch.manual_seed(0)
    ours = DinoV3ViT(dim=64, depth=2, heads=4, hidden=96, swiglu=True, patch=16, registers=4).eval()
    for p in ours.parameters():
        p.data.normal_(0, 0.2)
    cfg = tf.DINOv3ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
                             patch_size=16, num_register_tokens=4, use_gated_mlp=True, hidden_act="silu",
                             key_bias=False, query_bias=True, value_bias=True, proj_bias=True, mlp_bias=True,
                             layerscale_value=1.0, image_size=64, layer_norm_eps=1e-5, rope_theta=100.0)
    hf = tf.DINOv3ViTModel(cfg).eval()
    sd = {"embeddings.cls_token": ours.cls_token, "embeddings.register_tokens": ours.storage_tokens,
          "embeddings.mask_token": ours.mask_token.view(1, 1, -1),
          "embeddings.patch_embeddings.weight": ours.patch_embed.proj.weight,
          "embeddings.patch_embeddings.bias": ours.patch_embed.proj.bias,
          "norm.weight": ours.norm.weight, "norm.bias": ours.norm.bias}
    for i, b in enumerate(ours.blocks):
        q, k, v = b.attn.qkv.weight.chunk(3)
        qb, _, vb = b.attn.qkv.bias.chunk(3)
        pre = f"model.layer.{i}."
        sd.update({pre + "norm1.weight": b.norm1.weight, pre + "norm1.bias": b.norm1.bias,
                   pre + "norm2.weight": b.norm2.weight, pre + "norm2.bias": b.norm2.bias,
                   pre + "attention.q_proj.weight": q, pre + "attention.q_proj.bias": qb,
                   pre + "attention.k_proj.weight": k, pre + "attention.v_proj.weight": v,
                   pre + "attention.v_proj.bias": vb, pre + "attention.o_proj.weight": b.attn.proj.weight,
                   pre + "attention.o_proj.bias": b.attn.proj.bias, pre + "layer_scale1.lambda1": b.ls1.gamma,
                   pre + "layer_scale2.lambda1": b.ls2.gamma, pre + "mlp.gate_proj.weight": b.mlp.w1.weight,
                   pre + "mlp.gate_proj.bias": b.mlp.w1.bias, pre + "mlp.up_proj.weight": b.mlp.w2.weight,
                   pre + "mlp.up_proj.bias": b.mlp.w2.bias, pre + "mlp.down_proj.weight": b.mlp.w3.weight,
                   pre + "mlp.down_proj.bias": b.mlp.w3.bias})
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    assert not unexpected and all("inv_freq" in k for k in missing), (missing, unexpected)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ref = hf(pixel_values=x).last_hidden_state[:, 5:]
        got = ours(x).flatten(2).transpose(1, 2)
    assert torch.allclose(got, ref, atol=1e-4), (got - ref).abs().max()


# ------------------------------------------------------------------ end to end


def test_body_mode_on_real_photo(model, photo) -> None:
    img, mask, box = photo
    res = estimate_bodies(model, img[None], [BodyItem(0, 1, box, mask)], mode="body", return_vertices=True)
    assert len(res) == 1
    r = res[0]
    shapes = {"global_rot": (3,), "body_pose": (133,), "hand_pose": (108,), "shape": (45,), "scale": (28,),
              "expr": (72,), "cam_t": (3,), "keypoints_3d": (70, 3), "keypoints_2d": (70, 2),
              "model_params": (204,), "vertices": (40, 3)}
    for k, s in shapes.items():
        assert r[k].shape == s, k
        assert np.isfinite(r[k]).all(), k
    assert r["cam_t"][2] > 0  # in front of the camera
    assert np.abs(r["expr"]).max() == 0.0  # the face head is disabled like upstream
    # keypoints_2d are the pinhole projection of keypoints_3d + cam_t with the default camera
    h, w = img.shape[:2]
    f = math.hypot(h, w)
    p = r["keypoints_3d"] + r["cam_t"]
    uv = p[:, :2] / p[:, 2:] * f + np.array([w / 2, h / 2])
    np.testing.assert_allclose(r["keypoints_2d"], uv, rtol=1e-4, atol=1e-2)
    # model params carry 10x global translation (0 here), the global rotation, then body pose
    np.testing.assert_allclose(r["model_params"][3:6], r["global_rot"], atol=1e-6)
    again = estimate_bodies(model, img[None], [BodyItem(0, 1, box, mask)], mode="body", return_vertices=True)[0]
    for k in shapes:
        np.testing.assert_array_equal(again[k], r[k])


def test_mask_and_box_change_the_result(model, photo) -> None:
    img, mask, box = photo
    a = estimate_bodies(model, img[None], [BodyItem(0, 1, box, mask)])[0]
    b = estimate_bodies(model, img[None], [BodyItem(0, 1, box, None)])[0]
    c = estimate_bodies(model, img[None], [BodyItem(0, 1, [box[0] + 20, box[1], box[2], box[3]], mask)])[0]
    assert not np.allclose(a["body_pose"], b["body_pose"])
    assert not np.allclose(a["cam_t"], c["cam_t"])


@pytest.mark.parametrize("mode", ["body", "full"])
def test_batch_size_invariance(model, photo, mode) -> None:
    frames, items = _items(photo)
    one = estimate_bodies(model, frames, items, mode=mode, batch_size=1)
    four = estimate_bodies(model, frames, items, mode=mode, batch_size=4)
    for a, b in zip(one, four):
        assert set(a) == set(b)
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-4, err_msg=f"{mode}:{k}")


def test_full_mode_outputs_hand_boxes(model, photo) -> None:
    img, mask, box = photo
    r = estimate_bodies(model, img[None], [BodyItem(0, 1, box, mask)], mode="full")[0]
    for k in ("lhand_box", "rhand_box"):
        b = r[k]
        assert b.shape == (4,) and b[2] > b[0] and b[3] > b[1]
        assert b[2] - b[0] == pytest.approx(b[3] - b[1], rel=1e-4)  # hand boxes are square
    body = estimate_bodies(model, img[None], [BodyItem(0, 1, box, mask)], mode="body")[0]
    assert r["body_pose"].shape == body["body_pose"].shape


def test_bodies_keyed_by_object_id(model, photo) -> None:
    frames, items = _items(photo)
    res = estimate_bodies(model, frames, items)
    bodies = bodies_from_results(items, res, num_frames=5, image_size=frames.shape[1:3], obj_ids=[3, 7, 9])
    assert bodies.obj_ids.tolist() == [3, 7, 9]
    i7, i3 = bodies.index_of(7), bodies.index_of(3)
    assert bodies.flags[i7].tolist() == [BodyFlag.VISIBLE, BodyFlag.VISIBLE, 0, 0, 0]
    assert bodies.flags[i3].tolist() == [0, 0, BodyFlag.VISIBLE, BodyFlag.OCCLUDED, 0]
    assert not bodies.present[bodies.index_of(9)].any()
    np.testing.assert_array_equal(bodies.params["body_pose"][i3, 3], res[3]["body_pose"])
    np.testing.assert_array_equal(bodies.params["cam_t"][i7, 1], res[1]["cam_t"])
    assert bodies.keypoints_2d.shape == (3, 5, 70, 2)
    assert bodies.extras["model_params"].shape == (3, 5, 204)
    assert bodies.extras["joint_coords"].shape == (3, 5, 127, 3)
    assert bodies.extras["joint_global_rots"].shape == (3, 5, 127, 3, 3)


def test_intrinsics_forms_agree(model, photo) -> None:
    img, mask, box = photo
    h, w = img.shape[:2]
    cam = Camera.from_focal(500.0, (h, w), 1, "manual")
    k33 = cam.K(0)[None]
    a = estimate_bodies(model, img[None], [BodyItem(0, 1, box, mask)], intrinsics=cam)[0]
    b = estimate_bodies(model, img[None], [BodyItem(0, 1, box, mask)], intrinsics=k33)[0]
    d = estimate_bodies(model, img[None], [BodyItem(0, 1, box, mask)])[0]
    np.testing.assert_allclose(a["cam_t"], b["cam_t"], rtol=1e-6)
    assert not np.allclose(a["cam_t"], d["cam_t"])


# ------------------------------------------------------------------ bad inputs


def test_bad_inputs_have_clear_errors(model, photo) -> None:
    img, mask, box = photo
    frames = img[None]
    with pytest.raises(InputError, match="empty or invalid box"):
        estimate_bodies(model, frames, [BodyItem(0, 1, [10, 10, 10, 50], None)])
    with pytest.raises(InputError, match="empty or invalid box"):
        estimate_bodies(model, frames, [BodyItem(0, 1, [np.nan, 0, 5, 5], None)])
    with pytest.raises(InputError, match="mask of object 1 on frame 0 is"):
        estimate_bodies(model, frames, [BodyItem(0, 1, box, mask[:-3])])
    with pytest.raises(InputError, match="refers to frame 4 but there are 1 frames"):
        estimate_bodies(model, frames, [BodyItem(4, 1, box, None)])
    with pytest.raises(InputError, match="appears twice"):
        estimate_bodies(model, frames, [BodyItem(0, 1, box, None), BodyItem(0, 1, box, None)])
    with pytest.raises(InputError, match="mode must be one of"):
        estimate_bodies(model, frames, [BodyItem(0, 1, box, None)], mode="hands")
    with pytest.raises(InputError, match="frames must be an RGB array"):
        estimate_bodies(model, img, [BodyItem(0, 1, box, None)])
    with pytest.raises(InputError, match="intrinsics cover 2 frames"):
        estimate_bodies(model, frames, [BodyItem(0, 1, box, None)], intrinsics=np.ones((2, 4), np.float32))
    with pytest.raises(InputError, match="batch_size"):
        estimate_bodies(model, frames, [BodyItem(0, 1, box, None)], batch_size=0)
    assert estimate_bodies(model, frames, []) == []


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu_and_bf16_is_close(model, photo) -> None:
    img, mask, box = photo
    items = [BodyItem(0, 1, box, mask)]
    cpu = estimate_bodies(model, img[None], items, mode="full")[0]
    gpu_model = random_model(tiny_config(), seed=0).cuda()
    fp32 = estimate_bodies(gpu_model, img[None], items, mode="full", dtype=torch.float32)[0]
    bf16 = estimate_bodies(gpu_model, img[None], items, mode="full", dtype=torch.bfloat16)[0]
    for k in ("body_pose", "cam_t", "keypoints_3d"):
        np.testing.assert_allclose(fp32[k], cpu[k], atol=1e-3, err_msg=k)
        np.testing.assert_allclose(bf16[k], fp32[k], atol=5e-2, err_msg=k)
