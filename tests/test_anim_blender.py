"""Optional: Blender (the ``bpy`` module) imports the scene GLB and the BVH; joint count, frame range and
joint positions must match our rig. Runs where ``bpy`` imports in this interpreter or in the Python named
by $BODY4D_BPY_PYTHON (e.g. a venv with ``pip install bpy``); skipped otherwise."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from body4d_core.anim import write_animation

from .test_anim_scene import FPS, IDS, J, T, _bodies, _camera, _reference_joints, _rig

BLENDER_SCRIPT = textwrap.dedent('''
    import bpy, json, sys
    glb, bvh_all, bvh_one, fps = sys.argv[-4], sys.argv[-3], sys.argv[-2], int(sys.argv[-1])
    out = {}

    def heads(frames):
        res = {}
        for f in frames:
            bpy.context.scene.frame_set(f)
            res[f] = {b.name: list(o.matrix_world @ b.head) for o in bpy.data.objects if o.type == "ARMATURE"
                      for b in o.pose.bones}
        return res

    def reset():
        bpy.ops.wm.read_factory_settings(use_empty=True)
        bpy.context.scene.render.fps = fps

    reset()
    bpy.ops.import_scene.gltf(filepath=glb)
    out["glb_bones"] = {o.name: len(o.data.bones) for o in bpy.data.objects if o.type == "ARMATURE"}
    out["glb_meshes"] = sorted(o.name for o in bpy.data.objects if o.type == "MESH" and o.name.startswith("person_"))
    out["glb_cameras"] = sorted(o.name for o in bpy.data.objects if o.type == "CAMERA")
    out["glb_shape_keys"] = {o.name: len(o.data.shape_keys.key_blocks) if o.data.shape_keys else 0
                             for o in bpy.data.objects if o.type == "MESH" and o.name.startswith("person_")}
    out["glb_range"] = [list(a.frame_range) for a in bpy.data.actions]
    out["glb_heads"] = {}
    for name in out["glb_bones"]:  # one armature at a time: every person's joints have the same names
        arm = bpy.data.objects[name]
        res = {}
        for f in (0, 3, 6):
            bpy.context.scene.frame_set(f)
            res[f] = {b.name: list(arm.matrix_world @ b.head) for b in arm.pose.bones}
        out["glb_heads"][name] = res
    for key, path in (("all", bvh_all), ("one", bvh_one)):
        reset()
        bpy.ops.import_anim.bvh(filepath=path, global_scale=0.01, use_fps_scale=False, update_scene_fps=True)
        out[key + "_bones"] = {o.name: len(o.data.bones) for o in bpy.data.objects if o.type == "ARMATURE"}
        out[key + "_range"] = [list(a.frame_range) for a in bpy.data.actions]
        out[key + "_heads"] = heads((1, 4, 7))
    print("RESULT" + json.dumps(out))
''')


def _bpy_python() -> str | None:
    if importlib.util.find_spec("bpy") is not None:
        return sys.executable
    return os.environ.get("BODY4D_BPY_PYTHON") or None


def _gl(p) -> np.ndarray:
    """Blender's z-up world -> the export's y-up world."""
    return np.array([p[0], p[2], -p[1]])


def test_blender_imports_scene_and_bvh(tmp_path) -> None:
    python = _bpy_python()
    if python is None:
        pytest.skip("Blender's Python module is not installed (pip install bpy, or set BODY4D_BPY_PYTHON)")
    rig, bodies = _rig(), _bodies(expr_person=0)  # person 7 with expression morph targets (sparse)
    write_animation(bodies, rig, _camera(), tmp_path, FPS)
    (tmp_path / "blend.py").write_text(BLENDER_SCRIPT)
    run = subprocess.run([python, str(tmp_path / "blend.py"), str(tmp_path / "body4d_scene.glb"),
                          str(tmp_path / "body4d_all.bvh"), str(tmp_path / "body4d_person_7.bvh"), str(int(FPS))],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    line = next((x for x in run.stdout.splitlines() if x.startswith("RESULT")), None)
    assert line is not None, run.stdout[-2000:] + run.stderr[-2000:]
    r = json.loads(line[len("RESULT"):])
    assert r["glb_bones"] == {f"person_{i}": J for i in IDS}
    assert r["glb_meshes"] == sorted(f"person_{i}_mesh" for i in IDS) and r["glb_cameras"] == ["camera"]
    assert r["glb_range"] == [[0.0, float(T - 1)]]
    assert r["glb_shape_keys"] == {"person_7_mesh": 3, "person_2_mesh": 0, "person_5_mesh": 0}  # basis + 2 morphs
    assert r["one_bones"] == {"body4d_person_7": J + 1} and r["one_range"] == [[1.0, float(T)]]
    assert sum(r["all_bones"].values()) == len(IDS) * (J + 1)
    for i, oid in enumerate(IDS):
        ref = _reference_joints(rig, bodies, i)
        for f, joints in r["glb_heads"][f"person_{oid}"].items():
            if bodies.present[i, int(f)]:
                got = np.stack([_gl(joints[f"joint_{k:03d}"]) for k in range(J)])
                np.testing.assert_allclose(got, ref[int(f)], atol=1e-4, err_msg=f"glb person {oid} frame {f}")
        for f, joints in r["all_heads"].items():  # BVH frame 1 is the clip's frame 0
            if bodies.present[i, int(f) - 1]:
                got = np.stack([_gl(joints[f"p{oid}_joint_{k:03d}"]) for k in range(J)])
                np.testing.assert_allclose(got, ref[int(f) - 1], atol=1e-4, err_msg=f"bvh person {oid} frame {f}")
    ref = _reference_joints(rig, bodies, 0)
    got = np.stack([_gl(r["one_heads"]["4"][f"p7_joint_{k:03d}"]) for k in range(J)])
    np.testing.assert_allclose(got, ref[3], atol=1e-4)
