"""API client against a small in-process stand-in of ComfyUI's HTTP API (no websocket).

The same client is exercised against a real ComfyUI server in test_comfyui_server.py when
COMFYUI_DIR is set; this test keeps the protocol handling covered in CI.
"""

import json
from email.parser import BytesParser
from email.policy import HTTP
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from body4d_core.interop.api_client import ApiError, ComfyClient, load_api_graph, parse_value, set_input, set_video


class FakeComfy(BaseHTTPRequestHandler):
    uploads: dict = {}
    prompts: dict = {}
    fail_node: str | None = None

    def log_message(self, *args):
        pass

    def _json(self, code, payload):
        body = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        if self.path == "/upload/image":
            raw = self.rfile.read(int(self.headers["Content-Length"]))
            head = f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode()
            parts = {p.get_param("name", header="content-disposition"): p
                     for p in BytesParser(policy=HTTP).parsebytes(head + raw).iter_parts()}
            item = parts["image"]
            self.uploads[item.get_filename()] = item.get_payload(decode=True)
            sub = parts["subfolder"].get_payload(decode=True).decode()
            return self._json(200, {"name": item.get_filename(), "subfolder": sub, "type": "input"})
        if self.path == "/prompt":
            payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            graph = payload["prompt"]
            bad = [nid for nid, n in graph.items() if n["class_type"] == "Unknown"]
            if bad:
                return self._json(400, {"error": {"message": "Prompt outputs failed validation", "details": ""},
                                        "node_errors": {bad[0]: {"errors": [{"message": "node missing"}]}}})
            pid = f"p{len(self.prompts)}"
            self.prompts[pid] = graph
            return self._json(200, {"prompt_id": pid, "number": 0, "node_errors": {}})
        self._json(404, {})

    def do_GET(self):
        if self.path.startswith("/history/"):
            pid = self.path.split("/")[-1]
            graph = self.prompts[pid]
            if any(n["inputs"].get("frame_load_cap") == -1 for n in graph.values()):
                status = {"status_str": "error", "completed": False, "messages": [
                    ["execution_error", {"node_id": "1", "node_type": "SAMBody4D_LoadVideo",
                                         "exception_message": "the selection keeps no frame"}]]}
                return self._json(200, {pid: {"status": status, "outputs": {}}})
            outputs = {"2": {"images": [{"filename": "out_00001_.png", "subfolder": "", "type": "output"}]}}
            return self._json(200, {pid: {"status": {"status_str": "success", "completed": True}, "outputs": outputs}})
        if self.path.startswith("/view?"):
            body = b"PNGDATA"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self._json(404, {})


@pytest.fixture()
def server():
    FakeComfy.uploads, FakeComfy.prompts = {}, {}
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeComfy)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


GRAPH = {"1": {"class_type": "SAMBody4D_LoadVideo", "inputs": {"file": "x.mp4", "frame_load_cap": 0},
               "_meta": {"title": "Load Video (Body4D)"}},
         "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}


def test_upload_queue_wait_download(server, tmp_path):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\x00video")
    client = ComfyClient(server, timeout=5)
    graph = json.loads(json.dumps(GRAPH))
    assert set_video(graph, client.upload(video)) == 1
    set_input(graph, "SAMBody4D_LoadVideo.frame_load_cap", parse_value("12"))
    res = client.run_workflow(graph, tmp_path / "out", timeout=10)
    assert FakeComfy.uploads["clip.mp4"] == b"\x00video"
    assert FakeComfy.prompts[res.prompt_id]["1"]["inputs"] == {"file": "clip.mp4", "frame_load_cap": 12}
    assert [f.name for f in res.files] == ["out_00001_.png"] and res.files[0].read_bytes() == b"PNGDATA"


def test_run_failure_reports_node_and_message(server):
    graph = json.loads(json.dumps(GRAPH))
    set_input(graph, "1.frame_load_cap", -1)
    with pytest.raises(ApiError, match=r"failed in node 1 \(SAMBody4D_LoadVideo\): the selection keeps no frame"):
        ComfyClient(server, timeout=5).run_workflow(graph, timeout=10)


def test_rejected_workflow_shows_node_errors(server):
    with pytest.raises(ApiError, match="node missing"):
        ComfyClient(server, timeout=5).queue({"9": {"class_type": "Unknown", "inputs": {}}})


def test_unreachable_server():
    with pytest.raises(ApiError, match="cannot reach ComfyUI"):
        ComfyClient("http://127.0.0.1:9", timeout=2).object_info()


def test_graph_helpers(tmp_path):
    graph = json.loads(json.dumps(GRAPH))
    set_input(graph, "Load Video (Body4D).max_side", 512)
    assert graph["1"]["inputs"]["max_side"] == 512
    with pytest.raises(ApiError, match="no node 'Nope'"):
        set_input(graph, "Nope.x", 1)
    with pytest.raises(ApiError, match="NODE.INPUT"):
        set_input(graph, "frame_load_cap", 1)
    with pytest.raises(ApiError, match="no SAMBody4D_LoadVideo"):
        set_video({"2": {"class_type": "PreviewImage", "inputs": {}}}, "a.mp4")
    ui = tmp_path / "ui.json"
    ui.write_text(json.dumps({"nodes": [], "links": []}))
    with pytest.raises(ApiError, match="UI-format"):
        load_api_graph(ui)
    assert parse_value("true") is True and parse_value("abc") == "abc" and parse_value("[1, 2]") == [1, 2]
