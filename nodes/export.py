"""Exports into ComfyUI's output folder: per-person meshes + params, animated GLB with a 3D preview."""

from __future__ import annotations

import os
from pathlib import Path

import folder_paths
from comfy_api.latest import io

from ..body4d_core import export as ex
from ..body4d_core.errors import InputError
from . import comfy_glue as glue
from . import sockets as t


def _output_folder(prefix: str) -> tuple[Path, str]:
    """A new folder <output>/<prefix>_<nnnnn>/ numbered by ComfyUI's save counter (prefix may hold
    sub-folders, never leaves output); created here, so another run never gets the same one."""
    out_root, prefix = glue.output_prefix(prefix, "body4d")
    base = os.path.realpath(os.path.join(out_root, prefix))
    parent, name, counter, _, _ = folder_paths.get_save_image_path(os.path.relpath(base, out_root), out_root)
    while True:
        folder = Path(parent) / f"{name}_{counter:05d}"
        try:
            folder.mkdir(parents=True)
            break
        except FileExistsError:  # written meanwhile (or a file of that name): take the next number
            counter += 1
        except OSError as err:
            raise ex.ExportError(f"cannot create output folder {folder}: {err.strerror or err}") from err
    return folder, os.path.relpath(folder, out_root).replace(os.sep, "/")


def _saved(files: list[Path], folder: Path, rel: str) -> list[dict]:
    """ComfyUI UI entries ({filename, subfolder, type}) for files under an output folder, so the
    browser and API clients (GET /history, /view) can fetch each one."""
    out = []
    for f in files:
        sub = f.parent.relative_to(folder).as_posix()
        out.append({"filename": f.name, "subfolder": rel if sub == "." else f"{rel}/{sub}", "type": "output"})
    return out


class ExportMeshes(io.ComfyNode):
    """Per-person per-frame meshes (folders keyed by object id) and one params .npz."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SAMBody4D_ExportMeshes",
            display_name="Export Meshes (Body4D)",
            category=glue.CATEGORY,
            search_aliases=["export ply", "export obj", "save meshes", "save params", "npz"],
            description="Writes <output>/<prefix>_NNNNN/person_<id>/<frame>.ply|obj (metres, OpenGL camera frame, "
                        "camera translation applied) and params.npz with every body parameter and flag. Every "
                        "file is listed in the node's outputs, so API clients can download it.",
            is_output_node=True,
            inputs=[
                t.Bodies.Input("bodies"),
                t.Camera.Input("camera", optional=True, tooltip="Saved beside the params as params_camera.npz."),
                io.String.Input("filename_prefix", default="body4d/meshes",
                                tooltip="Folder prefix inside ComfyUI's output folder."),
                io.Combo.Input("format", options=["ply", "obj", "none"], default="ply",
                               tooltip="Mesh file format; none = params only."),
            ],
            outputs=[io.String.Output("folder", tooltip="The folder written, relative to the output folder.")],
        )

    @classmethod
    def execute(cls, bodies, camera=None, filename_prefix="body4d/meshes", format="ply") -> io.NodeOutput:  # noqa: A002
        folder, rel = _output_folder(filename_prefix)
        params = ex.save_params(bodies, folder / "params.npz", camera)
        files = [params] + ([params.with_name(params.stem + "_camera.npz")] if camera is not None else [])
        if format != "none":
            ex.write_meshes(bodies, folder, fmt=format, hooks=glue.hooks(int(bodies.present.sum())))
            files += sorted(folder.glob(f"person_*/*.{format}"))
        summary = f"wrote {len(files)} file(s) to {rel}"
        return io.NodeOutput(rel, ui={"files": _saved(files, folder, rel), "text": [summary]})


class SaveGLB(io.ComfyNode):
    """One animated GLB per person (plays in Load 3D & Animation / Preview 3D, Blender, three.js)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SAMBody4D_SaveGLB",
            display_name="Save Animated GLB (Body4D)",
            category=glue.CATEGORY,
            search_aliases=["glb", "gltf", "animated mesh", "export 3d", "blender"],
            description="Writes <output>/<prefix>_NNNNN/<name>_person_<id>.glb: one mesh per frame, shown on its "
                        "frame by a step animation, in metres in an OpenGL camera frame. Previews the first person.",
            is_output_node=True,
            inputs=[
                t.Bodies.Input("bodies"),
                io.Float.Input("fps", default=30.0, min=0.1, max=240.0, step=0.1,
                               tooltip="Playback rate (use the clip's fps from Load Video)."),
                io.String.Input("filename_prefix", default="body4d/glb",
                                tooltip="Folder prefix inside ComfyUI's output folder."),
                io.Int.Input("obj_id", default=0, min=0, max=10000,
                             tooltip="0 = every person (one file each), else only this object id."),
            ],
            outputs=[io.String.Output("folder", tooltip="The folder written, relative to the output folder."),
                     io.File3DGLB.Output("model_3d", tooltip="The first person's GLB, for core Preview 3D / "
                                                             "Save 3D Model.")],
        )

    @classmethod
    def execute(cls, bodies, fps=30.0, filename_prefix="body4d/glb", obj_id=0) -> io.NodeOutput:
        if obj_id:
            keep = bodies.obj_ids == int(obj_id)
            if not keep.any():
                raise InputError(f"obj_id {obj_id} is not among the bodies' ids {bodies.obj_ids.tolist()}")
            bodies = bodies.replace(obj_ids=bodies.obj_ids[keep], flags=bodies.flags[keep],
                                    params={k: v[keep] for k, v in bodies.params.items()},
                                    keypoints_3d=None if bodies.keypoints_3d is None else bodies.keypoints_3d[keep],
                                    keypoints_2d=None if bodies.keypoints_2d is None else bodies.keypoints_2d[keep],
                                    vertices=None if bodies.vertices is None else bodies.vertices[keep],
                                    confidence=None if bodies.confidence is None else bodies.confidence[keep],
                                    extras={k: v[keep] for k, v in bodies.extras.items()})
        folder, rel = _output_folder(filename_prefix)
        ex.write_glb(bodies, folder, fps=float(fps), hooks=glue.hooks(bodies.num_objects))
        files = sorted(folder.glob("*.glb"))
        return io.NodeOutput(rel, _file3d(files[0]) if files else None, ui={"3d": _saved(files, folder, rel)})


def _file3d(path: Path):
    """Core's File3D for a GLB on disk (None where comfy_api has no Types, e.g. older ComfyUI)."""
    try:
        from comfy_api.latest import Types

        return Types.File3D(str(path), "glb")
    except (ImportError, AttributeError):
        return None


NODES = [ExportMeshes, SaveGLB]
