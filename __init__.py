"""ComfyUI SAM-Body4D: training-free, temporally consistent 4D human mesh recovery from video.

ComfyUI loads this file as the pack. Nothing heavy happens at import: the node modules are
imported (and model folders registered) when ComfyUI asks for the extension.
"""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    """V3 entry point: the extension listing every SAMBody4D_ node."""
    from .nodes.extension import Body4DExtension

    return Body4DExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
