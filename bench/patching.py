"""Temporary changes of module globals and environment variables, always restored.

The benches switch library behaviour (a kernel on or off, a load thread count) by setting a
module global or an environment variable; doing it only through these context managers keeps
every such change in one place and undone when the block ends.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Iterator


@contextlib.contextmanager
def patched(obj: Any, name: str, value: Any) -> Iterator[None]:
    """Set ``obj.name`` to ``value`` for the block, restore the old value afterwards."""
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


@contextlib.contextmanager
def patched_env(name: str, value: str | None) -> Iterator[None]:
    """Set (or with None unset) environment variable ``name`` for the block, restore it afterwards."""
    old = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


@contextlib.contextmanager
def import_path(*folders: str) -> Iterator[None]:
    """Make extra folders importable for the block (a user-given checkout or --deps folder)."""
    added = [f for f in folders if f and f not in sys.path]
    sys.path[:0] = added
    try:
        yield
    finally:
        for f in added:
            if f in sys.path:
                sys.path.remove(f)
