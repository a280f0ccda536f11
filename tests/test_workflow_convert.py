"""UI -> API workflow conversion against a saved /object_info of ComfyUI 0.33.0 (no server needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from body4d_core.interop.workflows import (WorkflowConvertError, convert_with_report, convert_workflow,
                                          extra_slots, is_widget, main)

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "object_info_0.33.0_subset.json"


@pytest.fixture(scope="module")
def info() -> dict:
    data = json.loads(FIXTURE.read_text())
    data.pop("_source")
    return data


def node(nid, kind, widgets=None, inputs=(), outputs=(), mode=0, **extra):
    """A litegraph node as the frontend serialises it."""
    return {"id": nid, "type": kind, "pos": [0, 0], "size": [200, 100], "flags": {}, "order": nid, "mode": mode,
            "inputs": list(inputs), "outputs": list(outputs), "properties": {"Node name for S&R": kind},
            "widgets_values": widgets if widgets is not None else [], **extra}


def inp(name, typ, link=None, widget=False):
    d = {"name": name, "type": typ, "link": link}
    if widget:
        d["widget"] = {"name": name}
    return d


def wf(nodes, links):
    return {"last_node_id": max(n["id"] for n in nodes), "last_link_id": len(links), "nodes": nodes,
            "links": links, "groups": [], "config": {}, "extra": {}, "version": 0.4}


def sampler_graph(seed_link=None):
    """EmptyLatentImage -> KSampler(seed + control value) -> VAEDecode -> PreviewImage."""
    return [node(1, "EmptyLatentImage", [512, 384, 2]),
            node(2, "KSampler", [42, "randomize", 20, 7.5, "euler", "karras", 1.0],
                 inputs=[inp("model", "MODEL"), inp("positive", "CONDITIONING"), inp("negative", "CONDITIONING"),
                         inp("latent_image", "LATENT", 1), inp("seed", "INT", seed_link, widget=True)]),
            node(3, "VAEDecode", inputs=[inp("samples", "LATENT", 2), inp("vae", "VAE")]),
            node(4, "PreviewImage", inputs=[inp("images", "IMAGE", 3)])]


def test_positional_widgets_skip_control_values(info):
    prompt = convert_workflow(wf(sampler_graph(), [[1, 1, 0, 2, 3, "LATENT"], [2, 2, 0, 3, 0, "LATENT"],
                                                    [3, 3, 0, 4, 0, "IMAGE"]]), info)
    assert prompt["1"] == {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 384, "batch_size": 2},
                           "_meta": {"title": "Empty Latent Image"}}
    ks = prompt["2"]["inputs"]
    assert ks == {"seed": 42, "steps": 20, "cfg": 7.5, "sampler_name": "euler", "scheduler": "karras",
                  "denoise": 1.0, "latent_image": ["1", 0]}  # "randomize" is the control value, not steps
    assert prompt["4"]["inputs"] == {"images": ["3", 0]}


def test_upload_and_dynamic_combo_slots(info):
    nodes = [node(1, "LoadImage", ["example.png", "image"]),
             node(2, "LoadAudio", ["voice.mp3", None, None]),
             node(3, "LoadVideo", ["clip.mp4", "image"]),
             node(4, "SaveVideo", ["video/out", "mp4", "h264", "re-encode", 18.0, "sRGB"],
                  inputs=[inp("video", "VIDEO", 1)])]
    prompt, report = convert_with_report(wf(nodes, [[1, 3, 0, 4, 0, "VIDEO"]]), info)
    assert not report.problems
    assert report.notes == ["node 4 (SaveVideo): 'codec' not stored; using its default 'auto'"]  # hidden legacy widget
    assert prompt["1"]["inputs"] == {"image": "example.png"}
    assert prompt["2"]["inputs"] == {"audio": "voice.mp3"}
    assert prompt["4"]["inputs"] == {"filename_prefix": "video/out", "format": "mp4", "format.codec": "h264",
                                     "format.codec.encoding": "re-encode", "format.codec.encoding.crf": 18.0,
                                     "format.codec.encoding.color_space": "sRGB", "codec": "auto",
                                     "video": ["3", 0]}
    # the file lists are empty on this server: reported as values the server will refuse, not as problems
    assert any("'image' = 'example.png' is not one of" in v for v in report.values)


def test_widget_rules(info):
    ks = dict(zip(info["KSampler"]["input_order"]["required"],
                  (info["KSampler"]["input"]["required"][n] for n in info["KSampler"]["input_order"]["required"])))
    assert is_widget(ks["seed"]) and extra_slots("seed", ks["seed"]) == 1
    assert is_widget(ks["steps"]) and extra_slots("steps", ks["steps"]) == 0
    assert not is_widget(ks["model"])
    assert not is_widget(["INT", {"forceInput": True}])
    assert extra_slots("seed", ["INT", {}]) == 1  # legacy: a seed without the option still gets a control
    assert extra_slots("seed", ["INT", {"control_after_generate": False}]) == 0
    assert extra_slots("file", ["COMBO", {"options": [], "video_upload": True}]) == 1
    assert extra_slots("audio", [[], {"audio_upload": True}]) == 2


def test_missing_trailing_widget_gets_default_and_extra_values_are_noted(info):
    nodes = [node(1, "CreateVideo", [24.0], inputs=[inp("images", "IMAGE")]),
             node(2, "EmptyLatentImage", [512, 512, 1, "leftover"])]
    prompt, report = convert_with_report(wf(nodes, []), info)
    assert prompt["1"]["inputs"] == {"fps": 24.0, "bit_depth": 8}
    assert prompt["2"]["inputs"] == {"width": 512, "height": 512, "batch_size": 1}
    assert any("'bit_depth' not stored; using its default 8" in n for n in report.notes)
    assert any("1 trailing widget value(s) ignored" in n for n in report.notes)
    assert not report.problems


def test_reroute_bypass_mute_primitive_and_notes(info):
    nodes = [node(1, "EmptyLatentImage", [64, 64, 1]),
             node(2, "Reroute", None, inputs=[inp("", "*", 1)], outputs=[{"name": "", "type": "LATENT", "links": [2]}]),
             node(3, "VAEDecode", inputs=[inp("samples", "LATENT", 2), inp("vae", "VAE")]),
             node(4, "ImageInvert", inputs=[inp("image", "IMAGE", 3)], mode=4),   # bypassed: passes its input
             node(5, "PreviewImage", inputs=[inp("images", "IMAGE", 4)]),
             node(6, "ImageInvert", inputs=[inp("image", "IMAGE", 5)], mode=2),   # muted: dropped
             node(7, "PrimitiveNode", [99], outputs=[{"name": "INT", "type": "INT", "links": [6]}]),
             node(8, "CreateVideo", [30.0, 8], inputs=[inp("images", "IMAGE", 7), inp("fps", "FLOAT"),
                                                        inp("bit_depth", "INT", 6, widget=True)]),
             node(9, "MarkdownNote", ["hello"])]
    links = [[1, 1, 0, 2, 0, "LATENT"], [2, 2, 0, 3, 0, "LATENT"], [3, 3, 0, 4, 0, "IMAGE"],
             [4, 4, 0, 5, 0, "IMAGE"], [5, 3, 0, 6, 0, "IMAGE"], [6, 7, 0, 8, 2, "INT"], [7, 6, 0, 8, 0, "IMAGE"]]
    prompt, report = convert_with_report(wf(nodes, links), info)
    assert sorted(prompt) == ["1", "3", "5", "8"]
    assert prompt["3"]["inputs"]["samples"] == ["1", 0]      # through the reroute
    assert prompt["5"]["inputs"]["images"] == ["3", 0]       # around the bypassed invert
    assert prompt["8"]["inputs"]["bit_depth"] == 99          # the primitive's value
    assert "images" not in prompt["8"]["inputs"]             # fed by a muted node
    assert not report.problems


def test_subgraph_is_expanded_with_prefixed_ids(info):
    inner = {"id": "0d6c7a1e-0000-4000-8000-000000000001", "name": "decode and preview",
             "inputs": [{"name": "samples", "type": "LATENT"}], "outputs": [{"name": "IMAGE", "type": "IMAGE"}],
             "nodes": [node(10, "VAEDecode", inputs=[inp("samples", "LATENT", 11), inp("vae", "VAE")]),
                       node(11, "PreviewImage", inputs=[inp("images", "IMAGE", 12)])],
             "links": [{"id": 11, "origin_id": -10, "origin_slot": 0, "target_id": 10, "target_slot": 0, "type": "LATENT"},
                       {"id": 12, "origin_id": 10, "origin_slot": 0, "target_id": 11, "target_slot": 0, "type": "IMAGE"},
                       {"id": 13, "origin_id": 10, "origin_slot": 0, "target_id": -20, "target_slot": 0, "type": "IMAGE"}]}
    nodes = [node(1, "EmptyLatentImage", [64, 64, 1]),
             node(2, inner["id"], inputs=[inp("samples", "LATENT", 1)], outputs=[{"name": "IMAGE", "type": "IMAGE",
                                                                               "links": [2]}]),
             node(3, "ImageInvert", inputs=[inp("image", "IMAGE", 2)])]
    graph = wf(nodes, [[1, 1, 0, 2, 0, "LATENT"], [2, 2, 0, 3, 0, "IMAGE"]])
    graph["definitions"] = {"subgraphs": [inner]}
    prompt = convert_workflow(graph, info)
    assert sorted(prompt) == ["1", "2:10", "2:11", "3"]
    assert prompt["2:10"]["inputs"]["samples"] == ["1", 0]
    assert prompt["2:11"]["inputs"]["images"] == ["2:10", 0]
    assert prompt["3"]["inputs"]["image"] == ["2:10", 0]


def test_unknown_node_widget_and_input_are_problems(info):
    nodes = [node(1, "NoSuchNode", [1]),
             node(2, "EmptyLatentImage", [64, 64, 1], inputs=[inp("depth", "INT", widget=True)]),
             node(3, "PreviewImage", inputs=[inp("pictures", "IMAGE", 1)])]
    with pytest.raises(WorkflowConvertError) as err:
        convert_workflow(wf(nodes, [[1, 2, 0, 3, 0, "IMAGE"]]), info)
    msg = str(err.value)
    assert "node 1: unknown node type 'NoSuchNode'" in msg
    assert "node 2 (EmptyLatentImage): unknown widget 'depth'" in msg
    assert "node 3 (PreviewImage): unknown input 'pictures'" in msg


def test_values_out_of_range_are_reported_and_strict_mode_refuses(info):
    graph = wf([node(1, "EmptyLatentImage", [8, 64, 1])], [])
    _, report = convert_with_report(graph, info)
    assert report.values == ["node 1 (EmptyLatentImage): 'width' = 8 is outside [16, 16384]"]
    assert convert_workflow(graph, info)["1"]["inputs"]["width"] == 8  # left to the server by default
    with pytest.raises(WorkflowConvertError, match="outside"):
        convert_workflow(graph, info, strict_values=True)


def test_not_a_ui_workflow(info):
    with pytest.raises(WorkflowConvertError, match="already an API-format prompt"):
        convert_workflow({"1": {"class_type": "PreviewImage", "inputs": {}}}, info)
    with pytest.raises(WorkflowConvertError, match="expected a JSON object with a 'nodes' list"):
        convert_workflow([], info)


def test_shipped_workflows_convert_structurally(info):
    """Our workflows' core nodes line up with the 0.33.0 definitions (ours are checked on a real server)."""
    repo = Path(__file__).resolve().parents[1]
    for path in sorted((repo / "workflows").glob("*.json")):
        _, report = convert_with_report(json.loads(path.read_text()), info)
        problems = [p for p in report.problems if "unknown node type 'SAMBody4D_" not in p]
        assert not problems, (path.name, problems)


def test_cli_writes_api_json(info, tmp_path, capsys):
    oi = tmp_path / "object_info.json"
    oi.write_text(json.dumps(info))
    src = tmp_path / "wf.json"
    src.write_text(json.dumps(wf([node(1, "EmptyLatentImage", [64, 64, 1])], [])))
    out = tmp_path / "api.json"
    assert main([str(src), "--object-info", str(oi), "-o", str(out)]) == 0
    assert json.loads(out.read_text())["1"]["inputs"] == {"width": 64, "height": 64, "batch_size": 1}
    src.write_text(json.dumps(wf([node(1, "Nope", [])], [])))
    assert main([str(src), "--object-info", str(oi)]) == 1
    assert "unknown node type 'Nope'" in capsys.readouterr().err
