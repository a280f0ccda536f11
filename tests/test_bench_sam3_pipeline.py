"""bench_sam3 --pipeline-path on the CPU (tiny model): the pipeline's SAM-3 stage beside the bench's propagate."""

from __future__ import annotations

import json
import math
import sys

import pytest


def _run(monkeypatch, tmp_path, *extra: str) -> dict:
    from bench import bench_sam3

    out = tmp_path / "rows.json"
    jsonl = tmp_path / "rows.jsonl"
    monkeypatch.setattr(sys, "argv", ["bench_sam3", "--tiny", "--pipeline-path", "--fps-frames", "4", "--no-results",
                                      "--json", str(out), "--jsonl", str(jsonl), *extra])
    bench_sam3.main()
    doc = json.loads(out.read_text())
    doc["jsonl"] = [json.loads(line) for line in jsonl.read_text().splitlines()]
    return doc


def test_pipeline_path_rows_per_object_count_with_detection_and_load(monkeypatch, tmp_path, capsys):
    doc = _run(monkeypatch, tmp_path, "--objects", "1", "2", "--pipeline-detect",
               "--pipeline-load", str(tmp_path / "models"))
    rows = doc["rows"]
    paths = ["bench: propagate, bench's TF32", "bench: propagate (forward)", "pipeline: points JSON",
             "pipeline: points, gc frozen", "pipeline: detection"]
    assert [(r["case"], r["path"]) for r in rows] == [
        *[("128x72, 1 obj", p) for p in paths], *[("128x72, 2 obj", p) for p in paths],
        ("load", "load_sam3 (points, no detector)")]
    for n, (_, bench, pipe, frozen, det) in zip((1, 2), (rows[0:5], rows[5:10])):
        assert bench["frames"] == pipe["frames"] == frozen["frames"] == 4 and bench["fps"] > 0
        assert pipe["objects"] == frozen["objects"] == n, "--objects sets the prompted objects"
        assert pipe["diff_px"] == frozen["diff_px"] == 0.0, "same prompts: the same masks as the bench"
        assert math.isclose(pipe["stage_s"], pipe["prompts_s"] + pipe["propagate_s"] + pipe["release_s"])
        assert pipe["overlay_s"] > 0 and pipe["release_s"] > 0
        assert 1 <= det["objects"] <= n and det["prompts_s"] > 0
    assert rows[-1]["seconds"] > 0 and (tmp_path / "models" / "sam3" / "sam3" / "model.safetensors").is_file()
    metrics = {(r["case"], r["metric"]) for r in doc["jsonl"]}
    assert ("128x72, 2 obj, pipeline: points JSON", "stage_s") in metrics
    assert ("128x72, 1 obj, pipeline: detection", "prompts_s") in metrics
    assert ("load, load_sam3 (points, no detector)", "seconds") in metrics
    table = capsys.readouterr().out
    assert "bench propagate vs the pipeline's sam3 stage" in table and "stage f/s" in table


def test_pipeline_path_follows_objects_and_leaves_out_detection_unless_asked(monkeypatch, tmp_path):
    rows = _run(monkeypatch, tmp_path, "--objects", "3")["rows"]
    assert [(r["case"], r["path"]) for r in rows] == [("128x72, 3 obj", "bench: propagate, bench's TF32"),
                                                      ("128x72, 3 obj", "bench: propagate (forward)"),
                                                      ("128x72, 3 obj", "pipeline: points JSON"),
                                                      ("128x72, 3 obj", "pipeline: points, gc frozen")]
    assert rows[2]["objects"] == rows[3]["objects"] == 3


def test_pipeline_path_options_are_listed(monkeypatch, capsys):
    from bench import bench_sam3

    monkeypatch.setattr(sys, "argv", ["bench_sam3", "--help"])
    with pytest.raises(SystemExit):
        bench_sam3.main()
    text = capsys.readouterr().out
    assert "--pipeline-path" in text and "--pipeline-detect" in text and "--pipeline-load" in text


def test_pipeline_flags_are_torch_defaults_for_the_block_only():
    import torch

    from bench.bench_sam3 import pipeline_flags
    from bench.patching import patched

    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    with patched(matmul, "allow_tf32", True), patched(cudnn, "allow_tf32", False):  # as the bench's main() may
        with pipeline_flags():
            assert matmul.allow_tf32 is False and cudnn.allow_tf32 is True
            with pipeline_flags(True, False):
                assert matmul.allow_tf32 is True and cudnn.allow_tf32 is False
            assert matmul.allow_tf32 is False and cudnn.allow_tf32 is True
        assert matmul.allow_tf32 is True and cudnn.allow_tf32 is False
