"""Write the shipped workflows (UI format + API twin + thumbnail) from compact graph specs.

Usage (a ComfyUI with this pack must be running, or a saved /object_info JSON given)::

    python workflows/make_workflows.py --object-info http://127.0.0.1:8188

Widget order, defaults and input slots come from the live ``/object_info``, so the UI
files match what the installed frontend writes; only the values a workflow changes are
spelled out below. Loader nodes carry ``properties.models`` download hints ({name, url,
directory}) built from ``body4d_core.weights.MODEL_SPECS``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from body4d_core.weights import MODEL_SPECS  # noqa: E402
from body4d_core.interop.workflows import (  # noqa: E402
    _dynamic_children, _opts, _type, convert_workflow, default_value, extra_slots, is_widget, load_object_info,
    ordered_inputs,
)

log = logging.getLogger(__name__)

FRONTEND_VERSION = "1.49.6"
CORE_VERSION = "0.33.0"
PACK_VERSION = "0.1.0"
DANCER = "cartoon_dancer_81f.mp4"
# Points on the dancer of cartoon_dancer_81f.mp4 (350x350), frame 0: chest, skirt, knee (+), tower (-).
DANCER_PROMPTS = json.dumps({
    "version": 1, "image_size": [350, 350],
    "objects": [{"id": 1, "points": [
        {"frame": 0, "x": 172, "y": 118, "label": 1}, {"frame": 0, "x": 160, "y": 178, "label": 1},
        {"frame": 0, "x": 190, "y": 250, "label": 1}, {"frame": 0, "x": 285, "y": 160, "label": 0}]}],
})

# Which model of body4d_core.weights each loader's checkpoint widget(s) name, for the download hints.
LOADER_MODELS = {
    "SAMBody4D_LoadSAM3": ["sam3"],
    "SAMBody4D_LoadAmodal": ["diffusion_vas_amodal", "diffusion_vas_completion", "depth_anything"],
    "SAMBody4D_LoadMoGe": ["moge"],
    "SAMBody4D_LoadSAM3DBody": ["sam3d_body"],
}
SD15 = {"name": "v1-5-pruned-emaonly-fp16.safetensors", "directory": "checkpoints",
        "url": "https://huggingface.co/Comfy-Org/stable-diffusion-v1-5-archive/resolve/main/"
               "v1-5-pruned-emaonly-fp16.safetensors"}
CN_REPO = "https://huggingface.co/comfyanonymous/ControlNet-v1-1_fp16_safetensors/resolve/main/"
CN_OPENPOSE = {"name": "control_v11p_sd15_openpose_fp16.safetensors", "directory": "controlnet",
               "url": CN_REPO + "control_v11p_sd15_openpose_fp16.safetensors"}
CN_NORMAL = {"name": "control_v11p_sd15_normalbae_fp16.safetensors", "directory": "controlnet",
             "url": CN_REPO + "control_v11p_sd15_normalbae_fp16.safetensors"}


def model_hints(node_type: str) -> list[dict]:
    """Download hints for one of our loaders: the main file of each official checkpoint folder."""
    hints = []
    for name in LOADER_MODELS.get(node_type, []):
        spec = MODEL_SPECS[name]
        main = next((f for f in spec.required if f.endswith((".safetensors", ".ckpt", ".pt", ".pth"))),
                    spec.required[0])
        hints.append({"name": f"{spec.subdir}/{main}", "url": f"https://huggingface.co/{spec.repo_id}/resolve/main/{main}",
                      "directory": spec.folder})
    return hints


@dataclass
class N:
    """One node of a graph spec: links are {input: (source node id, output name)}."""

    id: int
    type: str
    pos: tuple[int, int]
    size: tuple[int, int] = (300, 130)
    values: dict[str, Any] = field(default_factory=dict)
    links: dict[str, tuple[int, str]] = field(default_factory=dict)
    title: str | None = None
    models: list[dict] | None = None


@dataclass
class Spec:
    """A whole workflow: file stem, an explanation note and its nodes."""

    stem: str
    note: str
    nodes: list[N]
    groups: list[tuple[str, tuple[int, ...], str]] = field(default_factory=list)  # title, node ids, colour


# --- graph specs --------------------------------------------------------------------------------

def _front(prompt_node: N) -> list[N]:
    """Load Video + the prompt source (points or detection)."""
    return [N(1, "SAMBody4D_LoadVideo", (40, 160), (320, 420), {"file": DANCER}), prompt_node]


AMODAL_WIDTH = 760  # the amodal column; workflows without it shift the later columns left by this much


def _tail(body_src: int, camera_src: int, frames_src: int = 1, exports: bool = True, x: int = 2680,
          smooth_id: int = 30, world: bool = False) -> list[N]:
    """Kalman Smooth -> Render Mesh -> video (+ mesh/GLB exports, + world frame and skinned animation)."""
    nodes = [
        N(smooth_id, "SAMBody4D_KalmanSmooth", (x, 160), (320, 260),
          links={"bodies": (body_src, "bodies"), "camera": (camera_src, "camera"),
                 "sam3d_body_model": (22, "sam3d_body_model")}),
        N(31, "SAMBody4D_RenderMesh", (x + 360, 160), (320, 200),
          links={"bodies": (smooth_id, "bodies"), "camera": (camera_src, "camera"), "frames": (frames_src, "frames")}),
        N(32, "CreateVideo", (x + 720, 160), (270, 110), links={"images": (31, "image"), "fps": (1, "fps")}),
        N(33, "SaveVideo", (x + 1020, 160), (360, 420), {"filename_prefix": "body4d/mesh_overlay"},
          links={"video": (32, "VIDEO")}),
    ]
    if exports:
        nodes += [
            N(34, "SAMBody4D_ExportMeshes", (x + 360, 420), (320, 130),
              links={"bodies": (smooth_id, "bodies"), "camera": (camera_src, "camera")}),
            N(35, "SAMBody4D_SaveGLB", (x + 360, 600), (320, 150),
              links={"bodies": (smooth_id, "bodies"), "fps": (1, "fps")}),
            N(36, "Preview3D", (x + 720, 640), (400, 420), links={"model_file": (35, "model_3d")}),
        ]
    if world:
        nodes += _world(body_src, camera_src, frames_src, smooth_id, x)
    return nodes


def _world(body_src: int, camera_src: int, frames_src: int, smooth_id: int, x: int, y: int = 1160) -> list[N]:
    """World Ground (raw bodies + smoothed meshes, frames, tracks, camera) -> plot preview; Save Animation in it."""
    return [
        N(37, "SAMBody4D_WorldGround", (x, y), (320, 420),
          links={"bodies": (body_src, "bodies"), "mesh_bodies": (smooth_id, "bodies"), "camera": (camera_src, "camera"),
                 "frames": (frames_src, "frames"), "tracks": (11, "tracks"), "fps": (1, "fps")}),
        N(38, "PreviewImage", (x + 360, y), (360, 400), links={"images": (37, "trajectory_plot")},
          title="World trajectories (top view)"),
        N(39, "SAMBody4D_SaveAnimation", (x + 760, y), (340, 260),
          links={"sam3d_body_model": (22, "sam3d_body_model"), "bodies": (smooth_id, "bodies"),
                 "camera": (camera_src, "camera"), "world": (37, "world"), "fps": (1, "fps")}),
    ]


def _tracking(prompt_src: int) -> list[N]:
    return [
        N(10, "SAMBody4D_LoadSAM3", (40, 640), (320, 110)),
        N(11, "SAMBody4D_Propagate", (780, 160), (320, 200),
          links={"frames": (1, "frames"), "sam3_model": (10, "sam3_model"), "prompts": (prompt_src, "prompts")}),
        N(12, "PreviewImage", (780, 420), (320, 300), links={"images": (11, "preview")}, title="Tracks preview"),
    ]


def _fov_body(amodal: bool, body_mode: str = "full", x: int = 1920) -> list[N]:
    body_links = {"sam3d_body_model": (22, "sam3d_body_model"), "frames": (1, "frames"),
                  "tracks": (11, "tracks"), "camera": (21, "camera")}
    if amodal:
        body_links["amodal"] = (16, "amodal")
    return [
        N(20, "SAMBody4D_LoadMoGe", (x, 160), (320, 90)),
        N(21, "SAMBody4D_FOV", (x, 300), (320, 200), links={"frames": (1, "frames"), "moge_model": (20, "moge_model")}),
        N(22, "SAMBody4D_LoadSAM3DBody", (x, 560), (320, 90)),
        N(23, "SAMBody4D_BodyBatch", (x + 360, 160), (320, 220), {"mode": body_mode}, links=body_links),
    ]


def _amodal() -> list[N]:
    return [
        N(15, "SAMBody4D_LoadAmodal", (1160, 160), (320, 160)),
        N(16, "SAMBody4D_AmodalComplete", (1520, 160), (320, 420),
          links={"frames": (1, "frames"), "tracks": (11, "tracks"), "amodal_model": (15, "amodal_model")}),
        N(17, "PreviewImage", (1160, 380), (320, 300), links={"images": (16, "preview")}, title="Amodal completion"),
    ]


POINTS = N(2, "SAMBody4D_SAM3Points", (400, 160), (340, 460), {"prompts": DANCER_PROMPTS},
           links={"frames": (1, "frames")})
DETECT = N(3, "SAMBody4D_DetectPeople", (400, 160), (320, 220),
           links={"frames": (1, "frames"), "sam3_model": (10, "sam3_model")})

FULL_NOTE = ("**SAM-Body4D: full pipeline from point prompts.** Pick a video in *Load Video*, run once to "
             "load the frames into *SAM3 Points*, click on each person (left = positive, right = negative, "
             "*New person* for the next one), then run again.\n\nStages: SAM-3 propagation -> amodal completion "
             "of occluded people (Diffusion-VAS) -> camera FOV (MoGe-2) -> SAM-3D-Body meshes -> Kalman/RTS "
             "smoothing -> mesh overlay video, per-frame meshes (PLY), animated GLB; *World Ground* puts the people, "
             "the camera path and the floor in one world frame (top-view plot of the tracks) and *Save Animation* "
             "writes a skinned scene GLB (rigs, floor, moving camera, foot contacts) and BVH.\n\nWeights: "
             "`python -m body4d_core setup` (or the download dialog) puts them in `models/sam3`, "
             "`models/diffusion_vas`, `models/depth_anything`, `models/moge`, `models/sam3d_body`.")
AUTO_NOTE = ("**SAM-Body4D: automatic people detection.** Like the full pipeline, but *Detect People* finds "
             "everyone with SAM-3's text detector ('person'), so no clicks are needed. Raise *score_threshold* "
             "if it finds too much, *max_people* for crowds. Ends, like it, in the world frame (*World Ground*) and a "
             "skinned scene GLB + BVH (*Save Animation*).\n\nWeights: `python -m body4d_core setup`.")
FAST_NOTE = ("**SAM-Body4D: fast preview.** Point prompts -> SAM-3 propagation -> FOV -> SAM-3D-Body (body "
             "only, no hand refinement) -> smoothing -> overlay video. No amodal completion, so occluded "
             "frames are fitted from the visible part only: use it to check prompts and tracking before the "
             "full run.\n\nWeights: `python -m body4d_core setup --models sam3 moge sam3d_body`.")
MIX_NOTE = ("**SAM-Body4D renders driving a generative model.** Our nodes find the people automatically and "
            "render their smoothed bodies as an OpenPose skeleton and as normals; these control SD 1.5 through "
            "two ControlNets (OpenPose, NormalBAE), one generated image per frame. The person masks are saved "
            "too, e.g. for inpainting. Swap the ControlNet part for a video model (e.g. Wan Fun Control / VACE "
            "take the skeleton video as *control_video*).\n\nModels: SD 1.5 in `models/checkpoints`, the two "
            "ControlNets in `models/controlnet` (the download dialog offers them); ours via "
            "`python -m body4d_core setup --models sam3 moge sam3d_body`. Without them the workflow still loads; "
            "the run names the missing files.")


GREEN, BLUE, PURPLE, BROWN = "#8A8", "#88A", "#a1309b", "#b58b2a"


def _groups(prompt_id: int, amodal: bool, exports: bool, world: bool = False) -> list[tuple[str, tuple[int, ...], str]]:
    """Stage groups drawn around the nodes (frontend groups)."""
    groups = [("1. Video and people", (1, prompt_id, 10, 11, 12), GREEN)]
    if amodal:
        groups.append(("2. Amodal completion (occluded people)", (15, 16), BLUE))
    groups.append(("3. Camera and bodies", (20, 21, 22, 23), PURPLE))
    groups.append(("4. Smoothing and outputs", (30, 31, 32, 33, *((34, 35, 36) if exports else ())), BROWN))
    if world:
        groups.append(("5. World frame and animation", (37, 38, 39), GREEN))
    return groups


def full_spec() -> Spec:
    nodes = [*_front(POINTS), *_tracking(2), *_amodal(), *_fov_body(True), *_tail(23, 21, world=True)]
    return Spec("body4d_full_pipeline", FULL_NOTE, nodes, _groups(2, True, True, world=True))


def auto_spec() -> Spec:
    nodes = [*_front(DETECT), *_tracking(3), *_amodal(), *_fov_body(True), *_tail(23, 21, world=True)]
    return Spec("body4d_auto_detect", AUTO_NOTE, nodes, _groups(3, True, True, world=True))


def fast_spec() -> Spec:
    dx = AMODAL_WIDTH
    nodes = [*_front(POINTS), *_tracking(2), *_fov_body(False, body_mode="body", x=1920 - dx),
             *_tail(23, 21, exports=False, x=2680 - dx)]
    return Spec("body4d_fast_preview", FAST_NOTE, nodes, _groups(2, False, False))


def mix_spec() -> Spec:
    dx = AMODAL_WIDTH
    x, y = 1920 - dx, 1060
    t = 2680 - dx
    nodes = [*_front(DETECT), *_tracking(3), *_fov_body(False, x=x), *_tail(23, 21, exports=False, x=t)]
    render = next(n for n in nodes if n.id == 31)
    render.values = {"mode": "openpose"}
    render.title = "Render skeleton (OpenPose)"
    nodes[-1].values = {"filename_prefix": "body4d/skeleton"}
    nodes += [
        N(40, "SAMBody4D_RenderMesh", (t + 360, 420), (320, 200), {"mode": "normals"},
          links={"bodies": (30, "bodies"), "camera": (21, "camera")}, title="Render normals"),
        N(41, "MaskToImage", (t, 480), (240, 60), links={"mask": (11, "union_mask")}),
        N(42, "SaveImage", (t, 600), (320, 300), {"filename_prefix": "body4d/person_masks"},
          links={"images": (41, "IMAGE")}, title="Person masks"),
        N(50, "CheckpointLoaderSimple", (x, y), (320, 100), {"ckpt_name": SD15["name"]}, models=[SD15]),
        N(51, "CLIPTextEncode", (x + 360, y), (400, 160),
          {"text": "a dancer in a colourful costume on a sunny square, best quality"},
          links={"clip": (50, "CLIP")}, title="Positive prompt"),
        N(52, "CLIPTextEncode", (x + 360, y + 210), (400, 160), {"text": "blurry, lowres, deformed"},
          links={"clip": (50, "CLIP")}, title="Negative prompt"),
        N(53, "ControlNetLoader", (x, y + 160), (320, 60), {"control_net_name": CN_OPENPOSE["name"]},
          models=[CN_OPENPOSE]),
        N(54, "ControlNetLoader", (x, y + 260), (320, 60), {"control_net_name": CN_NORMAL["name"]},
          models=[CN_NORMAL]),
        N(55, "ControlNetApplyAdvanced", (x + 800, y), (320, 190), {"strength": 1.0},
          links={"positive": (51, "CONDITIONING"), "negative": (52, "CONDITIONING"), "control_net": (53, "CONTROL_NET"),
                 "image": (31, "image"), "vae": (50, "VAE")}, title="Apply ControlNet (pose)"),
        N(56, "ControlNetApplyAdvanced", (x + 800, y + 240), (320, 190), {"strength": 0.6},
          links={"positive": (55, "positive"), "negative": (55, "negative"), "control_net": (54, "CONTROL_NET"),
                 "image": (40, "image"), "vae": (50, "VAE")}, title="Apply ControlNet (normals)"),
        N(57, "EmptyLatentImage", (x + 360, y + 420), (320, 110), {"width": 512, "height": 512},
          links={"batch_size": (1, "frame_count")}),
        N(58, "KSampler", (x + 1160, y), (320, 270), {"seed": 42, "steps": 20, "cfg": 7.0},
          links={"model": (50, "MODEL"), "positive": (56, "positive"), "negative": (56, "negative"),
                 "latent_image": (57, "LATENT")}),
        N(59, "VAEDecode", (x + 1520, y), (220, 50), links={"samples": (58, "LATENT"), "vae": (50, "VAE")}),
        N(60, "CreateVideo", (x + 1520, y + 100), (270, 110), links={"images": (59, "IMAGE"), "fps": (1, "fps")}),
        N(61, "SaveVideo", (x + 1820, y), (360, 420), {"filename_prefix": "body4d/controlnet"},
          links={"video": (60, "VIDEO")}),
    ]
    # the LoadVideo defaults load every frame: one SD image per frame, so cap it for a first try
    nodes[0].values = {"file": DANCER, "frame_load_cap": 16, "max_side": 512}
    groups = [*_groups(3, False, False), ("5. Generative model (SD 1.5 + ControlNets)", tuple(range(50, 62)), BLUE)]
    groups[-2] = ("4. Smoothing, renders, masks", (30, 31, 32, 33, 40, 41, 42), BROWN)
    return Spec("body4d_mix_controlnet", MIX_NOTE, nodes, groups)


SPECS = (full_spec, auto_spec, fast_spec, mix_spec)


# --- UI format ---------------------------------------------------------------------------------

def _ui_inputs(info: dict) -> list[tuple[str, list]]:
    """The inputs the frontend gives a node slot for (hidden widgets excluded)."""
    return [(n, s) for n, s in ordered_inputs(info) if not _opts(s).get("hidden")]


def _widget_values(info: dict, values: dict[str, Any]) -> list[Any]:
    """``widgets_values`` in the frontend's order: each widget, its extra slots, dynamic children."""
    out: list[Any] = []

    def walk(inputs: list[tuple[str, list]], prefix: str) -> None:
        for name, spec in inputs:
            if not is_widget(spec) or _opts(spec).get("hidden"):
                continue
            value = values.get(prefix + name, default_value(spec))
            out.append(value)
            extra = extra_slots(name, spec)
            upload = _opts(spec).get("video_upload") or _opts(spec).get("image_upload")
            if extra and _type(spec) == "COMBO" and upload:
                out.extend(["image"] * extra)
            elif extra:
                out.extend(["fixed"] * extra)
            if _type(spec) == "COMFY_DYNAMICCOMBO_V3":
                walk(_dynamic_children(spec, value), f"{prefix}{name}.")

    walk(_ui_inputs(info), "")
    return out


def _cnr(node_type: str, info: dict) -> dict:
    ours = node_type.startswith("SAMBody4D_")
    return {"cnr_id": "sam-body4d" if ours else "comfy-core", "ver": PACK_VERSION if ours else CORE_VERSION}


def build_ui(spec: Spec, object_info: dict) -> dict:
    """The UI-format (litegraph 0.4) workflow of a spec."""
    nodes, links, by_id = [], [], {}
    for n in spec.nodes:
        if n.type not in object_info:
            raise KeyError(f"{spec.stem}: node type {n.type} is not in /object_info")
        info = object_info[n.type]
        unknown = (set(n.values) | set(n.links)) - {name for name, _ in ordered_inputs(info)}
        if unknown:
            raise KeyError(f"{spec.stem}: {n.type} has no inputs {sorted(unknown)}")
        inputs = []
        for name, s in _ui_inputs(info):
            slot = {"name": name, "type": _type(s) if is_widget(s) else str(s[0]), "link": None}
            if is_widget(s):
                slot["widget"] = {"name": name}
            inputs.append(slot)
        outputs = [{"name": name, "type": typ, "links": None}
                   for name, typ in zip(info["output_name"], info["output"])]
        props = {**_cnr(n.type, info), "Node name for S&R": n.type}
        models = n.models if n.models is not None else model_hints(n.type)
        if models:
            props["models"] = models
        node = {"id": n.id, "type": n.type, "pos": list(n.pos), "size": list(n.size), "flags": {}, "order": 0,
                "mode": 0, "inputs": inputs, "outputs": outputs, "properties": props,
                "widgets_values": _widget_values(info, n.values)}
        if n.title:
            node["title"] = n.title
        nodes.append(node)
        by_id[n.id] = node
    link_id = 0
    for n in spec.nodes:
        for dst_name, (src_id, out_name) in n.links.items():
            link_id += 1
            src, dst = by_id[src_id], by_id[n.id]
            out_slot = next(i for i, o in enumerate(src["outputs"]) if o["name"] == out_name)
            in_slot = next(i for i, s in enumerate(dst["inputs"]) if s["name"] == dst_name)
            typ = src["outputs"][out_slot]["type"]
            src["outputs"][out_slot]["links"] = (src["outputs"][out_slot]["links"] or []) + [link_id]
            dst["inputs"][in_slot]["link"] = link_id
            links.append([link_id, src_id, out_slot, n.id, in_slot, typ])
    _set_order(nodes, links)
    groups = [_group(i + 1, title, [by_id[n] for n in ids], colour) for i, (title, ids, colour) in enumerate(spec.groups)]
    note_id = max(by_id) + 1
    nodes.insert(0, {"id": note_id, "type": "MarkdownNote", "pos": [40, -200], "size": [700, 260], "flags": {},
                     "order": 0, "mode": 0, "inputs": [], "outputs": [], "title": "About this workflow",
                     "properties": {}, "widgets_values": [spec.note], "color": "#432", "bgcolor": "#653"})
    return {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"sam-body4d/{spec.stem}")), "revision": 0,
            "last_node_id": note_id, "last_link_id": link_id, "nodes": nodes, "links": links, "groups": groups,
            "config": {}, "extra": {"ds": {"scale": 0.6, "offset": [0, 200]}, "frontendVersion": FRONTEND_VERSION},
            "version": 0.4}


def _group(gid: int, title: str, members: list[dict], colour: str, pad: int = 20, head: int = 50) -> dict:
    """A frontend group box around its member nodes (title bar above them)."""
    x0 = min(n["pos"][0] for n in members) - pad
    y0 = min(n["pos"][1] for n in members) - head - pad
    x1 = max(n["pos"][0] + n["size"][0] for n in members) + pad
    y1 = max(n["pos"][1] + n["size"][1] for n in members) + pad
    return {"id": gid, "title": title, "bounding": [x0, y0, x1 - x0, y1 - y0], "color": colour, "font_size": 24,
            "flags": {}}


def _set_order(nodes: list[dict], links: list[list]) -> None:
    """Execution order (topological) as the frontend stores it in ``order``."""
    deps = {n["id"]: {l[1] for l in links if l[3] == n["id"]} for n in nodes}
    done: list[int] = []
    while len(done) < len(nodes):
        ready = sorted(i for i, d in deps.items() if i not in done and d <= set(done))
        done += ready
    for n in nodes:
        n["order"] = done.index(n["id"]) + 1


# --- thumbnail ----------------------------------------------------------------------------------

CATEGORY_COLOURS = {"Load": (70, 110, 170), "SAMBody4D": (60, 140, 90), "core": (120, 120, 120)}


def thumbnail(ui: dict, path: Path, title: str, size: tuple[int, int] = (640, 360)) -> None:
    """A small diagram of the graph (nodes as boxes, links as lines) as the workflow's thumbnail."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", size, (30, 30, 34))
    draw = ImageDraw.Draw(img)
    boxes = {n["id"]: (n["pos"][0], n["pos"][1], n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
             for n in ui["nodes"] if n["type"] != "MarkdownNote"}
    frames = list(boxes.values()) + [(g["bounding"][0], g["bounding"][1], g["bounding"][0] + g["bounding"][2],
                                      g["bounding"][1] + g["bounding"][3]) for g in ui["groups"]]
    x0, y0 = min(b[0] for b in frames), min(b[1] for b in frames)
    x1, y1 = max(b[2] for b in frames), max(b[3] for b in frames)
    top, pad = 40, 14
    scale = min((size[0] - 2 * pad) / (x1 - x0), (size[1] - top - pad) / (y1 - y0))

    def tr(x: float, y: float) -> tuple[float, float]:
        return pad + (x - x0) * scale, top + (y - y0) * scale

    for group in ui["groups"]:
        gx, gy, gw, gh = group["bounding"]
        draw.rectangle([tr(gx, gy), tr(gx + gw, gy + gh)], outline=group["color"], width=2)
        draw.text(tr(gx + 8, gy + 6), group["title"][:40], fill=group["color"])
    for link in ui["links"]:
        a, b = boxes[link[1]], boxes[link[3]]
        draw.line([tr(a[2], a[1] + 15), tr(b[0], b[1] + 15)], fill=(200, 180, 90), width=1)
    for n in ui["nodes"]:
        if n["id"] not in boxes:
            continue
        b = boxes[n["id"]]
        kind = "Load" if "Load" in n["type"] else ("SAMBody4D" if n["type"].startswith("SAMBody4D_") else "core")
        draw.rectangle([tr(b[0], b[1]), tr(b[2], b[3])], fill=CATEGORY_COLOURS[kind], outline=(230, 230, 230))
        label = n.get("title") or n["type"].replace("SAMBody4D_", "")
        lx, ly = tr(b[0], b[1])
        width = int((b[2] - b[0]) * scale / 6)  # ~6 px per character of the default font
        draw.text((lx + 2, ly + 1), label[:max(3, width)], fill=(255, 255, 255))
    draw.text((pad, 12), title, fill=(255, 255, 255))
    img.save(path, optimize=True)


# --- main ---------------------------------------------------------------------------------------

def write_all(object_info: dict, out_dir: Path = HERE) -> list[Path]:
    """Write every workflow, its API twin and its thumbnail; returns the UI files."""
    written = []
    (out_dir / "api").mkdir(parents=True, exist_ok=True)
    for make in SPECS:
        spec = make()
        ui = build_ui(spec, object_info)
        path = out_dir / f"{spec.stem}.json"
        path.write_text(json.dumps(ui, indent=2) + "\n")
        api = convert_workflow(ui, object_info)
        (out_dir / "api" / path.name).write_text(json.dumps(api, indent=2) + "\n")
        thumbnail(ui, out_dir / f"{spec.stem}.png", spec.note.split("**")[1].rstrip("."))
        written.append(path)
        log.info("wrote %s (%d nodes, %d links)", path.name, len(ui["nodes"]), len(ui["links"]))
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--object-info", required=True, help="ComfyUI server URL or a saved /object_info JSON")
    p.add_argument("--out", default=str(HERE), help="folder to write into (default: workflows/)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    write_all(load_object_info(args.object_info), Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
