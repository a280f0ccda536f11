"""Saved results are all-or-nothing on disk, and a damaged or incomplete one is one clear sentence.

Faults are real where the OS allows it (a file-size limit makes the kernel fail the write with
EFBIG part-way through, like a full disk) and injected otherwise (ENOSPC from a writer).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import signal
import zipfile
from pathlib import Path

import numpy as np
import pytest

from body4d_core import export
from body4d_core.atomic import TMP_TAG, OutputWriteError
from body4d_core.data import (Amodal, Bodies, BodyFlag, Camera, Clip, ObjectPrompt, Prompts, ResultFileError, Tracks,
                              pack_masks)
from body4d_core.errors import InputError

SQUARE = np.array([[-0.5, -0.5, 0], [0.5, -0.5, 0], [0.5, 0.5, 0], [-0.5, 0.5, 0]], np.float32)
FACES = np.array([[0, 1, 2], [0, 2, 3]], np.int32)


def _bodies(t: int = 4, nv: int = 4) -> Bodies:
    b = Bodies.empty([3, 8], t, (64, 48))
    rng = np.random.default_rng(0)
    p = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in b.params.items()}
    p["cam_t"][:] = [0.1, 0.2, 2.0]
    flags = np.full((2, t), BodyFlag.VISIBLE, np.uint8)
    flags[0, min(2, t - 1)] = BodyFlag.MISSING
    verts = np.tile(SQUARE[None, None], (2, t, 1, 1)) if nv == 4 else rng.normal(size=(2, t, nv, 3))
    return b.replace(params=p, flags=flags, vertices=verts.astype(np.float32), faces=FACES,
                     keypoints_2d=rng.uniform(0, 40, size=(2, t, 70, 2)).astype(np.float32),
                     keypoints_3d=rng.normal(size=(2, t, 70, 3)).astype(np.float32))


def _examples() -> dict[str, object]:
    masks = np.zeros((2, 3, 9, 13), bool)
    masks[:, :, 2:6, 3:9] = True
    return {
        "clip": Clip(25.0, 3, (9, 13)),
        "prompts": Prompts([ObjectPrompt(1, 0, np.array([[3.0, 4.0]]), np.array([1])),
                            ObjectPrompt(2, 1, box=np.array([1, 1, 8, 8]))], (9, 13), 3),
        "tracks": Tracks.from_masks([1, 2], masks),
        "amodal": Amodal([1, 2], np.zeros((2, 3), bool), pack_masks(masks), (9, 13)),
        "camera": Camera.from_focal(30.0, (9, 13), 3, "manual"),
        "bodies": _bodies(),
    }


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if TMP_TAG in p.name)


@contextlib.contextmanager
def _file_size_limit(limit: int):
    """Make the kernel refuse writes past ``limit`` bytes (EFBIG, like a full disk) inside the block."""
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, old_handler)


# --------------------------------------------------------------------------- atomic writes


@pytest.mark.skipif(os.name != "posix", reason="file-size limits are POSIX")
def test_write_failing_mid_file_leaves_no_bodies_npz(tmp_path: Path) -> None:
    """The finding: a write that failed at ~12 KB left a bodies.npz that loaded without vertices."""
    bodies = _bodies(t=30, nv=500)  # ~360 KB of vertices: the write fails in the middle
    with _file_size_limit(12_000), pytest.raises(OutputWriteError, match=r"could not write .*bodies\.npz") as info:
        bodies.save_npz(tmp_path / "bodies.npz")
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []  # neither the final name nor a temporary


@pytest.mark.skipif(os.name != "posix", reason="file-size limits are POSIX")
def test_failed_rewrite_keeps_the_previous_complete_file(tmp_path: Path) -> None:
    path = _bodies(t=2).save_npz(tmp_path / "bodies.npz")
    before = path.read_bytes()
    with _file_size_limit(len(before) + 4096), pytest.raises(OutputWriteError):
        _bodies(t=30, nv=500).save_npz(path)
    assert path.read_bytes() == before and Bodies.load_npz(path).num_frames == 2
    assert _leftovers(tmp_path) == []


def test_disk_full_while_writing_a_member(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = np.lib.format.write_array

    def write_array(fid, arr, *args, **kwargs):
        if arr.ndim == 4:  # the vertices / keypoints members
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fid, arr, *args, **kwargs)

    monkeypatch.setattr(np.lib.format, "write_array", write_array)
    with pytest.raises(OutputWriteError, match=r"^the disk is full while writing .*params\.npz: free space"):
        export.save_params(_bodies(), tmp_path / "params.npz")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.name != "posix", reason="file-size limits are POSIX")
def test_mp4_write_failure_leaves_nothing(tmp_path: Path) -> None:
    frames = np.random.default_rng(3).integers(0, 255, (20, 64, 64, 3), np.uint8)  # noise: large packets
    with _file_size_limit(8_000), pytest.raises(OutputWriteError, match=r"v\.mp4"):
        export.write_mp4(tmp_path / "v.mp4", frames, fps=10, preset="ultrafast")
    assert list(tmp_path.iterdir()) == []


def test_mp4_error_mid_stream_keeps_the_old_video(tmp_path: Path) -> None:
    path = export.write_mp4(tmp_path / "v.mp4", np.zeros((2, 16, 16, 3), np.uint8), fps=5)
    before = path.read_bytes()

    def frames():
        yield np.zeros((16, 16, 3), np.uint8)
        yield np.zeros((8, 8, 3), np.uint8)  # a bad frame after one was encoded

    with pytest.raises(InputError, match="expected 16x16"):
        export.write_mp4(path, frames(), fps=5, image_size=(16, 16))
    assert path.read_bytes() == before and _leftovers(tmp_path) == []


@pytest.mark.parametrize("fmt", ["ply", "obj"])
def test_meshes_disk_full_leaves_only_complete_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     fmt: str) -> None:
    import trimesh

    calls = {"n": 0}
    real = Path.write_bytes

    def write_third_fails(self, data):  # each mesh file's bytes are written in one call (trimesh's or packed)
        if ".body4d-tmp" in self.name and self.parent.parent == tmp_path / "m":  # a temporary in person_<id>/
            calls["n"] += 1
            if calls["n"] == 3:
                real(self, b"ply\nhalf")  # a partial file, then the disk is full
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_third_fails)
    with pytest.raises(OutputWriteError, match="disk is full"):
        export.write_meshes(_bodies(), tmp_path / "m", fmt=fmt)
    written = sorted((tmp_path / "m").rglob(f"*.{fmt}"))
    assert [p.name for p in written] == [f"00000000.{fmt}", f"00000001.{fmt}"]
    for p in written:  # the two written before the failure are complete meshes
        assert len(trimesh.load(p, process=False).faces) == 2
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("fill", ["binary chunk", "final file"])
def test_glb_disk_full_leaves_no_glb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fill: str) -> None:
    import tempfile

    real_open, real_tmp = open, tempfile.TemporaryFile

    class Full:  # a file on a disk that fills after half of what is written to it
        def __init__(self, fh):
            self.fh, self.written = fh, 0

        def write(self, data):
            self.written += len(data)
            if self.written > 64:
                self.fh.write(data[: len(data) // 2])
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.fh.write(data)

        def __getattr__(self, name):
            return getattr(self.fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.fh.__exit__(*exc)

    if fill == "binary chunk":
        monkeypatch.setattr(tempfile, "TemporaryFile", lambda *a, **k: Full(real_tmp(*a, **k)))
    else:
        monkeypatch.setattr("builtins.open", lambda f, mode="r", *a, **k: Full(real_open(f, mode, *a, **k))
                            if ".glb" in str(f) and "w" in mode else real_open(f, mode, *a, **k))
    with pytest.raises(OutputWriteError, match=r"disk is full while writing .*body4d_person_3\.glb"):
        export.write_glb(_bodies(), tmp_path / "glb")
    assert list((tmp_path / "glb").iterdir()) == []


# --------------------------------------------------------------------------- loading damaged results


@pytest.mark.parametrize("kind", list(_examples()))
def test_every_kind_round_trips_and_lists_its_members(tmp_path: Path, kind: str) -> None:
    obj = _examples()[kind]
    path = obj.save_npz(tmp_path / f"{kind}.npz")
    with np.load(path) as data:
        head = json.loads(str(data["__header__"]))
        assert head["members"] == sorted(set(data.files) - {"__header__"})
    back = type(obj).load_npz(path)
    for k, v in obj.to_arrays().items():
        assert np.array_equal(back.to_arrays()[k], v, equal_nan=True)


def _rewrite(src: Path, dst: Path, drop: str | None = None, header: str | None = None,
             change: dict | None = None) -> Path:
    """Copy an .npz member by member, dropping one, replacing the header text or some arrays."""
    with np.load(src) as data:
        arrays = {k: data[k] for k in data.files if k != drop}
    if header is not None:
        arrays["__header__"] = np.array(header)
    arrays.update(change or {})
    np.savez(dst, **arrays)
    return dst


@pytest.mark.parametrize("kind", list(_examples()))
def test_missing_required_member(tmp_path: Path, kind: str) -> None:
    cls = type(_examples()[kind])
    src = _examples()[kind].save_npz(tmp_path / "ok.npz")
    for member in cls.REQUIRED:
        bad = _rewrite(src, tmp_path / f"no_{member}.npz", drop=member)
        with pytest.raises(ResultFileError, match=rf"no_{member}\.npz .*incomplete: member\(s\) {member} missing"
                                                  r".*re-run the stage"):
            cls.load_npz(bad)


def test_interrupted_write_missing_optional_member_is_refused(tmp_path: Path) -> None:
    """What the old writer left on a full disk: the header and early members, no vertices."""
    src = _bodies().save_npz(tmp_path / "ok.npz")
    bad = _rewrite(src, tmp_path / "bodies.npz", drop="vertices")
    with pytest.raises(ResultFileError, match=r"bodies\.npz .*incomplete: member\(s\) vertices missing"):
        Bodies.load_npz(bad)


@pytest.mark.parametrize("kind", list(_examples()))
def test_truncated_file(tmp_path: Path, kind: str) -> None:
    obj = _examples()[kind]
    path = obj.save_npz(tmp_path / f"{kind}.npz")
    data = path.read_bytes()
    for cut in (0, 10, len(data) // 2, len(data) - 5):
        path.write_bytes(data[:cut])
        with pytest.raises(ResultFileError, match=rf"{kind}\.npz .*cannot be read as an \.npz.*re-run") as info:
            type(obj).load_npz(path)
        assert "\n" not in str(info.value)


def test_corrupted_member_bytes(tmp_path: Path) -> None:
    path = _bodies(t=30, nv=200).save_npz(tmp_path / "bodies.npz")
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("vertices.npy")
    raw = bytearray(path.read_bytes())
    mid = info.header_offset + 200 + info.compress_size // 2
    raw[mid:mid + 64] = bytes(64)
    path.write_bytes(bytes(raw))
    with pytest.raises(ResultFileError, match=r"is damaged: member 'vertices' cannot be read"):
        Bodies.load_npz(path)


def test_header_not_json_or_pickled(tmp_path: Path) -> None:
    src = _examples()["camera"].save_npz(tmp_path / "ok.npz")
    bad = _rewrite(src, tmp_path / "camera.npz", header="{kind: camera")
    with pytest.raises(ResultFileError, match=r"camera\.npz .*damaged header"):
        Camera.load_npz(bad)
    bad = _rewrite(src, tmp_path / "list.npz", header="[1, 2]")
    with pytest.raises(ResultFileError, match="not a JSON object"):
        Camera.load_npz(bad)
    pickled = tmp_path / "pickled.npz"
    with np.load(src) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["__header__"] = np.array([{"kind": "camera"}], dtype=object)
    np.savez(pickled, **arrays)
    with pytest.raises(ResultFileError, match="holds Python objects") as info:
        Camera.load_npz(pickled)
    assert "allow_pickle" not in str(info.value)


def test_not_an_npz_at_all(tmp_path: Path) -> None:
    garbage = tmp_path / "tracks.npz"
    garbage.write_bytes(b"<html>not found</html>")
    with pytest.raises(ResultFileError, match=r"tracks\.npz .*cannot be read as an \.npz \(not a zip archive: "
                                              r"it starts with b'<htm'\)") as info:
        Tracks.load_npz(garbage)
    assert "pickle" not in str(info.value) and "Python objects" not in str(info.value)
    garbage.write_bytes(b"")
    with pytest.raises(ResultFileError, match="it is empty"):
        Tracks.load_npz(garbage)
    single = tmp_path / "single.npz"
    np.save(single.with_suffix(".npy"), np.zeros(3))
    single.with_suffix(".npy").rename(single)
    with pytest.raises(ResultFileError, match="single array"):
        Tracks.load_npz(single)
    wrong = _examples()["camera"].save_npz(tmp_path / "camera.npz")
    with pytest.raises(ResultFileError, match="holds 'camera', expected 'tracks'"):
        Tracks.load_npz(wrong)


def test_header_missing_a_field(tmp_path: Path) -> None:
    src = _examples()["clip"].save_npz(tmp_path / "ok.npz")
    bad = _rewrite(src, tmp_path / "clip.npz", header=json.dumps({"kind": "clip", "version": 1}))
    with pytest.raises(ResultFileError, match=r"clip\.npz .*does not hold valid data \(missing entry 'fps'\)"):
        Clip.load_npz(bad)


def test_bad_shape_names_the_file(tmp_path: Path) -> None:
    src = _bodies().save_npz(tmp_path / "ok.npz")
    bad = _rewrite(src, tmp_path / "bodies.npz", change={"param.shape": np.zeros((2, 4, 3), np.float32)})
    with pytest.raises(ResultFileError, match=r"bodies\.npz .*does not hold valid data .*shape"):
        Bodies.load_npz(bad)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("member", ["param.cam_t", "param.body_pose", "vertices", "keypoints_3d", "keypoints_2d"])
def test_nonfinite_body_values_on_present_frames_refused(tmp_path: Path, member: str, value: float) -> None:
    src = _bodies().save_npz(tmp_path / "ok.npz")
    with np.load(src) as data:
        arr = data[member].copy()
    arr[1, 3].flat[0] = value  # person 8 is present on frame 3
    bad = _rewrite(src, tmp_path / "bodies.npz", change={member: arr})
    with pytest.raises(ResultFileError, match=rf"member '{member}' holds NaN or infinite values"):
        Bodies.load_npz(bad)


def test_nan_on_a_missing_frame_is_allowed(tmp_path: Path) -> None:
    """Values on MISSING frames are undefined by contract; a NaN there must not refuse the file."""
    src = _bodies().save_npz(tmp_path / "ok.npz")
    with np.load(src) as data:
        pose = data["param.body_pose"].copy()
    pose[0, 2] = np.nan  # person 3 is missing on frame 2
    back = Bodies.load_npz(_rewrite(src, tmp_path / "bodies.npz", change={"param.body_pose": pose}))
    assert np.isnan(back.params["body_pose"][0, 2]).all() and np.isfinite(back.params["body_pose"][1]).all()


def test_legitimate_nans_load(tmp_path: Path) -> None:
    """Amodal IoU is NaN where not computed; a prompt without a box stores a NaN box row."""
    ex = _examples()
    amodal = Amodal.load_npz(ex["amodal"].save_npz(tmp_path / "amodal.npz"))
    assert np.isnan(amodal.iou).all()
    prompts = Prompts.load_npz(ex["prompts"].save_npz(tmp_path / "prompts.npz"))
    assert prompts.items[0].box is None and prompts.items[1].box.tolist() == [1, 1, 8, 8]


def test_nonfinite_refused_in_other_kinds(tmp_path: Path) -> None:
    ex = _examples()
    cases = [("camera", "intrinsics", (0, 0), np.nan), ("tracks", "scores", (1, 2), np.inf),
             ("prompts", "points", (0, 1), np.nan), ("prompts", "boxes", (1, 2), np.inf),
             ("amodal", "iou", (0, 0), np.inf)]
    for kind, member, where, value in cases:
        src = ex[kind].save_npz(tmp_path / f"{kind}_ok.npz")
        with np.load(src) as data:
            arr = data[member].astype(np.float32)
        arr[where] = value
        bad = _rewrite(src, tmp_path / f"{kind}.npz", change={member: arr})
        with pytest.raises(ResultFileError, match=rf"{kind}\.npz .*member '{member}' holds"):
            type(ex[kind]).load_npz(bad)


def test_prompt_counts_inconsistent(tmp_path: Path) -> None:
    src = _examples()["prompts"].save_npz(tmp_path / "ok.npz")
    bad = _rewrite(src, tmp_path / "prompts.npz", change={"counts": np.array([3, 0], np.int64)})
    with pytest.raises(ResultFileError, match="point counts do not match"):
        Prompts.load_npz(bad)


def test_workflow_convert_output_is_atomic(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from body4d_core.interop.workflows import main

    info = json.loads((Path(__file__).resolve().parent / "fixtures" / "object_info_0.33.0_subset.json").read_text())
    oi = tmp_path / "object_info.json"
    oi.write_text(json.dumps({"EmptyLatentImage": info["EmptyLatentImage"]}))
    src = tmp_path / "wf.json"
    src.write_text(json.dumps({"nodes": [{"id": 1, "type": "EmptyLatentImage", "mode": 0, "inputs": [], "outputs": [],
                                          "widgets_values": [64, 64, 1]}], "links": []}))
    (tmp_path / "taken.json").mkdir()  # the output name is taken by a folder
    assert main([str(src), "--object-info", str(oi), "-o", str(tmp_path / "taken.json")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: could not write") and "taken.json" in err[0]
    assert main([str(src), "--object-info", str(oi), "-o", str(tmp_path / "api.json")]) == 0
    assert json.loads((tmp_path / "api.json").read_text())["1"]["inputs"]["width"] == 64
    assert _leftovers(tmp_path) == []
