"""User-facing errors: one clear, actionable message each (docs/ARCHITECTURE.md, Data contracts)."""

from __future__ import annotations


class Body4DError(Exception):
    """Base class for every error a user may see; the message says what to do."""


class InputError(Body4DError, ValueError):
    """Bad user input: wrong shapes, out-of-range values, mismatched frame counts."""


class VideoError(InputError):
    """A video that cannot be read, is empty, or selects no frame."""


class MemoryBudgetError(Body4DError):
    """An operation would exceed the configured memory budget."""


class MissingWeightsError(Body4DError, FileNotFoundError):
    """Model weights are missing or partial; the message names files, folder and command."""


class WeightsMismatchError(Body4DError):
    """A checkpoint does not match the expected architecture (wrong model or corrupt file)."""


class InterruptedError_(Body4DError):
    """Raised by hooks when the user cancels a run (outside ComfyUI)."""
