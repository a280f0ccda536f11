"""Shipped workflows end to end in a real ComfyUI (COMFYUI_DIR) with tiny random checkpoints.

The full pipeline (point prompts) and the auto-detect workflow run through ``POST /prompt``
on CPU to success on the dancer clip (6 frames, 128 px, amodal at 64 px / 2 steps via API
overrides; the shipped files keep the upstream defaults), through World Ground (trajectory plot
returned in the history) and Save Animation (skinned scene GLB with floor, camera and contacts).
The mixing workflow is queued without its SD/ControlNet files: the server names exactly those
files and our own branch (skeleton video, person masks) still runs. Without COMFYUI_DIR only the file checks run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from body4d_core.weights import MODEL_SPECS
from body4d_core.interop.workflows import convert_with_report

from .anim_readers import accessor, load_glb, node_world_matrices
from .comfy_server import ComfyServer, ComfyServerError
from .conftest import comfyui_dir
from .media import DANCER, need

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / "workflows"
SHIPPED = ("body4d_full_pipeline", "body4d_auto_detect", "body4d_fast_preview", "body4d_mix_controlnet")
LOADERS = {"SAMBody4D_LoadSAM3": {"sam3"}, "SAMBody4D_LoadMoGe": {"moge"}, "SAMBody4D_LoadSAM3DBody": {"sam3d_body"},
           "SAMBody4D_LoadAmodal": {"diffusion_vas_amodal", "diffusion_vas_completion", "depth_anything"}}
CAP, SIDE = 6, 128


def _ui(stem: str) -> dict:
    return json.loads((WORKFLOWS / f"{stem}.json").read_text())


def _api(stem: str) -> dict:
    return json.loads((WORKFLOWS / "api" / f"{stem}.json").read_text())


# --- file checks (no server) -------------------------------------------------------------------

@pytest.mark.parametrize("stem", SHIPPED)
def test_workflow_files_exist_with_twin_and_small_thumbnail(stem):
    ui = _ui(stem)
    assert ui["version"] == 0.4 and ui["nodes"] and ui["links"]
    assert _api(stem), f"{stem}: empty API twin"
    thumb = WORKFLOWS / f"{stem}.png"
    assert thumb.is_file() and 1000 < thumb.stat().st_size < 150_000
    from PIL import Image

    with Image.open(thumb) as img:
        assert img.size == (640, 360)


@pytest.mark.parametrize("stem", SHIPPED)
def test_loaders_carry_download_hints_from_the_weights_registry(stem):
    loaders = [n for n in _ui(stem)["nodes"] if n["type"] in LOADERS]
    assert loaders, f"{stem} has no loader node"
    for node in loaders:
        hints = node["properties"].get("models")
        assert hints, f"{stem}: {node['type']} has no properties.models"
        specs = [MODEL_SPECS[name] for name in sorted(LOADERS[node["type"]])]
        assert len(hints) == len(specs)
        for hint in hints:
            assert set(hint) == {"name", "url", "directory"}
            spec = next(s for s in specs if hint["url"].startswith(f"https://huggingface.co/{s.repo_id}/resolve/main/"))
            assert hint["directory"] == spec.folder
            assert hint["name"] == f"{spec.subdir}/{hint['url'].rsplit('/', 1)[1]}"
            assert hint["url"].rsplit("/resolve/main/", 1)[1] in spec.required


def test_mixing_workflow_hints_its_core_models():
    nodes = {n["type"]: n for n in _ui("body4d_mix_controlnet")["nodes"]}
    for kind, directory in (("CheckpointLoaderSimple", "checkpoints"), ("ControlNetLoader", "controlnet")):
        hint = nodes[kind]["properties"]["models"][0]
        assert hint["directory"] == directory and hint["url"].startswith("https://huggingface.co/")
        assert hint["url"].endswith("/" + hint["name"]) and hint["name"] in nodes[kind]["widgets_values"]


def test_shipped_defaults_are_upstream_and_prompts_are_on_the_dancer():
    amodal = next(n for n in _api("body4d_full_pipeline").values() if n["class_type"] == "SAMBody4D_AmodalComplete")
    assert amodal["inputs"]["steps"] == 25 and amodal["inputs"]["seed"] == 23
    assert amodal["inputs"]["detection_resolution"] == "256x512"
    points = next(n for n in _api("body4d_full_pipeline").values() if n["class_type"] == "SAMBody4D_SAM3Points")
    prompts = json.loads(points["inputs"]["prompts"])
    assert prompts["image_size"] == [350, 350] and len(prompts["objects"]) == 1
    labels = [p["label"] for p in prompts["objects"][0]["points"]]
    assert labels.count(1) >= 2 and labels.count(0) == 1
    fast = {n["class_type"] for n in _api("body4d_fast_preview").values()}
    assert "SAMBody4D_AmodalComplete" not in fast and "SAMBody4D_LoadAmodal" not in fast
    auto = {n["class_type"] for n in _api("body4d_auto_detect").values()}
    assert "SAMBody4D_DetectPeople" in auto and "SAMBody4D_SAM3Points" not in auto


# --- end to end in ComfyUI -------------------------------------------------------------------

def _server_has_moge(server: ComfyServer) -> bool:
    proc = subprocess.run([server.python, "-c", "import moge, utils3d"], capture_output=True, timeout=120)
    return proc.returncode == 0


@pytest.fixture(scope="module")
def e2e_server():
    """A private ComfyUI whose models folder holds tiny checkpoints of every model (never the session server)."""
    root = comfyui_dir()
    if root is None:
        pytest.skip("COMFYUI_DIR is not set: the end-to-end workflow runs need a ComfyUI checkout "
                    "(set COMFYUI_DIR, optionally COMFYUI_PYTHON)")
    from body4d_core.testing.checkpoints import write_tiny_checkpoints

    try:
        server = ComfyServer(root).start(timeout=300)
    except ComfyServerError as err:
        pytest.fail(f"ComfyUI at {root} did not start: {err}", pytrace=False)
    try:
        if not _server_has_moge(server):
            pytest.skip(f"{server.python} lacks MoGe: pip install --no-deps dlr-moge==2.0.0 dlr-utils3d==1.3")
        write_tiny_checkpoints(server.root / "models")
        shutil.copy(need(DANCER), server.input_dir / DANCER.name)
        yield server
    finally:
        server.stop()


def _small(graph: dict, tag: str) -> dict:
    """API overrides for a fast CPU run: 6 frames at 128 px, tiny amodal, detector threshold 0, own outputs."""
    for node in graph.values():
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "SAMBody4D_LoadVideo":
            inputs.update(file=DANCER.name, frame_load_cap=CAP, max_side=SIDE)
        elif kind == "SAMBody4D_AmodalComplete":
            inputs.update(steps=2, detection_resolution="64x64", completion_resolution="64x64")
        elif kind == "SAMBody4D_DetectPeople":
            inputs.update(score_threshold=0.0, max_people=2)  # random weights: every score is low
        elif kind == "SAMBody4D_FOV":
            inputs.update(resolution_level=0)
        if "filename_prefix" in inputs and isinstance(inputs["filename_prefix"], str):
            inputs["filename_prefix"] = f"e2e_{tag}/" + inputs["filename_prefix"].split("/")[-1]
    return graph


def _frames(path: Path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])]


def _check_pipeline_outputs(server: ComfyServer, graph: dict, entry: dict, tag: str) -> int:
    """Rendered video, per-frame PLY meshes, params and a GLB exist and are sane; returns the people count."""
    assert entry["status"]["status_str"] == "success"
    kinds = {graph[nid]["class_type"]: out for nid, out in entry["outputs"].items()}
    previews = {graph[nid]["inputs"]["images"][0]: out for nid, out in entry["outputs"].items()
                if graph[nid]["class_type"] == "PreviewImage"}
    sources = {graph[src]["class_type"]: out for src, out in previews.items()}
    assert len(sources["SAMBody4D_Propagate"]["images"]) == CAP  # tracks / amodal previews: one image per frame
    assert len(sources["SAMBody4D_AmodalComplete"]["images"]) == CAP
    videos = [p for p in server.output_files(entry) if p.suffix == ".mp4"]
    assert len(videos) == 1 and videos[0].is_file()
    frames = _frames(videos[0])
    assert len(frames) == CAP and frames[0].shape == (SIDE, SIDE, 3)
    assert float(np.mean([f.std() for f in frames])) > 5.0  # the overlay keeps the picture
    out = server.output_dir / f"e2e_{tag}"
    plys = sorted(out.glob("meshes_*/person_*/*.ply"))
    people = len({p.parent.name for p in plys})
    assert people >= 1 and len(plys) <= CAP * people
    assert plys[0].read_bytes().startswith(b"ply")
    params = np.load(next(out.glob("meshes_*/params.npz")))
    assert len(params.files) > 0
    glbs = sorted(out.glob("glb_*/*.glb"))
    assert len(glbs) == people and glbs[0].read_bytes()[:4] == b"glTF"
    assert "SAMBody4D_SaveGLB" in kinds and kinds["SAMBody4D_SaveGLB"]["3d"][0]["filename"].endswith(".glb")
    _check_world_plot(server, sources["SAMBody4D_WorldGround"], kinds["SAMBody4D_WorldGround"])
    _check_scene(server, kinds["SAMBody4D_SaveAnimation"], people)
    return people


def _image(server: ComfyServer, item: dict) -> np.ndarray:
    """An image the history names (PreviewImage writes into the temp folder), as uint8 [H, W, 3]."""
    from PIL import Image

    assert item["type"] == "temp"
    path = next((server.root / "temp").rglob(item["filename"]))
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def _check_world_plot(server: ComfyServer, preview: dict, own: dict) -> None:
    """World Ground's trajectory plot: one image in the history, from the core preview and the node's own."""
    assert len(preview["images"]) == 1 and len(own["images"]) == 1
    plot = _image(server, preview["images"][0])
    assert plot.shape == (512, 512, 3)
    np.testing.assert_array_equal(plot, _image(server, own["images"][0]))
    paper = np.all(plot > 240, axis=2).mean()
    ink = np.all(plot < 80, axis=2).mean()  # the scale bar, labels and the camera marker
    red = ((plot[..., 0] > 150) & (plot[..., 1] < 100)).sum()  # the person's track and contacts
    assert paper > 0.5 and ink > 0.001 and red > 10, (paper, ink, red)


def _check_scene(server: ComfyServer, saved: dict, people: int) -> None:
    """Save Animation's scene GLB in World Ground's world: one skin per person, the floor at y = 0, the camera
    placed in the world, and every frame's heel / toe contact flags beside the visibility flags (also in the NPZ)."""
    item = saved["3d"][0]
    assert item["type"] == "output" and item["filename"].endswith("_scene.glb")
    path = server.output_dir / item["subfolder"] / item["filename"]
    g, blob = load_glb(path)
    assert len(g.skins) == people
    floor = next(n for n in g.nodes if n.name == "floor")
    quad = accessor(g, blob, g.meshes[floor.mesh].primitives[0].attributes.POSITION)
    np.testing.assert_allclose(quad[:, 1], 0.0, atol=1e-6)
    cam = next(k for k, n in enumerate(g.nodes) if n.name == "camera")
    pose = node_world_matrices(g, blob, 0.0)[cam]  # posed in the world (without one: the origin)
    assert np.linalg.norm(pose[:3, 3]) > 1e-3
    contact = ("contact_left_heel", "contact_left_toe", "contact_right_heel", "contact_right_toe")
    roots = [n for n in g.nodes if isinstance(n.extras, dict) and "obj_id" in n.extras]
    assert len(roots) == people
    for node in roots:
        flags = node.extras["flags"]
        assert {"visible", "missing", *contact} <= set(flags)
        assert all(len(flags[k]) == CAP and set(flags[k]) <= {0, 1} for k in (*contact, "visible"))
    with np.load(path.with_name(path.name.replace("_scene.glb", "_anim.npz"))) as z:
        assert all(z[f"flag_{k}"].shape == (people, CAP) for k in contact)
        assert z["flag_visible"].any()
    assert path.with_name(path.name.replace("_scene.glb", "_all.bvh")).read_text().startswith("HIERARCHY")


@pytest.mark.comfyui
def test_full_pipeline_with_points_runs_in_comfyui(e2e_server):
    graph = _small(_api("body4d_full_pipeline"), "full")
    entry = e2e_server.run(graph, timeout=900)
    people = _check_pipeline_outputs(e2e_server, graph, entry, "full")
    assert people == 1  # one clicked person


@pytest.mark.comfyui
def test_auto_detect_runs_in_comfyui(e2e_server):
    graph = _small(_api("body4d_auto_detect"), "auto")
    entry = e2e_server.run(graph, timeout=900)
    assert 1 <= _check_pipeline_outputs(e2e_server, graph, entry, "auto") <= 2


@pytest.mark.comfyui
def test_fast_preview_runs_in_comfyui(e2e_server):
    graph = _small(_api("body4d_fast_preview"), "fast")
    entry = e2e_server.run(graph, timeout=900)
    assert entry["status"]["status_str"] == "success"
    assert not any(n["class_type"] == "SAMBody4D_AmodalComplete" for n in graph.values())
    videos = [p for p in e2e_server.output_files(entry) if p.suffix == ".mp4"]
    assert len(videos) == 1 and "fast" in str(videos[0])
    frames = _frames(videos[0])
    assert len(frames) == CAP and frames[0].shape == (SIDE, SIDE, 3)


@pytest.mark.comfyui
def test_mixing_workflow_names_absent_core_models_and_runs_our_branch(e2e_server):
    info = e2e_server.object_info(refresh=True)
    _, report = convert_with_report(_ui("body4d_mix_controlnet"), info)
    assert not report.problems, report.problems
    graph = _small(_api("body4d_mix_controlnet"), "mix")
    status, body = e2e_server.post_json("/prompt", {"prompt": graph, "client_id": "e2e-mix"})
    assert status == 200 and "prompt_id" in body, body
    errors = body["node_errors"]  # the server refuses only the outputs that need the absent SD/ControlNet files
    assert {e["class_type"] for e in errors.values()} == {"CheckpointLoaderSimple", "ControlNetLoader"}
    names = {err["extra_info"]["input_name"] for e in errors.values() for err in e["errors"]}
    assert names == {"ckpt_name", "control_net_name"}
    assert all(err["type"] == "value_not_in_list" for e in errors.values() for err in e["errors"])
    entry = e2e_server.wait(body["prompt_id"], timeout=900)
    assert entry["status"]["status_str"] == "success"
    files = e2e_server.output_files(entry)
    videos = [p for p in files if p.suffix == ".mp4"]
    assert len(videos) == 1 and "skeleton" in videos[0].name  # our skeleton render, ready for a ControlNet
    frames = _frames(videos[0])
    assert len(frames) == CAP and frames[0].shape == (SIDE, SIDE, 3)
    masks = [p for p in files if p.suffix == ".png" and "person_masks" in p.name]
    assert len(masks) == CAP and all(p.is_file() for p in masks)


@pytest.mark.comfyui
def test_shipped_workflows_are_what_the_generator_writes(e2e_server):
    """Drift guard: after a node's inputs change, rerun workflows/make_workflows.py (this names the files)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("body4d_make_workflows", WORKFLOWS / "make_workflows.py")
    gen = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = gen  # its dataclasses resolve annotations through sys.modules
    try:
        spec.loader.exec_module(gen)
    finally:
        sys.modules.pop(spec.name, None)
    info = e2e_server.object_info(refresh=True)
    stale = [make().stem for make in gen.SPECS if gen.build_ui(make(), info) != _ui(make().stem)]
    assert not stale, (f"{stale} differ from the generator's output for this server; regenerate with: "
                       f"python workflows/make_workflows.py --object-info {e2e_server.url}")
