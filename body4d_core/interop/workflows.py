"""UI-format (litegraph, drag-and-drop) workflow -> API-format prompt, checked against /object_info.

ComfyUI core has no server-side converter; the frontend's "Export (API)" does this in the
browser. We need it headless: to run our shipped ``workflows/*.json`` through ``POST /prompt``
in tests and CI, to generate their ``workflows/api/`` twins, and to tell users which node or
widget a saved workflow no longer matches. Plain library: no ComfyUI import.

Rules (mirroring the frontend, ComfyUI 0.33 / frontend 1.49):
- ``widgets_values`` is positional over the node's widget inputs in ``input_order``
  (required, then optional); an INT/COMBO with ``control_after_generate`` (or an INT named
  ``seed``/``noise_seed`` without that option) is followed by its control value; an image or
  video upload combo by one upload value, an audio upload combo by two; a dynamic combo
  (``COMFY_DYNAMICCOMBO_V3``) is followed by the widgets of its selected option, named
  ``<combo>.<child>``. Inputs marked ``forceInput`` have no widget; ``hidden`` ones do (not drawn).
  Missing trailing values (a node that gained widgets since the save) take their defaults.
- Links replace widget values. Reroutes are followed, bypassed nodes (mode 4) pass their
  first input of the matching type through, muted nodes (mode 2) and frontend-only nodes
  (Note, MarkdownNote, Reroute, PrimitiveNode) are dropped; a PrimitiveNode's value is
  written into the widgets it feeds.
- Subgraphs (``definitions.subgraphs``) are expanded; inner nodes get ids ``<outer>:<inner>``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import OutputWriteError, write_text_atomic
from ..errors import Body4DError

log = logging.getLogger(__name__)

MODE_MUTED = 2
MODE_BYPASS = 4
VIRTUAL_NODES = frozenset({"Reroute", "PrimitiveNode", "Note", "MarkdownNote"})
WIDGET_TYPES = frozenset({
    "INT", "FLOAT", "STRING", "BOOLEAN", "COMBO", "COMFY_DYNAMICCOMBO_V3", "COMFY_MULTICOMBO_V3",
    "COLOR", "COLORS", "BOUNDING_BOX", "CURVE", "COMPOSITOR", "LOAD_3D", "LOAD_3D_ANIMATION",
    "WEBCAM", "AUDIO_RECORD",
})
UNSTORED_WIDGETS = {"IMAGECOMPARE": {}, "HISTOGRAM": {}}  # drawn, never saved; the server gets a placeholder
UPLOAD_SLOTS = {"image_upload": 1, "video_upload": 1, "audio_upload": 2}
SEED_NAMES = ("seed", "noise_seed")
SUBGRAPH_INPUT_ID = -10
SUBGRAPH_OUTPUT_ID = -20


class WorkflowConvertError(Body4DError, ValueError):
    """A UI workflow that does not match the server's node definitions; names node and input."""


@dataclass
class Report:
    """What a conversion found, one line each.

    ``problems``: the workflow does not fit the server's nodes (unknown node type, widget or
    input; a required widget with no value and no default). ``values``: a literal that the
    server will refuse (a combo choice it does not offer, e.g. a model file not installed; a
    number out of range). ``notes``: harmless differences the frontend also ignores (trailing
    values of frontend-only widgets, missing trailing widgets filled with their defaults).
    """

    problems: list[str] = field(default_factory=list)
    values: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, msg: str) -> None:
        self.problems.append(msg)


# --- node definitions ------------------------------------------------------------------------

def _opts(spec: list) -> dict:
    """The options dict of an object_info input spec ``[type, opts?]``."""
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def _type(spec: list) -> str:
    """The input's type name; a list of choices is a COMBO."""
    return "COMBO" if isinstance(spec[0], list) else str(spec[0])


def combo_options(spec: list) -> list | None:
    """The allowed values of a COMBO spec, or None when the input is no combo."""
    if isinstance(spec[0], list):
        return spec[0]
    if spec[0] == "COMBO":
        return list(_opts(spec).get("options", []))
    return None


def is_widget(spec: list) -> bool:
    """Whether the frontend draws a widget (and stores a ``widgets_values`` slot) for the input."""
    opts = _opts(spec)
    if opts.get("forceInput"):
        return False
    return _type(spec) in WIDGET_TYPES or bool(opts.get("widgetType"))


def extra_slots(name: str, spec: list) -> int:
    """Values the frontend stores after a widget's own value (control mode, upload buttons)."""
    opts, kind = _opts(spec), _type(spec)
    n = sum(count for flag, count in UPLOAD_SLOTS.items() if opts.get(flag)) if kind == "COMBO" else 0
    control = opts.get("control_after_generate")
    if kind in ("INT", "COMBO") and (control if control is not None else (kind == "INT" and name in SEED_NAMES)):
        n += 1
    return n


def ordered_inputs(info: dict) -> list[tuple[str, list]]:
    """``(name, spec)`` of a node's required then optional inputs, in the server's order."""
    order = info.get("input_order") or {sec: list(info["input"].get(sec, {})) for sec in ("required", "optional")}
    out = []
    for sec in ("required", "optional"):
        specs = info.get("input", {}).get(sec, {})
        out += [(name, specs[name]) for name in order.get(sec, []) if name in specs]
    return out


def _dynamic_children(spec: list, key: Any) -> list[tuple[str, list]]:
    """The inputs of a dynamic combo's selected option (required then optional)."""
    for option in _opts(spec).get("options", []):
        if isinstance(option, dict) and option.get("key") == key:
            inputs = option.get("inputs", {})
            return [(n, s) for sec in ("required", "optional") for n, s in inputs.get(sec, {}).items()]
    return []


def assign_widgets(values: list | dict | None, info: dict, where: str, report: Report) -> dict[str, Any]:
    """Map a node's ``widgets_values`` onto its widget input names."""
    if isinstance(values, dict):  # some packs serialise widgets by name
        return {k: v for k, v in values.items() if k in dict(ordered_inputs(info))}
    values = list(values or [])
    out: dict[str, Any] = {}
    pos = _assign(ordered_inputs(info), values, 0, "", out, where, report)
    if pos < len(values):
        report.notes.append(f"{where}: {len(values) - pos} trailing widget value(s) ignored "
                            f"(frontend-only widgets or a changed node): {values[pos:]!r:.120}")
    return out


def _assign(inputs: list[tuple[str, list]], values: list, pos: int, prefix: str, out: dict,
            where: str, report: Report) -> int:
    for name, spec in inputs:
        if not is_widget(spec):
            continue
        full = f"{prefix}{name}"
        if pos >= len(values):
            default = default_value(spec)
            if default is None:
                report.add(f"{where}: no widget value for '{full}' ({len(values)} values stored, no default)")
            else:
                out[full] = default
                report.notes.append(f"{where}: '{full}' not stored; using its default {default!r}")
        else:
            out[full] = values[pos]
        pos += 1 + extra_slots(name, spec)
        if _type(spec) == "COMFY_DYNAMICCOMBO_V3":
            pos = _assign(_dynamic_children(spec, out[full]), values, pos, f"{full}.", out, where, report)
    return pos


def default_value(spec: list) -> Any:
    """What the frontend puts in a widget it has no stored value for: the default or first choice."""
    opts = _opts(spec)
    if "default" in opts:
        return opts["default"]
    choices = combo_options(spec)
    if choices:
        return choices[0]
    if _type(spec) == "COMFY_DYNAMICCOMBO_V3" and opts.get("options"):
        return opts["options"][0].get("key")
    return None


def check_value(name: str, value: Any, spec: list) -> str | None:
    """Why a literal widget value does not fit its spec (combo choice, number range), else None."""
    opts, kind = _opts(spec), _type(spec)
    choices = combo_options(spec)
    if choices is not None and value not in choices and not opts.get("multiselect") and not opts.get("remote"):
        return f"'{name}' = {value!r} is not one of {choices[:8]}{'...' if len(choices) > 8 else ''}"
    if kind in ("INT", "FLOAT"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"'{name}' = {value!r} is not a number"
        if "min" in opts and value < opts["min"] or "max" in opts and value > opts["max"]:
            return f"'{name}' = {value!r} is outside [{opts.get('min')}, {opts.get('max')}]"
    if kind == "BOOLEAN" and not isinstance(value, bool):
        return f"'{name}' = {value!r} is not a boolean"
    return None


# --- graph ------------------------------------------------------------------------------------

@dataclass
class _Graph:
    """One litegraph level (the root or a subgraph) with its nodes and links by id."""

    nodes: dict[int, dict]
    links: dict[int, tuple[int, int, int, int, str]]
    prefix: str = ""
    inputs_from: dict[int, Any] = field(default_factory=dict)  # subgraph input slot -> outer source
    overrides: dict[tuple[str, str], Any] = field(default_factory=dict)  # (inner id, widget) -> value


def _links(raw: list) -> dict[int, tuple[int, int, int, int, str]]:
    """Links as ``id -> (origin_id, origin_slot, target_id, target_slot, type)``; both encodings."""
    out = {}
    for link in raw or []:
        if isinstance(link, dict):
            out[int(link["id"])] = (link["origin_id"], link["origin_slot"], link["target_id"],
                                    link["target_slot"], link.get("type", "*"))
        else:
            out[int(link[0])] = (link[1], link[2], link[3], link[4], link[5] if len(link) > 5 else "*")
    return out


class _Converter:
    """Walks a UI workflow (and its subgraphs) and builds the API prompt."""

    def __init__(self, workflow: dict, object_info: dict) -> None:
        self.info = object_info
        self.report = Report()
        self.subgraphs = {sg["id"]: sg for sg in workflow.get("definitions", {}).get("subgraphs", [])}
        self.prompt: dict[str, dict] = {}
        self.root = _Graph({int(n["id"]): n for n in workflow.get("nodes", [])}, _links(workflow.get("links")))

    def run(self) -> dict[str, dict]:
        self._convert_graph(self.root, depth=0)
        return self.prompt

    def _convert_graph(self, g: _Graph, depth: int) -> None:
        if depth > 16:
            raise WorkflowConvertError("subgraphs nested more than 16 deep (a subgraph containing itself?)")
        for nid, node in sorted(g.nodes.items()):
            kind, mode = node.get("type"), node.get("mode", 0)
            if mode in (MODE_MUTED, MODE_BYPASS) or kind in VIRTUAL_NODES:
                continue
            if kind in self.subgraphs:
                self._convert_graph(self._enter(g, node), depth + 1)
                continue
            if kind not in self.info:
                self.report.add(f"node {g.prefix}{nid}: unknown node type '{kind}' (not in /object_info: "
                                "is its pack installed and did it import?)")
                continue
            self.prompt[f"{g.prefix}{nid}"] = self._convert_node(g, node)

    def _enter(self, g: _Graph, node: dict) -> _Graph:
        """A subgraph instance: inner graph whose input slots resolve to the outer links."""
        sg = self.subgraphs[node["type"]]
        inner = _Graph({int(n["id"]): n for n in sg.get("nodes", [])}, _links(sg.get("links")),
                       prefix=f"{g.prefix}{node['id']}:")
        outer = {inp.get("name"): inp for inp in node.get("inputs", [])}
        widgets = node.get("widgets_values")
        proxy = (node.get("properties") or {}).get("proxyWidgets")
        promoted = {}
        if isinstance(widgets, list) and widgets and proxy:  # values of promoted inner widgets
            entries = [e for e in proxy if isinstance(e, list) and len(e) == 2 and not str(e[1]).startswith("$$")]
            for (inner_id, wname), value in zip(entries, widgets):
                inner.overrides[(str(inner_id), str(wname))] = value
        elif isinstance(widgets, list) and widgets:  # older saves: one value per widget-typed input
            names = [i.get("name") for i in sg.get("inputs", []) if i.get("type") in WIDGET_TYPES]
            promoted = dict(zip(names, widgets))
        for slot, sg_input in enumerate(sg.get("inputs", [])):
            inp = outer.get(sg_input.get("name"), {})
            if inp.get("link") is not None:
                inner.inputs_from[slot] = self._source(g, inp["link"])
            elif sg_input.get("name") in promoted:
                inner.inputs_from[slot] = ("literal", promoted[sg_input["name"]])
            else:
                inner.inputs_from[slot] = self._promoted_value(inner, slot)
        return inner

    def _promoted_value(self, inner: _Graph, slot: int) -> tuple | None:
        """An unlinked subgraph input takes the value of an inner widget it feeds (as the frontend does)."""
        for origin_id, origin_slot, target_id, target_slot, _ in inner.links.values():
            if int(origin_id) != SUBGRAPH_INPUT_ID or int(origin_slot) != slot:
                continue
            target = inner.nodes.get(int(target_id)) or {}
            ins = target.get("inputs") or []
            widget = (ins[int(target_slot)].get("widget") or {}).get("name") if int(target_slot) < len(ins) else None
            if widget and target.get("type") in self.info:
                values = assign_widgets(target.get("widgets_values"), self.info[target["type"]], "", Report())
                value = inner.overrides.get((str(target_id), widget), values.get(widget))
                if value is not None:
                    return ("literal", value)
        return None

    def _convert_node(self, g: _Graph, node: dict) -> dict:
        kind, nid = node["type"], node["id"]
        info = self.info[kind]
        where = f"node {g.prefix}{nid} ({kind})"
        specs = dict(ordered_inputs(info))
        inputs = assign_widgets(node.get("widgets_values"), info, where, self.report)
        for (inner_id, wname), value in g.overrides.items():
            if inner_id == str(nid) and wname in inputs:
                inputs[wname] = value
        for name, spec in specs.items():  # widgets the frontend computes instead of storing
            if name not in inputs and _type(spec) in UNSTORED_WIDGETS and name in info["input"].get("required", {}):
                inputs[name] = UNSTORED_WIDGETS[_type(spec)]
        dynamic = any(_type(s).startswith("COMFY_") for s in specs.values())
        for inp in node.get("inputs", []):
            name = inp.get("name")
            widget = (inp.get("widget") or {}).get("name")
            if widget and widget not in specs and widget not in inputs and not dynamic:
                self.report.add(f"{where}: unknown widget '{widget}' (the node has {list(specs)})")
            if inp.get("link") is None:
                continue
            target = widget or name
            if target not in specs and target not in inputs and not dynamic:
                self.report.add(f"{where}: unknown input '{target}' (the node has {list(specs)})")
                continue
            src = self._source(g, inp["link"])
            if src is None:
                if not widget:  # an unlinked widget keeps its stored value, as in the frontend
                    inputs.pop(target, None)
            elif src[0] == "literal":
                inputs[target] = src[1]
            else:
                inputs[target] = [src[0], src[1]]
        for name, value in inputs.items():
            spec = specs.get(name)
            if spec is not None and not isinstance(value, list):
                problem = check_value(name, value, spec)
                if problem:
                    self.report.values.append(f"{where}: {problem}")
        title = node.get("title") or info.get("display_name") or kind
        return {"class_type": kind, "inputs": inputs, "_meta": {"title": title}}

    def _source(self, g: _Graph, link_id: int | None, hops: int = 0) -> tuple | None:
        """Where a link's value comes from: ``(api_node_id, slot)``, ``("literal", v)`` or None."""
        if link_id is None or hops > 256:
            return None
        link = g.links.get(int(link_id))
        if link is None:
            self.report.add(f"link {g.prefix}{link_id} is missing from the links list")
            return None
        origin_id, slot = int(link[0]), int(link[1])
        if origin_id == SUBGRAPH_INPUT_ID:
            return g.inputs_from.get(slot)
        origin = g.nodes.get(origin_id)
        if origin is None:
            self.report.add(f"link {g.prefix}{link_id} starts at missing node {origin_id}")
            return None
        kind, mode = origin.get("type"), origin.get("mode", 0)
        if kind == "Reroute":
            return self._source(g, (origin.get("inputs") or [{}])[0].get("link"), hops + 1)
        if kind == "PrimitiveNode":
            values = origin.get("widgets_values") or [None]
            return ("literal", values[0])
        if mode == MODE_MUTED:
            return None
        if mode == MODE_BYPASS:
            return self._bypass(g, origin, slot, link[4], hops)
        if kind in self.subgraphs:
            return self._subgraph_output(g, origin, slot, hops)
        return (f"{g.prefix}{origin_id}", slot)

    def _bypass(self, g: _Graph, node: dict, slot: int, typ: str, hops: int) -> tuple | None:
        """A bypassed node passes through its input of the output's type (same slot first)."""
        inputs = node.get("inputs") or []
        order = ([inputs[slot]] if slot < len(inputs) else []) + inputs
        for inp in order:
            if inp.get("link") is not None and (inp.get("type") == typ or typ == "*"):
                return self._source(g, inp["link"], hops + 1)
        return None

    def _subgraph_output(self, g: _Graph, node: dict, slot: int, hops: int) -> tuple | None:
        """Resolve a subgraph node's output slot to the inner node feeding it."""
        inner = self._enter(g, node)
        for lid, link in inner.links.items():
            if int(link[2]) == SUBGRAPH_OUTPUT_ID and int(link[3]) == slot:
                return self._source(inner, lid, hops + 1)
        return None


def convert_with_report(workflow: dict, object_info: dict) -> tuple[dict[str, dict], Report]:
    """Convert a UI workflow; returns the API prompt and what was found (see Report)."""
    if not isinstance(workflow, dict) or "nodes" not in workflow:
        if isinstance(workflow, dict) and all(isinstance(v, dict) and "class_type" in v for v in workflow.values()):
            raise WorkflowConvertError("this is already an API-format prompt, not a UI workflow")
        raise WorkflowConvertError("not a UI workflow: expected a JSON object with a 'nodes' list")
    conv = _Converter(workflow, object_info)
    prompt = conv.run()
    return prompt, conv.report


def convert_workflow(workflow: dict, object_info: dict, strict_values: bool = False) -> dict[str, dict]:
    """Convert a UI workflow to an API prompt; raises WorkflowConvertError listing every problem.

    With ``strict_values`` a literal the server would refuse (e.g. a missing model file) is an
    error too; otherwise it is logged and left for the server's own validation to report.
    """
    prompt, report = convert_with_report(workflow, object_info)
    bad = report.problems + (report.values if strict_values else [])
    if bad:
        raise WorkflowConvertError("workflow does not match this ComfyUI's nodes:\n  " + "\n  ".join(bad))
    for line in report.values + report.notes:
        log.info("workflow: %s", line)
    return prompt


def load_object_info(source: str, timeout: float = 60.0) -> dict:
    """``/object_info`` from a server URL (``http://host:port``) or a saved JSON file."""
    if source.startswith(("http://", "https://")):
        url = source.rstrip("/")
        url = url if url.endswith("/object_info") else url + "/object_info"
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - user-given URL
            return json.loads(resp.read())
    return json.loads(Path(source).read_text())


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m body4d_core.interop.workflows WORKFLOW --object-info URL|FILE [-o OUT]``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workflow", help="UI-format workflow JSON")
    p.add_argument("--object-info", required=True, help="ComfyUI server URL or a saved /object_info JSON")
    p.add_argument("-o", "--output", help="write the API prompt here (default: stdout)")
    args = p.parse_args(argv)
    try:
        prompt = convert_workflow(json.loads(Path(args.workflow).read_text()), load_object_info(args.object_info))
    except (WorkflowConvertError, OSError, json.JSONDecodeError) as e:
        sys.stderr.write(f"error: {e}\n")
        return 1
    text = json.dumps(prompt, indent=2) + "\n"
    if args.output:
        try:
            write_text_atomic(args.output, text)
        except OutputWriteError as e:
            sys.stderr.write(f"error: {e}\n")
            return 1
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
