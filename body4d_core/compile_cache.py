"""torch.compile helpers shared by the stages: can inductor run here, compile a call, and the persistent cache.

Inductor's on-disk caches (FX graph / AOT autograd / kernels) are pointed at one folder while a stage
compiles, so a second process reuses the first one's compiled kernels (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

log = logging.getLogger(__name__)

CACHE_ENV = "BODY4D_COMPILE_CACHE"  # folder for the persistent compile cache ('off': torch's own default)


def compile_available(device: torch.device) -> str:
    """'' when torch.compile (inductor) can run on ``device``, else the reason it cannot."""
    if not hasattr(torch, "compile"):
        return "this torch has no torch.compile"
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except Exception as err:  # noqa: BLE001 - any import failure means no inductor on GPU
            return f"triton is not importable ({type(err).__name__})"
    return ""


def compile_call(fn: Callable[..., torch.Tensor], device: torch.device, mode: str, backend: Any,
                 what: str, dynamic: bool | None = False) -> Callable[..., torch.Tensor] | None:
    """torch.compile(fn) (``mode`` under inductor), or None with a log line where it cannot run.

    dynamic: False = static shapes (one graph per shape); None = torch's automatic dynamic shapes,
    which also honours ``torch._dynamo.maybe_mark_dynamic`` on the inputs.
    """
    why = compile_available(device) if backend == "inductor" else ""
    if why:
        log.warning("%s: %s", what, why)
        return None
    kw = {} if mode == "default" or backend != "inductor" else {"mode": mode}
    return torch.compile(fn, dynamic=dynamic, backend=backend, **kw)


def default_cache_dir() -> Path | None:
    """Where compiled kernels persist across processes: ``$BODY4D_COMPILE_CACHE``, else the user cache dir
    (``$XDG_CACHE_HOME`` or ``~/.cache``)/body4d/torch_compile; None (torch's own default, usually under
    the temp folder) when ``$BODY4D_COMPILE_CACHE`` is 'off' or the user set ``TORCHINDUCTOR_CACHE_DIR``."""
    env = os.environ.get(CACHE_ENV, "")
    if env.lower() == "off":
        return None
    if env:
        return Path(env)
    if _user_inductor_dir():
        return None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "body4d" / "torch_compile"


def _user_inductor_dir() -> bool:
    """Whether TORCHINDUCTOR_CACHE_DIR was chosen by the user (torch writes its own default there too)."""
    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if not chosen:
        return False
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir as torch_default

    return os.path.abspath(chosen) != os.path.abspath(torch_default())


@contextlib.contextmanager
def compile_cache(folder: str | os.PathLike | None) -> Iterator[None]:
    """Inductor's on-disk caches (FX graphs, AOT autograd, kernels) in ``folder`` inside the block only
    (torch's ``temporary_cache_dir``); None: leave torch's setting alone."""
    if folder is None:
        yield
        return
    path = os.path.abspath(folder)
    os.makedirs(path, exist_ok=True)
    try:
        from torch._inductor.runtime.cache_dir_utils import temporary_cache_dir
    except ImportError:  # a torch without it: the environment variable alone, restored afterwards
        temporary_cache_dir = _env_cache_dir
    with temporary_cache_dir(path):
        yield


@contextlib.contextmanager
def _env_cache_dir(path: str) -> Iterator[None]:
    old = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = path
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = old
