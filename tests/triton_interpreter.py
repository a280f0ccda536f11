"""Run a check script under Triton's CPU interpreter (a fresh process: the mode is read at import)."""

import os
import subprocess
import sys

import pytest

from .media import REPO


def run_interpreted(script: str) -> str:
    """Run ``script`` with TRITON_INTERPRET=1 from the repo root; fail with its stderr, return its stdout."""
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    res = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout
