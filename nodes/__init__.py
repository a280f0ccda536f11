"""ComfyUI node modules; every module here that defines ``NODES`` contributes its nodes."""

from __future__ import annotations

import importlib
import pkgutil

from comfy_api.latest import io


def discover_nodes() -> list[type[io.ComfyNode]]:
    """Import every module of this package and collect its ``NODES`` list, in module order."""
    found: list[type[io.ComfyNode]] = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        found += list(getattr(module, "NODES", []))
    return found
