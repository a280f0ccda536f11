"""The points editor frontend: its pure-logic tests (node --test), syntax, and agreement with the Python side."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from body4d_core.prompts import OBJECT_COLORS

REPO = Path(__file__).resolve().parents[1]
WEB = REPO / "web"
NODE = shutil.which("node")
needs_node = pytest.mark.skipif(NODE is None, reason="Node.js not installed (needed for the frontend tests)")


@needs_node
def test_points_state_node_tests_pass():
    proc = subprocess.run([NODE, "--test", str(REPO / "tests" / "web")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert re.search(r"# pass [1-9]", proc.stdout) and "# fail 0" in proc.stdout


@needs_node
@pytest.mark.parametrize("name", ["points_editor.js", "points_state.js"])
def test_frontend_modules_parse_as_es_modules(name):
    src = (WEB / name).read_text()
    proc = subprocess.run([NODE, "--input-type=module", "--check"], input=src, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_palette_matches_python():
    src = (WEB / "points_state.js").read_text()
    body = re.search(r"OBJECT_COLORS = (\[.*?\]);", src, re.S).group(1)
    assert [tuple(c) for c in ast.literal_eval(body.replace("\n", ""))] == list(OBJECT_COLORS)


def test_editor_and_node_agree_on_names():
    js = (WEB / "points_editor.js").read_text()
    node_src = (REPO / "nodes" / "points.py").read_text()

    def const(name: str) -> str:
        return re.search(rf'^{name} = "([^"]+)"', node_src, re.M).group(1)

    node_id = re.search(r'node_id="([^"]+)"', node_src).group(1)
    assert f'NODE_TYPE = "{node_id}"' in js
    assert f'EVENT = "{const("EDITOR_EVENT")}"' in js
    assert f'UI_KEY = "{const("EDITOR_UI_KEY")}"' in js
    assert 'w.name === "prompts"' in js and 'io.String.Input("prompts"' in node_src
