"""The amodal completion's disk (issue #21): the start-up check refuses only what the definite parts do not fit and
warns when the completed RGB's bound does not; once the occlusion detection counted K person-frames, the disk is
checked again before any completion work, so a run that cannot hold K completed frames stops with one sentence
and leaves no half-written amodal output."""

from __future__ import annotations

import json
import logging
import shutil
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest

from body4d_core import disk_plan as D
from body4d_core import pipeline
from body4d_core.errors import MemoryBudgetError

from .test_disk_plan import _opts
from .tiny_runs import SAMPLE

Usage = namedtuple("usage", "total used free")


def _fake_disk(monkeypatch, capacity: int, folder: Path) -> None:
    """A disk of ``capacity`` bytes holding only what is written under ``folder`` (whole blocks per file)."""
    def usage(path):
        used = 0
        for p in folder.rglob("*"):
            try:
                used += D.blocks(p.stat().st_size) if p.is_file() else 0
            except FileNotFoundError:  # a temporary renamed meanwhile
                pass
        return Usage(capacity, used, max(0, capacity - used))

    monkeypatch.setattr(shutil, "disk_usage", usage)


def _plans(opts: pipeline.PipelineOptions, completed: int) -> tuple[int, int]:
    """The start-up plan's definite total and the total with ``completed`` person-frames."""
    return (D.plan_for_run(SAMPLE, opts, completed=0).total, D.plan_for_run(SAMPLE, opts, completed=completed).total)


# ------------------------------------------------------------------ the plan's parts and the start-up check


def test_completed_frames_scale_the_store_and_amodal_npz():
    bound = D.plan_disk(100, (360, 640), 2, _opts())
    none, some = (D.plan_disk(100, (360, 640), 2, _opts(), completed=k) for k in (0, 30))
    assert D.COMPLETED_BOUND in {p.name for p in bound.parts} and none.get(D.COMPLETED) == 0
    assert some.get(D.COMPLETED) == D.blocks(30 * 360 * 640 * 3) and some.get(D.COMPLETED_BOUND) == 0
    assert bound.get(D.COMPLETED_BOUND) == D.blocks(200 * 360 * 640 * 3)
    npz = some.get("amodal.npz") - none.get("amodal.npz")
    assert 30 * (360 * 640 * 3 + 16) <= npz <= 30 * (360 * 640 * 3 + 16) + D.BLOCK  # rgb and index rows
    assert none.total < some.total < bound.total
    assert some.total - none.total == some.get(D.COMPLETED) + npz  # nothing else grows with K
    no_amodal = D.plan_disk(100, (360, 640), 2, _opts(amodal=False), completed=30)
    assert no_amodal.get("amodal.npz") == no_amodal.get(D.COMPLETED) == 0


def test_start_refuses_on_the_definite_parts_and_warns_on_the_bound(tmp_path, monkeypatch, caplog):
    opts = _opts()
    definite, bound = D.plan_for_run(SAMPLE, opts, completed=0), D.plan_for_run(SAMPLE, opts)
    assert bound.total > definite.total
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(1 << 40, 0, definite.total - 1))
    with pytest.raises(MemoryBudgetError, match="this run needs about"):
        D.check_start(tmp_path, SAMPLE, opts)
    for free, warned in ((definite.total, 1), (bound.total - 1, 1), (bound.total, 0)):
        monkeypatch.setattr(shutil, "disk_usage", lambda p, free=free: Usage(1 << 40, 0, free))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="body4d_core.disk_plan"):
            check = D.check_start(tmp_path, SAMPLE, opts)
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == warned and isinstance(check, D.CompletionCheck), free
        assert all("amodal completion" in w and "--no_amodal" in w for w in warnings)
    assert D.check_start(tmp_path, SAMPLE, _opts(amodal=False)) is None  # nothing to check later
    assert D.check_start(tmp_path, Path("no_such_video.mp4"), opts) is None


def test_completion_check_counts_what_the_run_wrote(tmp_path, monkeypatch):
    check = D.check_start(tmp_path, SAMPLE, _opts())
    definite, with_k = _plans(_opts(), 5)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(1 << 40, 0, with_k - 1000))
    check(5, written=1000)  # the run's own bytes on the disk are part of its plan
    check(0)
    with pytest.raises(MemoryBudgetError) as err:
        check(5, written=999)
    msg = str(err.value)
    assert "\n" not in msg and "5 occluded person-frames" in msg and "--no_amodal" in msg and "amodal.npz" in msg
    assert f"{(with_k - definite) / 2**20:.1f} MiB more" in msg


# ------------------------------------------------------------------ in a run


@pytest.fixture(scope="module")
def models(full_run_models):
    """Every model of a full run as tiny checkpoints (conftest's session root)."""
    return full_run_models


def _run_opts(models: Path) -> pipeline.PipelineOptions:
    return _opts(models, world=False, write_anim=False, write_meshes=False, write_glb=False)


def test_too_few_bytes_for_the_completed_frames_stop_before_completion(models, tmp_path, monkeypatch):
    import body4d_core.amodal.stage as amodal_stage

    # the tiny models' masks are exempt from the occlusion test: every person-frame counts as occluded here
    monkeypatch.setattr(amodal_stage, "occluded_flags", lambda ious, exempt, threshold: np.ones(len(ious), bool))
    completing = []
    resize = amodal_stage._resize_frames  # the completion's first step: its RGB at the completion size
    monkeypatch.setattr(amodal_stage, "_resize_frames", lambda *a, **k: completing.append(1) or resize(*a, **k))
    roomy = tmp_path / "roomy"
    _fake_disk(monkeypatch, 1 << 40, roomy)
    pipeline.run_pipeline(SAMPLE, roomy, _run_opts(models))  # the same run with room completes
    k = len(np.load(roomy / "amodal.npz")["completed_index"])
    assert k > 0 and completing and json.loads((roomy / "run.json").read_text())["status"] == "complete"

    definite, with_k = _plans(_run_opts(models), k)
    out = tmp_path / "small"
    capacity = (definite + with_k) // 2  # the definite parts fit, K completed frames do not
    _fake_disk(monkeypatch, capacity, out)
    completing.clear()
    with pytest.raises(MemoryBudgetError) as err:
        pipeline.run_pipeline(SAMPLE, out, _run_opts(models))
    msg = str(err.value)
    assert "\n" not in msg and f"the amodal completion of {k} occluded person-frames" in msg and str(out) in msg
    assert not completing  # refused before any completion work
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "failed" and "amodal completion" in run["error"]
    left = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    assert "amodal.npz" not in left and not [p for p in left if "body4d-tmp" in p or p.startswith(".frames")]
    assert set(left) <= {"run.json", "clip.npz", "prompts.npz", "tracks.npz", "mask_overlay.mp4"}
    for name in left:  # what is left is whole: the stages before amodal, readable
        if name.endswith(".npz"):
            assert np.load(out / name).files
