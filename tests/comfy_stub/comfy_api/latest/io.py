"""Stand-in for comfy_api.latest.io: records schemas; any socket type works via __getattr__."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class UploadType(str, Enum):
    image = "image_upload"
    video = "video_upload"
    audio = "audio_upload"
    model = "file_upload"


class FolderType(str, Enum):
    input = "input"
    output = "output"
    temp = "temp"


class NumberDisplay(str, Enum):
    number = "number"
    slider = "slider"


@dataclass
class Socket:
    """One input or output as declared."""

    io_type: str
    id: str | None
    kwargs: dict

    @property
    def optional(self) -> bool:
        return bool(self.kwargs.get("optional"))


class _Type:
    """A socket type (Int, Image, Custom("X") ...) with Input/Output constructors."""

    def __init__(self, io_type: str) -> None:
        self.io_type = io_type

    def Input(self, id: str, **kwargs: Any) -> Socket:  # noqa: N802 - ComfyUI's names
        return Socket(self.io_type, id, kwargs)

    def Output(self, id: str | None = None, **kwargs: Any) -> Socket:  # noqa: N802
        return Socket(self.io_type, id, kwargs)


_NAMES = {"Int": "INT", "Float": "FLOAT", "String": "STRING", "Boolean": "BOOLEAN", "Combo": "COMBO",
          "Image": "IMAGE", "Mask": "MASK", "Video": "VIDEO", "Mesh": "MESH", "Latent": "LATENT",
          "AnyType": "*", "File3DGLB": "FILE_3D_GLB", "File3DAny": "FILE_3D"}


def Custom(io_type: str) -> _Type:  # noqa: N802
    return _Type(io_type)


def __getattr__(name: str) -> _Type:
    if name.startswith("__"):
        raise AttributeError(name)
    return _Type(_NAMES.get(name, name.upper()))


@dataclass
class Schema:
    node_id: str
    display_name: str | None = None
    category: str = "sd"
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    hidden: list = field(default_factory=list)
    description: str = ""
    search_aliases: list = field(default_factory=list)
    is_output_node: bool = False
    is_deprecated: bool = False
    is_experimental: bool = False
    not_idempotent: bool = False
    enable_expand: bool = False
    has_intermediate_output: bool = False
    essentials_category: str | None = None


class Hidden(str, Enum):
    unique_id = "UNIQUE_ID"
    prompt = "PROMPT"
    extra_pnginfo = "EXTRA_PNGINFO"


class NodeOutput:
    def __init__(self, *args: Any, ui: Any = None, expand: Any = None, block_execution: Any = None) -> None:
        self.args = args
        self.ui = ui
        self.expand = expand

    @property
    def result(self) -> tuple:
        return self.args


class _HiddenHolder:
    unique_id = "stub-node"
    prompt = None
    extra_pnginfo = None


class ComfyNode:
    hidden = _HiddenHolder()

    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError

    @classmethod
    def GET_SCHEMA(cls) -> Schema:  # noqa: N802
        return cls.define_schema()
