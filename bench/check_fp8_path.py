"""Smoke check of the user-facing FP8 path on a GPU: estimate_bodies(fp8=True) on a compiled tiny model,
then the same call without FP8 (state restored: it must match a plain call up to run-to-run noise).

    python -m bench.check_fp8_path   # H200: prints the FP8 deviation and the restored-state check
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from bench.rows import RowWriter, add_rows_args
from body4d_core.sam3d_body import BodyItem, estimate_bodies, tiny_config
from body4d_core.testing.body import random_model
from body4d_core.sam3d_body.fp8 import FP8_BLOCK_ATTRS, FP8_LINEAR_ATTRS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_rows_args(ap)
    args = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = random_model(tiny_config(), seed=0).to(dev)
    model.compile_for("default", 4)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (2, 96, 128, 3), dtype=np.uint8)
    items = [BodyItem(t, p + 1, [10 + 40 * p, 15, 45 + 40 * p, 80]) for t in range(2) for p in range(2)]
    ref = estimate_bodies(model, frames, items, batch_size=4)
    ref2 = estimate_bodies(model, frames, items, batch_size=4)
    fp8 = estimate_bodies(model, frames, items, batch_size=4, fp8=True)
    again = estimate_bodies(model, frames, items, batch_size=4)
    dev_fp8 = max(float(np.abs(a["body_pose"] - b["body_pose"]).max()) for a, b in zip(fp8, ref))
    same = max(float(np.abs(a["body_pose"] - b["body_pose"]).max()) for a, b in zip(again, ref))
    noise = max(float(np.abs(a["body_pose"] - b["body_pose"]).max()) for a, b in zip(ref2, ref))
    left = any(a in m.__dict__ for m in model.modules() for a in FP8_LINEAR_ATTRS + FP8_BLOCK_ATTRS)
    print(f"device {dev}, fp8 body_pose max dev {dev_fp8:.2e}, after-call vs before {same:.2e} "
          f"(two plain calls differ by {noise:.2e}), fp8 weights left: {left}")
    out = RowWriter.from_args("check_fp8_path", args, dev)
    out.add("tiny model, fp8=True", "body_pose_max_dev", dev_fp8, "rad", plain_noise=noise, fp8_weights_left=left)
    out.add("tiny model, plain call after the fp8 call", "body_pose_max_dev", same, "rad", plain_noise=noise)


if __name__ == "__main__":
    main()
