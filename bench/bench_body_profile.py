"""Where SAM-3D-Body's GPU time goes: kernel-level profile of the backbone and the body decoder.

Times the DINOv3 ViT-H+/16 backbone alone (batch 64, 512x512, compiled blocks) under matmul
precision variants, and the body decoder pass under fp32 / TF32 / bf16 matmuls, then prints a
torch.profiler breakdown (per kernel category and the top kernels) for the chosen variants.
Random weights at real size; nothing here changes a default.

    python -m bench.bench_body_profile                 # H200, about 2-3 minutes
    python -m bench.bench_body_profile --tiny          # CPU smoke test
    # the short clip's body stage: 100 crops of one person in 720p, full mode, eager, profiled
    python -m bench.bench_body_profile --no-backbone --no-decoder --body-mode eager --mode full --body-crops 100 \
        --body-size 720x1280 --body-people 1
"""

from __future__ import annotations

import argparse
import time

import torch

from bench.bench_body import apply_variant, build_ours
from bench.clips import body_inputs
from bench.kernel_profile import timed_profile
from bench.patching import patched
from bench.rows import RowWriter, add_rows_args
from bench.timers import sync, timed
from body4d_core.sam3d_body import Sam3dBodyConfig, tiny_config
from body4d_core.sam3d_body.infer import _dummy_prompt, _finish, _frames_tensor, _intrinsics, body_crops

BACKBONE_VARIANTS = {  # name -> enable_fp8 kwargs (None = bf16)
    "bf16": None,
    "fp8-row": dict(parts="all", scaling="row", fast_accum=False),
    "fp8-row-fast": dict(parts="all", scaling="row", fast_accum=True),  # fused Triton quantisers (fp8=True)
    "fp8-row-fast-unfused": dict(parts="all", scaling="row", fast_accum=True, fused=False),  # inductor's
    "fp8-tensor-fast": dict(parts="all", scaling="tensor", fast_accum=True),
    "fp8-mlp-row-fast": dict(parts="mlp", scaling="row", fast_accum=True),
}


def backbone_rows(model, bs: int, reps: int, variants: list[str], profile: set[str], compile_mode: str,
                  out: RowWriter) -> None:
    dev = next(model.parameters()).device
    enc = model.backbone.encoder
    x = torch.randn(bs, 3, model.cfg.image_size, model.cfg.image_size, device=dev)
    cuda = dev.type == "cuda"
    flops = backbone_flops(model.cfg) * bs
    print(f"| backbone variant | crops/s | ms / batch of {bs} | TFLOP/s | compile s |\n|---|---:|---:|---:|---:|")
    ref = None
    for name in variants:
        kw = BACKBONE_VARIANTS[name]
        enc.enable_fp8(kw is not None, **(kw or {}))
        enc.uncompile()
        if compile_mode:
            enc.compile_blocks(compile_mode, "inductor" if cuda else "eager", bucket=bs)

        def run() -> torch.Tensor:
            with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
                return model.backbone(x)

        t0 = time.perf_counter()
        res = run()
        sync()
        warm = time.perf_counter() - t0
        sec = timed(run, reps)
        dev_s = "" if ref is None else f" (max rel dev {float((res.float() - ref).abs().max() / ref.abs().max()):.1e})"
        ref = res.float() if ref is None else ref
        print(f"| {name}{dev_s} | {bs / sec:.1f} | {sec * 1000:.1f} | {flops / sec / 1e12:.0f} | {warm:.1f} |",
              flush=True)
        out.add(f"backbone {name}", "crops_per_s", bs / sec, "crops/s", batch=bs, tflops=flops / sec / 1e12,
                compile_s=warm, compile_mode=compile_mode)
        if name in profile:
            timed_profile(run, f"backbone {name}", top=12)
    enc.enable_fp8(False)


def backbone_flops(cfg: Sam3dBodyConfig) -> float:
    """Matmul + attention FLOPs of one crop through the ViT blocks."""
    n = (cfg.image_size // cfg.patch_size) ** 2 + 1 + cfg.vit_registers
    d, f = cfg.vit_dim, cfg.vit_ffn
    per_tok = 2 * (4 * d * d + (3 if cfg.vit_swiglu else 2) * d * f)
    return cfg.vit_depth * (n * per_tok + 4 * n * n * d)


def decoder_rows(model, bs: int, reps: int, profile: bool, compile_mode: str, size: tuple[int, int], out: RowWriter,
                 precisions: tuple[str, ...] = ("fp32", "tf32", "bf16"), top: int = 20) -> None:
    dev = next(model.parameters()).device
    cuda = dev.type == "cuda"
    frames, items = body_inputs(bs, *size, people=4)
    ft = _frames_tensor(frames)
    K = _intrinsics(None, *ft.shape[:3])
    with torch.inference_mode():
        crop_sec = timed(lambda: body_crops(model, ft, items, K), reps)
        batch = body_crops(model, ft, items, K)
        feats = model.encode(batch, torch.bfloat16 if cuda else torch.float32)
    print(f"\n| body decoder variant | ms / batch of {bs} | compile s |\n|---|---:|---:|")
    print(f"| crops (host + device, synchronous) | {crop_sec * 1000:.1f} | - |")
    out.add("crops (host + device, synchronous)", "ms_per_batch", crop_sec * 1000, "ms", batch=bs)
    for name, dtype, allow in (("fp32", torch.float32, False), ("tf32", torch.float32, True),
                               ("bf16", torch.bfloat16, False)):
        if name not in precisions:
            continue
        model.optimize("", compile_mode, backend="inductor" if cuda else "eager")

        def run() -> dict:
            with torch.inference_mode(), patched(torch.backends.cuda.matmul, "allow_tf32", allow), \
                    model.runner.applied(model):  # the compiled decoder layers chosen by optimize
                p = model.decode("body", feats, batch, _dummy_prompt(bs, dev), with_verts=False, dtype=dtype)
                return _finish(model, p, batch, False)

        t0 = time.perf_counter()
        run()
        sync()
        warm = time.perf_counter() - t0
        sec = timed(run, reps)
        print(f"| {name} (decoder compile: {compile_mode or 'off'}) | {sec * 1000:.1f} | {warm:.1f} |", flush=True)
        out.add(f"body decoder {name}", "ms_per_batch", sec * 1000, "ms", batch=bs, compile_s=warm,
                compile_mode=compile_mode)
        if profile and name in ("fp32", "bf16"):
            timed_profile(run, f"body decoder {name}", top=top)
    model.optimize("", "")


def body_mode_rows(model, bs: int, crops: int, size: tuple[int, int], variants: list[str], backend: str,
                   out: RowWriter, top: int = 20, mode: str = "body", people: int = 4) -> None:
    """Whole calls in ``mode`` (crops, backbone, decoders, overlap) as shipped by each bench_body variant:
    crops/s, then a kernel profile of one call, whose kernel time against the wall time says whether
    the GPU or the host sets the rate (two streams: kernel time may exceed the wall)."""
    from body4d_core.sam3d_body import estimate_bodies

    frames, items = body_inputs(crops, *size, people=people)
    for name in variants:
        dec_dtype, pipe = apply_variant(model, name, bs, backend)

        def run():
            flow, _, flag = pipe.partition(":")
            return estimate_bodies(model, frames, items, mode=mode, batch_size=bs, decoder_dtype=dec_dtype,
                                   prefetch=bool(flow), overlap=flow == "overlap", fp8=flag == "fp8",
                                   fused_backbone=flag != "unfused")

        run()
        sec = timed(run, 1)
        print(f"\n| {mode} mode, {name} | {len(items) / sec:.1f} crops/s | {sec:.3f} s a call | "
              f"{sec * 1000 / (len(items) / bs):.1f} ms per batch of {bs} |", flush=True)
        out.add(f"{mode} mode {name}", "crops_per_s", len(items) / sec, "crops/s", batch=bs, crops=len(items))
        timed_profile(run, f"{mode} mode {name} ({len(items)} crops)", top=top)
    model.backbone.encoder.enable_fp8(False)
    model.optimize("", "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--variants", default=",".join(BACKBONE_VARIANTS))
    ap.add_argument("--profile", default="bf16,fp8-row-fast,fp8-row-fast-unfused", help="backbone variants to profile")
    ap.add_argument("--compile", default="default", help="torch.compile mode ('' = eager)")
    ap.add_argument("--no-decoder", action="store_true")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--body-mode", default="", help="bench_body variants to profile as whole body-mode calls")
    ap.add_argument("--body-crops", type=int, default=256, help="crops per body-mode call")
    ap.add_argument("--mode", choices=("body", "full"), default="body", help="--body-mode calls: body or full mode")
    ap.add_argument("--body-size", default="1080x1920", help="--body-mode calls: frame HxW")
    ap.add_argument("--body-people", type=int, default=4, help="--body-mode calls: people per frame")
    ap.add_argument("--no-backbone", action="store_true")
    ap.add_argument("--top", type=int, default=20, help="kernels listed per profile")
    ap.add_argument("--decoders", default="fp32,tf32,bf16", help="decoder precisions timed (comma list)")
    add_rows_args(ap)
    args = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = tiny_config() if args.tiny else Sam3dBodyConfig(mask_embed_type="v2")
    bs = min(args.batch, 4) if args.tiny else args.batch
    model = build_ours(cfg, dev, 64 if args.tiny else 1024)
    print(f"# {torch.cuda.get_device_name() if dev.type == 'cuda' else 'cpu'}, torch {torch.__version__}, "
          f"batch {bs}, {cfg.image_size}px, {backbone_flops(cfg) / 1e12:.3f} TFLOP per crop (blocks)")
    variants = [v for v in args.variants.split(",") if v]
    out = RowWriter.from_args("bench_body_profile", args, dev)
    if not args.no_backbone:
        backbone_rows(model, bs, args.reps, variants, set(args.profile.split(",")), args.compile, out)
    if args.body_mode:
        size = (256, 448) if args.tiny else tuple(int(v) for v in args.body_size.split("x"))
        body_mode_rows(model, bs, 8 if args.tiny else args.body_crops, size, args.body_mode.split(","),
                       "inductor" if dev.type == "cuda" else "eager", out, args.top, args.mode, args.body_people)
    if not args.no_decoder:
        decoder_rows(model, bs, args.reps, True, args.compile, (256, 448) if args.tiny else (1080, 1920), out,
                     tuple(args.decoders.split(",")), args.top)


if __name__ == "__main__":
    main()
