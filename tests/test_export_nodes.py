"""Export nodes list every file they write as ComfyUI UI outputs (so /history + /view return them),
number their folders with ComfyUI's save counter and never overwrite another run's files."""

from __future__ import annotations

import importlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest

from body4d_core.interop.api_client import ComfyClient, output_items
from body4d_core.data import Bodies, BodyFlag, Camera

from .nodes_env import pack  # noqa: F401

SQUARE = np.array([[-0.5, -0.5, 0], [0.5, -0.5, 0], [0.5, 0.5, 0], [-0.5, 0.5, 0]], np.float32)
FACES = np.array([[0, 1, 2], [0, 2, 3]], np.int32)


def _bodies(t: int = 3) -> Bodies:
    b = Bodies.empty([3, 8], t, (64, 48))
    p = {k: v.copy() for k, v in b.params.items()}
    p["cam_t"][:] = [0.1, 0.2, 2.0]
    p["body_pose"][1] = 0.25
    flags = np.full((2, t), BodyFlag.VISIBLE, np.uint8)
    flags[0, 1] = BodyFlag.MISSING
    return b.replace(params=p, flags=flags, vertices=np.tile(SQUARE[None, None], (2, t, 1, 1)), faces=FACES)


def _mod(pack):  # noqa: F811
    return importlib.import_module(f"{pack.__name__}.nodes.export")


def _out_dir() -> Path:
    import folder_paths

    return Path(folder_paths.get_output_directory())


def _resolve(item: dict) -> Path:
    """Where ComfyUI's /view finds a UI entry: <type dir>/<subfolder>/<filename>."""
    assert item["type"] == "output"
    return _out_dir() / item["subfolder"] / item["filename"]


def test_export_meshes_lists_every_file(pack) -> None:  # noqa: F811
    import trimesh

    mod = _mod(pack)
    cam = Camera.from_focal(40.0, (64, 48), 3, "manual")
    out = mod.ExportMeshes.execute(_bodies(), camera=cam, filename_prefix="listed/meshes", format="obj")
    rel = out.result[0]
    items = out.ui["files"]
    names = sorted(f"{i['subfolder'][len(rel):]}/{i['filename']}" for i in items)
    assert names == ["/params.npz", "/params_camera.npz", "/person_3/00000000.obj", "/person_3/00000002.obj",
                     "/person_8/00000000.obj", "/person_8/00000001.obj", "/person_8/00000002.obj"]
    on_disk = sorted(p for p in (_out_dir() / rel).rglob("*") if p.is_file())
    assert sorted(_resolve(i) for i in items) == on_disk  # every file listed, nothing else written
    back = Bodies.load_npz(_resolve(next(i for i in items if i["filename"] == "params.npz")))
    np.testing.assert_array_equal(back.params["body_pose"], _bodies().params["body_pose"])
    mesh = trimesh.load(_resolve(next(i for i in items if i["filename"] == "00000001.obj")), process=False)
    assert mesh.vertices.shape == (4, 3) and out.ui["text"] == [f"wrote 7 file(s) to {rel}"]


def test_params_only_export(pack) -> None:  # noqa: F811
    out = _mod(pack).ExportMeshes.execute(_bodies(), filename_prefix="only/params", format="none")
    assert [i["filename"] for i in out.ui["files"]] == ["params.npz"]
    assert [p.name for p in (_out_dir() / out.result[0]).iterdir()] == ["params.npz"]


def test_runs_get_new_numbered_folders_and_keep_old_files(pack) -> None:  # noqa: F811
    mod = _mod(pack)
    first = mod.SaveGLB.execute(_bodies(), fps=10.0, filename_prefix="runs/glb")
    path = _resolve(first.ui["3d"][0])
    before = path.read_bytes()
    other = _bodies()
    other.params["cam_t"][:] = [0.0, 0.0, 5.0]
    second = mod.SaveGLB.execute(other, fps=10.0, filename_prefix="runs/glb")
    assert first.result[0] == "runs/glb_00001" and second.result[0] == "runs/glb_00002"
    assert path.read_bytes() == before and _resolve(second.ui["3d"][0]).read_bytes() != before
    (_out_dir() / "runs" / "glb_00003").write_text("a file that took the next name")
    third = mod.SaveGLB.execute(_bodies(), fps=10.0, filename_prefix="runs/glb", obj_id=3)
    assert third.result[0] == "runs/glb_00004"
    assert third.ui["3d"] == [{"filename": "body4d_person_3.glb", "subfolder": "runs/glb_00004", "type": "output"}]
    meshes = [mod.ExportMeshes.execute(_bodies(), filename_prefix="runs/m").result[0] for _ in range(2)]
    assert meshes == ["runs/m_00001", "runs/m_00002"]


def test_prefix_cannot_leave_the_output_folder(pack) -> None:  # noqa: F811
    from importlib import import_module

    error = import_module(f"{pack.__name__}.body4d_core.errors").InputError
    for bad in ("../escape", "/abs/path", "a/../../b"):
        with pytest.raises(error, match="inside ComfyUI's output"):
            _mod(pack).ExportMeshes.execute(_bodies(), filename_prefix=bad)


class _View(BaseHTTPRequestHandler):
    """/history and /view of a ComfyUI that ran our two export nodes."""

    history: dict = {}

    def log_message(self, *args):
        pass

    def do_GET(self):
        url = urlparse(self.path)
        if url.path.startswith("/history/"):
            body = json.dumps(self.history).encode()
        else:
            q = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
            body = (_out_dir() / q["subfolder"] / q["filename"]).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_files_come_back_through_the_api(pack, tmp_path: Path) -> None:  # noqa: F811
    """The finding: meshes and params.npz never came back through the API. History holds the nodes'
    UI dicts; the client downloads every listed file, keeping sub-folders."""
    mod = _mod(pack)
    meshes = mod.ExportMeshes.execute(_bodies(), filename_prefix="api/meshes")
    glb = mod.SaveGLB.execute(_bodies(), fps=10.0, filename_prefix="api/glb")
    _View.history = {"p0": {"status": {"status_str": "success", "completed": True},
                            "outputs": {"5": meshes.ui, "6": glb.ui}}}
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _View)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        client = ComfyClient(f"http://127.0.0.1:{httpd.server_address[1]}", timeout=5)
        entry = client.history("p0")
        files = client.download(entry, tmp_path / "dl")
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert len(files) == len(output_items(entry)) == 1 + 5 + 2
    for f in files:
        rel = f.relative_to(tmp_path / "dl")
        assert f.read_bytes() == (_out_dir() / rel).read_bytes()
    back = Bodies.load_npz(tmp_path / "dl" / meshes.result[0] / "params.npz")
    assert back.obj_ids.tolist() == [3, 8]
