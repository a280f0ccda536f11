"""bench/ as a package: every bench imports without CUDA or sys.path edits; the shared helpers and the JSON rows."""

from __future__ import annotations

import datetime
import importlib
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from .media import REPO

# benches still run as scripts while another branch edits them (they are switched to bench.* when merged)
NOT_YET_PACKAGED: set[str] = set()
HELPERS = {"__init__", "clips", "kernel_profile", "patching", "peak_memory", "printing", "render_legacy", "rows",
           "scaling_report", "timers"}


def _bench_modules() -> list[str]:
    return sorted(p.stem for p in (REPO / "bench").glob("*.py") if p.stem not in NOT_YET_PACKAGED | {"__init__"})


def test_every_bench_module_imports_without_cuda_and_leaves_sys_path_alone(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    before = list(sys.path)
    names = _bench_modules()
    assert {"bench_load", "bench_sam3", "bench_body", "bench_amodal", "check_fp8_path"} <= set(names)
    for name in names:
        mod = importlib.import_module(f"bench.{name}")
        assert sys.path == before, f"bench.{name} changed sys.path"
        source = (REPO / "bench" / f"{name}.py").read_text()
        assert "sys.path.insert" not in source and "sys.path.append" not in source, name
        if name not in HELPERS:  # a bench: a main() run only as a program, documented in the module form
            assert callable(getattr(mod, "main", None)), name
            assert f"python -m bench.{name}" in (mod.__doc__ or ""), name
            assert "python bench/" not in source and "python3 bench/" not in source, name


def test_every_bench_takes_the_common_row_options(monkeypatch, capsys):
    """--help builds each bench's whole parser (a clash with the common options fails there) and lists them."""
    for name in sorted(set(_bench_modules()) - HELPERS):
        mod = importlib.import_module(f"bench.{name}")
        monkeypatch.setattr(sys, "argv", [name, "--help"])
        with pytest.raises(SystemExit) as done:
            mod.main()
        text = capsys.readouterr().out
        assert done.value.code == 0 and "--jsonl" in text and "--no-results" in text, name


def test_row_writer_writes_every_documented_field(tmp_path, monkeypatch):
    import torch

    from bench import rows

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    extra_path = tmp_path / "mine.jsonl"
    w = rows.RowWriter("bench_x", extra_path, results=True, results_dir=tmp_path / "results",
                       argv=["--frames", "90", "--name", "a b"])
    t0 = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    w.add("720p, 5 people", "fps", np.float32(12.5), "frames/s", frames=90, peak=float("nan"), shape=(1, 2))
    w.add("720p, 5 people", "peak_vram", 3.25, "GiB")
    for path in (extra_path, tmp_path / "results" / "bench_x.jsonl"):
        got = rows.read_rows(path)
        assert len(got) == 2
        first = got[0]
        assert tuple(first) == rows.FIELDS
        assert first["bench"] == "bench_x" and first["case"] == "720p, 5 people"
        assert first["metric"] == "fps" and first["value"] == 12.5 and first["unit"] == "frames/s"
        assert first["device"] == "cpu"
        assert first["command"] == "python -m bench.bench_x --frames 90 --name 'a b'"
        assert first["extra"] == {"frames": 90, "peak": None, "shape": [1, 2]}  # NaN: null, not invalid JSON
        assert datetime.datetime.fromisoformat(first["date"]) >= t0
        assert got[1]["metric"] == "peak_vram" and got[1]["value"] == 3.25 and got[1]["extra"] == {}
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    assert first["commit"] == (head.stdout.strip() if head.returncode == 0 else None)
    assert w.rows == got


def test_row_writer_appends_and_tiny_runs_skip_the_results_folder(tmp_path, monkeypatch):
    import argparse

    from bench import rows

    monkeypatch.setattr(rows, "RESULTS_DIR", tmp_path / "results")
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true")
    rows.add_rows_args(ap)
    out = tmp_path / "r.jsonl"
    args = ap.parse_args(["--tiny", "--jsonl", str(out)])
    w = rows.RowWriter("bench_y", args.jsonl, results=not (args.tiny or args.no_results), device="cpu",
                       results_dir=tmp_path / "results")
    w.add("a", "seconds", 1.0, "s")
    rows.RowWriter("bench_y", out, results=False, device="cpu").add("b", "seconds", 2.0, "s")  # appends
    assert [r["case"] for r in rows.read_rows(out)] == ["a", "b"]
    assert not (tmp_path / "results").exists()
    rows.RowWriter("bench_y", None, results=True, device="cpu", results_dir=tmp_path / "results").add(
        "c", "seconds", 3.0, "s")
    assert [r["case"] for r in rows.read_rows(tmp_path / "results" / "bench_y.jsonl")] == ["c"]
    assert rows.RowWriter.from_args("bench_y", args).paths == [out]  # --tiny: only the asked-for file


def test_smoothing_bench_writes_its_printed_figures_as_rows(tmp_path):
    out = tmp_path / "rows.jsonl"
    res = subprocess.run([sys.executable, "-m", "bench.bench_smoothing", "--tiny", "--skip-timing", "--jsonl",
                          str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    got = rows_by_case(out)
    table = [line for line in res.stdout.splitlines()[2:] if line.strip()]
    assert len(table) == 8 and len(got) == 8
    for line in table:
        name, *values = line.rsplit(None, 4)
        name = name.strip()
        assert [got[name][m] for m in ("mpjpe", "accel", "gap_mpjpe")] == pytest.approx(
            [float(v) for v in values[:3]], abs=0.006)
        assert got[name]["frozen"] == int(values[3])


def rows_by_case(path) -> dict[str, dict[str, float]]:
    from bench.rows import read_rows

    out: dict[str, dict[str, float]] = {}
    for r in read_rows(path):
        assert r["bench"] == "bench_smoothing" and r["device"] == "cpu"
        assert r["command"].startswith("python -m bench.bench_smoothing --tiny")
        assert r["extra"]["people"] == 2 and r["extra"]["frames"] == 120
        out.setdefault(r["case"], {})[r["metric"]] = r["value"]
    return out


def test_patched_and_patched_env_restore_even_after_an_error(monkeypatch):
    from bench import patching

    class Holder:
        flag = True

    with pytest.raises(RuntimeError):
        with patching.patched(Holder, "flag", False):
            assert Holder.flag is False
            raise RuntimeError("boom")
    assert Holder.flag is True
    monkeypatch.setenv("BENCH_TEST_VAR", "1")
    with patching.patched_env("BENCH_TEST_VAR", "8"):
        assert os.environ["BENCH_TEST_VAR"] == "8"
    assert os.environ["BENCH_TEST_VAR"] == "1"
    monkeypatch.delenv("BENCH_TEST_VAR")
    with patching.patched_env("BENCH_TEST_VAR", "2"):
        assert os.environ["BENCH_TEST_VAR"] == "2"
    assert "BENCH_TEST_VAR" not in os.environ
    before = list(sys.path)
    with patching.import_path("/nonexistent-bench-dir", ""):
        assert sys.path[0] == "/nonexistent-bench-dir" and len(sys.path) == len(before) + 1
    assert sys.path == before


def test_timers_count_calls_and_time_them():
    from bench import timers

    calls = []

    def fn() -> int:
        calls.append(1)
        time.sleep(0.02)
        return len(calls)

    assert timers.timed(fn, 3) == pytest.approx(0.02, abs=0.015) and len(calls) == 4  # one warm call
    calls.clear()
    first, mean = timers.first_then_mean(fn, 2)
    assert len(calls) == 3 and first >= 0.02 and mean >= 0.02
    calls.clear()
    med, last = timers.median_time(fn, 3, warm=False)
    assert last == 3 and med >= 0.02
    with timers.Stopwatch("cpu") as sw:
        time.sleep(0.03)
    assert 0.03 <= sw.seconds < 0.5


def test_peak_memory_off_cuda_and_host_rss(monkeypatch):
    import torch

    from bench import peak_memory

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert math.isnan(peak_memory.gpu_peak_gib()) and math.isnan(peak_memory.gpu_peak_gib("cuda"))
    peak_memory.reset_gpu_peak("cuda", empty_cache=True)  # no CUDA: nothing to reset, no error
    before = peak_memory.rss_peak_bytes()
    block = np.ones(64 << 20, np.uint8)  # 64 MiB touched
    assert peak_memory.rss_peak_bytes() >= before and peak_memory.rss_peak_bytes() >= block.nbytes
    assert peak_memory.rss_peak_gib() == pytest.approx(peak_memory.rss_peak_bytes() / 2**30, rel=0.01)


def test_table_printers():
    from bench import printing

    text = printing.markdown_table(["item", "seconds"], [("tracks", "0.25"), ("glb", "1.50")], align="lr")
    assert text.splitlines() == ["| item | seconds |", "|---|---:|", "| tracks | 0.25 |", "| glb | 1.50 |"]
    assert printing.markdown_table(["a"], []).splitlines()[1] == "|---|"
    kv = printing.key_value_table([("load", "1.0 s"), ("peak VRAM", "3 GB")]).splitlines()
    assert kv == ["load       1.0 s", "peak VRAM  3 GB"]


def test_clips_are_deterministic_and_masks_consistent():
    from body4d_core.data import unpack_masks

    from bench import clips

    a, b = clips.make_clip(6, 3, 48, 64), clips.make_clip(6, 3, 48, 64)
    assert np.array_equal(a.frames, b.frames) and a.frames.shape == (6, 48, 64, 3)
    vis, amo = unpack_masks(a.visible, 64), unpack_masks(a.amodal, 64)
    assert vis.shape == (3, 6, 48, 64) and not (vis & ~amo).any() and (amo & ~vis).any()  # someone is hidden
    assert [o["id"] for o in json.loads(json.dumps(a.prompts))["objects"]] == [1, 2, 3]
    rgb, truth, tracks = clips.occluded_ellipses(2, 20, 32, 48, hide=4)
    assert rgb.shape == (20, 32, 48, 3) and sorted(truth) == [1, 2]
    hidden = truth[1] & ~tracks.masks_of(1)
    assert hidden.reshape(20, -1).any(1).sum() == 4  # hidden for exactly `hide` frames
    loop = clips.LoopedClip(100, 24, 32)
    assert len(loop) == 100 and len(loop.pool) == 48 and np.array_equal(loop[1], loop[93])  # ping-pong
    frames, items = clips.body_inputs(5, 40, 60, people=2)
    assert frames.shape == (3, 40, 60, 3) and [(i.frame, i.obj_id) for i in items] == [
        (0, 1), (0, 2), (1, 1), (1, 2), (2, 1)]


def _table(text: str, first_cell: str) -> list[list[str]]:
    """The cells of the markdown lines of ``text`` whose first cell starts with ``first_cell``."""
    lines = [ln for ln in text.splitlines() if ln.startswith(f"| {first_cell}")]
    return [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines]


def test_world_bench_writes_both_tables_figures_as_rows(tmp_path, monkeypatch, capsys):
    """One moving-camera clap case: every printed metric of both tables is a row with the printed value."""
    from bench import bench_world
    from bench.rows import read_rows

    out = tmp_path / "world.jsonl"
    monkeypatch.setattr(bench_world, "TINY", [("clap", "handheld", 1)])
    monkeypatch.setattr(sys, "argv", ["bench_world", "--tiny", "--jsonl", str(out)])
    bench_world.main()
    text = capsys.readouterr().out
    got: dict[tuple[str, str], dict] = {(r["case"], r["metric"]): r for r in read_rows(out)}
    assert all(r["bench"] == "bench_world" and r["command"] == f"python -m bench.bench_world --tiny --jsonl {out}"
               for r in got.values())
    methods = _table(text, "clap handheld 1p")[:4]
    assert [m[1] for m in methods] == ["raw", "gaussian", "current", "ours"]
    for cells in methods:
        case = f"clap handheld 1p, {cells[1]}"
        for col, metric, unit, tol in ((2, "w_mpjpe", "mm", 0.051), (3, "wa_mpjpe", "mm", 0.051),
                                       (4, "rte", "%", 0.0051), (5, "skate", "mm/frame", 0.0051),
                                       (6, "jitter", "mm/frame^2", 0.0051), (7, "hands", "mm", 0.051)):
            row = got[(case, metric)]
            assert row["unit"] == unit and row["value"] == pytest.approx(float(cells[col]), abs=tol), (case, metric)
            assert row["extra"]["method"] == cells[1] and row["extra"]["frames"] == 40
    cam = _table(text, "clap handheld 1p")[4]  # the camera table's line
    about = got[("clap handheld 1p", "static_detected_ok")]
    assert about["value"] is True and cam[1] == "ok (moving)" and about["extra"]["camera_static"] is False
    assert about["extra"]["camera_source"] == cam[2] and about["extra"]["floor_source"] == cam[7]
    for col, metric, unit, tol in ((3, "cam_rot_err", "deg", 0.0051), (4, "cam_trans_err", "% of path", 0.0051),
                                   (5, "floor_normal_err", "deg", 0.0051), (6, "floor_height_err", "mm", 0.51),
                                   (8, "stage_seconds", "s", 0.051)):
        row = got[("clap handheld 1p", metric)]
        assert row["unit"] == unit and row["value"] == pytest.approx(float(cam[col]), abs=tol), metric
    assert len(got) == 4 * 6 + 6


def test_anim_bench_writes_its_table_and_fidelity_as_rows(tmp_path):
    from bench.rows import read_rows

    out = tmp_path / "anim.jsonl"
    res = subprocess.run([sys.executable, "-m", "bench.bench_anim", "--tiny", "--cases", "2x12", "1x9", "--jsonl",
                          str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = read_rows(out)
    got = {(r["case"], r["metric"]): r for r in rows}
    assert len(got) == len(rows) == 2 * 8 + 3
    metrics = ["build", "fidelity_report", "write", "scene_glb_size", "bvh_all_size", "bvh_per_person_size",
               "flag_csv_size", "npz_size"]
    for cells in _table(res.stdout, "2 x 12") + _table(res.stdout, "1 x 9"):
        for metric, cell in zip(metrics, cells[1:]):
            row = got[(cells[0], metric)]
            value = float(cell.removesuffix(" MB"))
            assert row["value"] == pytest.approx(value, abs=0.0051), (cells[0], metric)
            if cell.endswith(" MB"):
                assert row["unit"] == "MB" and row["value"] == row["extra"]["bytes"] / 1e6
            else:
                assert row["unit"] == "s"
    assert got[("2 x 12", "scene_glb_size")]["extra"]["bytes"] > got[("1 x 9", "scene_glb_size")]["extra"]["bytes"]
    assert got[("1 x 9", "build")]["extra"] == {"people": 1, "frames": 9, "joints": 20, "vertices": 200, "fps": 30.0,
                                                "threads": got[("1 x 9", "build")]["extra"]["threads"]}
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("fidelity"))
    mean, vmax, jmax = (float(x) for x in
                        (line.split("mean ")[1].split(" mm")[0], line.split("max ")[1].split(" mm")[0],
                         line.split("joints max ")[1].split(" mm")[0]))
    fid = {m: got[("fidelity, 2 x 12, person 1", m)] for m in ("vertex_mean", "vertex_max", "joint_max")}
    assert fid["vertex_mean"]["value"] == pytest.approx(mean, abs=0.0051)
    assert fid["vertex_max"]["value"] == pytest.approx(vmax, abs=0.0051) and vmax > mean
    assert fid["joint_max"]["value"] == pytest.approx(jmax, abs=0.00006)
    assert fid["vertex_mean"]["extra"]["measured_frames"] == 12 and fid["vertex_mean"]["unit"] == "mm"


def test_batch_bench_rows_of_one_printed_line(tmp_path):
    """write_rows: the printed figures of a worker count, the speed-up only where one is printed."""
    from bench import bench_batch
    from bench.rows import RowWriter, read_rows

    out = tmp_path / "batch.jsonl"
    w = RowWriter("bench_batch", out, results=False, device="cpu", argv=["--tiny"])
    two = {"workers": 2, "split": False, "videos": 4, "done": 3, "start_s": 1.5, "batch_s": 20.0,
           "videos_per_hour": 540.0, "failed": ["boom"]}
    bench_batch.write_rows(w, two, 1.75, copies=4)
    bench_batch.write_rows(w, {**two, "split": True, "videos": 1, "done": 1, "failed": []}, None, copies=4)
    rows = read_rows(out)
    first = {r["metric"]: (r["value"], r["unit"]) for r in rows if r["case"] == "2 workers"}
    assert first == {"start_s": (1.5, "s"), "batch_s": (20.0, "s"), "done": (3, "videos"),
                     "videos_per_hour": (540.0, "videos/h"), "speed_up": (1.75, "x")}
    assert rows[0]["extra"] == {"workers": 2, "split": False, "videos": 4, "failed": 1, "copies": 4}
    split = [r["metric"] for r in rows if r["case"] == "2 workers, split (1 clip)"]
    assert split == ["start_s", "batch_s", "done", "videos_per_hour"]


def test_unet_bench_frame_sweep_times_one_video_per_window_length():
    from bench.bench_unet_compile import frame_sweep

    shapes = {"512x1024, 1 video": (1, 64, 64, 128), "256x512, 4 videos": (4, 64, 32, 64)}
    got = frame_sweep(shapes, "8,24")
    assert got == {"512x1024, 1 video x 8 frames": (1, 8, 64, 128), "512x1024, 1 video x 24 frames": (1, 24, 64, 128),
                   "256x512, 1 video x 8 frames": (1, 8, 32, 64), "256x512, 1 video x 24 frames": (1, 24, 32, 64)}
    with pytest.raises(SystemExit, match="positive"):
        frame_sweep(shapes, "0")
