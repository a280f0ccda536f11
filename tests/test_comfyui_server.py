"""Against a real ComfyUI server (COMFYUI_DIR): the pack imports, every node is listed, every
shipped workflow converts against /object_info, and the weight-free workflow runs via POST /prompt.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from body4d_core.interop.api_client import ComfyClient, set_input, set_video
from body4d_core.interop.workflows import convert_with_report, ordered_inputs

from .comfy_server import PACK_NAME, ComfyServerError, default_python
from .media import DANCER, need

pytestmark = pytest.mark.comfyui

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
NODE_ID = re.compile(r"""node_id\s*=\s*["'](SAMBody4D_\w+)["']""")


def source_node_ids() -> set[str]:
    """Every ``node_id="SAMBody4D_..."`` written in nodes/*.py."""
    ids: set[str] = set()
    for path in sorted((REPO / "nodes").glob("*.py")):
        ids |= set(NODE_ID.findall(path.read_text()))
    return ids


def our_classes(info: dict) -> dict[str, dict]:
    """The /object_info entries that our pack registered."""
    return {k: v for k, v in info.items() if PACK_NAME in str(v.get("python_module", ""))}


def test_server_python_is_comfyui_python_then_venv_then_this_interpreter(tmp_path, monkeypatch):
    """Without COMFYUI_PYTHON and a .venv, the server runs under the interpreter running pytest (never PATH's)."""
    monkeypatch.delenv("COMFYUI_PYTHON", raising=False)
    assert default_python(tmp_path) == sys.executable
    venv = tmp_path / ".venv" / "bin" / "python"
    venv.parent.mkdir(parents=True)
    venv.write_text("")
    assert default_python(tmp_path) == str(venv)
    monkeypatch.setenv("COMFYUI_PYTHON", str(tmp_path / "elsewhere" / "python"))
    assert default_python(tmp_path) == str(tmp_path / "elsewhere" / "python")


def test_pack_imports_without_error(comfy_server):
    log = comfy_server.log_text()
    line = comfy_server.import_line()
    assert line is not None, f"no import line for {PACK_NAME} in the server log:\n{comfy_server.log_tail()}"
    assert "IMPORT FAILED" not in line, line
    assert not [ln for ln in log.splitlines() if "Cannot import" in ln and PACK_NAME in ln]
    tracebacks = [m.start() for m in re.finditer("Traceback", log)]
    ours = [log[i:i + 1500] for i in tracebacks if PACK_NAME in log[i:i + 3000]]
    assert not ours, "traceback mentioning our pack in the server log:\n" + "\n---\n".join(ours)


def test_every_node_is_listed(comfy_server):
    expected = source_node_ids()
    assert expected, "no node_id=\"SAMBody4D_...\" found in nodes/*.py"
    listed = our_classes(comfy_server.object_info())
    missing = expected - set(listed)
    assert not missing, f"nodes defined in nodes/ but absent from /object_info: {sorted(missing)}"
    assert set(listed) == expected, f"registered but not found in nodes/ sources: {sorted(set(listed) - expected)}"
    for node_id, entry in listed.items():
        assert node_id.startswith("SAMBody4D_")
        assert entry["display_name"] and "SAMBody4D" not in entry["display_name"], node_id
        assert entry["category"], f"{node_id} has no category"


def test_our_types_do_not_shadow_core(comfy_server):
    info = comfy_server.object_info()
    core = {k for k, v in info.items() if PACK_NAME not in str(v.get("python_module", ""))}
    assert not core & source_node_ids()


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_converts_against_object_info(comfy_server, path):
    workflow = json.loads(path.read_text())
    assert workflow.get("version") == 0.4 and isinstance(workflow.get("links"), list), \
        f"{path.name} is not a UI-format (litegraph 0.4) workflow"
    for node in workflow["nodes"]:
        if node["type"].startswith("SAMBody4D_"):
            assert node.get("properties", {}).get("Node name for S&R") == node["type"], node["id"]
    prompt, report = convert_with_report(workflow, comfy_server.object_info())
    assert not report.problems, "\n".join(report.problems)
    assert prompt, f"{path.name} converted to an empty prompt"
    # a literal the server would refuse is only acceptable for files a user supplies (videos, weights)
    refused = [v for v in report.values if "is not one of" not in v]
    assert not refused, "\n".join(refused)


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_api_twin_matches_conversion(comfy_server, path):
    twin = path.parent / "api" / path.name
    assert twin.is_file(), (f"{path.name} has no API twin; write it with: python -m body4d_core.interop.workflows "
                            f"workflows/{path.name} --object-info http://127.0.0.1:8188 -o workflows/api/{path.name}")
    prompt, _ = convert_with_report(json.loads(path.read_text()), comfy_server.object_info())
    stored = json.loads(twin.read_text())
    assert {k: (v["class_type"], v["inputs"]) for k, v in stored.items()} == \
           {k: (v["class_type"], v["inputs"]) for k, v in prompt.items()}


def test_converter_flags_unknown_nodes_and_widgets(comfy_server):
    info = comfy_server.object_info()
    workflow = json.loads((REPO / "workflows" / "load_video_preview.json").read_text())
    bad = json.loads(json.dumps(workflow))
    bad["nodes"][0]["type"] = "SAMBody4D_NoSuchNode"
    bad["nodes"][1]["inputs"].append({"name": "nope", "type": "INT", "link": None, "widget": {"name": "nope"}})
    _, report = convert_with_report(bad, info)
    text = "\n".join(report.problems)
    assert "unknown node type 'SAMBody4D_NoSuchNode'" in text
    assert "unknown widget 'nope'" in text


def _load_video_preview_graph(server) -> dict:
    workflow = json.loads((REPO / "workflows" / "load_video_preview.json").read_text())
    prompt, report = convert_with_report(workflow, server.object_info(refresh=True))
    assert not report.problems and not report.values, report
    return prompt


def test_load_video_preview_runs(comfy_server):
    shutil.copy(need(DANCER), comfy_server.input_dir / DANCER.name)
    graph = _load_video_preview_graph(comfy_server)
    load = next(n for n in graph.values() if n["class_type"] == "SAMBody4D_LoadVideo")["inputs"]
    entry = comfy_server.run(graph, timeout=240)
    assert entry["status"]["status_str"] == "success"
    outputs = entry["outputs"]
    by_type = {graph[nid]["class_type"]: out for nid, out in outputs.items()}
    cap, nth = load["frame_load_cap"], load["select_every_nth"]
    assert len(by_type["PreviewImage"]["images"]) == cap  # one preview per loaded frame
    assert len(by_type["SAMBody4D_LoadVideo"]["images"]) == 3  # first / middle / last frame preview
    videos = [p for p in comfy_server.output_files(entry) if p.suffix == ".mp4"]
    assert len(videos) == 1 and videos[0].is_file() and videos[0].stat().st_size > 1000
    import av

    with av.open(str(videos[0])) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        rate = float(stream.average_rate)
    assert len(frames) == cap
    side = load["max_side"]
    assert frames[0].shape == (side, side, 3)  # the dancer clip is square
    assert rate == pytest.approx(16.0 / nth, abs=0.01)  # source 16 fps, every nth frame
    assert float(np.mean([f.std() for f in frames])) > 5.0  # real picture, not a blank


def test_bad_video_name_is_refused_with_a_clear_message(comfy_server):
    graph = _load_video_preview_graph(comfy_server)
    nid = next(k for k, n in graph.items() if n["class_type"] == "SAMBody4D_LoadVideo")
    graph[nid]["inputs"]["file"] = "no_such_clip.mp4"
    with pytest.raises(ComfyServerError) as err:
        comfy_server.queue_prompt(graph)
    assert "no_such_clip.mp4" in str(err.value)


def test_api_client_upload_and_run(comfy_server, tmp_path):
    """Our body4d_core.interop.api_client against the real server: upload, queue, follow, download."""
    client = ComfyClient(comfy_server.url, timeout=120)
    upload = tmp_path / "uploaded_dancer.mp4"
    shutil.copy(need(DANCER), upload)
    name = client.upload(upload)
    assert name == upload.name and (comfy_server.input_dir / name).is_file()
    graph = _load_video_preview_graph(comfy_server)
    assert set_video(graph, name) == 1
    set_input(graph, "SAMBody4D_LoadVideo.frame_load_cap", 6)
    result = client.run_workflow(graph, out_dir=tmp_path / "out", timeout=240)
    videos = [p for p in result.files if p.suffix == ".mp4"]
    assert len(videos) == 1 and videos[0].stat().st_size > 1000
    assert sum(p.suffix == ".png" for p in result.files) == 6 + 3  # preview per frame + Load Video's 3


def test_widget_order_of_load_video_matches_workflow(comfy_server):
    """The shipped workflow's widget values line up with the server's LoadVideo inputs."""
    info = comfy_server.object_info()["SAMBody4D_LoadVideo"]
    names = [n for n, spec in ordered_inputs(info) if spec[0] not in ("VIDEO", "IMAGE")]
    assert names[0] == "file"
    graph = _load_video_preview_graph(comfy_server)
    load = next(n for n in graph.values() if n["class_type"] == "SAMBody4D_LoadVideo")["inputs"]
    assert list(load)[:len(names)] == names


def _frontend_validator(comfy_python: str) -> tuple[Path, str]:
    """The frontend chunk exporting validateComfyWorkflow and its export alias, or skip."""
    import subprocess

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: cannot run the frontend's workflow validator")
    proc = subprocess.run([comfy_python, "-c", "import comfyui_frontend_package as p, os; "
                           "print(os.path.join(os.path.dirname(p.__file__), 'static', 'assets'))"],
                          capture_output=True, text=True, timeout=120)
    assets = Path(proc.stdout.strip() or "/nonexistent")
    for chunk in sorted(assets.glob("*.js")):
        text = chunk.read_text(errors="replace")
        match = re.search(r"validateComfyWorkflow as (\w+)", text)
        if match and "export{" in text:
            return chunk, match.group(1)
    pytest.skip(f"no frontend chunk exporting validateComfyWorkflow under {assets}")


def test_workflows_pass_the_frontend_schema(comfy_server):
    """Every UI workflow loads in the installed frontend: its own zod schema accepts it."""
    import subprocess

    chunk, name = _frontend_validator(comfy_server.python)
    proc = subprocess.run([shutil.which("node"), str(Path(__file__).parent / "frontend_validate.mjs"),
                           chunk.as_uri(), name, *map(str, WORKFLOWS)], capture_output=True, text=True, timeout=300)
    results = [json.loads(ln[len("@@FRONTEND@@"):]) for ln in proc.stdout.splitlines() if ln.startswith("@@FRONTEND@@")]
    if not results:
        pytest.skip(f"the frontend bundle could not be loaded in node: {(proc.stdout + proc.stderr)[-800:]}")
    assert len(results) == len(WORKFLOWS)
    bad = [f"{Path(r['file']).name}: {' '.join(r['errors'])[:1500]}" for r in results if not r["valid"]]
    assert not bad, "\n".join(bad)


def _point_inputs_at_test_media(server, graph: dict) -> None:
    """Load Video nodes read the dancer (8 frames, 256 px); Load Image nodes read the test photo."""
    from .media import PHOTO

    for node in graph.values():
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "SAMBody4D_LoadVideo":
            shutil.copy(need(DANCER), server.input_dir / DANCER.name)
            inputs.update(file=DANCER.name, frame_load_cap=8, max_side=256)
        elif kind == "LoadImage":
            shutil.copy(need(PHOTO), server.input_dir / PHOTO.name)
            inputs["image"] = PHOTO.name


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_runs_or_names_missing_weights(comfy_server, path):
    """Each shipped workflow either runs on CPU here or stops with the actionable missing-weights message."""
    prompt, report = convert_with_report(json.loads(path.read_text()), comfy_server.object_info(refresh=True))
    assert not report.problems, report.problems
    _point_inputs_at_test_media(comfy_server, prompt)
    try:
        entry = comfy_server.run(prompt, timeout=300)
    except ComfyServerError as err:
        text = str(err)
        if "reported node errors" in text and "SAMBody4D_" not in text:  # mixing: absent core models a user supplies
            assert "value_not_in_list" in text, text
            return
        assert "MissingWeightsError" in text and "python -m body4d_core setup" in text, text
        return
    assert entry["status"]["status_str"] == "success"
    assert entry["outputs"], f"{path.name} ran but no output node produced anything"


def _node(info: dict, kind: str, **links) -> dict:
    """An API node with every widget at its default and the given inputs linked/set."""
    from body4d_core.interop.workflows import default_value, is_widget

    spec = info[kind]
    inputs = {name: default_value(s) for name, s in ordered_inputs(spec)
              if is_widget(s) and name in spec["input"].get("required", {})}
    inputs.update(links)
    return {"class_type": kind, "inputs": inputs}


def test_missing_weights_reach_the_user_as_one_actionable_error(comfy_server):
    """Load SAM3 without weights: the run stops with the files, the folder and the setup command."""
    info = comfy_server.object_info(refresh=True)
    if not {"SAMBody4D_LoadSAM3", "SAMBody4D_DetectPeople"} <= set(info):
        pytest.skip("SAM3 nodes not in this pack yet")
    shutil.copy(need(DANCER), comfy_server.input_dir / DANCER.name)
    graph = {"1": _node(info, "SAMBody4D_LoadVideo", file=DANCER.name, frame_load_cap=2, max_side=128),
             "2": _node(info, "SAMBody4D_LoadSAM3"),
             "3": _node(info, "SAMBody4D_DetectPeople", frames=["1", 0], sam3_model=["2", 0]),
             "4": _node(info, "PreviewAny", source=["3", 0])}
    with pytest.raises(ComfyServerError) as err:
        comfy_server.run(graph, timeout=240)
    text = str(err.value)
    assert "SAMBody4D_LoadSAM3" in text and "MissingWeightsError" in text
    assert "python -m body4d_core setup --models sam3" in text
    assert str(comfy_server.root / "models") in text  # the folder inside this ComfyUI's models dir
    # the server is still healthy afterwards: a weight-free run succeeds
    ok = comfy_server.run({"1": _node(info, "SAMBody4D_LoadVideo", file=DANCER.name, frame_load_cap=3, max_side=64),
                           "2": _node(info, "PreviewImage", images=["1", 0])}, timeout=120)
    assert ok["status"]["status_str"] == "success"


def test_a_workflow_saved_before_the_run_profile_inputs_still_validates(comfy_server):
    """The loader nodes' run-profile inputs are optional: an API prompt without them is accepted at /prompt."""
    new = {"loader", "sam3_speed", "amodal_accel", "attention", "crop_kernel"}  # added to the loader nodes later
    stored = json.loads((REPO / "workflows" / "api" / "body4d_full_pipeline.json").read_text())
    old = {k: {**v, "inputs": {n: x for n, x in v["inputs"].items() if n not in new}} for k, v in stored.items()}
    dropped = {n for k, v in stored.items() for n in v["inputs"] if n not in old[k]["inputs"]}
    assert dropped == new  # the stored workflow has them all; the test removes them
    _point_inputs_at_test_media(comfy_server, old)
    status, body = comfy_server.post_json("/prompt", {"prompt": old})
    assert status == 200, body
    assert not body.get("node_errors"), body
    try:  # it runs with the defaults and stops at the first model: no weights on this server
        comfy_server.wait(body["prompt_id"], timeout=300)
    except ComfyServerError as err:
        assert "MissingWeightsError" in str(err), err
