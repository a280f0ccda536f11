"""The API client against faults: bad workflow files, odd or failing servers, partial acceptance,
outputs sharing a name, runs that end before the websocket connects, text inputs given JSON.

A fake ComfyUI on 127.0.0.1 (HTTP plus a minimal websocket on /ws) plays each situation.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from body4d_core.interop import api_client
from body4d_core.interop.api_client import ApiError, ComfyClient, apply_override, load_api_graph, parse_value, set_input
from body4d_core.cli import main as cli_main

POINTS = '{"version": 1, "image_size": [350, 350], "objects": [{"id": 1, "points": [{"frame": 0, "x": 172, ' \
         '"y": 118, "label": 1}]}]}'
GRAPH = {
    "1": {"class_type": "SAMBody4D_LoadVideo", "inputs": {"file": "x.mp4", "frame_load_cap": 0}},
    "2": {"class_type": "SAMBody4D_SAM3Points", "inputs": {"frames": ["1", 0], "prompts": "{}"}},
    "3": {"class_type": "SAMBody4D_SaveGLB", "inputs": {"bodies": ["2", 0], "filename_prefix": "body4d/glb"}},
}
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Fake(BaseHTTPRequestHandler):
    """A ComfyUI stand-in whose behaviour each test sets through ``Fake.state``."""

    state: dict = {}

    def log_message(self, *args):
        pass

    def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, code: int, payload) -> None:
        self._send(code, json.dumps(payload).encode())

    def _special(self, route: str) -> bool:
        """Answer a route the test made odd (html, hang, drop, raw); True if answered."""
        how = self.state.get("odd", {}).get(route)
        if how is None:
            return False
        if how == "drop":  # close without any answer
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
        elif how == "hang":
            time.sleep(3)
            self._json(200, {})
        elif how == "html":
            self._send(200, b"<!DOCTYPE html><html><body>Welcome to nginx!</body></html>", "text/html")
        elif how == "html502":
            self._send(502, b"<html><head><title>502 Bad Gateway</title></head></html>", "text/html")
        else:
            self._send(200, how.encode())
        return True

    def do_POST(self):
        if self.path == "/prompt":
            if self._special("prompt"):
                return
            graph = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["prompt"]
            bad = {nid: {"errors": [{"message": "Required input is missing", "details": "images"}],
                         "dependent_outputs": [nid], "class_type": n["class_type"]}
                   for nid, n in graph.items() if n["class_type"] == "BrokenSave"}
            if bad and len(bad) == sum(n["class_type"].endswith("Save") or "Save" in n["class_type"]
                                       for n in graph.values()):
                return self._json(400, {"error": {"message": "Prompt outputs failed validation", "details": ""},
                                        "node_errors": bad})
            pid = f"p{len(self.state['prompts'])}"
            self.state["prompts"][pid] = {"graph": graph, "at": time.monotonic(), "history_calls": 0}
            return self._json(200, {"prompt_id": pid, "number": 0, "node_errors": bad})
        self._json(404, {})

    def do_GET(self):
        url = urlparse(self.path)
        if url.path == "/ws":
            return self._websocket()
        if url.path.startswith("/history/"):
            if self._special("history"):
                return
            pid = url.path.split("/")[-1]
            run = self.state["prompts"][pid]
            run["history_calls"] += 1
            if time.monotonic() - run["at"] < self.state.get("run_s", 0.0) or self.state.get("never_ends"):
                return self._json(200, {})
            return self._json(200, {pid: self.state.get("entry", lambda r: _success(r))(run)})
        if url.path == "/view":
            if self._special("view"):
                return
            q = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
            self.state["views"].append(q)
            return self._send(200, f"{q['type']}|{q['subfolder']}|{q['filename']}".encode(), "image/png")
        if url.path == "/object_info":
            if self._special("object_info"):
                return
            return self._json(200, {})
        self._json(404, {})

    def _websocket(self) -> None:
        """Accept the upgrade, send a status frame and a progress frame, then stay silent (like a server
        whose run ended before the socket connected)."""
        if not self.state.get("websocket"):
            return self._json(404, {})
        key = self.headers["Sec-WebSocket-Key"]
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        last = f"p{len(self.state['prompts']) - 1}"
        for event in ({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}}},
                      {"type": "progress", "data": {"prompt_id": last, "node": "3", "value": 1, "max": 2}}):
            payload = json.dumps(event).encode()
            self.wfile.write(bytes([0x81, len(payload)]) + payload if len(payload) < 126 else
                             bytes([0x81, 126]) + len(payload).to_bytes(2, "big") + payload)
        self.wfile.flush()
        self.connection.settimeout(10)
        try:
            self.connection.recv(1024)  # the client's close frame (it sends nothing else): hang up
        except OSError:
            pass
        self.close_connection = True


def _success(run: dict) -> dict:
    """History of a run: every good SaveGLB wrote body4d_person_1.glb into its own numbered folder."""
    outputs = {}
    for k, (nid, node) in enumerate(sorted(run["graph"].items())):
        if node["class_type"] == "SAMBody4D_SaveGLB":
            outputs[nid] = {"3d": [{"filename": "body4d_person_1.glb", "subfolder": f"body4d/glb_{k:05d}",
                                    "type": "output"}]}
    return {"status": {"status_str": "success", "completed": True, "messages": []}, "outputs": outputs}


@pytest.fixture()
def server():
    Fake.state = {"prompts": {}, "views": [], "odd": {}}
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Fake)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _graph() -> dict:
    return json.loads(json.dumps(GRAPH))


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text and "Traceback" not in text
    return text


# --------------------------------------------------------------------------- workflow files


@pytest.mark.parametrize("content, message", [
    ("{not json", r"is not JSON \(Expecting property name enclosed in double quotes at line 1\)"),
    ("<!DOCTYPE html><html></html>", r"is not JSON"),
    ("[1, 2, 3]", r"is not an API-format workflow .*found list"),
    ("{}", r"is not an API-format workflow .*found an object without node entries"),
    ('{"1": {"inputs": {}}}', r"is not an API-format workflow"),
    ('{"nodes": [], "links": []}', r"is a UI-format workflow; use its API twin"),
    ("", r"is not JSON"),
])
def test_bad_workflow_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "wf.json"
    path.write_text(content)
    with pytest.raises(ApiError, match=message) as err:
        load_api_graph(path)
    assert str(path) in _one_line(err)


def test_missing_or_binary_workflow(tmp_path: Path) -> None:
    with pytest.raises(ApiError, match="workflow file not found"):
        load_api_graph(tmp_path / "nope.json")
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ApiError, match="cannot read the workflow"):
        load_api_graph(tmp_path / "bin.json")


def test_cli_reports_a_bad_workflow_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "wf.json").write_text("[]")
    rc = cli_main(["api", "--server", "http://127.0.0.1:9", "--workflow", str(tmp_path / "wf.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and "not an API-format workflow" in err[0]


# --------------------------------------------------------------------------- odd servers


@pytest.mark.parametrize("route, how, message", [
    ("prompt", "html", r"answered /prompt with something that is not JSON \('<!DOCTYPE html>.*'\); "
                       r"is it a ComfyUI server\?"),
    ("prompt", "[1, 2]", r"answered /prompt unexpectedly"),
    ("prompt", '{"error": "no"}', r"answered /prompt unexpectedly"),
    ("prompt", "drop", r"connection to ComfyUI at .* failed during /prompt"),
    ("history", "html502", r"answered /history/p0 with HTTP 502: '<html><head><title>502 Bad Gateway"),
    ("history", "[]", r"answered /history/p0 unexpectedly"),
    ("view", "drop", r"failed during /view"),
])
def test_server_faults_are_one_sentence(server: str, tmp_path: Path, route: str, how: str, message: str) -> None:
    Fake.state["odd"][route] = how
    with pytest.raises(ApiError, match=message) as err:
        ComfyClient(server, timeout=5).run_workflow(_graph(), tmp_path / "out", timeout=10)
    _one_line(err)
    assert not list(tmp_path.rglob("*.glb"))


def test_server_too_slow_and_unreachable(server: str) -> None:
    Fake.state["odd"]["object_info"] = "hang"
    with pytest.raises(ApiError, match=r"failed during /object_info: .*timed out") as err:
        ComfyClient(server, timeout=0.5).object_info()
    _one_line(err)
    with pytest.raises(ApiError, match="cannot reach ComfyUI at http://127.0.0.1:9"):
        ComfyClient("http://127.0.0.1:9", timeout=2).run_workflow(_graph())


def test_a_run_that_never_ends_times_out_with_advice(server: str) -> None:
    Fake.state["never_ends"] = True
    start = time.monotonic()
    with pytest.raises(ApiError, match=r"did not finish within 1 s .*raise --timeout"):
        ComfyClient(server, timeout=5).run_workflow(_graph(), timeout=1.0)
    assert time.monotonic() - start < 4


def test_interrupted_run(server: str) -> None:
    Fake.state["entry"] = lambda run: {"status": {"status_str": "error", "completed": False, "messages": [
        ["execution_start", {"prompt_id": "p0"}],
        ["execution_interrupted", {"prompt_id": "p0", "node_id": "2", "node_type": "SAMBody4D_SAM3Points"}]]},
        "outputs": {}}
    with pytest.raises(ApiError, match=r"run p0 failed: interrupted at node 2 \(SAMBody4D_SAM3Points\)"):
        ComfyClient(server, timeout=5).run_workflow(_graph(), timeout=10)


# --------------------------------------------------------------------------- runs and downloads


def test_run_ending_before_the_websocket_connects_is_seen_from_history(server: str, tmp_path: Path) -> None:
    """The finding: the websocket connects after a fast (or cached) run ended and hears no end event;
    the client waited its whole timeout. /history is asked while waiting."""
    Fake.state["websocket"] = True
    start = time.monotonic()
    res = ComfyClient(server, timeout=5).run_workflow(_graph(), tmp_path / "out", timeout=60)
    assert time.monotonic() - start < 5
    assert [p.name for p in res.files] == ["body4d_person_1.glb"]


def test_progress_over_the_websocket_and_end_from_history(server: str) -> None:
    Fake.state.update(websocket=True, run_s=1.0)
    seen = []
    start = time.monotonic()
    ComfyClient(server, timeout=5).run_workflow(_graph(), timeout=60, on_progress=lambda *a: seen.append(a))
    assert 1.0 <= time.monotonic() - start < 5
    assert seen == [("3", 1, 2)]
    assert Fake.state["prompts"]["p0"]["history_calls"] >= 2  # asked while running, then done


def test_outputs_with_one_name_in_two_subfolders_are_both_kept(server: str, tmp_path: Path) -> None:
    graph = _graph()
    graph["4"] = {"class_type": "SAMBody4D_SaveGLB", "inputs": {"bodies": ["2", 0], "filename_prefix": "body4d/glb"}}
    res = ComfyClient(server, timeout=5).run_workflow(graph, tmp_path / "out", timeout=10)
    rel = sorted(p.relative_to(tmp_path / "out").as_posix() for p in res.files)
    assert rel == ["body4d/glb_00002/body4d_person_1.glb", "body4d/glb_00003/body4d_person_1.glb"]
    assert {p.read_bytes() for p in res.files} == {b"output|body4d/glb_00002|body4d_person_1.glb",
                                                   b"output|body4d/glb_00003|body4d_person_1.glb"}


def test_download_paths_types_duplicates_and_escapes(server: str, tmp_path: Path) -> None:
    entry = {"outputs": {
        "5": {"images": [{"filename": "a.png", "subfolder": "", "type": "temp"},
                         {"filename": "a.png", "subfolder": "", "type": "output"},
                         {"filename": "a.png", "subfolder": "", "type": "output"}],  # listed twice
              "text": ["not a file"], "animated": [True]},
        "6": {"3d": [{"filename": "m.glb", "subfolder": "../../../etc", "type": "output"}]},
    }}
    files = ComfyClient(server, timeout=5).download(entry, tmp_path / "out")
    rel = [p.relative_to(tmp_path / "out").as_posix() for p in files]
    assert rel == ["temp/a.png", "a.png", "etc/m.glb"]  # nothing outside the download folder
    assert (tmp_path / "out" / "temp" / "a.png").read_bytes() == b"temp||a.png"
    assert len(Fake.state["views"]) == 3
    assert not [p for p in (tmp_path / "out").rglob("*") if "body4d-tmp" in p.name]


def test_partly_accepted_workflow_runs_and_downloads_what_ran(server: str, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """The finding: HTTP 200 with node_errors was reported as rejected (exit 2) and nothing downloaded."""
    graph = _graph()
    graph["9"] = {"class_type": "BrokenSave", "inputs": {}}
    with caplog.at_level(logging.WARNING, logger=api_client.__name__):
        res = ComfyClient(server, timeout=5).run_workflow(graph, tmp_path / "out", timeout=10)
    assert res.partial and list(res.node_errors) == ["9"]
    assert [p.name for p in res.files] == ["body4d_person_1.glb"] and res.files[0].is_file()
    assert "accepted the workflow only in part; refused: node 9 (BrokenSave): Required input is missing images" \
        in caplog.text


def test_fully_rejected_workflow_lists_the_nodes(server: str) -> None:
    graph = {"9": {"class_type": "BrokenSave", "inputs": {}}}
    with pytest.raises(ApiError, match=r"HTTP 400: Prompt outputs failed validation: node 9 \(BrokenSave\): "
                                       r"Required input is missing images") as err:
        ComfyClient(server, timeout=5).run_workflow(graph)
    _one_line(err)


# --------------------------------------------------------------------------- overrides


def test_json_for_a_text_input_stays_text(server: str) -> None:
    """The finding: --set Node.prompts='{...}' reached the node as a Python dict repr."""
    graph = _graph()
    apply_override(graph, f"SAMBody4D_SAM3Points.prompts={POINTS}")
    assert graph["2"]["inputs"]["prompts"] == POINTS  # the original text, untouched
    other = _graph()
    set_input(other, "SAMBody4D_SAM3Points.prompts", parse_value(POINTS))  # the older call path
    assert isinstance(other["2"]["inputs"]["prompts"], str)
    assert json.loads(other["2"]["inputs"]["prompts"]) == json.loads(POINTS)
    apply_override(graph, "SAMBody4D_LoadVideo.frame_load_cap=12")
    apply_override(graph, "3.filename_prefix=2024")
    apply_override(graph, "SAMBody4D_LoadVideo.force_rate=[1, 2]")  # a new, non-text input: parsed JSON
    assert graph["1"]["inputs"]["frame_load_cap"] == 12 and graph["3"]["inputs"]["filename_prefix"] == "2024"
    assert graph["1"]["inputs"]["force_rate"] == [1, 2]
    res = ComfyClient(server, timeout=5).run_workflow(graph, timeout=10)
    assert Fake.state["prompts"][res.prompt_id]["graph"]["2"]["inputs"]["prompts"] == POINTS
    with pytest.raises(ApiError, match="NODE.INPUT=VALUE"):
        apply_override(graph, "SAMBody4D_LoadVideo.frame_load_cap")


def test_download_folder_blocked_is_one_sentence(server: str, tmp_path: Path) -> None:
    from body4d_core.atomic import OutputWriteError

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "body4d").write_text("a file where a folder goes")
    with pytest.raises(OutputWriteError, match=r"cannot create the download folder .*glb_00002") as err:
        ComfyClient(server, timeout=5).run_workflow(_graph(), tmp_path / "out", timeout=10)
    _one_line(err)
