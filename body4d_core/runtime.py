"""Run-time helpers shared by every stage: progress/interrupt hooks, device/dtype, OOM retry."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol, TypeVar

import torch

log = logging.getLogger(__name__)
T = TypeVar("T")


class Hooks(Protocol):
    """What long loops report to: progress and a cancellation check."""

    def progress(self, done: int, total: int) -> None: ...

    def check_interrupt(self) -> None: ...


@dataclass
class CallbackHooks:
    """Hooks built from two optional callables (used by the CLI, tests and ComfyUI glue)."""

    on_progress: Callable[[int, int], None] | None = None
    on_check: Callable[[], None] | None = None

    def progress(self, done: int, total: int) -> None:
        if self.on_progress is not None:
            self.on_progress(done, total)

    def check_interrupt(self) -> None:
        if self.on_check is not None:
            self.on_check()


NULL_HOOKS: Hooks = CallbackHooks()


def pick_device(requested: str | torch.device | None = None) -> torch.device:
    """The device to run on: the requested one, else CUDA if present, else CPU."""
    if requested not in (None, "", "auto"):
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


DTYPE_NAMES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
               "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


def pick_dtype(device: torch.device, requested: str | torch.dtype | None = None, *, bf16_ok: bool | None = None,
               fp16_ok: bool | None = None) -> torch.dtype:
    """The one precision policy: bf16 on GPUs that support it, fp16 on older GPUs, fp32 on CPU (or what was asked).

    ``bf16_ok``/``fp16_ok`` say what the device supports (default: torch's bf16 check; fp16 everywhere on
    CUDA); ComfyUI's model management passes its own answers. An fp16 request where fp16 is not
    supported runs fp32.
    """
    if isinstance(requested, torch.dtype):
        return requested
    if requested not in (None, "", "auto"):
        if requested not in DTYPE_NAMES:
            raise ValueError(f"unknown dtype {requested!r}; use one of auto, {', '.join(DTYPE_NAMES)}")
        dt = DTYPE_NAMES[requested]
        if dt == torch.float16 and fp16_ok is False:
            return torch.float32
        return dt
    if device.type != "cuda":
        return torch.float32
    if bf16_ok if bf16_ok is not None else torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16 if fp16_ok is not False else torch.float32


TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # Triton's CPU interpreter (tests), read at import as Triton does


def runs_triton(device: torch.device) -> bool:
    """Whether our Triton kernels can take tensors on ``device``: CUDA, or any device under Triton's CPU
    interpreter (the tests)."""
    return device.type == "cuda" or TRITON_INTERPRET


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """A scoped autocast: active only for reduced precision on CUDA, never global."""
    if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16):
        with torch.autocast("cuda", dtype=dtype):
            yield
    else:
        yield


def is_oom(err: BaseException) -> bool:
    """True for CUDA (or other accelerator) out-of-memory errors."""
    if isinstance(err, torch.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


def run_with_oom_retry(
    fn: Callable[[int, int], T],
    n_items: int,
    batch_size: int,
    hooks: Hooks = NULL_HOOKS,
    min_batch: int = 1,
    before_batch: Callable[[int], None] | None = None,
) -> list[T]:
    """Call fn(start, stop) over [0, n_items) in batches, halving the batch on CUDA OOM.

    Returns the list of per-batch results in order. Progress is reported per batch and
    the interrupt flag is checked before each batch. before_batch(batch_size) runs before every
    attempt with the batch size in force (a compiled caller sizes its buckets from it).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    results: list[T] = []
    start = 0
    bs = batch_size
    while start < n_items:
        hooks.check_interrupt()
        stop = min(start + bs, n_items)
        if before_batch is not None:
            before_batch(bs)
        try:
            results.append(fn(start, stop))
        except Exception as err:  # noqa: BLE001 - only OOM is handled, the rest re-raised
            if not is_oom(err) or bs <= min_batch:
                raise
            bs = max(min_batch, bs // 2)
            log.warning("out of memory at batch size %d; retrying with %d", stop - start, bs)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        start = stop
        hooks.progress(start, n_items)
    return results


def upload(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host -> device copy that never stalls the GPU queue: pinned staging + non_blocking on CUDA.

    A pageable copy may wait for the kernels already queued; a pinned one does not, so the next
    batch can be prepared while the current one still runs. Elsewhere a plain ``.to``.
    """
    t = torch.as_tensor(t)
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


# modules whose functions keep tensors in functools caches (position embeddings, normalisation constants
# on the model's device): cleared after each run so repeated runs in one process do not accumulate them
LIBRARY_CACHE_MODULES = ("transformers.models.sam3", "transformers.image_processing")


def _lru_wrappers(obj: object, depth: int = 0) -> Iterator[object]:
    """functools caches reachable from a function: itself, its __wrapped__ chain and closure cells."""
    if depth > 3 or obj is None:
        return
    if isinstance(obj, (staticmethod, classmethod)):
        obj = obj.__func__
    if hasattr(obj, "cache_clear") and hasattr(obj, "cache_info"):
        yield obj
    yield from _lru_wrappers(getattr(obj, "__wrapped__", None), depth + 1)
    for cell in getattr(obj, "__closure__", None) or ():
        with contextlib.suppress(ValueError):
            if callable(cell.cell_contents):
                yield from _lru_wrappers(cell.cell_contents, depth + 1)


def release_cuda_workspaces() -> None:
    """Free cuBLAS's per-stream workspaces, the allocator's unused blocks and cached pinned host memory
    (after a run, not during)."""
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return
    torch.cuda.synchronize()
    for name in ("_cuda_clearCublasWorkspaces", "_host_emptyCache"):
        clear = getattr(torch._C, name, None)
        if clear is not None:
            clear()
    torch.cuda.empty_cache()


def release_host_memory() -> bool:
    """Hand the C heap's free pages back to the OS (glibc ``malloc_trim``); returns whether it could.

    Freed frames, masks and meshes leave the heap fragmented, so without this a process that runs the
    pipeline again and again keeps a growing resident size although nothing is alive.
    """
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.malloc_trim(0)) or True
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return False


MALLOC_ARENAS = 2  # glibc arenas for a process that runs the pipeline many times (glibc's default: 8 per core)


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap the number of glibc malloc arenas for threads started from now on; returns whether it was set.

    Each run starts short-lived threads (background writes, encoders, prefetch); every new thread may get
    an arena of its own that keeps its freed pages, so without a cap a long-lived process grows run after
    run. A cap the user set (``MALLOC_ARENA_MAX``) is left alone. Called by the headless commands, which own
    their process; a ComfyUI server is started with ``MALLOC_ARENA_MAX`` instead (README).
    """
    import ctypes
    import ctypes.util
    import os
    import sys

    if not sys.platform.startswith("linux") or os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-8, int(arenas)))  # -8: M_ARENA_MAX
    except (OSError, AttributeError):  # not glibc
        return False


def prefer_expandable_segments() -> bool:
    """Ask PyTorch's CUDA allocator for expandable segments (unless the user configured it); returns whether set.

    Under a memory cap a long run fragments the cache: a 12 GB-capped run ran out of memory with 4.4 GiB
    reserved but unusable (BENCHMARKS.md, GPU memory caps). Expandable segments grow one mapping instead. The
    setting is read when CUDA starts; where it already started, it is applied to the allocator directly.
    """
    import os

    if os.environ.get("PYTORCH_CUDA_ALLOC_CONF") or os.environ.get("PYTORCH_ALLOC_CONF"):
        return False
    os.environ["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
    try:
        import torch

        if torch.cuda.is_initialized():
            torch.cuda.memory._set_allocator_settings("expandable_segments:True")
    except (ImportError, AttributeError, RuntimeError):  # no torch / an older torch: the variable alone
        pass
    return True


def release_library_caches(prefixes: tuple[str, ...] = LIBRARY_CACHE_MODULES) -> int:
    """Clear the functools caches of already imported library modules (nothing is imported); returns how many."""
    import sys

    cleared = 0
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith(prefixes):
            continue
        for value in list(vars(module).values()):
            members = list(vars(value).values()) if isinstance(value, type) else [value]
            for member in members:
                for cache in _lru_wrappers(member):
                    if cache.cache_info().currsize:
                        cache.cache_clear()
                        cleared += 1
    return cleared
