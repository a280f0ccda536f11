"""SAM-3D-Body throughput: our implementation at real size (random weights), bf16 on CUDA.

Prints one table: backbone-only, body mode and full mode crops/s at a batch size (default 64)
and peak VRAM. If the official sam-3d-body code is importable (``--official DIR`` pointing at a
checkout of facebookresearch/sam-3d-body and ``--dinov3 DIR`` at facebookresearch/dinov3, both
local: the GPU machine has no internet), the official ``run_inference`` is timed on the same
crops side by side; otherwise its rows say why they are missing.

    python bench/bench_body.py                 # H200: real size
    python bench/bench_body.py --tiny          # CPU smoke test of the script
"""

from __future__ import annotations

import argparse
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from body4d_core.sam3d_body import BodyItem, Sam3dBodyConfig, estimate_bodies, tiny_config  # noqa: E402
from body4d_core.sam3d_body.model import Sam3dBody  # noqa: E402
from body4d_core.sam3d_body.synthetic import randomize, scripted_rig  # noqa: E402


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def make_inputs(n_items: int, h: int, w: int, people: int, seed: int = 0) -> tuple[np.ndarray, list[BodyItem]]:
    """Random-texture frames with `people` boxes (and masks) per frame."""
    rng = np.random.default_rng(seed)
    n_frames = (n_items + people - 1) // people
    frames = rng.integers(0, 255, (n_frames, h, w, 3), dtype=np.uint8)
    items = []
    for i in range(n_items):
        t, p = divmod(i, people)
        bw, bh = int(w * 0.15), int(h * 0.6)
        x0 = int((p + 0.5) * w / people - bw / 2)
        y0 = int(h * 0.2)
        mask = np.zeros((h, w), bool)
        mask[y0:y0 + bh, x0:x0 + bw] = True
        items.append(BodyItem(t, p + 1, [x0, y0, x0 + bw, y0 + bh], mask))
    return frames, items


def build_ours(cfg: Sam3dBodyConfig, device: torch.device, rig_hidden: int) -> Sam3dBody:
    model = randomize(Sam3dBody(cfg).to(device), seed=0)  # random init on the GPU: seconds, not minutes
    model.attach_rig(scripted_rig(cfg, hidden=rig_hidden, seed=0).to(device))
    return model.eval().requires_grad_(False)


def time_ours(model: Sam3dBody, frames: np.ndarray, items: list[BodyItem], mode: str, bs: int,
              dtype: torch.dtype, reps: int) -> tuple[float, float]:
    """(crops/s, peak GiB) of estimate_bodies after one warm-up call."""
    estimate_bodies(model, frames, items[:bs], mode=mode, batch_size=bs, dtype=dtype)
    _sync()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(reps):
        estimate_bodies(model, frames, items, mode=mode, batch_size=bs, dtype=dtype)
    _sync()
    dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
    return reps * len(items) / dt, peak


@torch.inference_mode()
def time_backbone(model: Sam3dBody, bs: int, dtype: torch.dtype, reps: int) -> float:
    dev = next(model.parameters()).device
    x = torch.randn(bs, 3, model.cfg.image_size, model.cfg.image_size, device=dev)
    with torch.autocast(dev.type, dtype=dtype, enabled=dev.type == "cuda" and dtype != torch.float32):
        model.backbone(x)
        _sync()
        t0 = time.perf_counter()
        for _ in range(reps):
            model.backbone(x)
        _sync()
    return reps * bs / (time.perf_counter() - t0)


# ------------------------------------------------------------------ official implementation (optional)


def _official(official: str, dinov3: str, cfg: Sam3dBodyConfig, ours: Sam3dBody, rig_path: str):
    """Build the official SAM3DBody (training deps stubbed) with our random weights, or raise."""
    sys.path.insert(0, official)
    sys.path.insert(0, dinov3)
    pl = types.ModuleType("pytorch_lightning")

    class _LM(torch.nn.Module):
        def save_hyperparameters(self, *a, **k):
            pass

        @property
        def device(self):
            return next(self.parameters()).device

    pl.LightningModule = _LM
    for sub in ("loggers", "utilities", "callbacks"):
        setattr(pl, sub, types.ModuleType(f"pytorch_lightning.{sub}"))
        sys.modules[f"pytorch_lightning.{sub}"] = getattr(pl, sub)
    pl.loggers.TensorBoardLogger = pl.loggers.WandbLogger = object
    pl.utilities.rank_zero_only = lambda f: f
    pl.callbacks.ModelCheckpoint = object
    sys.modules["pytorch_lightning"] = pl

    def local_hub(repo, name, source="github", **kw):
        import dinov3.hub.backbones as bb
        return getattr(bb, name)(**kw)

    torch.hub.load = local_hub
    from yacs.config import CfgNode as CN

    from sam_3d_body.models.meta_arch import SAM3DBody
    from sam_3d_body.sam_3d_body_estimator import SAM3DBodyEstimator

    c = CN({"MODEL": {
        "IMAGE_SIZE": [cfg.image_size] * 2, "IMAGE_MEAN": list(cfg.image_mean), "IMAGE_STD": list(cfg.image_std),
        "BACKBONE": {"TYPE": cfg.backbone, "DROP_PATH_RATE": 0.0},
        "DECODER": {"TYPE": "sam", "DIM": cfg.dec_dim, "DEPTH": cfg.dec_depth, "HEADS": cfg.dec_heads,
                    "DIM_HEAD": cfg.dec_head_dim, "MLP_DIM": cfg.dec_mlp, "LAYER_SCALE_INIT": 0.0, "DROP_RATE": 0.0,
                    "ATTN_DROP_RATE": 0.0, "DROP_PATH_RATE": 0.0, "FFN_TYPE": "origin", "ENABLE_TWOWAY": False,
                    "REPEAT_PE": True, "CONDITION_TYPE": "cliff", "USE_INTRIN_CENTER": True, "DO_INTERM_PREDS": True,
                    "DO_KEYPOINT_TOKENS": True, "DO_HAND_DETECT_TOKENS": True, "KEYPOINT_TOKEN_UPDATE": "v2",
                    "DO_KEYPOINT3D_TOKENS": True},
        "PROMPT_ENCODER": {"ENABLE": True, "MAX_NUM_CLICKS": 2, "PROMPT_KEYPOINTS": "mhr70",
                           "MASK_EMBED_TYPE": cfg.mask_embed_type, "MASK_PROMPT": "v1"},
        "PERSON_HEAD": {"POSE_TYPE": "mhr", "CAMERA_TYPE": "perspective"},
        "MHR_HEAD": {"MLP_DEPTH": 2, "MLP_CHANNEL_DIV_FACTOR": 1, "MHR_MODEL_PATH": rig_path},
        "CAMERA_HEAD": {"MLP_DEPTH": 2, "MLP_CHANNEL_DIV_FACTOR": 1, "DEFAULT_SCALE_FACTOR_HAND": cfg.hand_cam_scale},
    }, "TRAIN": {"USE_FP16": True, "FP16_TYPE": "bfloat16"}})
    model = SAM3DBody(c)
    sd = {k: v for k, v in ours.state_dict().items() if not k.startswith("mhr.")}
    model.load_state_dict(sd, strict=False)
    model = model.to(next(ours.parameters()).device).eval()
    return SAM3DBodyEstimator(model, c)


def time_official(est, frame: np.ndarray, items: list[BodyItem], mode: str, reps: int) -> tuple[float, float]:
    """Official estimator on one frame with len(items) people (its batching unit is one image)."""
    boxes = np.array([it.box for it in items], np.float32)
    masks = np.stack([it.mask for it in items]).astype(np.uint8)
    with torch.no_grad():
        est.process_one_image(frame, bboxes=boxes, masks=masks, use_mask=True, inference_type=mode)
        _sync()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(reps):
            est.process_one_image(frame, bboxes=boxes, masks=masks, use_mask=True, inference_type=mode)
        _sync()
    return reps * len(items) / (time.perf_counter() - t0), torch.cuda.max_memory_allocated() / 2**30


def compare_official(est, model: Sam3dBody, frame: np.ndarray, items: list[BodyItem], dtype: torch.dtype) -> list[str]:
    """Max |ours - official| per output on the same people (one image), body and full mode."""
    keys = {"global_rot": "global_rot", "body_pose": "body_pose_params", "hand_pose": "hand_pose_params",
            "shape": "shape_params", "cam_t": "pred_cam_t", "keypoints_3d": "pred_keypoints_3d",
            "keypoints_2d": "pred_keypoints_2d"}
    boxes = np.array([it.box for it in items], np.float32)
    masks = np.stack([it.mask for it in items]).astype(np.uint8)
    lines = []
    for mode in ("body", "full"):
        with torch.no_grad():
            ref = est.process_one_image(frame, bboxes=boxes, masks=masks, use_mask=True, inference_type=mode)
        ours = estimate_bodies(model, frame[None], [BodyItem(0, i + 1, it.box, it.mask) for i, it in enumerate(items)],
                               mode=mode, dtype=dtype)
        diffs = {k: max(float(np.abs(o[k] - np.asarray(r[rk])).max()) for o, r in zip(ours, ref))
                 for k, rk in keys.items()}
        lines.append(f"# max |ours - official| ({mode}): " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--items", type=int, default=256, help="person crops per timed call")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--size", default="1080x1920", help="frame HxW")
    ap.add_argument("--people", type=int, default=4, help="people per frame")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--tiny", action="store_true", help="tiny model (CPU smoke test)")
    ap.add_argument("--official", default="", help="checkout of facebookresearch/sam-3d-body")
    ap.add_argument("--dinov3", default="", help="checkout of facebookresearch/dinov3")
    args = ap.parse_args()

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    if dev.type == "cpu":
        dtype = torch.float32
    cfg = tiny_config() if args.tiny else Sam3dBodyConfig()
    h, w = (int(v) for v in args.size.split("x"))
    if args.tiny:
        h, w, args.items, args.batch = 240, 320, 8, 4
    t0 = time.perf_counter()
    model = build_ours(cfg, dev, rig_hidden=16 if args.tiny else 3000)
    build_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters() if p.dtype.is_floating_point) / 1e6
    frames, items = make_inputs(args.items, h, w, args.people)
    name = torch.cuda.get_device_name() if dev.type == "cuda" else "CPU"
    print(f"# SAM-3D-Body bench: {name}, torch {torch.__version__}, {cfg.backbone} ({n_params:.0f}M params incl. "
          f"synthetic rig), crops {cfg.image_size}px, {args.dtype if dev.type == 'cuda' else 'fp32'}, "
          f"batch {args.batch}, {args.items} crops from {len(frames)} frames of {h}x{w} ({args.people}/frame), "
          f"build {build_s:.1f}s")
    rows = [("ours", "backbone only", time_backbone(model, args.batch, dtype, args.reps), float("nan"))]
    for mode in ("body", "full"):
        rows.append(("ours", mode, *time_ours(model, frames, items, mode, args.batch, dtype, args.reps)))
    notes: list[str] = []
    if args.official and args.dinov3 and dev.type == "cuda":
        try:
            rig_path = "/tmp/bench_body_rig.pt"
            torch.jit.save(model.mhr, rig_path)
            est = _official(args.official, args.dinov3, cfg, model, rig_path)
            per = items[: args.people]
            notes = compare_official(est, model, frames[0], per, dtype)
            for mode in ("body", "full"):
                rows.append(("official", f"{mode} ({args.people} people/image)",
                             *time_official(est, frames[0], per, mode, max(2, args.reps * 4))))
        except Exception as err:  # noqa: BLE001 - report, do not fail the bench
            rows.append(("official", f"unavailable: {type(err).__name__}: {err}"[:90], float("nan"), float("nan")))
    else:
        why = "needs CUDA" if dev.type != "cuda" else "pass --official and --dinov3 (local checkouts)"
        rows.append(("official", f"not run: {why}", float("nan"), float("nan")))
    print(f"| {'impl':9s} | {'what':44s} | {'crops/s':>9s} | {'peak VRAM GiB':>13s} |")
    print(f"|{'-' * 11}|{'-' * 46}|{'-' * 11}|{'-' * 15}|")
    for impl, what, rate, peak in rows:
        print(f"| {impl:9s} | {what:44s} | {rate:9.1f} | {peak:13.2f} |")
    for line in notes:
        print(line)


if __name__ == "__main__":
    main()
