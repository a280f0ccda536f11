"""The multi-GPU scaling bench (issue #23) on its CPU path: tiny checkpoints, an embedded local Ray, 1 vs 2 workers.

One run of every part (the clip split over 1 and over 2 workers, a batch on 1 and on 2) checks
that the table has every stage with the speed-up computed from the measured seconds, that the
known masks replace SAM-3's inside the Ray workers, and that the two runs' bodies agree exactly;
the report's figures are also checked apart on hand-made inputs.
"""

import argparse
import json
import math

import numpy as np
import pytest

from bench.scaling_report import STAGES, compare_npz, linear_pct, stage_rows, stage_table

ray = pytest.importorskip("ray", reason="the batch engine needs Ray (pip install ray)")


def test_stage_rows_compute_speed_up_and_efficiency_from_the_seconds():
    rows = stage_rows({"amodal": 10.0, "bodies": 2.0, "total": 13.0, "sam3_propagate": 1.0},
                      {"amodal": 4.0, "bodies": 0.0, "total": 5.0, "render": 1.0}, 4)
    assert [r["stage"] for r in rows] == ["amodal", "bodies", "render", "sam3_propagate", "total"]
    got = {r["stage"]: r for r in rows}
    assert got["amodal"]["speed_up"] == 2.5 and got["amodal"]["efficiency"] == 0.625
    assert got["bodies"]["speed_up"] is None  # no measurable N-worker time: no ratio
    assert got["render"]["one_s"] is None and got["render"]["speed_up"] is None
    assert got["total"]["speed_up"] == pytest.approx(2.6)
    assert "2.50x" in stage_table(rows, 4)[1] and "62%" in stage_table(rows, 4)[1]
    assert linear_pct(100.0, 340.0, 4) == 85.0 and linear_pct(0.0, 10.0, 2) is None


def test_compare_npz_reports_each_arrays_largest_difference(tmp_path):
    a = {"x": np.array([1.0, np.nan, 3.0]), "n": np.array(["a", "b"]), "s": np.zeros((2, 2)), "only": np.ones(1)}
    b = {"x": np.array([1.5, np.nan, 3.0]), "n": np.array(["a", "c"]), "s": np.zeros((2, 3))}
    np.savez(tmp_path / "a.npz", **a)
    np.savez(tmp_path / "b.npz", **b)
    got = compare_npz(tmp_path / "a.npz", tmp_path / "b.npz")
    assert got["x"] == 0.5  # NaN in both places counts as equal
    assert got["n"] == math.inf and got["s"] == math.inf and got["only"] == math.inf
    np.savez(tmp_path / "c.npz", **{**b, "x": np.array([1.5, 0.0, 3.0])})
    assert compare_npz(tmp_path / "b.npz", tmp_path / "c.npz")["x"] == math.inf  # NaN on one side only


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Every part of the tiny scaling bench once: 1 vs 2 CPU workers, 4 frames of the 2-person clip."""
    from bench.bench_scaling import main

    if ray.is_initialized():  # an earlier module's Ray would lack the bench's worker setup hook
        ray.shutdown()
    work = tmp_path_factory.mktemp("scaling")
    jsonl = work / "rows.jsonl"
    mp = pytest.MonkeyPatch()
    mp.setenv("OMP_NUM_THREADS", "1")  # two workers on the shared test cores
    try:
        rc = main(["--tiny", "--workers", "2", "--frames", "4", "--copies", "2", "--one_copies", "1",
                   "--warmup_frames", "0", "--batch_size", "2", "--work", str(work), "--object_store_mb", "200",
                   "--no-results", "--jsonl", str(jsonl)])
    finally:
        mp.undo()
    return rc, work, jsonl


def test_tiny_scaling_run_table_speed_up_and_identical_bodies(tiny_run):
    from bench.bench_scaling import STATE
    from bench.rows import read_rows
    from body4d_core.data import Tracks

    rc, work, jsonl = tiny_run
    assert rc == 0
    rows = read_rows(jsonl)
    got = {(r["case"], r["metric"]): r["value"] for r in rows}
    one, two, pair = "1 clip split over 1 workers", "1 clip split over 2 workers", "1 clip, 1 vs 2 workers"
    for stage in (*STAGES, "total"):  # every stage measured on both sides, its speed-up from those seconds
        a, b = got[(one, f"{stage}_s")], got[(two, f"{stage}_s")]
        if b > 0:
            assert got[(pair, f"{stage}_speed_up")] == pytest.approx(a / b, rel=1e-3)
            assert got[(pair, f"{stage}_efficiency")] == pytest.approx(a / b / 2, rel=1e-3)
    assert got[(pair, "bodies_max_abs_diff")] == 0.0
    assert got[(pair, "params_max_abs_diff")] == 0.0
    assert got[(pair, "render_max_abs_diff")] == 0.0
    b1, b2 = "batch of 1 on 1 workers", "batch of 2 on 2 workers"
    assert got[(b1, "videos_per_hour")] == pytest.approx(3600 / got[(b1, "batch_s")], rel=1e-3)
    assert got[(b2, "videos_per_hour")] == pytest.approx(3600 * 2 / got[(b2, "batch_s")], rel=1e-3)
    assert got[("batch, 1 vs 2 workers", "pct_of_linear")] == pytest.approx(
        100 * got[(b2, "videos_per_hour")] / (2 * got[(b1, "videos_per_hour")]), rel=1e-3)
    state = json.loads((work / STATE).read_text())
    assert state["clip"]["1"]["shards"]["shards"] == [1]  # 8 crops, 4 batches of 2: one call, the one worker
    assert state["clip"]["N"]["shards"]["shards"] == [1, 1]  # 2 batches each: the bodies above agree exactly
    truth = np.load(work / "clip" / "truth.npz")
    for key in ("1", "N"):  # the known masks replaced SAM-3's inside the Ray worker that ran the video
        tracks = Tracks.load_npz(work / f"clip_{key}" / "clip" / "tracks.npz")
        assert np.array_equal(tracks.packed, truth["visible"][:, :4])


def test_tiny_scaling_run_prints_the_table_and_the_markdown_block(tiny_run, capsys):
    from bench.bench_scaling import STATE, report

    rc, work, _ = tiny_run
    state = json.loads((work / STATE).read_text())
    report(argparse.Namespace(argv=["--tiny"]), state, 2)
    printed = capsys.readouterr().out
    table = printed.split("\n")
    for stage in (*STAGES, "total"):
        one, two = state["clip"]["1"]["seconds"][stage], state["clip"]["N"]["seconds"][stage]
        line = next(x for x in table if x.startswith(f"{stage} "))
        assert f"{one:.2f}" in line and f"{two:.2f}" in line
        if two > 0:
            assert f"{one / two:.2f}x" in line
    assert "bodies.npz: max abs difference 0 over" in printed and "(all equal)" in printed
    assert "render_4d.mp4: max abs difference 0 over 4 decoded frames, bytes identical" in printed
    assert "| stage | 1 GPU s | 2 GPUs s | speed-up | efficiency |" in printed
    assert "- shards each worker ran, 2 worker(s): shards [1, 1]" in printed
    assert "| workers | videos | batch s | videos/h | % of linear |" in printed
    assert "batch: " in printed and "of linear on 2 GPUs (target >= 85%)" in printed


def test_parts_of_separate_commands_combine_only_under_the_same_setting(tmp_path):
    from bench.bench_scaling import load_state, save_state

    setting = {"frames": 90, "steps": 25, "copies": 8, "batch_steps": 4}
    path = tmp_path / "scaling.json"
    save_state(path, {"setting": setting, "clip": {"1": {"x": 1}}, "batch": {"1": {"y": 2}}, "compare": {"z": 3}})
    state, fresh = load_state(path, dict(setting), False)
    assert not fresh and state["clip"] == {"1": {"x": 1}} and state["batch"] == {"1": {"y": 2}}
    state, fresh = load_state(path, {**setting, "copies": 4}, False)  # another batch: its results dropped
    assert not fresh and state["clip"] == {"1": {"x": 1}} and state["batch"] == {} and state["compare"] == {"z": 3}
    state, fresh = load_state(path, {**setting, "steps": 4}, False)  # another clip run: everything dropped
    assert fresh and state == {"setting": {**setting, "steps": 4}, "clip": {}, "batch": {}}
    assert load_state(path, dict(setting), True)[1]  # --fresh
