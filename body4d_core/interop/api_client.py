"""A small client for a running ComfyUI server: upload, queue a workflow, follow, download.

Uses only the standard library plus ``websocket-client`` (for live progress; the end of a run is
read from ``/history``, asked while waiting, so a run that ends before the websocket connects is
still seen at once). Outputs download into their server sub-folders. Every network, server or
workflow-file problem is one ``ApiError`` sentence. Equivalent curl calls are in the README.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import mimetypes
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..atomic import OutputWriteError, write_bytes_atomic
from ..errors import Body4DError

log = logging.getLogger(__name__)
LOAD_VIDEO = "SAMBody4D_LoadVideo"


class ApiError(Body4DError):
    """The server refused a request or a run failed; the message carries the server's words."""


POLL_S = 0.5  # how often /history is asked while waiting (the websocket may miss a fast run)


@dataclass
class RunResult:
    prompt_id: str
    outputs: dict  # node id -> UI output dict from /history
    files: list[Path]
    node_errors: dict = field(default_factory=dict)  # nodes the server refused (the rest ran)

    @property
    def partial(self) -> bool:
        """True when the server ran only part of the workflow (some outputs were refused)."""
        return bool(self.node_errors)


class ComfyClient:
    """Talks to one ComfyUI server (``http://host:port``)."""

    def __init__(self, server: str = "http://127.0.0.1:8188", timeout: float = 30.0) -> None:
        self.server = server.rstrip("/")
        self.timeout = timeout
        self.client_id = uuid.uuid4().hex

    # ------------------------------------------------------------------ http

    def _request(self, path: str, data: bytes | None = None, headers: dict | None = None) -> bytes:
        """One HTTP request; every network or server failure is one ApiError sentence."""
        req = urllib.request.Request(self.server + path, data=data, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.read()
        except urllib.error.HTTPError as err:
            body = err.read().decode("utf-8", "replace")
            raise ApiError(f"ComfyUI at {self.server} answered {_short(path)} with HTTP {err.code}: "
                           f"{_server_message(body)}") from err
        except urllib.error.URLError as err:
            raise ApiError(f"cannot reach ComfyUI at {self.server}: {err.reason}") from err
        except (OSError, http.client.HTTPException) as err:  # timeouts, resets, truncated answers
            raise ApiError(f"the connection to ComfyUI at {self.server} failed during {_short(path)}: "
                           f"{str(err) or type(err).__name__}") from err

    def _json(self, path: str, body: bytes) -> Any:
        try:
            return json.loads(body) if body.strip() else {}
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ApiError(f"{self.server} answered {_short(path)} with something that is not JSON "
                           f"({_snippet(body)}); is it a ComfyUI server?") from err

    def get_json(self, path: str) -> Any:
        return self._json(path, self._request(path))

    def post_json(self, path: str, payload: dict) -> Any:
        body = self._request(path, json.dumps(payload).encode(), {"Content-Type": "application/json"})
        return self._json(path, body)

    def _dict(self, path: str, data: Any, *keys: str) -> dict:
        """``data`` as a dict holding ``keys``, else one ApiError."""
        if not isinstance(data, dict) or any(k not in data for k in keys):
            found = _snippet(json.dumps(data).encode())
            raise ApiError(f"{self.server} answered {_short(path)} unexpectedly ({found}); is it a ComfyUI server?")
        return data

    # ------------------------------------------------------------------ api

    def object_info(self) -> dict:
        return self._dict("/object_info", self.get_json("/object_info"))

    def upload(self, path: str | Path, subfolder: str = "", overwrite: bool = True) -> str:
        """Upload a file (video or image) into the server's input folder; returns its widget value."""
        path = Path(path)
        if not path.is_file():
            raise ApiError(f"file to upload not found: {path}")
        try:
            content = path.read_bytes()
        except OSError as err:
            raise ApiError(f"cannot read {path} to upload it: {err.strerror or err}") from err
        boundary = uuid.uuid4().hex
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        parts = [
            _form_field(boundary, "type", "input"),
            _form_field(boundary, "subfolder", subfolder),
            _form_field(boundary, "overwrite", "true" if overwrite else "false"),
            (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{path.name}\"\r\n"
             f"Content-Type: {ctype}\r\n\r\n").encode() + content + b"\r\n",
            f"--{boundary}--\r\n".encode(),
        ]
        body = self._request("/upload/image", b"".join(parts),
                             {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        res = self._dict("/upload/image", self._json("/upload/image", body), "name")
        name = res["name"]
        return f"{res['subfolder']}/{name}" if res.get("subfolder") else name

    def submit(self, graph: dict) -> tuple[str, dict]:
        """Queue an API-format graph; returns (prompt id, node errors of the outputs the server refused).

        ComfyUI queues a graph when at least one output validates and answers HTTP 200 with the
        failing nodes in ``node_errors``: the rest runs. It refuses the whole graph with HTTP 400.
        """
        res = self._dict("/prompt", self.post_json("/prompt", {"prompt": graph, "client_id": self.client_id}),
                         "prompt_id")
        errors = res.get("node_errors") or {}
        if errors:
            log.warning("ComfyUI accepted the workflow only in part; refused: %s", describe_node_errors(errors, graph))
        return str(res["prompt_id"]), errors if isinstance(errors, dict) else {}

    def queue(self, graph: dict) -> str:
        """Queue an API-format graph; returns the prompt id (a part refused is logged, see ``submit``)."""
        return self.submit(graph)[0]

    def history(self, prompt_id: str) -> dict | None:
        """The run's /history entry, or None while it has none (queued or running)."""
        path = f"/history/{urllib.parse.quote(prompt_id)}"
        entry = self._dict(path, self.get_json(path)).get(prompt_id)
        return entry if isinstance(entry, dict) else None

    def wait(self, prompt_id: str, timeout: float = 3600.0,
             on_progress: Callable[[str, int, int], None] | None = None) -> dict:
        """Follow a run to its end; returns its history entry.

        Progress comes over the websocket when it connects; the end is learnt from whichever comes
        first, the websocket or /history (asked every POLL_S): a run that ends before the websocket
        connects (a fast failure, a cached re-run) is seen within POLL_S, not after ``timeout``.
        """
        deadline = time.monotonic() + timeout
        ws = self._connect_ws()
        try:
            while True:
                entry = self.history(prompt_id)
                if _finished(entry):
                    return _check_status(prompt_id, entry)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ApiError(f"run {prompt_id} did not finish within {timeout:.0f} s (it may still be running "
                                   f"on {self.server}; raise --timeout)")
                if ws is None:
                    time.sleep(min(POLL_S, left))
                elif self._ws_events(ws, prompt_id, min(POLL_S, left), on_progress) == "lost":
                    ws = None
        finally:
            if ws is not None:
                with contextlib.suppress(Exception):
                    ws.close(timeout=1.0)

    def _connect_ws(self) -> Any:
        """A websocket for progress events, or None (no websocket-client, or the server has none)."""
        try:
            import websocket

            url = self.server.replace("http", "ws", 1) + f"/ws?clientId={self.client_id}"
            return websocket.create_connection(url, timeout=min(self.timeout, 10.0))
        except Exception as err:  # noqa: BLE001 - progress is optional: /history is asked either way
            log.info("websocket unavailable (%s); following the run through /history", err)
            return None

    def _ws_events(self, ws: Any, prompt_id: str, seconds: float, on_progress) -> str:
        """Handle websocket events for up to ``seconds``: "end" once the run ended, "lost", or "wait"."""
        import websocket

        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            try:
                ws.settimeout(left)
                msg = ws.recv()
            except websocket.WebSocketTimeoutException:
                return "wait"
            except Exception as err:  # noqa: BLE001 - a dropped socket: /history still tells the end
                log.info("websocket closed (%s); following the run through /history", err)
                return "lost"
            if not isinstance(msg, str):
                continue  # binary previews
            try:
                event = json.loads(msg)
            except json.JSONDecodeError:
                continue
            kind, data = event.get("type"), event.get("data") or {}
            if not isinstance(data, dict) or data.get("prompt_id") not in (None, prompt_id):
                continue
            if kind == "progress" and on_progress:
                on_progress(str(data.get("node")), int(data.get("value", 0)), int(data.get("max", 1)))
            elif kind in ("execution_error", "execution_success", "execution_interrupted") or (
                    kind == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id):
                return "end"  # the history entry follows: the caller reads it
        return "wait"

    def download(self, entry: dict, out_dir: str | Path) -> list[Path]:
        """Download every file a run's outputs list (images, videos, 3D files, meshes) into out_dir.

        A file keeps its server sub-folder (out_dir/<subfolder>/<name>; files of type temp or input go
        under out_dir/<type>/), so two outputs with one name never overwrite each other; each file
        is written atomically. Returns one path per distinct file.
        """
        out = Path(out_dir)
        files: dict[Path, None] = {}
        for item in output_items(entry):
            dest = out / _local_path(item)
            if dest in files:
                continue
            q = urllib.parse.urlencode({"filename": item["filename"], "subfolder": item.get("subfolder", ""),
                                        "type": item.get("type", "output")})
            data = self._request(f"/view?{q}")
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise OutputWriteError(f"cannot create the download folder {dest.parent}: "
                                       f"{err.strerror or err}") from err
            write_bytes_atomic(dest, data)
            files[dest] = None
        return list(files)

    def run_workflow(self, graph: dict, out_dir: str | Path | None = None, timeout: float = 3600.0,
                     on_progress: Callable[[str, int, int], None] | None = None) -> RunResult:
        """Queue, follow and (optionally) download one run (of what the server accepted)."""
        prompt_id, node_errors = self.submit(graph)
        entry = self.wait(prompt_id, timeout, on_progress)
        files = self.download(entry, out_dir) if out_dir else []
        return RunResult(prompt_id, entry.get("outputs", {}), files, node_errors)


def output_items(entry: dict) -> list[dict]:
    """Every file entry ({filename, subfolder, type}) of a history entry's outputs."""
    items = []
    outputs = entry.get("outputs") or {}
    for node_out in (outputs.values() if isinstance(outputs, dict) else []):
        for values in (node_out.values() if isinstance(node_out, dict) else []):
            if isinstance(values, list):
                items += [v for v in values if isinstance(v, dict) and isinstance(v.get("filename"), str)]
    return items


def _local_path(item: dict) -> Path:
    """Where an output file goes under the download folder: [<type>/]<subfolder>/<name>, never outside."""
    kind = str(item.get("type") or "output")
    parts = [] if kind == "output" else [kind]
    parts += str(item.get("subfolder") or "").replace("\\", "/").split("/")
    parts.append(str(item["filename"]).replace("\\", "/"))
    safe = [p for part in parts for p in part.split("/") if p not in ("", ".", "..")]
    if not safe or safe[-1] != Path(str(item["filename"])).name:
        raise ApiError(f"the server listed an output with an unusable name: {item!r}")
    return Path(*safe)


def describe_node_errors(node_errors: dict, graph: dict | None = None) -> str:
    """'node 5 (SAMBody4D_SaveGLB): message; ...' for a /prompt answer's node_errors."""
    parts = []
    for nid, err in node_errors.items():
        err = err if isinstance(err, dict) else {}
        kind = err.get("class_type") or ((graph or {}).get(nid) or {}).get("class_type", "?")
        msgs = [f"{e.get('message', '')} {e.get('details', '')}".strip()
                for e in err.get("errors", []) if isinstance(e, dict)]
        parts.append(f"node {nid} ({kind}): {'; '.join(msgs) or 'invalid'}")
    return "; ".join(parts)


# ---------------------------------------------------------------------- graphs


def load_api_graph(path: str | Path) -> dict:
    """Read an API-format workflow (``{"id": {"class_type", "inputs"}}``); refuses anything else in one sentence."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise ApiError(f"workflow file not found: {path}") from err
    except (OSError, UnicodeDecodeError) as err:
        raise ApiError(f"cannot read the workflow {path}: {getattr(err, 'strerror', None) or err}") from err
    try:
        graph = json.loads(text)
    except json.JSONDecodeError as err:
        raise ApiError(f"{path} is not JSON ({err.msg} at line {err.lineno}); give an API-format workflow "
                       "(workflows/api/*.json or ComfyUI's Export (API))") from err
    if isinstance(graph, dict) and "nodes" in graph and "links" in graph:
        raise ApiError(f"{path} is a UI-format workflow; use its API twin in workflows/api/ "
                       "(or ComfyUI's Export (API))")
    if not isinstance(graph, dict) or not graph or not all(
            isinstance(n, dict) and isinstance(n.get("class_type"), str) and isinstance(n.get("inputs", {}), dict)
            for n in graph.values()):
        found = type(graph).__name__ if not isinstance(graph, dict) else "an object without node entries"
        raise ApiError(f"{path} is not an API-format workflow (a JSON object of nodes with class_type and "
                       f"inputs; found {found})")
    for node in graph.values():
        node.setdefault("inputs", {})
    return graph


def set_input(graph: dict, target: str, value: Any, text: str | None = None) -> None:
    """Set ``<node id or title or class_type>.<input>`` to a literal value.

    A value meant for a text input stays text: where the input currently holds a string (or the
    value is a JSON object, which no ComfyUI input takes literally), the original ``text`` (or the
    value as JSON) is stored, so ``prompts='{...}'`` reaches the node as the JSON it was given.
    """
    key, _, name = target.rpartition(".")
    if not key or not name:
        raise ApiError(f"override {target!r} must look like NODE.INPUT (node id, title or class type)")
    hits = [nid for nid, node in graph.items()
            if key in (nid, node.get("class_type"), node.get("_meta", {}).get("title"))]
    if not hits:
        raise ApiError(f"no node {key!r} in the workflow (ids: {', '.join(graph)})")
    for nid in hits:
        inputs = graph[nid]["inputs"]
        keep_text = not isinstance(value, str) and (isinstance(inputs.get(name), str) or isinstance(value, dict))
        inputs[name] = (text if text is not None else json.dumps(value)) if keep_text else value


def parse_value(text: str) -> Any:
    """Command-line override values: JSON when it parses (numbers, booleans, lists), else a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_override(graph: dict, item: str) -> None:
    """Apply one ``NODE.INPUT=VALUE`` command-line override (the value parsed, text inputs kept as text)."""
    target, sep, value = item.partition("=")
    if not sep:
        raise ApiError(f"override {item!r} must look like NODE.INPUT=VALUE")
    set_input(graph, target.strip(), parse_value(value), text=value)


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
    """The server's words from an error answer (JSON error, node errors, or the start of a page)."""
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        return _snippet(body.encode())
    if not isinstance(data, dict):
        return _snippet(body.encode())
    err = data.get("error", data)
    nodes = data.get("node_errors")
    if isinstance(err, dict):
        text = f"{err.get('message', '')} {err.get('details', '')}".strip()
        if isinstance(nodes, dict) and nodes:
            text = f"{text}: {describe_node_errors(nodes)}"[:2000]
        return text or _snippet(body.encode())
    return str(err)[:500]


def _finished(entry: dict | None) -> bool:
    """Whether a /history entry describes a run that has ended (success, error or interrupt)."""
    status = (entry or {}).get("status") or {}
    return bool(entry) and (bool(status.get("completed")) or status.get("status_str") == "error"
                            or (not status and bool(entry.get("outputs"))))


def _check_status(prompt_id: str, entry: dict) -> dict:
    """The entry of a successful run; a failed or interrupted one is one ApiError naming the node."""
    status = entry.get("status") or {}
    if status.get("status_str") == "error":
        detail = ""
        for message in status.get("messages") or []:
            if not (isinstance(message, (list, tuple)) and len(message) == 2 and isinstance(message[1], dict)):
                continue
            kind, data = message
            if kind == "execution_error":
                detail = (f" in node {data.get('node_id')} ({data.get('node_type')}): "
                          f"{str(data.get('exception_message', '')).strip()}")
            elif kind == "execution_interrupted" and not detail:
                detail = f": interrupted at node {data.get('node_id')} ({data.get('node_type')})"
        raise ApiError(f"run {prompt_id} failed{detail}")
    return entry


def _short(path: str) -> str:
    """A request path without its query (for messages)."""
    return path.split("?", 1)[0]


def _snippet(body: bytes) -> str:
    """The start of an unexpected answer, on one line."""
    text = body.decode("utf-8", "replace").strip()
    text = " ".join(text.split())
    return repr(text[:80] + ("..." if len(text) > 80 else "")) if text else "an empty answer"
