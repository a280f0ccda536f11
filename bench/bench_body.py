"""SAM-3D-Body throughput: our implementation at real size (random weights), bf16 on CUDA.

Prints one table: backbone-only, body mode and full mode crops/s at a batch size (default 64),
peak VRAM, compile time and the numeric deviation of every speed variant from the eager
baseline (fp32 decoders, as upstream). Variants (``--variants``, comma list):

    eager      backbone eager bf16 SDPA, decoders fp32 (the baseline); its "batch N/2" row re-runs
               it at half the batch size: same code and precision, so its deviation is the noise
               floor of the random-weight model (other variants' deviations compare against it)
    dec16      + decoders' matmuls in bf16 (heads, norms and rig stay fp32)
    cbb        + backbone blocks torch.compile'd (mode default; one graph for all 32 blocks)
    cbb-nopf   cbb without crop prefetch (next batch's crops built while the backbone runs)
    cbb-ovl    cbb + overlap: next batch encoded before this one is decoded, decoders on a side
               CUDA stream alongside the next backbone (identical results)
    cbb-mat    cbb with mode max-autotune-no-cudagraphs (Triton GEMM templates; slow to compile)
    cbb-cg     cbb with mode reduce-overhead (CUDA graphs of the fixed-size bucket)
    cbb-cudnn  cbb traced with only cuDNN attention allowed (the compiled graph bakes the kernel in)
    cbb-flash  cbb traced with only flash attention allowed
    cdec       + decoder layers compiled too (bf16 matmuls)
    cdec32     compiled backbone and decoder, decoder fp32 as upstream (numerically equivalent)
    cdec-ovl   cdec + overlap
    fp8        cbb + E4M3 row-wise-scaled matmuls in all backbone linears (opt-in, lossy)
    fp8-mlp    cbb + E4M3 in the backbone MLPs only (attention projections stay bf16)
    fp8-ovl    fp8 + overlap
    eager-ovl  eager backbone and decoders with overlap: what the pipeline runs for small jobs (compile=auto),
               its blocks on the fused rotary / layer-scale kernels (sam3d_body/fused_vit.py)
    eager-ovl-unfused  the same with the blocks' plain ops (the before figure of those kernels)
    cdec32-ovl the defaults as shipped: compiled backbone and fp32 decoder layers, overlap
    fp8f-cdec-ovl  E4M3 row-wise with Hopper fast accumulation + compiled bf16 decoders + overlap
                   (activations quantised by the fused Triton kernels; what ``fp8=True`` runs)
    fp8u-cdec-ovl  the same with the quantisation left to inductor (the third session's FP8)
    fp8t-cdec-ovl  the same with per-tensor scales
    node-fp8   what Body Batch runs with backbone_fp8 on and decoder_precision bf16: estimate_bodies(fp8=True)
               quantises the weights inside each call (fp8f-cdec-ovl's kernels) and drops them after it

Every variant but cbb-nopf prefetches crops (identical results); the pipelining variants
(cbb-nopf, *-ovl) also print their max deviation from the same variant run the default way,
which must be 0. Rows print as they are measured: the official rows first, the slow compiles
(cbb-mat, cbb-cg) last, so a run cut short keeps everything else. Expected wall time on an H200
about 5-7 minutes (printed at the end); drop cbb-mat,cbb-cg from --variants to save 1-3 minutes.

If the official sam-3d-body code is importable (``--official DIR`` pointing at a checkout of
facebookresearch/sam-3d-body and ``--dinov3 DIR`` at facebookresearch/dinov3, both local), the
official estimator is timed on the same weights and crops side by side.

    python -m bench.bench_body --official .ref/sam-3d-body --dinov3 .ref/dinov3   # H200
    python -m bench.bench_body --tiny --official .ref/sam-3d-body --dinov3 .ref/dinov3  # CPU smoke
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import sys
import time
import types

import numpy as np
import torch

from bench.clips import body_inputs
from bench.patching import import_path, patched
from bench.peak_memory import gpu_peak_gib, reset_gpu_peak
from bench.rows import RowWriter, add_rows_args
from bench.timers import Stopwatch, sync
from body4d_core.sam3d_body import BodyItem, Sam3dBodyConfig, estimate_bodies, tiny_config
from body4d_core.sam3d_body.config import BACKBONES
from body4d_core.sam3d_body.infer import _dummy_prompt, _finish, _frames_tensor, _intrinsics, body_crops
from body4d_core.sam3d_body.model import Sam3dBody
from body4d_core.testing.body import randomize, scripted_rig
from body4d_core.sam3d_body.runner import SDPA_BACKENDS, _sdpa_only


def build_ours(cfg: Sam3dBodyConfig, device: torch.device, rig_hidden: int) -> Sam3dBody:
    model = randomize(Sam3dBody(cfg).to(device), seed=0)  # random init on the GPU: seconds, not minutes
    model.attach_rig(scripted_rig(cfg, hidden=rig_hidden, seed=0).to(device))
    return model.eval().requires_grad_(False)


VARIANTS = {  # name -> (backbone compile mode, decoder compile mode, decoder bf16, fp8 parts, pipelining)
    "eager": ("", "", False, "", "prefetch"),
    "eager-ovl": ("", "", False, "", "overlap"),  # the pipeline's small jobs (compile=auto runs them eager)
    "eager-ovl-unfused": ("", "", False, "", "overlap:unfused"),  # the same without the fused eager blocks
    "dec16": ("", "", True, "", "prefetch"),
    "cbb": ("default", "", True, "", "prefetch"),
    "cbb-nopf": ("default", "", True, "", ""),
    "cbb-ovl": ("default", "", True, "", "overlap"),
    "cbb-mat": ("max-autotune-no-cudagraphs", "", True, "", "prefetch"),
    "cbb-cg": ("reduce-overhead", "", True, "", "prefetch"),
    "cbb-cudnn": ("default", "", True, "", "prefetch"),
    "cbb-flash": ("default", "", True, "", "prefetch"),
    "cdec": ("default", "default", True, "", "prefetch"),
    "cdec32": ("default", "default", False, "", "prefetch"),
    "cdec-ovl": ("default", "default", True, "", "overlap"),
    "fp8": ("default", "", True, "all", "prefetch"),
    "fp8-mlp": ("default", "", True, "mlp", "prefetch"),
    "fp8-ovl": ("default", "", True, "all", "overlap"),
    "cdec32-ovl": ("default", "default", False, "", "overlap"),
    "fp8f-cdec-ovl": ("default", "default", True, "all:row:fast", "overlap"),
    "fp8u-cdec-ovl": ("default", "default", True, "all:row:fast:unfused", "overlap"),
    "fp8t-cdec-ovl": ("default", "default", True, "all:tensor:fast", "overlap"),
    "node-fp8": ("default", "default", True, "", "overlap:fp8"),
}
CHECK_KEYS = ("global_rot", "body_pose", "hand_pose", "shape", "cam_t", "keypoints_3d", "keypoints_2d")


def apply_variant(model: Sam3dBody, name: str, bucket: int, backend: str) -> tuple[torch.dtype, str]:
    """Set the model's compile / fp8 state for a variant; returns (decoder dtype, pipelining) to pass."""
    cbb, cdec, dec16, fp8, prefetch = VARIANTS[name]
    sdpa = name.split("-")[1] if name in ("cbb-cudnn", "cbb-flash") else ""
    if sdpa or model.runner.sdpa:  # the kernel is picked while tracing: drop graphs traced otherwise
        torch._dynamo.reset()
    parts, scaling, fast, fusing = (fp8.split(":") + ["", "", "", ""])[:4] if fp8 else ("all", "row", "", "")
    model.backbone.encoder.enable_fp8(bool(fp8), parts=parts, scaling=scaling or "row", fast_accum=fast == "fast",
                                      fused=fusing != "unfused")
    model.optimize(cbb, cdec, bucket=bucket, backend=backend, sdpa=sdpa)
    cuda = next(model.parameters()).device.type == "cuda"
    return (torch.bfloat16 if dec16 and cuda else torch.float32), prefetch


def _run(model, frames, items, mode, bs, dtype, dec_dtype, pipe="prefetch", crop_kernel="auto"):
    pipe, _, flag = pipe.partition(":")  # 'overlap:fp8': estimate_bodies(fp8=True), the node's own FP8 path
    return estimate_bodies(model, frames, items, mode=mode, batch_size=bs, dtype=dtype, decoder_dtype=dec_dtype,
                           prefetch=pipe == "prefetch", overlap=pipe == "overlap", fp8=flag == "fp8",
                           crop_kernel=crop_kernel, fused_backbone=flag != "unfused")


def time_ours(model: Sam3dBody, frames: np.ndarray, items: list[BodyItem], mode: str, bs: int,
              dtype: torch.dtype, dec_dtype: torch.dtype, reps: int, pipe: str = "prefetch",
              crop_kernel: str = "auto") -> tuple[float, float, float, list]:
    """(crops/s, peak GiB, warm-up seconds incl. compile, first timed results) of estimate_bodies."""
    with Stopwatch() as warm:
        _run(model, frames, items[:bs], mode, bs, dtype, dec_dtype, pipe, crop_kernel)
    reset_gpu_peak()
    res = None
    with Stopwatch() as timed:
        for _ in range(reps):
            out = _run(model, frames, items, mode, bs, dtype, dec_dtype, pipe, crop_kernel)
            res = res or out
    return reps * len(items) / timed.seconds, gpu_peak_gib(), warm.seconds, res


@torch.inference_mode()
def time_backbone(model: Sam3dBody, bs: int, dtype: torch.dtype, reps: int) -> tuple[float, float]:
    """(crops/s, warm-up seconds incl. compile) of the backbone alone on one batch."""
    dev = next(model.parameters()).device
    x = torch.randn(bs, 3, model.cfg.image_size, model.cfg.image_size, device=dev)
    with torch.autocast(dev.type, dtype=dtype, enabled=dev.type == "cuda" and dtype != torch.float32), \
            model.runner.applied(model):  # the model's compile choice (optimize), as estimate_bodies runs it
        with Stopwatch() as warm:
            model.backbone(x)
        with Stopwatch() as timed:
            for _ in range(reps):
                model.backbone(x)
    return reps * bs / timed.seconds, warm.seconds


@torch.inference_mode()
def stage_breakdown(model: Sam3dBody, frames: np.ndarray, items: list[BodyItem], dtype: torch.dtype,
                    dec_dtype: torch.dtype, reps: int = 3, label: str = "eager") -> str:
    """Milliseconds per batch of body mode: crops, backbone(+mask), body decode, final rig, results to host."""
    dev = next(model.parameters()).device
    ft = _frames_tensor(frames)
    K = _intrinsics(None, *ft.shape[:3])
    t = {"crops": 0.0, "encode": 0.0, "decode": 0.0, "finish": 0.0, "to_host": 0.0}

    def lap(key: str, t0: float) -> float:
        sync()
        now = time.perf_counter()
        t[key] += (now - t0) * 1000 / reps
        return now

    with model.runner.applied(model):  # the model's compile choice (optimize), as estimate_bodies runs it
        for _ in range(reps):
            t0 = time.perf_counter()
            batch = body_crops(model, ft, items, K)
            t0 = lap("crops", t0)
            feats = model.encode(batch, dtype)
            t0 = lap("encode", t0)
            body = model.decode("body", feats, batch, _dummy_prompt(batch.n, dev), with_verts=False, dtype=dec_dtype)
            t0 = lap("decode", t0)
            out = _finish(model, body, batch, False)
            t0 = lap("finish", t0)
            [v.float().cpu() for v in out.values()]
            lap("to_host", t0)
    return f"# body-mode stages ({label}), ms per batch of {len(items)}: " + ", ".join(f"{k} {v:.1f}" for k, v in t.items())


def crops_ab(model: Sam3dBody, frames: np.ndarray, items: list[BodyItem], reps: int = 5) -> str:
    """One batch's body crops (images and masks) built by the Triton crop kernel and by grid_sample: ms
    (synchronised wall, host work included) and the largest pixel difference (0..1 scale)."""
    dev = next(model.parameters()).device
    ft = _frames_tensor(frames)
    K = _intrinsics(None, *ft.shape[:3])
    ms, imgs = {}, {}
    for on in (True, False):
        kernel = "auto" if on else "grid_sample"  # auto: the Triton kernel where it can run
        imgs[on] = body_crops(model, ft, items, K, kernel)  # warm-up (kernel compile)
        with Stopwatch() as sw:
            for _ in range(reps):
                body_crops(model, ft, items, K, kernel)
        ms[on] = sw.seconds * 1000 / reps
    diff = float((imgs[True].img - imgs[False].img).abs().max())
    mdiff = float((imgs[True].mask - imgs[False].mask).abs().max())
    return (f"# crops of {len(items)} ({dev.type}): Triton kernel {ms[True]:.1f} ms, grid_sample {ms[False]:.1f} ms "
            f"per batch (images and masks); max abs difference images {diff:.1e}, masks {mdiff:.1e}")


class Rows(list):
    """Table rows, each printed (flushed) and written as a JSON row as it is added, so a run cut short still
    shows what it measured."""

    def __init__(self, out: RowWriter | None = None) -> None:
        super().__init__()
        self.out = out

    def header(self) -> None:
        print(f"| {'impl':8s} | {'variant':11s} | {'what':30s} | {'crops/s':>8s} | {'peak GiB':>8s} "
              f"| {'warm-up s':>9s} | max/mean abs dev vs eager |")
        print(f"|{'-' * 10}|{'-' * 13}|{'-' * 32}|{'-' * 10}|{'-' * 10}|{'-' * 11}|{'-' * 27}|", flush=True)

    def append(self, row: tuple) -> None:
        super().append(row)
        impl, var, what, rate, peak, warm, dev_s = row
        print(f"| {impl:8s} | {var:11s} | {what:30s} | {rate:8.1f} | {peak:8.2f} | {warm:9.1f} | {dev_s} |",
              flush=True)
        if self.out is not None:
            self.out.add(f"{impl} {var} {what}".strip(), "crops_per_s", rate, "crops/s", peak_gib=peak, warm_s=warm,
                         deviation=dev_s)

    def __iadd__(self, rows):
        for row in rows:
            self.append(row)
        return self


class Notes(list):
    """Comment lines, each printed (flushed) as it is added."""

    def append(self, line: str) -> None:
        super().append(line)
        print(line, flush=True)

    def __iadd__(self, lines):
        for line in lines:
            self.append(line)
        return self


def sdpa_rows(model: Sam3dBody, bs: int, dtype: torch.dtype, reps: int) -> list[tuple]:
    """Eager backbone with SDPA forced to one backend each: shows which kernels the shapes can use."""
    rows = []
    for kernel in ("flash", "cudnn", "efficient"):
        try:
            with _sdpa_only(kernel):
                rate, _ = time_backbone(model, bs, dtype, reps)
            rows.append(("ours", "eager", f"backbone only, SDPA {kernel}", rate, float("nan"), float("nan"), ""))
        except Exception as err:  # noqa: BLE001 - a backend that cannot run these shapes says so
            name = SDPA_BACKENDS[kernel]
            rows.append(("ours", "eager", f"SDPA {name}: {type(err).__name__}"[:30], float("nan"), float("nan"),
                         float("nan"), str(err).splitlines()[0][:60] if str(err) else ""))
    return rows


def max_dev(res: list, ref: list) -> float:
    """Largest |a - b| over every checked output of two runs on the same items."""
    return max(float(np.abs(np.stack([r[k] for r in res]) - np.stack([r[k] for r in ref])).max()) for k in CHECK_KEYS)


def deviation(res: list, ref: list) -> str:
    """max / mean |variant - baseline| over the checked outputs (baseline: eager, fp32 decoders)."""
    if res is ref or not res:
        return "reference"
    parts = []
    for k in ("body_pose", "global_rot", "keypoints_3d", "keypoints_2d"):
        d = np.abs(np.stack([r[k] for r in res]) - np.stack([r[k] for r in ref]))
        parts.append(f"{k} {d.max():.1e}/{d.mean():.1e}")
    return " ".join(parts)


# ------------------------------------------------------------------ official implementation (optional)


def _official(cfg: Sam3dBodyConfig, ours: Sam3dBody, rig_path: str):
    """Build the official SAM3DBody (training deps stubbed) with our random weights, or raise (the checkouts
    must be importable: official_rows puts them on the import path)."""
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

    from yacs.config import CfgNode as CN

    from sam_3d_body.models.meta_arch import SAM3DBody
    from sam_3d_body.sam_3d_body_estimator import SAM3DBodyEstimator

    c = CN({"MODEL": {
        "IMAGE_SIZE": [cfg.image_size] * 2, "IMAGE_MEAN": list(cfg.image_mean), "IMAGE_STD": list(cfg.image_std),
        "BACKBONE": {"TYPE": cfg.backbone, "DROP_PATH_RATE": 0.0},
        "DECODER": {"TYPE": "sam", "FROZEN": False, "DIM": cfg.dec_dim, "DEPTH": cfg.dec_depth, "HEADS": cfg.dec_heads,
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
    with patched(torch.hub, "load", local_hub):  # the official backbone comes from the local dinov3 checkout
        model = SAM3DBody(c)
    sd = {k: v for k, v in ours.state_dict().items() if not k.startswith("mhr.")}
    model.load_state_dict(sd, strict=False)
    model = model.to(next(ours.parameters()).device).eval()
    return SAM3DBodyEstimator(model, c)


def _cpu_shims(stack: contextlib.ExitStack) -> None:
    """CPU smoke runs only, until ``stack`` closes: the official code hard-codes .cuda() and
    recursive_to(..., 'cuda')."""
    import sam_3d_body.models.meta_arch.sam3d_body as meta
    import sam_3d_body.sam_3d_body_estimator as est_mod

    orig = est_mod.recursive_to

    def to_cpu(x, target):
        return orig(x, "cpu")

    stack.enter_context(patched(est_mod, "recursive_to", to_cpu))
    stack.enter_context(patched(meta, "recursive_to", to_cpu))
    stack.enter_context(patched(torch.Tensor, "cuda", lambda self, *a, **k: self))


def time_official(est, frames: np.ndarray, items: list[BodyItem], mode: str, reps: int) -> tuple[float, float]:
    """Official estimator over the items' frames (its batching unit is one image with all its people)."""
    by_frame: dict[int, list[BodyItem]] = {}
    for it in items:
        by_frame.setdefault(int(it.frame), []).append(it)
    calls = [(frames[f], np.array([it.box for it in its], np.float32),
              np.stack([it.mask for it in its]).astype(np.uint8)) for f, its in by_frame.items()]
    with torch.no_grad():
        est.process_one_image(calls[0][0], bboxes=calls[0][1], masks=calls[0][2], use_mask=True, inference_type=mode)
        sync()
        reset_gpu_peak()
        with Stopwatch() as sw:
            for _ in range(reps):
                for img, boxes, masks in calls:
                    est.process_one_image(img, bboxes=boxes, masks=masks, use_mask=True, inference_type=mode)
    return reps * len(items) / sw.seconds, gpu_peak_gib()


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


def official_compatible_tiny() -> Sam3dBodyConfig:
    """CPU smoke config the official code can build too (its backbone must be a real DINOv3 name)."""
    d, depth, h, f, sw = BACKBONES["dinov3_vits16"]
    real = Sam3dBodyConfig()  # the official head hard-codes MHR's mesh sizes
    return tiny_config().replace(image_size=256, backbone="dinov3_vits16", vit_dim=d, vit_depth=depth, vit_heads=h,
                                 vit_ffn=f, vit_swiglu=sw, num_verts=real.num_verts, num_faces=real.num_faces)


def _official_estimator(args: argparse.Namespace, cfg: Sam3dBodyConfig, model: Sam3dBody,
                        stack: contextlib.ExitStack):
    """The official estimator on our model's weights (CPU shims entered on ``stack`` on the CPU)."""
    rig_path = "/tmp/bench_body_rig.pt"
    torch.jit.save(model.mhr, rig_path)
    est = _official(cfg, model, rig_path)
    if next(model.parameters()).device.type == "cpu":
        _cpu_shims(stack)
    return est


def official_rows(args: argparse.Namespace, cfg: Sam3dBodyConfig, model: Sam3dBody, frames: np.ndarray,
                  items: list[BodyItem], dtype: torch.dtype, rows: list, notes: list[str]) -> None:
    """Time the official estimator on our (eager, fresh) model's weights; it is freed afterwards."""
    if not (args.official and args.dinov3):
        rows.append(("official", "", "not run: pass --official and --dinov3 (local checkouts)", float("nan"),
                     float("nan"), float("nan"), ""))
        return
    est = None
    try:
        with contextlib.ExitStack() as stack:  # the checkouts importable and the CPU shims on only while it runs
            stack.enter_context(import_path(args.official, args.dinov3))
            t0 = time.perf_counter()
            est = _official_estimator(args, cfg, model, stack)
            off_build = time.perf_counter() - t0
            per = [it for it in items if it.frame < args.official_frames]
            notes += compare_official(est, model, frames[0], [it for it in items if it.frame == 0], dtype)
            for mode in ("body", "full"):
                rate, peak = time_official(est, frames, per, mode, max(1, args.reps))
                rows.append(("official", "as released", f"{mode} ({args.people} people/image)", rate, peak,
                             off_build, ""))
    except Exception as err:  # noqa: BLE001 - report, do not fail the bench
        rows.append(("official", "", f"unavailable: {type(err).__name__}: {err}"[:80], float("nan"),
                     float("nan"), float("nan"), ""))
    del est  # our rows' peak VRAM must not include the official model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--items", type=int, default=256, help="person crops per timed call")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--size", default="1080x1920", help="frame HxW")
    ap.add_argument("--people", type=int, default=4, help="people per frame")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--variants", default="eager,dec16,cbb,cbb-nopf,cbb-ovl,cdec,cdec32,cdec-ovl,fp8,fp8-mlp,fp8-ovl,"
                                          "cbb-cudnn,cbb-flash,cbb-mat,cbb-cg",
                    help=f"comma list of {', '.join(VARIANTS)}")
    ap.add_argument("--full-variants", default="eager,cbb,cdec-ovl", help="variants also timed in full mode")
    ap.add_argument("--official-frames", type=int, default=4, help="frames (x --people crops) the official code runs")
    ap.add_argument("--tiny", action="store_true", help="tiny model (CPU smoke test)")
    ap.add_argument("--crops-ab", nargs="?", const="all", default="",
                    help="also time one batch's crops both ways and rerun these body-mode variants (comma list; "
                         "no value: all of --variants) with grid_sample crops")
    ap.add_argument("--backend", default="", help="torch.compile backend (default inductor on CUDA, eager on CPU)")
    ap.add_argument("--official", default="", help="checkout of facebookresearch/sam-3d-body")
    ap.add_argument("--dinov3", default="", help="checkout of facebookresearch/dinov3")
    add_rows_args(ap)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import torch._dynamo.config as dcfg

    with contextlib.ExitStack() as stack:
        for key in ("recompile_limit", "cache_size_limit"):  # several variants compile the same block function
            if hasattr(dcfg, key):
                stack.enter_context(patched(dcfg, key, 64))
        run(args)


def run(args: argparse.Namespace) -> None:
    """Build the model, then the official rows, every variant's rows and notes, printed as they come."""
    t_start = time.perf_counter()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    if dev.type == "cpu":
        dtype = torch.float32
    args.backend = args.backend or ("inductor" if dev.type == "cuda" else "eager")
    want_official = bool(args.official and args.dinov3)
    cfg = (official_compatible_tiny() if want_official else tiny_config()) if args.tiny else Sam3dBodyConfig()
    h, w = (int(v) for v in args.size.split("x"))
    if args.tiny:
        h, w, args.items, args.batch, args.official_frames = 240, 320, 6, 4, 1
    t0 = time.perf_counter()
    model = build_ours(cfg, dev, rig_hidden=16 if args.tiny else 3000)
    build_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters() if p.dtype.is_floating_point) / 1e6
    frames, items = body_inputs(args.items, h, w, args.people)
    name = torch.cuda.get_device_name() if dev.type == "cuda" else "CPU"
    print(f"# SAM-3D-Body bench: {name}, torch {torch.__version__}, {cfg.backbone} ({n_params:.0f}M params incl. "
          f"synthetic rig), crops {cfg.image_size}px, {args.dtype if dev.type == 'cuda' else 'fp32'}, "
          f"batch {args.batch}, {args.items} crops from {len(frames)} frames of {h}x{w} ({args.people}/frame), "
          f"build {build_s:.1f}s, compile backend {args.backend}")
    # (impl, variant, what, crops/s, peak, warm-up s, deviation), printed and written as they come
    rows = Rows(RowWriter.from_args("bench_body", args, dev))
    rows.header()
    notes = Notes()  # '#' lines, printed as they come
    variants = [v for v in args.variants.split(",") if v]
    full_variants = [v for v in args.full_variants.split(",") if v]
    unknown = [v for v in variants + full_variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    official_rows(args, cfg, model, frames, items, dtype, rows, notes)  # first: slow compiles come last
    ref: dict[str, list] = {}
    by_var: dict[str, list] = {}  # body-mode results per variant
    for var in dict.fromkeys(["eager"] + variants + full_variants):
        try:
            dec_dtype, pipe = apply_variant(model, var, args.batch, args.backend)
            if var in ("eager", "cbb", "cbb-mat", "cbb-cg", "cbb-cudnn", "cbb-flash", "fp8", "fp8-mlp"):  # these leave the backbone as another row has it
                rate, warm = time_backbone(model, args.batch, dtype, args.reps)
                fell = VARIANTS[var][0] and not model.runner.in_effect()["backbone"]
                rows.append(("ours", var, "backbone only" + (" (compile failed: eager)" if fell else ""), rate,
                             float("nan"), warm, ""))
            if var in ("eager", "dec16", "cbb"):
                notes.append(stage_breakdown(model, frames, items[: args.batch], dtype, dec_dtype, label=var))
                if dev.type == "cuda" and var == "eager":  # compiled graphs ignore the context: cbb-cudnn/-flash
                    rows += sdpa_rows(model, args.batch, dtype, args.reps)
            for mode in ("body", "full"):
                if var not in (variants if mode == "body" else full_variants):
                    continue
                rate, peak, warm, res = time_ours(model, frames, items, mode, args.batch, dtype, dec_dtype, args.reps,
                                                  pipe)
                ref.setdefault(mode, res)
                dev_s = deviation(res, ref[mode])
                base = var[: -len("-ovl")] if var.endswith("-ovl") else "cbb" if var == "cbb-nopf" else ""
                if mode == "body" and base in by_var:  # pipelining must not change a single number
                    dev_s += f"; max dev vs {base}: {max_dev(res, by_var[base]):.1e}"
                if mode == "body":
                    by_var[var] = res
                rows.append(("ours", var, mode, rate, peak, warm, dev_s))
                if var == "eager" and mode == "body":  # same code and precision, other batch size: the noise floor
                    half = max(1, args.batch // 2)
                    rate, peak, warm, res = time_ours(model, frames, items, mode, half, dtype, dec_dtype, 1, pipe)
                    rows.append(("ours", var, f"body, batch {half} (noise floor)", rate, peak, warm,
                                 deviation(res, ref[mode])))
        except Exception as err:  # noqa: BLE001 - one failing variant must not lose the table
            rows.append(("ours", var, f"failed: {type(err).__name__}: {err}"[:80], float("nan"), float("nan"),
                         float("nan"), ""))
    if args.crops_ab:
        notes.append(crops_ab(model, frames, items[: args.batch]))
        for var in variants if args.crops_ab == "all" else [v for v in args.crops_ab.split(",") if v]:
            dec_dtype, pipe = apply_variant(model, var, args.batch, args.backend)
            rate, peak, warm, res = time_ours(model, frames, items, "body", args.batch, dtype, dec_dtype,
                                              args.reps, pipe, crop_kernel="grid_sample")
            rows.append(("ours", var, "body, grid_sample crops", rate, peak, warm,
                         f"max dev vs Triton crops: {max_dev(res, by_var[var]):.1e}" if var in by_var else ""))
    print(f"# bench wall time {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
