"""The points editor frontend: its pure-logic tests (node --test), syntax, and agreement with the Python side."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from body4d_core.palette import OBJECT_COLORS

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


# --------------------------------------------------------------------------- in a real browser (optional)


def _chromium() -> str | None:
    """A Chromium/Chrome executable for Playwright: $CHROMIUM, else one on PATH."""
    import os

    for cand in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if cand and shutil.which(cand):
            return shutil.which(cand)
    return None


BUILD_GRAPH = """async (file) => {
    const app = window.app, LG = window.LiteGraph;
    app.graph.clear();
    const lv = LG.createNode("SAMBody4D_LoadVideo"); lv.pos = [50, 100]; app.graph.add(lv);
    lv.widgets.find(w => w.name === "file").value = file;
    const pts = LG.createNode("SAMBody4D_SAM3Points"); pts.pos = [450, 80]; app.graph.add(pts);
    const pv = LG.createNode("PreviewImage"); pv.pos = [1000, 100]; app.graph.add(pv);
    lv.connect(0, pts, 0); pts.connect(1, pv, 0);
    app.canvas.ds.offset = [0, 0]; app.canvas.ds.scale = 1; app.graph.setDirtyCanvas(true, true);
    window._pts = pts;
    return !!pts.sambody4dEditor;
}"""


@pytest.mark.comfyui
@pytest.mark.parametrize("renderer", ["classic", "nodes2"])
def test_editor_in_browser_clicks_run_and_reload(comfy_server, renderer):
    """Drive the real frontend: load frames by running, click points, run again, save/reload the workflow."""
    import json
    import time

    from .media import DANCER, need

    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install playwright)")
    exe = _chromium()
    if exe is None:
        pytest.skip("no Chromium found (apt-get install chromium, or set $CHROMIUM)")
    shutil.copy(need(DANCER), comfy_server.input_dir)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(comfy_server.url)
            page.wait_for_function("window.app && window.app.graph && window.LiteGraph", timeout=120_000)
            time.sleep(2)
            for _ in range(3):  # close the first-start template dialog
                page.keyboard.press("Escape")
            if renderer == "nodes2":
                page.evaluate("() => window.app.extensionManager.setting.set('Comfy.VueNodes.Enabled', true)")
                time.sleep(1)
            assert page.evaluate(BUILD_GRAPH, DANCER.name), "the points editor widget was not created"
            page.evaluate("() => window.app.queuePrompt(0)")  # first run: frames arrive, then 'no prompts given'
            page.wait_for_function("window._pts.sambody4dEditor.frames !== null", timeout=180_000)
            for _ in range(3):
                page.keyboard.press("Escape")
            time.sleep(1)
            frames = page.evaluate("() => window._pts.sambody4dEditor.frames")
            assert len(frames["files"]) == 81 and (frames["width"], frames["height"]) == (350, 350)
            x, y, w, h = page.evaluate("() => { const r = window._pts.sambody4dEditor.canvas.getBoundingClientRect();"
                                       " return [r.x, r.y, r.width, r.height]; }")
            page.mouse.click(x + w / 2, y + h * 0.4)
            page.mouse.click(x + w / 2 + 30, y + h * 0.75, button="right")
            page.evaluate("() => window._pts.sambody4dEditor.setPos(40)")
            page.get_by_text("New person").click()
            page.mouse.click(x + w / 2 - 20, y + h * 0.5)
            page.mouse.move(x + w * 0.3, y + h * 0.1)  # left drag = a box for person 2 on frame 40
            page.mouse.down()
            page.mouse.move(x + w * 0.5, y + h * 0.5, steps=5)
            page.mouse.move(x + w * 0.7, y + h * 0.9, steps=5)
            page.mouse.up()
            text = page.evaluate("() => window._pts.widgets.find(w => w.name === 'prompts').value")
            doc = json.loads(text)
            assert doc["image_size"] == [350, 350]
            pts = {o["id"]: o["points"] for o in doc["objects"]}
            assert [p["label"] for p in pts[1]] == [1, 0] and {p["frame"] for p in pts[1]} == {0}
            assert [(p["frame"], p["label"]) for p in pts[2]] == [(40, 1)]
            (box,) = [o["boxes"] for o in doc["objects"] if o["id"] == 2][0]
            assert box["frame"] == 40 and box["x0"] < box["x1"] and box["y0"] < box["y1"]
            assert all(0 <= p[k] <= 350 for ps in pts.values() for p in ps for k in ("x", "y"))

            page.evaluate("() => window.app.queuePrompt(0)")
            deadline = time.monotonic() + 180
            done = None
            while done is None and time.monotonic() < deadline:
                for entry in comfy_server.get_json("/history").values():
                    graph = entry.get("prompt", [None, None, {}])[2]
                    if any(n.get("inputs", {}).get("prompts") == text for n in graph.values()):
                        done = entry
                time.sleep(1)
            assert done is not None, "the second run did not finish"
            assert done["status"]["status_str"] == "success", done["status"]

            wf = page.evaluate("() => JSON.stringify(window.app.graph.serialize())")
            page.evaluate("async (wf) => { await window.app.loadGraphData(JSON.parse(wf)); }", wf)
            time.sleep(1)
            state = page.evaluate("() => window.app.graph._nodes.find(n => n.type === 'SAMBody4D_SAM3Points')"
                                  ".sambody4dEditor.state")
            assert {o["id"]: o["points"] for o in state["objects"]} == pts
        finally:
            browser.close()
