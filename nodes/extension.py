"""The ComfyExtension that ComfyUI loads: registers model folders and lists every node."""

from __future__ import annotations

from typing_extensions import override

from comfy_api.latest import ComfyExtension, io

from . import comfy_glue, discover_nodes


class Body4DExtension(ComfyExtension):
    @override
    async def on_load(self) -> None:
        comfy_glue.register_model_folders()

    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return discover_nodes()
