"""The one-GPU throughput bench on its CPU path: no Ray, tiny checkpoints, two 2-frame clips."""

import json
import sys

import pytest

from bench.bench_batch import main
from bench.rows import read_rows
from body4d_core.testing.checkpoints import write_tiny_checkpoints


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    write_tiny_checkpoints(root, ["sam3", "sam3d_body"])
    return root


def test_throughput_table_without_ray(models, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # "import ray" fails: the bench must not need it
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the run processes on the shared test cores
    jsonl = tmp_path / "rows.jsonl"
    rc = main(["--throughput", "--models", str(models), "--clips", "2", "--frames", "2", "--max_side", "64",
               "--no_amodal", "--no-results", "--jsonl", str(jsonl),
               "--run_args", "--detect_threshold", "0", "--fov", "none", "--body_mode", "body", "--max_people", "1",
               "--no_glb"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "one process, models loaded once" in printed and "2 run processes, models loaded by each" in printed
    rows = read_rows(jsonl)
    got = {(r["case"], r["metric"]): r["value"] for r in rows}
    one, many = "one process, models loaded once", "2 run processes, models loaded by each"
    assert got[(one, "clip_1_load_s")] > 0 and got[(one, "clip_2_load_s")] == 0  # models loaded once, then cached
    assert got[(one, "total_s")] == pytest.approx(got[(one, "clip_1_s")] + got[(one, "clip_2_s")], abs=2e-3)
    assert got[(many, "total_s")] == pytest.approx(got[(many, "clip_1_s")] + got[(many, "clip_2_s")], abs=2e-3)
    assert all(got[(many, f"clip_{i}_s")] > 0 for i in (1, 2))
    assert got[(one, "speed_up")] == pytest.approx(got[(many, "total_s")] / got[(one, "total_s")], rel=1e-2)
    assert all(r["extra"]["failed"] == [] for r in rows if "failed" in r["extra"])
    assert {r["bench"] for r in rows} == {"bench_batch"} and all(r["command"].startswith("python -m bench.bench_batch")
                                                                 for r in rows)
    assert json.loads(jsonl.read_text().splitlines()[0])["extra"]["clips"] == 2
