"""Stand-in for comfy_api.latest.ui: preview objects keep what they were given."""

from typing import Any


class _Preview:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs


class PreviewImage(_Preview):
    pass


class PreviewMask(_Preview):
    pass


class PreviewVideo(_Preview):
    pass


class PreviewUI3D(_Preview):
    pass


class PreviewText(_Preview):
    pass


class SavedResult(dict):
    def __init__(self, filename: str, subfolder: str, type: Any) -> None:  # noqa: A002
        super().__init__(filename=filename, subfolder=subfolder, type=getattr(type, "value", type))


class SavedImages(_Preview):
    pass
