"""The fused FP8 activation quantisers on a GPU: agreement with the torch formula, and their speed.

For each op at the backbone's real sizes (batch 64 x 1029 tokens; LayerNorm over 1280, SwiGLU over
2 x 5120, plain rows over 1280) it prints: the fraction of E4M3 values bit-identical to the torch
reference (``fp8._reference_rows`` formula, run on the GPU), the max scale difference, and the
time of our Triton kernel next to inductor's compiled version of the same formula and the
plain bf16 op without any quantisation (the bandwidth yardstick).

    python -m bench.bench_fp8_kernels     # H200: about a minute (compiles three small graphs)
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from bench.rows import RowWriter, add_rows_args
from bench.timers import timed
from body4d_core.sam3d_body import fp8_triton as kern
from body4d_core.sam3d_body.fp8 import fp8_quantize_rows


def agreement(name: str, got: tuple[torch.Tensor, torch.Tensor], ref: tuple[torch.Tensor, torch.Tensor]) -> str:
    q, s = got
    rq, rs = ref
    rs = rs.reshape(-1)
    same = (q.view(torch.uint8) == rq.view(torch.uint8)).float().mean().item()
    deq = (q.float() * s[:, None] - rq.float() * rs[:, None]).abs().max().item() / (rq.float().abs().amax() * rs.max()).item()
    return f"{name}: {same * 100:.4f}% of E4M3 values bit-identical, max scale rel diff " \
           f"{((s - rs) / rs).abs().max().item():.1e}, max dequantised diff {deq:.1e} of the largest value"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=64 * 1029)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--hidden", type=int, default=5120)
    ap.add_argument("--sweep", action="store_true", help="also time every (rows per program, warps) launch config")
    add_rows_args(ap)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU (the kernels are Triton; CPU tests cover them in the interpreter)")
    torch.manual_seed(0)
    m, d, hdim = args.rows, args.dim, args.hidden
    x = torch.randn(m, d, device="cuda", dtype=torch.bfloat16) * 2 + 0.3
    w, b = torch.randn(d, device="cuda") * 0.5 + 1, torch.randn(d, device="cuda") * 0.1
    h = torch.randn(m, 2 * hdim, device="cuda", dtype=torch.bfloat16)

    def ln_ref(x):
        return fp8_quantize_rows(F.layer_norm(x.float(), (d,), w, b, 1e-5))

    def sw_ref(h):
        g, u = h.float().chunk(2, -1)
        return fp8_quantize_rows(F.silu(g) * u)

    def rows_ref(x):
        return fp8_quantize_rows(x.float())

    def sw_bf16_ref(h):  # what the unfused FP8 block computes: bf16 SwiGLU product, then quantised
        g, u = h.chunk(2, -1)
        return fp8_quantize_rows(F.silu(g) * u)

    out = RowWriter.from_args("bench_fp8_kernels", args)
    with torch.inference_mode():
        print(agreement("LayerNorm + rows", kern.layer_norm_rows(x, w, b, 1e-5), ln_ref(x)))
        print(agreement("SwiGLU + rows", kern.swiglu_rows(h), sw_ref(h)))
        print(agreement("rows", kern.quantize_rows(x), rows_ref(x)))
        print(agreement("SwiGLU + rows vs the unfused bf16 product", kern.swiglu_rows(h), sw_bf16_ref(h)))
        print("\n| op | Triton fused ms | inductor (same formula) ms | bf16 op alone, eager ms | Triton GB/s |")
        print("|---|---:|---:|---:|---:|")
        cases = (
            ("LayerNorm + rows quant", lambda: kern.layer_norm_rows(x, w, b, 1e-5), ln_ref, (x,),
             lambda: F.layer_norm(x, (d,), w.bfloat16(), b.bfloat16(), 1e-5), m * d * 3),
            ("SwiGLU + rows quant", lambda: kern.swiglu_rows(h), sw_bf16_ref, (h,),
             lambda: F.silu(h[:, :hdim]) * h[:, hdim:], m * hdim * 5),
            ("rows quant", lambda: kern.quantize_rows(x), rows_ref, (x,), lambda: x * 2, m * d * 3),
        )
        for name, ours, formula, inputs, plain, nbytes in cases:
            compiled = torch.compile(formula, dynamic=False)
            t_ours, t_ind, t_plain = timed(ours, 20), timed(lambda: compiled(*inputs), 20), timed(plain, 20)
            print(f"| {name} | {t_ours * 1e3:.3f} | {t_ind * 1e3:.3f} | {t_plain * 1e3:.3f} | "
                  f"{nbytes / t_ours / 1e9:.0f} |", flush=True)
            for impl, t in (("triton fused", t_ours), ("inductor", t_ind), ("bf16 op alone", t_plain)):
                out.add(f"{name}, {impl}", "ms_per_call", t * 1e3, "ms", rows=m, dim=d, hidden=hdim)
        if args.sweep:
            sweep(x, w, b, h)


def sweep(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, h: torch.Tensor) -> None:
    """ms per call of each kernel for each (rows per program, warps) config; the default is starred."""
    ops = (("LayerNorm + rows", "layer_norm", x.shape[1], lambda c: kern.layer_norm_rows(x, w, b, 1e-5, config=c)),
           ("residual + LayerNorm + rows", "layer_norm", x.shape[1],
            lambda c: kern.add_layer_norm_rows(x, x, w, w, b, 1e-5, config=c)),
           ("SwiGLU + rows", "swiglu", h.shape[1] // 2, lambda c: kern.swiglu_rows(h, config=c)),
           ("rows", "rows", x.shape[1], lambda c: kern.quantize_rows(x, config=c)))
    for name, kind, cols, fn in ops:
        default = kern.launch_config(kind, cols)
        cells = []
        for rows in (1, 2, 4, 8):
            for warps in (1, 2, 4, 8, 16):
                if rows * cols > 32768 or (rows, warps) == (8, 16):
                    continue
                try:
                    t = timed(lambda: fn((rows, warps)), 10)
                except Exception as err:  # noqa: BLE001 - a config the compiler rejects is reported, not fatal
                    cells.append(f"{rows}x{warps}: {type(err).__name__}")
                    continue
                star = "*" if (rows, warps) == default else ""
                cells.append(f"{rows}x{warps}{star} {t * 1e3:.3f}")
        print(f"sweep {name} (rows x warps ms): " + ", ".join(cells), flush=True)


if __name__ == "__main__":
    main()
