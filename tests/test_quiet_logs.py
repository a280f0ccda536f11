"""A normal tiny run is quiet: no library warnings or notices, and progress bars that move and finish."""

from __future__ import annotations

import logging
import warnings
from collections import defaultdict
from pathlib import Path

import pytest

from body4d_core.pipeline import PipelineOptions, run_pipeline
from body4d_core.runtime import CallbackHooks
from body4d_core.testing.checkpoints import write_tiny_checkpoints
from body4d_core.video import LoadOptions

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "samples" / "cartoon_dancer_81f.mp4"
NOISE = ("accelerate", "kept in float32", "processor", "torch.jit", "is deprecated", "__array__",
         "weights_only")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    write_tiny_checkpoints(root, ["sam3", "sam3d_body", "diffusion_vas_amodal", "diffusion_vas_completion",
                                  "depth_anything"])
    bars: dict[str, list[tuple[int, int]]] = defaultdict(list)

    def hooks_for(name: str) -> CallbackHooks:
        return CallbackHooks(lambda done, total: bars[name].append((done, total)))

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(level=logging.INFO)
    top = logging.getLogger()
    old_level = top.level
    top.addHandler(handler)
    top.setLevel(logging.INFO)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            opts = PipelineOptions(video=LoadOptions(frame_load_cap=4, max_side=96), detect_threshold=0.0,
                                   max_people=1, fov_mode="none", write_glb=False,
                                   amodal_settings={"steps": 4, "detection_resolution": (64, 64),
                                                    "completion_resolution": (64, 64)},
                                   models_root=root, batch_size=4)
            run_pipeline(SAMPLE, tmp_path_factory.mktemp("out"), opts, hooks_for)
    finally:
        top.removeHandler(handler)
        top.setLevel(old_level)
    return list(caught), records, dict(bars)


def test_no_library_warnings(tiny_run) -> None:
    caught, _, _ = tiny_run
    shown = [f"{w.category.__name__}: {w.message} ({w.filename})" for w in caught
             if issubclass(w.category, (FutureWarning, DeprecationWarning, UserWarning))
             and any(n in str(w.message) or n in w.filename for n in NOISE + ("diffusers", "transformers"))]
    assert not shown, shown


def test_no_library_notices_in_the_log(tiny_run) -> None:
    _, records, _ = tiny_run
    noisy = [f"{r.name} {r.levelname}: {r.getMessage()[:200]}" for r in records
             if r.levelno >= logging.WARNING or any(n in r.getMessage() for n in NOISE)]
    assert not noisy, noisy


def test_progress_bars_finish_and_amodal_moves_in_small_steps(tiny_run) -> None:
    _, _, bars = tiny_run
    assert {"decode", "detect", "propagate", "amodal"} <= set(bars), sorted(bars)
    for name, calls in bars.items():
        done, total = calls[-1]
        assert done == total, (name, calls)
        assert all(b[0] >= a[0] for a, b in zip(calls, calls[1:]) if a[1] == b[1]), (name, calls)
    amodal = [d / t for d, t in bars["amodal"]]
    # the occlusion-detection pass (10% -> 50% of the bar) advances once per diffusion step (4 steps: 10% each)
    detection = [f for f in amodal if 0.1 <= f <= 0.5]
    assert len(detection) >= 5 and max(b - a for a, b in zip(detection, detection[1:])) <= 0.1 + 1e-9, amodal
    # nothing occluded in this clip: after detection the stage is done (no refinement or completion to show)
    assert amodal[-1] == 1.0
