"""Every GLB we write passes the Khronos glTF-Validator with no error, warning, info or hint.

Runs the npm package ``gltf-validator`` through ``tests/gltf_validate.cjs`` with node. The package
is looked up in NODE_PATH, in ``npm root -g`` and in ``tests/node_modules``; install it with
``npm i -g gltf-validator``. Skips only when node or the package is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from body4d_core import export
from body4d_core.data import Bodies, BodyFlag

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "gltf_validate.cjs"
INSTALL = "npm i -g gltf-validator"


def _node_path() -> str:
    """NODE_PATH that reaches gltf-validator: the caller's, npm's global root and tests/node_modules."""
    parts = [p for p in os.environ.get("NODE_PATH", "").split(os.pathsep) if p]
    npm = shutil.which("npm")
    if npm:
        try:
            root = subprocess.run([npm, "root", "-g"], capture_output=True, text=True, timeout=60).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            root = ""
        if root:
            parts.append(root)
    parts.append(str(HERE / "node_modules"))
    return os.pathsep.join(parts)


def validate(paths: list[Path]) -> list[dict]:
    """The validator's report for each file ({errors, warnings, infos, hints, messages}); skips if unavailable."""
    node = shutil.which("node")
    if node is None:
        pytest.skip(f"node is not installed (needed for the glTF validator: {INSTALL})")
    env = {**os.environ, "NODE_PATH": _node_path()}
    proc = subprocess.run([node, str(SCRIPT), *map(str, paths)], capture_output=True, text=True, env=env, timeout=300)
    if proc.returncode == 3:
        pytest.skip(f"the npm package gltf-validator is not installed ({INSTALL})")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    reports = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(reports) == len(paths), proc.stdout
    return reports


def _issues(report: dict) -> list[str]:
    return [f"{m['code']} ({m['pointer']}): {m['message']}" for m in report["messages"]]


def _sphere_with_loose_vertices(t: int = 6) -> Bodies:
    """An icosphere per person plus vertices no face uses, a repeated-index face and a zero-area face:
    what a body model's vertex list can hold (the finding: 60 zero normals on unused vertices)."""
    import trimesh

    ico = trimesh.creation.icosphere(subdivisions=1, radius=0.3)
    base = np.asarray(ico.vertices, np.float32)
    nv = base.shape[0]
    loose = np.array([[1, 1, 1], [2, 0, 0], [0.1, 0.1, 0.1], [0.1, 0.1, 0.1], [0.1, 0.1, 0.1]], np.float32)
    verts = np.concatenate([base, loose])
    faces = np.concatenate([np.asarray(ico.faces, np.int32),
                            [[nv + 2, nv + 3, nv + 4],  # distinct indices, one position: zero area
                             [0, 1, 0]]]).astype(np.int32)  # a repeated index
    b = Bodies.empty([2, 5], t, (120, 160))
    p = {k: v.copy() for k, v in b.params.items()}
    p["cam_t"][:] = [0.0, 0.1, 3.0]
    p["cam_t"][1, :, 0] = np.linspace(-0.5, 0.5, t)
    flags = np.full((2, t), BodyFlag.VISIBLE, np.uint8)
    flags[0, 0] = flags[0, 3] = BodyFlag.MISSING  # absent on the first frame and in the middle
    flags[1, -1] = BodyFlag.MISSING  # absent on the last frame
    wobble = np.random.default_rng(4).normal(scale=0.01, size=(2, t, verts.shape[0], 3)).astype(np.float32)
    wobble[:, :, nv + 2:] = 0.0  # the zero-area face stays degenerate on every frame
    return b.replace(params=p, flags=flags, vertices=verts[None, None] + wobble, faces=faces)


def test_animated_glbs_pass_the_validator_cleanly(tmp_path: Path) -> None:
    bodies = _sphere_with_loose_vertices()
    folder = export.write_glb(bodies, tmp_path / "glb", fps=24.0)
    one = Bodies.empty([9], 1, (8, 8)).replace(flags=np.ones((1, 1), np.uint8), vertices=bodies.vertices[:1, :1],
                                                 faces=bodies.faces)
    export.write_glb(one, folder, prefix="single_frame")
    (folder / "no_normals.glb").write_bytes(export.glb_bytes(bodies, 1, 24.0, with_normals=False))
    files = sorted(folder.glob("*.glb"))
    assert len(files) == 4
    for report in validate(files):
        assert (report["errors"], report["warnings"], report["infos"], report["hints"]) == (0, 0, 0, 0), \
            f"{report['file']}: {_issues(report)}"


def test_every_vertex_gets_a_unit_normal(tmp_path: Path) -> None:
    import pygltflib

    bodies = _sphere_with_loose_vertices()
    path = tmp_path / "p.glb"
    path.write_bytes(export.glb_bytes(bodies, 0, 24.0))
    g = pygltflib.GLTF2.load(str(path))
    blob = g.binary_blob()
    nv = bodies.vertices.shape[2]
    for mesh in g.meshes:
        acc = g.accessors[mesh.primitives[0].attributes.NORMAL]
        view = g.bufferViews[acc.bufferView]
        n = np.frombuffer(blob, np.float32, acc.count * 3, view.byteOffset).reshape(-1, 3)
        assert n.shape[0] == nv
        np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1.0, atol=1e-5)
        np.testing.assert_array_equal(n[nv - 5:], np.tile(export.FALLBACK_NORMAL, (5, 1)))  # loose / zero-area
        idx = g.accessors[mesh.primitives[0].indices]
        assert idx.count == 3 * (bodies.faces.shape[0] - 1)  # the repeated-index face is dropped


def test_the_validator_catches_zero_normals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the fallback (the renderer's raw normals) the same file fails: this test can fail."""
    import torch

    from body4d_core.render import vertex_normals

    monkeypatch.setattr(export, "_normals", lambda v, f: vertex_normals(torch.from_numpy(v), torch.from_numpy(f)).numpy())
    path = tmp_path / "bad.glb"
    path.write_bytes(export.glb_bytes(_sphere_with_loose_vertices(), 1, 24.0))
    report = validate([path])[0]
    assert report["errors"] > 0
    assert {m["code"] for m in report["messages"] if m["severity"] == 0} == {"ACCESSOR_VECTOR3_NON_UNIT"}
