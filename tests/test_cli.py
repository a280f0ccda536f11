"""The headless command line: commands, help text, defaults, progress bars, exit codes."""

import argparse
import io
import os
import signal
import subprocess
import sys

import pytest

from body4d_core import cli
from body4d_core.data import Clip
from body4d_core.errors import InterruptedError_

from .media import REPO

SAMPLE = REPO / "samples" / "cartoon_dancer_81f.mp4"


def run(*args, cwd=REPO, env=None):
    return subprocess.run([sys.executable, "-m", "body4d_core", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env=env)


def subparsers(parser):
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_help_lists_commands():
    res = run("--help")
    assert res.returncode == 0
    for cmd in ("load", "run", "setup", "models", "api", "tiny-checkpoints"):
        assert cmd in res.stdout


def test_every_option_has_help_with_its_default_and_choices():
    parser = cli.build_parser()
    for name, sub in subparsers(parser).items():
        formatter = sub._get_formatter()
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"{name} {action.option_strings} has no help"
            text = formatter._get_help_string(action)
            if action.default is not None and action.default is not False and not action.required:
                assert "default" in text, f"{name} {action.option_strings}: help does not state the default"
        usage = sub.format_help()
        for action in sub._actions:
            if action.choices and not isinstance(action, argparse._SubParsersAction):
                assert ",".join(map(str, action.choices)) in usage


def test_run_help_ends_with_three_examples():
    res = run("run", "--help")
    assert res.returncode == 0
    tail = res.stdout.split("examples:")[1]
    assert tail.count("python -m body4d_core run") == 3
    assert "--render_mode {overlay,mesh,silhouette,normals,depth,openpose}" in res.stdout


def test_models_root_default_stated_is_the_codes(monkeypatch, tmp_path):
    from body4d_core.config import models_root

    monkeypatch.setenv("BODY4D_MODELS", str(tmp_path / "my models"))
    subs = subparsers(cli.build_parser())
    assert str(models_root()) == str(tmp_path / "my models")
    for cmd, dest in (("run", "models_root"), ("setup", "root"), ("models", "root")):
        action = next(a for a in subs[cmd]._actions if a.dest == dest)
        assert action.help.endswith(f"(default: {models_root()})")


def test_bad_render_mode_is_refused_by_argparse():
    res = run("run", "--render_mode", "wireframe")
    assert res.returncode == 2 and "invalid choice: 'wireframe'" in res.stderr


def test_works_from_another_folder(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    res = run("run", "--help", cwd=tmp_path, env=env)
    assert res.returncode == 0 and "examples:" in res.stdout
    res = run("models", "--root", str(tmp_path), cwd=tmp_path, env=env)
    assert res.returncode == 1 and "missing" in res.stdout and str(tmp_path) in res.stdout
    assert not (tmp_path / "outputs").exists()


def test_load_writes_frames_and_clip(tmp_path):
    res = run("load", "-i", str(SAMPLE), "-o", str(tmp_path), "--frame_load_cap", "6",
              "--select_every_nth", "2", "--max_side", "100", "--image_format", "png")
    assert res.returncode == 0, res.stderr
    pngs = sorted((tmp_path / "images").glob("*.png"))
    assert len(pngs) == 6
    clip = Clip.load_npz(tmp_path / "clip.npz")
    assert clip.image_size == (100, 100) and clip.frame_indices.tolist() == [0, 2, 4, 6, 8, 10]
    assert clip.fps == 8.0


def test_load_bad_video_exits_with_clear_error(tmp_path):
    res = run("load", "-i", str(tmp_path / "missing.mp4"), "-o", str(tmp_path))
    assert res.returncode == 2
    assert "error: video not found" in res.stderr


def test_run_defaults_to_the_bundled_sample():
    args = cli.build_parser().parse_args(["run"])
    assert args.input_video == str(cli.SAMPLE_VIDEO) and cli.SAMPLE_VIDEO.is_file()
    assert args.out is None  # outputs/<video name>, chosen when the run starts


def test_text_progress_shows_unit_rate_and_time_left():
    stream = io.StringIO()
    bar = cli.TextProgress("bodies", "crops", stream=stream, min_interval=0.0)
    assert "10/40 crops 5.0 crops/s 0:02 elapsed, ~0:06 left" in bar.line(10, 40, 2.0)
    assert bar.line(40, 40, 8.0).rstrip().endswith("40/40 crops 5.0 crops/s 0:08")
    assert "25.0%" in cli.TextProgress("amodal", None).line(250, 1000, 3.0)
    bar.progress(1, 4)
    bar.progress(4, 4)
    assert stream.getvalue().endswith("\n") and stream.getvalue().count("\r") == 2


def test_text_progress_is_throttled_but_always_shows_the_end():
    stream = io.StringIO()
    bar = cli.TextProgress("decode", "frames", stream=stream, min_interval=3600)
    for i in range(1, 101):
        bar.progress(i, 100)
    assert stream.getvalue().count("\r") == 2 and "100/100 frames" in stream.getvalue()


def test_run_summary_columns_line_up_whatever_the_names(tmp_path):
    from body4d_core.pipeline import RunSummary

    summary = RunSummary(tmp_path, files={"glb": tmp_path / "glb", "world_contacts": tmp_path / "c.csv"},
                         timings={"decode": 0.04, "sam3_propagate": 1.25, "render": 12.5})
    times = [ln for ln in summary.describe().splitlines() if ln.startswith("  time ")]
    assert [ln.index(" s", len(ln) - 3) for ln in times] == [len(times[0]) - 2] * 3  # the seconds end together
    files = [ln for ln in summary.describe().splitlines()[1:3]]
    assert files[0].index(str(tmp_path)) == files[1].index(str(tmp_path))


def test_stop_flag_stops_at_the_next_check():
    flag = cli.StopFlag()
    bar = cli.TextProgress("bodies", "crops", stop=flag)
    bar.check_interrupt()  # nothing yet
    flag.handler(signal.SIGTERM, None)
    with pytest.raises(InterruptedError_, match="SIGTERM"):
        bar.check_interrupt()
    with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C stops at once
        flag.handler(signal.SIGINT, None)


def test_stop_flag_restores_the_signal_handlers():
    before = signal.getsignal(signal.SIGTERM)
    with cli.StopFlag().installed():
        assert signal.getsignal(signal.SIGTERM) != before
    assert signal.getsignal(signal.SIGTERM) == before


def test_errors_and_interrupts_exit_with_one_line(monkeypatch, capsys):
    from body4d_core.atomic import OutputWriteError

    def fail(args):
        raise OutputWriteError("the disk is full while writing out/x.npz: free space or choose another output folder")

    def interrupt(args):
        raise KeyboardInterrupt

    for func, code, text in ((fail, 2, "error: the disk is full while writing out/x.npz"),
                             (interrupt, 130, "interrupted")):
        monkeypatch.setattr(cli, "cmd_models", func)
        assert cli.main(["models"]) == code
        err = capsys.readouterr().err.strip()
        assert err.startswith(text) and "Traceback" not in err and len(err.splitlines()) == 1


def test_batch_is_a_command_with_every_run_option():
    parser = cli.build_parser()
    subs = subparsers(parser)
    assert "batch" in subs
    run_dests = {a.dest for a in subs["run"]._actions} - {"help", "input_video", "out", "overwrite", "resume"}
    assert run_dests <= {a.dest for a in subs["batch"]._actions}
    args = parser.parse_args(["batch", "clips", "--no_world", "--world_floor", "feet", "--no_anim"])
    from body4d_core.batch.cli import options_from_args

    opts = options_from_args(args)
    assert (opts.world, opts.world_floor, opts.write_anim) == (False, "feet", False)
    assert opts == cli.pipeline_options(args)


def test_world_and_anim_flags_default_on():
    args = cli.build_parser().parse_args(["run"])
    opts = cli.pipeline_options(args)
    assert opts.world and opts.write_anim
    assert (opts.world_camera, opts.world_floor, opts.world_depth_every) == ("auto", "auto", 10)


def test_prog_is_the_name_it_was_started_by(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/usr/local/bin/body4d", "run"])
    assert cli.build_parser().prog == "body4d"
    monkeypatch.setattr(sys, "argv", [str(REPO / "body4d_core" / "__main__.py"), "run"])
    assert cli.build_parser().prog == "python -m body4d_core"


def test_installed_copy_without_the_sample_requires_input_video(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(cli, "SAMPLE_VIDEO", tmp_path / "absent.mp4")
    with pytest.raises(SystemExit) as exc:
        cli.build_parser().parse_args(["run"])
    assert exc.value.code == 2
    assert "--input_video" in capsys.readouterr().err


def test_missing_torchvision_is_one_line_before_any_work(monkeypatch, tmp_path, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchvision" else real(name, *a))
    assert cli.main(["run", "-i", str(SAMPLE), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "torchvision is not installed" in err[0]
    assert not (tmp_path / "o").exists()  # nothing decoded, no folder made


def test_api_partial_run_warns_and_exits_1(monkeypatch, tmp_path, capsys):
    import json

    import body4d_core.interop.api_client as api

    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps({"3": {"class_type": "SAMBody4D_SaveGLB", "inputs": {"prefix": "a"}}}))
    seen = {}

    class Client:
        def __init__(self, server):
            pass

        def run_workflow(self, graph, out, timeout, progress):
            seen["graph"] = graph
            return api.RunResult("p1", {}, [], {"3": {"errors": [{"message": "bad input"}],
                                                       "class_type": "SAMBody4D_SaveGLB"}})

    monkeypatch.setattr(api, "ComfyClient", Client)
    code = cli.main(["api", "-w", str(wf), "--set", "3.prefix=b", "-o", str(tmp_path / "dl")])
    assert code == 1
    assert seen["graph"]["3"]["inputs"]["prefix"] == "b"
    assert "warning: ComfyUI ran only part of the workflow; refused:" in capsys.readouterr().err
