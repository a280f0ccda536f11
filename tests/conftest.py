"""Shared pytest fixtures. Append new fixtures below; keep each one documented."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from .comfy_server import ComfyServer, ComfyServerError
from .nodes_env import pack  # noqa: F401 - the node tests' fixture, shared by every test module

# The Blender import test is optional (Blender's Python module is a ~1 GB install): collected only when a Python
# with bpy is named in BODY4D_BPY_PYTHON or bpy imports here, so the default suite has no skip for it.
_HAS_BPY = bool(os.environ.get("BODY4D_BPY_PYTHON")) or importlib.util.find_spec("bpy") is not None
collect_ignore = [] if _HAS_BPY else ["test_anim_blender.py"]


def comfyui_dir() -> Path | None:
    """The ComfyUI checkout named by $COMFYUI_DIR, or None when the variable is unset."""
    value = os.environ.get("COMFYUI_DIR", "").strip()
    return Path(value).expanduser() if value else None


@pytest.fixture(scope="session")
def comfy_server():
    """A real ComfyUI (``--cpu``, private temp folders, our pack linked in) for the whole session.

    Skips when COMFYUI_DIR is unset; fails loudly when it is set but the server cannot start.
    The interpreter is $COMFYUI_PYTHON, else $COMFYUI_DIR/.venv's python, else the one running pytest.
    """
    root = comfyui_dir()
    if root is None:
        pytest.skip("COMFYUI_DIR is not set: these tests start a real ComfyUI server "
                    "(set COMFYUI_DIR to a ComfyUI checkout, optionally COMFYUI_PYTHON to its python)")
    try:
        server = ComfyServer(root).start(timeout=float(os.environ.get("COMFYUI_START_TIMEOUT", "300")))
    except ComfyServerError as err:
        pytest.fail(f"ComfyUI at {root} did not start: {err}", pytrace=False)
    yield server
    server.stop()


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny-model tests run on one CPU thread: oversubscribed tiny ops on 2 shared cores ran ~20x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def full_run_models(tmp_path_factory):
    """Every model of a full headless run (SAM-3, SAM-3D-Body, MoGe-2, both Diffusion-VAS, Depth Anything) as tiny
    checkpoints in one root, written once per session."""
    from body4d_core.testing.checkpoints import write_tiny_checkpoints

    root = tmp_path_factory.mktemp("full_run_models")
    write_tiny_checkpoints(root, ["sam3", "sam3d_body", "moge", "diffusion_vas_amodal", "diffusion_vas_completion",
                                  "depth_anything"])
    return root
