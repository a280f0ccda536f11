"""Load our pack as ComfyUI would (a package), over the ComfyUI stand-in in tests/comfy_stub.

Node tests import the fixture ``pack``: the loaded pack module, with ``folder_paths`` rooted
in a temporary directory (input/, output/, temp/, models/).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STUB = Path(__file__).resolve().parent / "comfy_stub"
PACK_NAME = "sambody4d_pack"


def load_pack():
    """Import the repo as the package ``sambody4d_pack`` (once per test session)."""
    if str(STUB) not in sys.path:
        sys.path.insert(0, str(STUB))
    if PACK_NAME not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACK_NAME, REPO / "__init__.py",
                                                      submodule_search_locations=[str(REPO)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACK_NAME] = module
        spec.loader.exec_module(module)
    return sys.modules[PACK_NAME]


@pytest.fixture(scope="session")
def pack(tmp_path_factory):
    mod = load_pack()
    import folder_paths

    folder_paths.set_base(str(tmp_path_factory.mktemp("comfy")))
    return mod
