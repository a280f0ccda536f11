"""Tiny random-weight checkpoints shared by the run tests of one pytest session (written once)."""

from __future__ import annotations

import json
from pathlib import Path

from body4d_core.pipeline import PipelineOptions
from body4d_core.video import LoadOptions

from .media import REPO

SAMPLE = REPO / "samples" / "cartoon_dancer_81f.mp4"  # 350x350, 81 frames, one dancer
RUN_MODELS = ("sam3", "sam3d_body")  # points prompts, no amodal, no MoGe: the two models a small run loads


def tiny_models(tmp_path_factory, names=RUN_MODELS) -> Path:
    """A models root holding tiny checkpoints of ``names``, written once per session (shared across modules)."""
    from body4d_core.testing.checkpoints import write_tiny_checkpoints

    root = tmp_path_factory.getbasetemp() / "tiny_run_models"
    done = root / ".complete"
    have = set(done.read_text().split()) if done.is_file() else set()
    todo = [n for n in names if n not in have]
    if todo:
        write_tiny_checkpoints(root, todo)
        done.write_text(" ".join(sorted(have | set(todo))))
    return root


def small_options(models: Path, frames: int = 4, side: int = 64, **kw) -> PipelineOptions:
    """A run over a few small frames, one clicked person, no amodal, no MoGe (about seconds on a CPU)."""
    points = {"version": 1, "image_size": [350, 350],
              "objects": [{"id": 1, "points": [{"frame": 0, "x": 175, "y": 160, "label": 1}]}]}
    base = dict(video=LoadOptions(frame_load_cap=frames, max_side=side), points_json=json.dumps(points),
                amodal=False, fov_mode="none", models_root=models, batch_size=4, write_glb=True)
    base.update(kw)
    return PipelineOptions(**base)
