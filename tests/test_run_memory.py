"""Repeated headless runs in one process keep nothing alive: tensors, modules and Python memory stay flat.

Real tiny-checkpoint runs (SAM-3 with points, SAM-3D-Body, smoothing, render, exports) on 2 small
frames: after a warm-up run, later runs must not add live tensors or nn.Modules (library caches
holding SAM-3 position embeddings were the leak), and traced Python memory may grow only a little.
"""

from __future__ import annotations

import os
import gc
import logging
import sys
import tracemalloc

import pytest
import torch

from body4d_core.pipeline import run_pipeline
from body4d_core.runtime import release_library_caches

from .media import REPO
from .tiny_runs import SAMPLE, small_options, tiny_models


def drop_captured_records() -> None:
    """Forget the log records pytest's handlers hold (see the test's docstring)."""
    for handler in logging.getLogger().handlers:
        if isinstance(getattr(handler, "records", None), list):
            handler.records.clear()  # in place: pytest also keeps a reference to the list itself


def census() -> tuple[int, int, int]:
    """(live tensors, their bytes, live nn.Modules) after a full collection."""
    gc.collect()
    tensors = [o for o in gc.get_objects() if isinstance(o, torch.Tensor)]
    modules = sum(1 for o in gc.get_objects() if isinstance(o, torch.nn.Module))
    nbytes = sum(t.numel() * t.element_size() for t in tensors if not t.is_meta)
    return len(tensors), nbytes, modules


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny_models(tmp_path_factory)


def test_repeated_runs_keep_nothing_alive(models, tmp_path):
    """drop_captured_records(): pytest keeps every log record, and a record whose argument is a caught exception keeps
    that exception's traceback, its frames and their locals (the SAM-3 model) alive, which no run outside
    pytest does; the records are dropped so the census sees what the pipeline itself keeps."""
    opts = small_options(models, frames=2, side=64, write_glb=False)
    baseline = census()
    run_pipeline(SAMPLE, tmp_path / "warm-up", opts)  # imports, library constants
    drop_captured_records()
    after_warmup = census()
    tracemalloc.start()
    try:
        counts = []
        for i in range(2):
            summary = run_pipeline(SAMPLE, tmp_path / f"run{i}", opts)
            assert summary.num_frames == 2 and summary.obj_ids == [1]
            del summary
            drop_captured_records()
            counts.append(census())
            if i == 0:
                traced_after_first = tracemalloc.get_traced_memory()[0]
        traced_growth = tracemalloc.get_traced_memory()[0] - traced_after_first
    finally:
        tracemalloc.stop()
    assert counts[0] == counts[1] == after_warmup, (baseline, after_warmup, counts)
    assert counts[1][2] - baseline[2] < 50  # no model survives a run (a few library activation modules do)
    assert counts[1][1] < baseline[1] + (1 << 20)  # nor do weights or feature maps
    assert traced_growth < 2 << 20, f"Python memory grew {traced_growth / 2**20:.1f} MiB in one run"


def test_release_host_memory_trims_on_linux():
    from body4d_core.runtime import release_host_memory

    assert release_host_memory() is sys.platform.startswith("linux")


def test_release_library_caches_clears_functools_caches(monkeypatch):
    import functools
    import sys
    import types

    mod = types.ModuleType("transformers.models.sam3.fake_for_test")

    @functools.lru_cache(maxsize=4)
    def embed(n: int) -> torch.Tensor:
        return torch.zeros(n)

    class Holder:
        build = staticmethod(functools.wraps(embed)(lambda n: embed(n)))  # a wrapper around the cache

    mod.embed, mod.Holder = embed, Holder
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    Holder.build(3)
    embed(5)
    assert embed.cache_info().currsize == 2
    assert release_library_caches() >= 1
    assert embed.cache_info().currsize == 0


ARENA_PROBE = r"""
import ctypes, ctypes.util, os, sys, tempfile, threading
from body4d_core.runtime import limit_malloc_arenas
print(limit_malloc_arenas() if sys.argv[1] == "cap" else "none")
barrier = threading.Barrier(12)
def work():
    barrier.wait()
    blobs = [bytearray(4096) for _ in range(200)]  # small blocks: malloc from this thread's arena
    del blobs
threads = [threading.Thread(target=work) for _ in range(12)]
[t.start() for t in threads]; [t.join() for t in threads]
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.fopen.restype = ctypes.c_void_p
path = tempfile.mktemp()
fp = libc.fopen(path.encode(), b"w"); libc.malloc_info(0, ctypes.c_void_p(fp)); libc.fclose(ctypes.c_void_p(fp))
print(open(path).read().count("<heap nr="))
os.remove(path)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc arenas are Linux-only")
def test_the_commands_cap_malloc_arenas():
    import subprocess

    def heaps(mode: str, **env: str) -> tuple[str, int]:
        run_env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | env
        out = subprocess.run([sys.executable, "-c", ARENA_PROBE, mode], capture_output=True, text=True, check=True,
                             cwd=REPO, env=run_env).stdout.split()
        return out[0], int(out[1])

    assert heaps("cap") == ("True", 2)  # the main arena and one more: threads share them
    flag, uncapped = heaps("none")
    assert uncapped > 2  # without the cap each new thread took an arena of its own
    assert heaps("cap", MALLOC_ARENA_MAX="4")[0] == "False"  # the user's own setting is left alone


def test_a_capped_run_asks_for_expandable_segments_unless_the_user_configured_the_allocator(monkeypatch, tmp_path):
    from body4d_core import cli
    from body4d_core.runtime import prefer_expandable_segments

    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    monkeypatch.delenv("PYTORCH_ALLOC_CONF", raising=False)
    assert prefer_expandable_segments() and os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:128")
    assert not prefer_expandable_segments() and os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "max_split_size_mb:128"

    calls = []
    monkeypatch.setattr(cli, "prefer_expandable_segments", lambda: calls.append(1) or True)
    missing = str(tmp_path / "missing.mp4")
    assert cli.main(["run", "-i", missing, "-o", str(tmp_path / "a"), "--vram_gb", "12"]) == cli.EXIT_ERROR
    assert calls == [1]
    assert cli.main(["run", "-i", missing, "-o", str(tmp_path / "b")]) == cli.EXIT_ERROR
    assert calls == [1]  # no cap: the allocator is left as it is
