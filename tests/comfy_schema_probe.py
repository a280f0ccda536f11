"""Run with ComfyUI's python: load our pack over the REAL comfy_api and validate every node schema.

    python tests/comfy_schema_probe.py COMFYUI_DIR PACK_DIR  ->  one JSON object on stdout

Like ComfyUI's own tests-unit, only ``server`` and ``nodes`` are stubbed; ``comfy_api.latest``,
``comfy.model_management`` (forced to CPU) and ``folder_paths`` are the real modules, so
``GET_SCHEMA()`` runs the real V3 validation. A separate process because the in-repo stand-in
(tests/comfy_stub) and the real comfy_api cannot share one interpreter.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
import tempfile
import time
import traceback
from unittest.mock import MagicMock

PACK_MODULE = "sambody4d_probe_pack"


def _prepare(comfy_dir: str) -> None:
    """Real comfy_api on sys.path, CPU only, folders in a temp dir, server/nodes stubbed."""
    sys.path.insert(0, comfy_dir)
    sys.modules["server"] = MagicMock()
    sys.modules["nodes"] = MagicMock()
    from comfy.cli_args import args

    args.cpu = True
    import folder_paths

    base = tempfile.mkdtemp(prefix="body4d-schema-")
    folder_paths.set_input_directory(base)
    folder_paths.set_output_directory(base)
    folder_paths.set_temp_directory(base)


def _load_pack(pack_dir: str):
    spec = importlib.util.spec_from_file_location(PACK_MODULE, f"{pack_dir}/__init__.py",
                                                  submodule_search_locations=[pack_dir])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_MODULE] = module
    spec.loader.exec_module(module)
    return module


def _describe(cls) -> dict:
    """Validate one node class the way ComfyUI does and summarise its schema."""
    schema = cls.GET_SCHEMA()
    info = cls.GET_NODE_INFO_V1()
    inputs = [(i.id, i.get_io_type(), bool(getattr(i, "tooltip", None))) for i in schema.inputs]
    return {"class": f"{cls.__module__}.{cls.__qualname__}", "node_id": schema.node_id,
            "display_name": schema.display_name, "category": schema.category,
            "description": schema.description or "", "inputs": inputs,
            "outputs": [o.get_io_type() for o in schema.outputs],
            "output_node": bool(schema.is_output_node), "v1_input_keys": sorted(info["input"])}


def main(comfy_dir: str, pack_dir: str) -> dict:
    t0 = time.perf_counter()
    _prepare(comfy_dir)
    from comfy_api.latest import ComfyExtension

    t1 = time.perf_counter()
    pack = _load_pack(pack_dir)
    ext = asyncio.run(pack.comfy_entrypoint())
    assert isinstance(ext, ComfyExtension), f"comfy_entrypoint returned {type(ext)}"
    asyncio.run(ext.on_load())
    classes = asyncio.run(ext.get_node_list())
    t2 = time.perf_counter()
    nodes, errors = [], []
    for cls in classes:
        try:
            nodes.append(_describe(cls))
        except Exception as err:  # noqa: BLE001 - report every failing class, not just the first
            errors.append({"class": getattr(cls, "__qualname__", str(cls)), "error": repr(err),
                           "traceback": traceback.format_exc(limit=6)})
    return {"nodes": nodes, "errors": errors, "comfy_import_s": round(t1 - t0, 2),
            "pack_import_s": round(t2 - t1, 2)}


if __name__ == "__main__":
    try:
        result = main(sys.argv[1], sys.argv[2])
    except Exception:  # noqa: BLE001 - the test prints this
        result = {"fatal": traceback.format_exc()}
    sys.stdout.write("\n@@PROBE@@" + json.dumps(result) + "\n")
