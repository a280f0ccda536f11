"""python -m bench.bench_load --tiny: every loader and variant (in-process), child processes; table and JSON."""

from __future__ import annotations

import json
import subprocess
import sys

from .media import REPO


def test_bench_load_tiny_runs_every_loader_and_variant(tmp_path):
    res = subprocess.run([sys.executable, "-m", "bench.bench_load", "--tiny", "--in-process", "--json",
                          str(tmp_path / "r.json")], cwd=REPO, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    rows = json.loads((tmp_path / "r.json").read_text())
    assert {(r["loader"], r["variant"]) for r in rows} == {(n, v) for n in ("sam3", "amodal", "body", "moge")
                                                         for v in ("legacy", "fast")}
    for r in rows:
        assert r["load_s"] > 0 and r["params_m"] > 0, r
    by = {(r["loader"], r["variant"]): r["params_m"] for r in rows}
    assert all(by[(n, "legacy")] == by[(n, "fast")] for n in ("sam3", "amodal", "body", "moge"))
    assert "speed-up" in res.stdout and "FAILED" not in res.stdout


def test_bench_load_child_processes_and_profile(tmp_path):
    """The default mode: each (loader, variant) in its own process, with cProfile's hot spots."""
    res = subprocess.run([sys.executable, "-m", "bench.bench_load", "--tiny", "--loaders", "moge",
                          "--profile", "3"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    rows = [line.split() for line in res.stdout.splitlines() if line.startswith("moge ")]
    assert [r[1] for r in rows if r[1] in ("legacy", "fast")] == ["legacy", "fast"]  # the table (not "legacy:")
    assert res.stdout.count("s own") == 6  # 3 hot spots per variant


def test_table_and_medians_compare_each_repeat_with_its_legacy_run():
    from bench import bench_load as bench

    row = {"import_s": 1.0, "process_s": 5.0, "params_m": 10.0, "rss_gb": 1.0}
    results = [{"loader": "moge", "variant": v, "load_s": s, **row}
               for v, s in (("legacy", 4.0), ("fast", 2.0), ("legacy", 6.0), ("fast", 2.0), ("legacy", 5.0),
                            ("fast", 1.0))]
    results.append({"loader": "sam3", "variant": "fast", "error": "exit 1: boom"})
    text = bench.table(results)
    assert [line.split()[4] for line in text.splitlines() if line.startswith("moge     fast")] == ["2.00x", "3.00x",
                                                                                             "5.00x"]
    assert "sam3     fast    FAILED exit 1: boom" in text
    med = bench.summary(results).splitlines()
    assert med[1].split() == ["moge", "legacy", "3", "5.00"] and med[2].split() == ["moge", "fast", "3", "2.00", "2.50x"]


def test_variants_set_the_run_profile_not_the_environment(monkeypatch, tmp_path):
    """legacy = the profile's loader legacy; fast-Nt = load_threads N, in effect while the loader runs."""
    import os

    import torch

    import body4d_core.fov as fov
    from bench import bench_load
    from body4d_core import fastload

    assert bench_load.variant_profile("legacy").loader_kwargs() == {"fast": False}
    assert bench_load.variant_profile("fast-2t").load_threads == 2 and bench_load.variant_profile("fast").load_threads == 0
    seen = []
    monkeypatch.setattr(fov, "load_moge", lambda search, device, **kw: seen.append(
        (kw, fastload.load_threads(torch.device("cpu")))))
    monkeypatch.delenv("BODY4D_LOAD_THREADS", raising=False)
    bench_load._loader("moge", tmp_path, "cpu", bench_load.variant_profile("fast-1t"), True)()
    bench_load._loader("moge", tmp_path, "cpu", bench_load.variant_profile("legacy"), True)()
    assert seen == [({}, 1), ({"fast": False}, fastload.DEFAULT_LOAD_THREADS)]
    assert "BODY4D_LOAD_THREADS" not in os.environ
