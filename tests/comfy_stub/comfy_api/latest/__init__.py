"""Stand-in for comfy_api.latest: io, ui, ComfyExtension (see tests/comfy_stub/README.md)."""

from . import io, ui  # noqa: F401


class ComfyExtension:
    async def on_load(self) -> None:
        return None

    async def get_node_list(self):
        return []


class Types:
    pass


class InputImpl:
    pass


class Input:
    pass
