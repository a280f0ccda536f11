"""A real ComfyUI server for tests: started on 127.0.0.1 with --cpu, our pack linked in, torn down after.

Usage (the ``comfy_server`` fixture in conftest.py does this)::

    with ComfyServer(os.environ["COMFYUI_DIR"]) as srv:
        info = srv.object_info()
        pid = srv.queue_prompt(api_graph)
        entry = srv.wait(pid, timeout=120)

Isolation: everything the server writes goes to one temporary folder given through
``--base-directory`` (its ``custom_nodes``, ``models``, ``user``) plus explicit
``--input-directory/--output-directory/--temp-directory``, and the database is in memory,
so the ComfyUI checkout is never modified. The pack is linked into that temporary
``custom_nodes`` folder; other packs in the checkout's own ``custom_nodes`` are not loaded.
Only the standard library is used (HTTP polling of ``/history``, no websocket).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
PACK_NAME = "ComfyUI-SAM-Body4D"


class ComfyServerError(RuntimeError):
    """The server did not start, refused a prompt, or a prompt failed; carries the details."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def default_python(comfy_dir: Path) -> str:
    """$COMFYUI_PYTHON, else the checkout's .venv python, else the interpreter running the tests."""
    env = os.environ.get("COMFYUI_PYTHON", "").strip()
    if env:
        return env
    for venv in (comfy_dir / ".venv" / "bin" / "python", comfy_dir / ".venv" / "Scripts" / "python.exe"):
        if venv.exists():
            return str(venv)
    return sys.executable


class ComfyServer:
    """One ComfyUI process with a private base directory; a context manager."""

    def __init__(self, comfy_dir: str | os.PathLike, python: str | None = None, pack_dir: Path = REPO,
                 extra_args: tuple[str, ...] = (), keep_dir: bool = False) -> None:
        self.comfy_dir = Path(comfy_dir).resolve()
        if not (self.comfy_dir / "main.py").is_file():
            raise ComfyServerError(f"COMFYUI_DIR={self.comfy_dir} holds no main.py (not a ComfyUI checkout)")
        self.python = python or default_python(self.comfy_dir)
        self.pack_dir = Path(pack_dir).resolve()
        self.extra_args = tuple(extra_args)
        self.keep_dir = keep_dir
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.root = Path()
        self._object_info: dict | None = None

    # --- lifecycle --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def input_dir(self) -> Path:
        return self.root / "input"

    @property
    def output_dir(self) -> Path:
        return self.root / "output"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    def command(self) -> list[str]:
        """The command line that starts the server."""
        return [self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
                "--base-directory", str(self.root), "--input-directory", str(self.input_dir),
                "--output-directory", str(self.output_dir), "--temp-directory", str(self.root / "temp"),
                "--database-url", "sqlite:///:memory:", "--disable-api-nodes", "--dont-print-server",
                *self.extra_args]

    def start(self, timeout: float = 300.0) -> ComfyServer:
        """Create the private folders, link the pack, start ComfyUI and wait until it answers."""
        self.root = Path(tempfile.mkdtemp(prefix="body4d-comfy-"))
        for sub in ("custom_nodes", "input", "output", "temp", "user", "models"):
            (self.root / sub).mkdir()
        (self.root / "custom_nodes" / PACK_NAME).symlink_to(self.pack_dir, target_is_directory=True)
        self.port = free_port()
        env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
        with open(self.log_path, "wb") as logf:
            self.proc = subprocess.Popen(self.command(), cwd=self.comfy_dir, stdout=logf, stderr=subprocess.STDOUT,
                                         env=env, start_new_session=True)
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ComfyServerError(f"ComfyUI exited with code {self.proc.returncode} while starting:\n"
                                       f"{self.log_tail()}")
            try:
                self.get_json("/system_stats", timeout=5)
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                time.sleep(0.5)
        self.stop()
        raise ComfyServerError(f"ComfyUI did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its temporary folder."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
        self.proc = None
        if self.root.name.startswith("body4d-comfy-") and not self.keep_dir:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> ComfyServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # --- logs -------------------------------------------------------------------------------

    def log_text(self) -> str:
        """Everything the server printed so far (stdout and stderr)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def import_line(self, pack: str = PACK_NAME) -> str | None:
        """The 'Import times for custom nodes' line of a pack, e.g. '0.1 seconds: .../pack'."""
        for line in self.log_text().splitlines():
            if "seconds" in line and line.rstrip().endswith(os.sep + pack):
                return line
        return None

    # --- HTTP -------------------------------------------------------------------------------

    def get_json(self, path: str, timeout: float = 60.0) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as resp:
            return json.loads(resp.read())

    def post_json(self, path: str, body: Any, timeout: float = 60.0) -> tuple[int, Any]:
        """POST a JSON body; returns (status, decoded JSON) for 2xx and 4xx answers alike."""
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return e.code, json.loads(raw)
            except ValueError:
                return e.code, raw.decode(errors="replace")

    def object_info(self, refresh: bool = False) -> dict:
        """GET /object_info (kept for this server's lifetime unless refresh)."""
        if self._object_info is None or refresh:
            self._object_info = self.get_json("/object_info", timeout=120)
        return self._object_info

    def queue_prompt(self, graph: dict, client_id: str | None = None) -> str:
        """POST /prompt with an API-format graph; returns the prompt id or raises with node_errors."""
        status, body = self.post_json("/prompt", {"prompt": graph, "client_id": client_id or uuid.uuid4().hex})
        if status != 200 or not isinstance(body, dict) or "prompt_id" not in body:
            raise ComfyServerError(f"POST /prompt refused the graph ({status}): {json.dumps(body, indent=1)[:4000]}")
        if body.get("node_errors"):
            raise ComfyServerError(f"POST /prompt reported node errors: {json.dumps(body['node_errors'])[:4000]}")
        return str(body["prompt_id"])

    def wait(self, prompt_id: str, timeout: float = 300.0, poll: float = 0.5) -> dict:
        """Poll /history/{id} until the prompt finished; returns its entry or raises with the error."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise ComfyServerError(f"ComfyUI died while running {prompt_id}:\n{self.log_tail()}")
            hist = self.get_json(f"/history/{prompt_id}")
            entry = hist.get(prompt_id) if isinstance(hist, dict) else None
            if entry:  # ComfyUI adds the history entry when the prompt has finished
                status = entry.get("status") or {}
                if status.get("status_str") == "error" or not status.get("completed", False):
                    raise ComfyServerError(f"prompt {prompt_id} failed: {self._error_text(status)}")
                return entry
            time.sleep(poll)
        self.post_json("/interrupt", {})
        raise ComfyServerError(f"prompt {prompt_id} did not finish within {timeout:.0f} s:\n{self.log_tail()}")

    @staticmethod
    def _error_text(status: dict) -> str:
        for kind, data in status.get("messages", []):
            if kind == "execution_error":
                return (f"{data.get('node_type')} (node {data.get('node_id')}): {data.get('exception_type')}: "
                        f"{data.get('exception_message')}")
        return json.dumps(status)[:2000]

    def run(self, graph: dict, timeout: float = 300.0) -> dict:
        """Queue a graph and wait for it; returns the history entry."""
        return self.wait(self.queue_prompt(graph), timeout=timeout)

    def output_files(self, entry: dict) -> list[Path]:
        """Files the run's output nodes reported (images, videos) that lie in the output folder."""
        paths = []
        for out in entry.get("outputs", {}).values():
            for items in out.values():
                for item in items if isinstance(items, list) else []:
                    if isinstance(item, dict) and item.get("type") == "output" and "filename" in item:
                        paths.append(self.output_dir / item.get("subfolder", "") / item["filename"])
        return paths
