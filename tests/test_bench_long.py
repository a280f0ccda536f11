"""bench_long's own logic: per-stage peaks, the --max-seconds bound and the stage labels of the sampler."""

from __future__ import annotations

import subprocess
import time

import pytest

from bench import bench_long


def _result(n: int, anon: float) -> dict:
    return {"frames": n, "wall_s": 1.5, "rss_anon_gib": anon, "rss_gib": anon + 1, "rss_file_gib": 0.5,
            "vram_gib": float("nan"), "timings": {"sam3": 1.0},
            "stages": {"render": {"rss_anon_gib": anon / 2, "rss_gib": anon, "vram_gib": float("nan")},
                       "sam3": {"rss_anon_gib": anon, "rss_gib": anon + 1, "vram_gib": float("nan")}}}


def test_lengths_print_their_peaks_per_stage_and_stop_at_max_seconds(monkeypatch, tmp_path, capsys):
    seen = []

    def fake(args, work, n, deadline):
        seen.append((n, deadline))
        if n == 900:
            return f"{n} frames: stopped, the run went past --max-seconds"
        return _result(n, 0.25)

    monkeypatch.setattr(bench_long, "run_length", fake)
    monkeypatch.setattr(bench_long, "ensure_models", lambda root, preset, device: root)
    rc = bench_long.main(["--lengths", "300", "900", "1800", "--work", str(tmp_path), "--models", str(tmp_path),
                          "--max-seconds", "100", "--no-results"])
    out = capsys.readouterr().out
    assert rc == 0  # stopped by the time bound: the lengths done are the result
    assert [n for n, _ in seen] == [300, 900]  # 1800 never started
    assert seen[0][1] == seen[1][1] and 0 < seen[0][1] - time.perf_counter() <= 100  # one deadline for all
    assert "900 frames: stopped" in out and "total" in out
    lines = [ln.split() for ln in out.splitlines()]
    assert ["sam3", "0.250", "/", "1.250"] in lines and ["render", "0.125", "/", "0.250"] in lines
    assert lines.index(["sam3", "0.250", "/", "1.250"]) < lines.index(["render", "0.125", "/", "0.250"])


def test_a_failed_length_fails_the_invocation(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(bench_long, "run_length", lambda *a: "300 frames: the run failed (exit 1)")
    monkeypatch.setattr(bench_long, "ensure_models", lambda root, preset, device: root)
    assert bench_long.main(["--lengths", "300", "--work", str(tmp_path), "--no-results"]) == 1
    assert "the run failed" in capsys.readouterr().out


def test_run_length_reports_a_child_past_its_budget(monkeypatch, tmp_path):
    monkeypatch.setattr(bench_long, "write_clip", lambda path, *a: path)

    def slow(cmd, **kw):
        assert 0 < kw["timeout"] <= 3.0
        raise subprocess.TimeoutExpired(cmd, kw["timeout"])

    monkeypatch.setattr(subprocess, "run", slow)
    args = bench_long.parse_args(["--lengths", "10"])
    deadline = time.perf_counter() + 3.0
    assert bench_long.run_length(args, tmp_path, 10, deadline) == "10 frames: stopped, the run went past --max-seconds"


def test_the_clip_writing_counts_against_max_seconds(monkeypatch, tmp_path):
    """A clip that takes the rest of the budget to write: the child is not started (it would overrun)."""
    deadline = time.perf_counter() + 0.2

    def slow_clip(path, *a):
        time.sleep(0.3)
        return path

    def never(*a, **kw):
        raise AssertionError("the child must not start past the deadline")

    monkeypatch.setattr(bench_long, "write_clip", slow_clip)
    monkeypatch.setattr(subprocess, "run", never)
    args = bench_long.parse_args(["--lengths", "10"])
    assert "not started" in bench_long.run_length(args, tmp_path, 10, deadline)


def _sampled(rss, label: str) -> None:
    """Wait (at most 10 s, the machine may be busy) until the sampler thread has sampled under ``label``."""
    end = time.monotonic() + 10
    while label not in rss.by_stage and time.monotonic() < end:
        time.sleep(0.005)


def test_stage_labels_follow_the_pipeline_stages():
    from body4d_core import pipeline

    with bench_long.RssSampler(every=0.001) as rss:
        vram: dict = {}
        with bench_long.stage_labels(rss, "cpu", vram):
            summary = pipeline.RunSummary(out_dir=None)
            with pipeline._Stage(summary, "sam3", pipeline.NULL_HOOKS):
                assert rss.stage == "sam3"
                _sampled(rss, "sam3")
            assert rss.stage == "after sam3" and "sam3" in summary.timings
            _sampled(rss, "after sam3")
        with pytest.raises(RuntimeError):
            with bench_long.stage_labels(rss, "cpu", vram):
                with pipeline._Stage(summary, "render", pipeline.NULL_HOOKS):
                    _sampled(rss, "render")
                    raise RuntimeError("boom")
    assert pipeline._Stage.__enter__.__name__ == "__enter__"  # restored after the block, also after an error
    assert {"sam3", "after sam3", "render"} <= set(rss.by_stage) and rss.by_stage["sam3"]["RssAnon"] > 0


def test_smaps_groups_count_the_store_pages_touched(tmp_path):
    """--smaps: the frame store's frames file and its other files are counted apart, by what is resident."""
    import numpy as np

    from body4d_core.frame_store import FrameStore

    import mmap
    import os

    if not (hasattr(mmap, "MADV_DONTNEED") and os.path.exists("/proc/self/smaps")):
        pytest.skip("needs /proc/self/smaps and madvise (Linux)")
    with FrameStore(tmp_path, 8, 64, 1024, interval=0) as store:
        store.frames[:4] = 1  # 4 frames of 192 KiB: 768 KiB
        out = store.empty((512, 1024), np.float32)
        out[:256] = 2.0  # 1 MiB of 2
        got = bench_long.smaps_groups()
        assert 768 <= got["store frames"] < 768 + 256 and 1024 <= got["store outputs"] < 1024 + 256
        assert got["libraries"] > 0
        store.drop_pages()
        got = bench_long.smaps_groups()
        assert got["store frames"] == got["store outputs"] == 0


def test_print_files_shows_each_stage_and_group(capsys):
    stage = {"rss_anon_gib": 1.0, "rss_gib": 2.0, "rss_file_gib": 1.0, "vram_gib": float("nan"),
             "file_mib": {"store frames": 500.0, "store outputs": 20.0, "libraries": 300.0, "other files": 1.0}}
    bench_long.print_files({9000: {"stages": {"bodies": stage, "sam3": dict(stage, rss_file_gib=0.5)}}})
    lines = [ln.split() for ln in capsys.readouterr().out.splitlines()]
    assert ["9000", "fr", "sam3", "0.500", "500.0", "20.0", "300.0", "1.0"] in lines
    assert lines.index(["9000", "fr", "sam3", "0.500", "500.0", "20.0", "300.0", "1.0"]) < \
        lines.index(["9000", "fr", "bodies", "1.000", "500.0", "20.0", "300.0", "1.0"])
    bench_long.print_files({9000: {"stages": {"camera": dict(stage, file_mib={})}}})  # a stage with no sample
    assert capsys.readouterr().out.splitlines()[-1].split() == ["9000", "fr", "camera", "1.000", "-", "-", "-", "-"]
    bench_long.print_files({300: {"stages": {"bodies": {"rss_anon_gib": 1.0}}}})  # without --smaps: nothing
    assert capsys.readouterr().out == ""


def test_resume_reuses_the_stages_an_earlier_stopped_run_finished(tmp_path):
    """--resume: a run whose later stages are missing (as after a stopped device call) reuses SAM-3's finished
    stage and runs the body stage again; without it nothing is reused."""
    from bench.clips import write_h264
    from body4d_core.testing.checkpoints import write_tiny_checkpoints

    models = tmp_path / "models"
    write_tiny_checkpoints(models, ["sam3", "sam3d_body"])
    clip = tmp_path / "clip.mp4"
    write_h264(clip, 128, 96, 6)
    out = tmp_path / "out_6"
    base = ["--child", "--clip", str(clip), "--out", str(out), "--models", str(models), "--size", "96x128",
            "--render-mode", "openpose", "--no-amodal", "--no-fov", "--no-world", "--no-anim", "--no-meshes",
            "--no-glb"]
    first = bench_long.child(bench_long.parse_args(base))
    assert first["reused"] == [] and first["frames"] == 6
    (out / "bodies_raw.npz").unlink()  # the body stage had not finished when the call stopped
    again = bench_long.child(bench_long.parse_args(base + ["--resume"]))
    assert again["reused"] == ["sam3", "camera"]  # the stages before the body stage
    assert "sam3" not in again["timings"] and "bodies" in again["timings"]
    assert (out / "bodies_raw.npz").is_file()


def test_resume_needs_a_work_folder():
    with pytest.raises(SystemExit):
        bench_long.parse_args(["--resume", "--lengths", "10"])
