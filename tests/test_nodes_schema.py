"""Every node module imported over the REAL comfy_api (COMFYUI_DIR): schemas validate, ids and names follow the rules."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from .comfy_server import default_python
from .conftest import comfyui_dir

pytestmark = pytest.mark.comfyui

REPO = Path(__file__).resolve().parents[1]
PROBE = Path(__file__).resolve().parent / "comfy_schema_probe.py"
NODE_ID = re.compile(r"""node_id\s*=\s*["'](SAMBody4D_\w+)["']""")
PLAIN_NAME = re.compile(r"^[A-Z0-9][A-Za-z0-9 ()\-,.'/+&]*$")
WIDGETS = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


@pytest.fixture(scope="module")
def probe() -> dict:
    """Run tests/comfy_schema_probe.py with ComfyUI's python and return its JSON result."""
    root = comfyui_dir()
    if root is None:
        pytest.skip("COMFYUI_DIR is not set: schema validation needs the real comfy_api from a ComfyUI checkout")
    proc = subprocess.run([default_python(root), str(PROBE), str(root), str(REPO)], capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    marker = [ln for ln in proc.stdout.splitlines() if ln.startswith("@@PROBE@@")]
    assert marker, f"probe printed no result (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    result = json.loads(marker[-1][len("@@PROBE@@"):])
    assert "fatal" not in result, f"the pack did not load over the real comfy_api:\n{result.get('fatal')}"
    return result


def test_every_class_validates(probe):
    assert not probe["errors"], "\n\n".join(f"{e['class']}: {e['error']}\n{e['traceback']}" for e in probe["errors"])
    assert probe["nodes"], "the extension listed no nodes"


def test_ids_unique_prefixed_and_match_sources(probe):
    ids = [n["node_id"] for n in probe["nodes"]]
    assert len(ids) == len(set(ids)), f"duplicate node ids: {sorted(i for i in ids if ids.count(i) > 1)}"
    assert all(i.startswith("SAMBody4D_") for i in ids), ids
    in_source = set()
    for path in (REPO / "nodes").glob("*.py"):
        in_source |= set(NODE_ID.findall(path.read_text()))
    assert set(ids) == in_source, f"listed but not in nodes/: {set(ids) - in_source}; " \
                                  f"in nodes/ but not listed: {in_source - set(ids)}"


def test_display_names_are_plain(probe):
    names = [n["display_name"] for n in probe["nodes"]]
    assert len(names) == len(set(names)), f"duplicate display names: {names}"
    for node in probe["nodes"]:
        name = node["display_name"]
        assert name and PLAIN_NAME.match(name), f"{node['node_id']}: display name {name!r} is not plain words"
        assert "SAMBody4D" not in name and "_" not in name and len(name) <= 48, (node["node_id"], name)


def test_categories_and_widget_tooltips(probe):
    for node in probe["nodes"]:
        assert node["category"].startswith("SAM-Body4D"), (node["node_id"], node["category"])
        bare = [name for name, io_type, has_tip in node["inputs"] if io_type in WIDGETS and not has_tip]
        assert not bare, f"{node['node_id']}: widgets without a tooltip: {bare}"
        assert node["outputs"] or node["output_node"], f"{node['node_id']} has no outputs and is no output node"
