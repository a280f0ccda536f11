"""``python -m bench.bench_pipeline`` in its tiny mode: the whole pipeline runs and the table holds every stage and count.

The tiny run is what the GPU run does at real size (write checkpoints in the official layouts,
synthesise the clip, run every stage, read the counts back from the saved npz files), so a
pass here means the device run cannot fail on the script's own logic.
"""

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from .media import REPO

BENCH = [sys.executable, "-m", "bench.bench_pipeline"]
STAGES = ("decode", "sam3", "amodal", "camera", "bodies", "smooth", "world", "render")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out, models = tmp_path_factory.mktemp("bench_out"), tmp_path_factory.mktemp("bench_models")
    rows = tmp_path_factory.mktemp("bench_rows") / "rows.jsonl"
    res = subprocess.run([*BENCH, "--tiny", "--out", str(out), "--models", str(models), "--jsonl", str(rows)],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    return res, out, models, rows


def _rows(stdout: str) -> dict[str, list[str]]:
    rows = {}
    for line in stdout.splitlines():
        if line.startswith("| ") and not line.startswith("| ---"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[cells[0].strip("*")] = cells[1:]
    return rows


def test_table_has_every_stage_with_a_positive_time(tiny_run):
    res, _, _, _ = tiny_run
    assert res.returncode == 0, res.stderr[-3000:]
    rows = _rows(res.stdout)
    for stage in STAGES:
        assert stage in rows, f"no {stage} row in:\n{res.stdout}"
        assert float(rows[stage][0]) > 0.0
    total = float(rows["pipeline total"][0].strip("*"))
    assert total >= sum(float(rows[s][0]) for s in STAGES) - 0.05
    assert float(rows["checkpoint writing (not in the total)"][0]) > 0.0
    assert "**2 steps**" in rows["amodal"][2]
    untimed = rows["untimed (host work between stages + final write wait)"]  # writes run in the background
    wait = float(re.search(r"([0-9.]+) s waiting for them at the end", untimed[2]).group(1))
    assert 0.0 <= wait <= float(untimed[0]) + 0.01
    assert "Machine: CPU only; torch" in res.stdout


def test_counts_match_the_saved_outputs(tiny_run):
    from body4d_core.data import Amodal, Bodies, BodyFlag, Tracks

    res, out, _, _ = tiny_run
    counts = json.loads(re.search(r"Counts: (\{.*?\});", res.stdout).group(1))
    tracks, amodal = Tracks.load_npz(out / "tracks.npz"), Amodal.load_npz(out / "amodal.npz")
    flags = Bodies.load_npz(out / "bodies_raw.npz").flags
    assert counts["people"] == 2 and counts["frames"] == 6
    assert counts["present"] == int(tracks.present.sum()) == 12  # truth masks: both people on every frame
    assert counts["occluded"] == int(amodal.occluded.sum()) > 0  # the clip's pole / crossing hides people
    assert counts["completed"] == len(amodal.completed_index) > 0
    assert counts["crops_visible"] == int(((flags & BodyFlag.VISIBLE) > 0).sum())
    assert counts["crops_occluded"] == int(((flags & BodyFlag.OCCLUDED) > 0).sum()) == counts["occluded"]
    assert f"{counts['crops_visible'] + counts['crops_occluded']} body crops" in _rows(res.stdout)["bodies"][2]


def test_truth_masks_are_the_clips_own():
    from bench.clips import make_clip

    from body4d_core.data import unpack_masks

    clip = make_clip(6, 2, 96, 128)
    vis, amo = unpack_masks(clip.visible, 128), unpack_masks(clip.amodal, 128)
    assert clip.frames.shape == (6, 96, 128, 3) and vis.shape == amo.shape == (2, 6, 96, 128)
    assert not (vis & ~amo).any()  # visible part inside the full figure
    assert not (vis[0] & vis[1]).any()  # one owner per pixel
    hidden = 1 - vis.sum((2, 3)) / amo.sum((2, 3))
    assert hidden[:, 0].max() == 0 and hidden.max() > 0.45  # all visible on the prompt frame, occluded later
    ids = [o["id"] for o in clip.prompts["objects"]]
    assert ids == [1, 2] and all(o["boxes"][0]["frame"] == 0 for o in clip.prompts["objects"])
    assert not np.array_equal(clip.frames[0], clip.frames[-1])  # people move


def test_bad_size_is_one_clear_error():
    res = subprocess.run([*BENCH, "--tiny", "--size", "96by128"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "--size must be HxW" in res.stderr


def test_time_limit_stops_with_a_partial_table_and_reuses_models(tiny_run):
    _, _, models, _ = tiny_run
    res = subprocess.run([*BENCH, "--tiny", "--models", str(models), "--time-limit", "0.5"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res.stderr[-3000:]
    rows = _rows(res.stdout)
    assert rows["checkpoint writing (not in the total)"][2] == "reused --models"
    assert "STOPPED:" in res.stdout and "time limit 0 s reached" in res.stdout
    assert "pipeline total" not in rows


def test_repeat_reports_memory_after_each_run():
    import bench.bench_pipeline as bp

    assert bp.parse_args(["--tiny", "--repeat", "3"]).repeat == 3 and bp.parse_args(["--tiny"]).repeat == 1
    rec = bp.Record()
    rec.after_runs = [bp.memory_after_run(), bp.memory_after_run()]
    assert rec.after_runs[0]["rss_mib"] > 10 and rec.after_runs[0]["rss_peak_mib"] > 10
    lines = bp.repeat_lines(rec)
    assert [line.split(":")[0] for line in lines] == ["after run 1", "after run 2"]
    assert "rss_mib" in lines[1]


def test_rows_hold_the_printed_stage_times(tiny_run):
    from bench.rows import read_rows

    res, out, _, rows_path = tiny_run
    rows = read_rows(rows_path)
    table = _rows(res.stdout)
    got = {r["metric"]: r for r in rows}
    for stage in STAGES:
        assert got[f"{stage}_seconds"]["value"] == pytest.approx(float(table[stage][0]), abs=0.006)
        assert got[f"{stage}_seconds"]["unit"] == "s"
    assert got["pipeline_seconds"]["value"] == pytest.approx(float(table["pipeline total"][0].strip("*")), abs=0.006)
    assert all(r["bench"] == "bench_pipeline" and r["command"].startswith("python -m bench.bench_pipeline --tiny")
               for r in rows)
    assert rows[0]["extra"]["world"] is True and rows[0]["extra"]["counts"]["people"] == 2
    assert (out / "world" / "world.npz").is_file()  # the world stage ran in the bench


def test_no_world_leaves_the_world_stage_out():
    import bench.bench_pipeline as bp

    args = bp.parse_args(["--tiny", "--no-world"])
    clip = bp.make_clip(2, 1, 64, 64)
    assert bp.options(args, clip, REPO).world is False
    assert bp.options(bp.parse_args(["--tiny"]), clip, REPO).world is True
    assert "off (--no-world)" in bp.table(args, bp.Record(), {})


def test_warm_and_vram_cap_flags_are_honoured(tmp_path):
    """--warm runs twice with the models kept loaded (cold and warm per stage, rows too); --vram-cap on a machine
    without CUDA is ignored with a note (the run profile still records it)."""
    from bench.rows import read_rows

    rows_path = tmp_path / "rows.jsonl"
    res = subprocess.run([*BENCH, "--tiny", "--no-amodal", "--no-world", "--frames", "3", "--warm", "--vram-cap", "8",
                          "--models", str(tmp_path / "m"), "--jsonl", str(rows_path)],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    warm = res.stdout.split("## Cold and warm (models kept loaded) runs")[1]
    assert "Models kept loaded for the warm run: moge, sam3, sam3d_body." in warm
    table = _rows(warm)
    for stage in ("decode", "sam3", "camera", "bodies", "smooth", "render"):
        assert float(table[stage][0]) > 0 and float(table[stage][1]) > 0, stage
    assert "amodal" not in table and "world" not in table
    assert "Note: --vram-cap 8 ignored: no CUDA device" in res.stdout
    assert "Memory cap: 8 GB (ignored: no CUDA device); memory plan (no memory cap)" in res.stdout
    got = {r["metric"]: r for r in read_rows(rows_path)}
    assert got["sam3_warm_seconds"]["value"] == pytest.approx(float(table["sam3"][1]), abs=0.006)
    assert got["pipeline_warm_seconds"]["value"] > 0 and got["pipeline_seconds"]["value"] > 0
    assert got["sam3_seconds"]["extra"]["profile"]["vram_gb"] == 8.0


def test_profile_and_cap_arguments():
    import bench.bench_pipeline as bp

    args = bp.parse_args(["--tiny", "--profile", "loader=legacy", "--profile", "sam3_speed=reference", "--no-compile",
                          "--fp8", "--vram-cap", "12"])
    p = args.run_profile
    assert (p.loader, p.sam3_speed, p.compile, p.backbone_fp8, p.decoder_precision, p.vram_gb) == \
        ("legacy", "reference", "off", True, "bf16", 12.0)
    assert bp.options(args, bp.make_clip(2, 1, 64, 64), REPO).profile == p
    for bad, text in ((["--profile", "turbo=1"], "unknown profile setting"), (["--profile", "loader"], "FIELD=VALUE"),
                      (["--vram-cap", "-2"], "--vram-cap must be >= 0")):
        res = subprocess.run([*BENCH, "--tiny", *bad], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert res.returncode == 2 and text in res.stderr, res.stderr[-2000:]


def test_cap_without_cuda_is_a_note_not_a_limit(monkeypatch):
    import bench.bench_pipeline as bp

    monkeypatch.setattr(bp.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(bp.torch.cuda, "set_per_process_memory_fraction",
                        lambda *a, **k: pytest.fail("no cap may be set without CUDA"))
    rec = bp.Record()
    bp.apply_cap(bp.parse_args(["--tiny", "--vram-cap", "8"]), rec)
    assert rec.notes == ["--vram-cap 8 ignored: no CUDA device (the run uses the CPU)"]
    bp.apply_cap(bp.parse_args(["--tiny"]), rec)
    assert len(rec.notes) == 1
