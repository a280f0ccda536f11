"""A small client for a running ComfyUI server: upload, queue a workflow, follow, download.

Uses only the standard library plus ``websocket-client`` (for live progress; polling
``/history`` is the fallback). Equivalent curl calls are in the README.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import Body4DError

log = logging.getLogger(__name__)
LOAD_VIDEO = "SAMBody4D_LoadVideo"


class ApiError(Body4DError):
    """The server refused a request or a run failed; the message carries the server's words."""


@dataclass
class RunResult:
    prompt_id: str
    outputs: dict  # node id -> UI output dict from /history
    files: list[Path]


class ComfyClient:
    """Talks to one ComfyUI server (``http://host:port``)."""

    def __init__(self, server: str = "http://127.0.0.1:8188", timeout: float = 30.0) -> None:
        self.server = server.rstrip("/")
        self.timeout = timeout
        self.client_id = uuid.uuid4().hex

    # ------------------------------------------------------------------ http

    def _request(self, path: str, data: bytes | None = None, headers: dict | None = None) -> bytes:
        req = urllib.request.Request(self.server + path, data=data, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.read()
        except urllib.error.HTTPError as err:
            body = err.read().decode("utf-8", "replace")
            raise ApiError(f"{path}: HTTP {err.code}: {_server_message(body)}") from err
        except urllib.error.URLError as err:
            raise ApiError(f"cannot reach ComfyUI at {self.server}: {err.reason}") from err

    def get_json(self, path: str) -> Any:
        return json.loads(self._request(path))

    def post_json(self, path: str, payload: dict) -> Any:
        body = self._request(path, json.dumps(payload).encode(), {"Content-Type": "application/json"})
        return json.loads(body) if body else {}

    # ------------------------------------------------------------------ api

    def object_info(self) -> dict:
        return self.get_json("/object_info")

    def upload(self, path: str | Path, subfolder: str = "", overwrite: bool = True) -> str:
        """Upload a file (video or image) into the server's input folder; returns its widget value."""
        path = Path(path)
        if not path.is_file():
            raise ApiError(f"file to upload not found: {path}")
        boundary = uuid.uuid4().hex
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        parts = [
            _form_field(boundary, "type", "input"),
            _form_field(boundary, "subfolder", subfolder),
            _form_field(boundary, "overwrite", "true" if overwrite else "false"),
            (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{path.name}\"\r\n"
             f"Content-Type: {ctype}\r\n\r\n").encode() + path.read_bytes() + b"\r\n",
            f"--{boundary}--\r\n".encode(),
        ]
        res = json.loads(self._request("/upload/image", b"".join(parts),
                                       {"Content-Type": f"multipart/form-data; boundary={boundary}"}))
        name = res["name"]
        return f"{res['subfolder']}/{name}" if res.get("subfolder") else name

    def queue(self, graph: dict) -> str:
        """Queue an API-format graph; returns the prompt id (raises with the node errors)."""
        res = self.post_json("/prompt", {"prompt": graph, "client_id": self.client_id})
        if res.get("node_errors"):
            raise ApiError(f"the server rejected the workflow: {json.dumps(res['node_errors'])[:2000]}")
        return res["prompt_id"]

    def history(self, prompt_id: str) -> dict | None:
        return self.get_json(f"/history/{prompt_id}").get(prompt_id)

    def wait(self, prompt_id: str, timeout: float = 3600.0,
             on_progress: Callable[[str, int, int], None] | None = None) -> dict:
        """Follow a run to its end (websocket if available, else polling); returns its history entry."""
        try:
            self._follow_ws(prompt_id, timeout, on_progress)
        except ApiError:
            raise
        except Exception as err:  # noqa: BLE001 - no websocket: fall back to polling
            log.info("websocket unavailable (%s); polling /history", err)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.history(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None and (
                    entry["status"].get("completed") or entry["status"].get("status_str") == "error"):
                return _check_status(prompt_id, entry)
            time.sleep(0.25)
        raise ApiError(f"run {prompt_id} did not finish within {timeout:.0f} s")

    def _follow_ws(self, prompt_id: str, timeout: float, on_progress) -> None:
        import websocket

        url = self.server.replace("http", "ws", 1) + f"/ws?clientId={self.client_id}"
        ws = websocket.create_connection(url, timeout=timeout)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                msg = ws.recv()
                if not isinstance(msg, str):
                    continue  # binary previews
                event = json.loads(msg)
                kind, data = event.get("type"), event.get("data", {})
                if data.get("prompt_id") not in (None, prompt_id):
                    continue
                if kind == "progress" and on_progress:
                    on_progress(str(data.get("node")), int(data.get("value", 0)), int(data.get("max", 1)))
                elif kind == "execution_error":
                    raise ApiError(f"run {prompt_id} failed in node {data.get('node_id')} "
                                   f"({data.get('node_type')}): {data.get('exception_message', '').strip()}")
                elif kind in ("execution_success", "execution_interrupted"):
                    return
                elif kind == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                    return
        finally:
            ws.close()

    def download(self, entry: dict, out_dir: str | Path) -> list[Path]:
        """Download every file a run's outputs list (images, videos, 3D files) into out_dir."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        files = []
        for node_out in entry.get("outputs", {}).values():
            for items in node_out.values():
                if not isinstance(items, list):
                    continue
                for item in items:
                    if isinstance(item, dict) and "filename" in item:
                        q = urllib.parse.urlencode({"filename": item["filename"],
                                                    "subfolder": item.get("subfolder", ""),
                                                    "type": item.get("type", "output")})
                        dest = out / Path(item["filename"]).name
                        dest.write_bytes(self._request(f"/view?{q}"))
                        files.append(dest)
        return files

    def run_workflow(self, graph: dict, out_dir: str | Path | None = None, timeout: float = 3600.0,
                     on_progress: Callable[[str, int, int], None] | None = None) -> RunResult:
        """Queue, follow and (optionally) download one run."""
        prompt_id = self.queue(graph)
        entry = self.wait(prompt_id, timeout, on_progress)
        files = self.download(entry, out_dir) if out_dir else []
        return RunResult(prompt_id, entry.get("outputs", {}), files)


# ---------------------------------------------------------------------- graphs


def load_api_graph(path: str | Path) -> dict:
    """Read an API-format workflow (``{"id": {"class_type", "inputs"}}``); refuses UI format."""
    graph = json.loads(Path(path).read_text())
    if "nodes" in graph and "links" in graph:
        raise ApiError(f"{path} is a UI-format workflow; use its API twin in workflows/api/")
    if not all(isinstance(n, dict) and "class_type" in n for n in graph.values()):
        raise ApiError(f"{path} is not an API-format workflow")
    return graph


def set_input(graph: dict, target: str, value: Any) -> None:
    """Set ``<node id or title or class_type>.<input>`` to a literal value."""
    key, _, name = target.rpartition(".")
    if not key or not name:
        raise ApiError(f"override {target!r} must look like NODE.INPUT (node id, title or class type)")
    hits = [nid for nid, node in graph.items()
            if key in (nid, node.get("class_type"), node.get("_meta", {}).get("title"))]
    if not hits:
        raise ApiError(f"no node {key!r} in the workflow (ids: {', '.join(graph)})")
    for nid in hits:
        graph[nid]["inputs"][name] = value


def parse_value(text: str) -> Any:
    """Command-line override values: JSON when it parses (numbers, booleans, lists), else a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def set_video(graph: dict, name: str) -> int:
    """Point every Load Video node of the graph at an uploaded file; returns how many."""
    n = 0
    for node in graph.values():
        if node.get("class_type") == LOAD_VIDEO:
            node["inputs"]["file"] = name
            n += 1
    if not n:
        raise ApiError(f"the workflow has no {LOAD_VIDEO} node to take the video")
    return n


def _form_field(boundary: str, name: str, value: str) -> bytes:
    return f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n".encode()


def _server_message(body: str) -> str:
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        return body[:500]
    err = data.get("error", data)
    if isinstance(err, dict):
        msg = err.get("message", "")
        details = err.get("details", "")
        nodes = data.get("node_errors")
        return f"{msg} {details} {json.dumps(nodes)[:1500] if nodes else ''}".strip()
    return str(err)[:500]


def _check_status(prompt_id: str, entry: dict) -> dict:
    status = entry.get("status", {})
    if status.get("status_str") == "error":
        detail = ""
        for kind, data in status.get("messages", []):
            if kind == "execution_error":
                detail = f" in node {data.get('node_id')} ({data.get('node_type')}): {data.get('exception_message', '').strip()}"
        raise ApiError(f"run {prompt_id} failed{detail}")
    return entry
