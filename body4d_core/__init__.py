"""SAM-Body4D as a plain Python library (no ComfyUI import anywhere in this package)."""

__version__ = "0.1.0"
