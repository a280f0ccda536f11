"""Smoke check of the user-facing FP8 path on a GPU: estimate_bodies(fp8=True) on a compiled tiny model,
then the same call without FP8 (state restored: it must match a plain call up to run-to-run noise).

    python3 bench/check_fp8_path.py   # H200: prints the FP8 deviation and the restored-state check
"""
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from body4d_core.sam3d_body import BodyItem, estimate_bodies, tiny_config  # noqa: E402
from body4d_core.sam3d_body.synthetic import random_model  # noqa: E402
from body4d_core.sam3d_body.vit import FP8_BLOCK_ATTRS, FP8_LINEAR_ATTRS  # noqa: E402

dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
model = random_model(tiny_config(), seed=0).to(dev)
model.compile_for("default", 4)
rng = np.random.default_rng(0)
frames = rng.integers(0, 255, (2, 96, 128, 3), dtype=np.uint8)
items = [BodyItem(t, p + 1, [10 + 40 * p, 15, 45 + 40 * p, 80]) for t in range(2) for p in range(2)]
ref = estimate_bodies(model, frames, items, batch_size=4)
ref2 = estimate_bodies(model, frames, items, batch_size=4)
out = estimate_bodies(model, frames, items, batch_size=4, fp8=True)
again = estimate_bodies(model, frames, items, batch_size=4)
dev_fp8 = max(float(np.abs(a["body_pose"] - b["body_pose"]).max()) for a, b in zip(out, ref))
same = max(float(np.abs(a["body_pose"] - b["body_pose"]).max()) for a, b in zip(again, ref))
noise = max(float(np.abs(a["body_pose"] - b["body_pose"]).max()) for a, b in zip(ref2, ref))
left = any(a in m.__dict__ for m in model.modules() for a in FP8_LINEAR_ATTRS + FP8_BLOCK_ATTRS)
print(f"device {dev}, fp8 body_pose max dev {dev_fp8:.2e}, after-call vs before {same:.2e} (two plain calls differ by {noise:.2e}), fp8 weights left: {left}")
