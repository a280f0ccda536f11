"""Atomic writes: a file appears complete under its final name, or not at all."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from body4d_core.atomic import (TMP_TAG, OutputWriteError, atomic_path, remove_temporaries, temp_path_for,
                                write_bytes_atomic)


def test_write_then_rename(tmp_path: Path) -> None:
    out = write_bytes_atomic(tmp_path / "a.bin", b"hello")
    assert out.read_bytes() == b"hello"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_temp_name_keeps_suffix_and_folder(tmp_path: Path) -> None:
    tmp = temp_path_for(tmp_path / "x.npz")
    assert tmp.parent == tmp_path and tmp.suffix == ".npz" and TMP_TAG in tmp.name


def test_error_inside_block_leaves_nothing_and_keeps_old_file(tmp_path: Path) -> None:
    target = tmp_path / "keep.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_disk_full_becomes_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(OutputWriteError, match="disk is full") as info:
        with atomic_path(tmp_path / "big.bin") as tmp:
            tmp.write_bytes(b"x")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert str(tmp_path / "big.bin") in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_remove_temporaries_only_touches_ours(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    leftover = temp_path_for(tmp_path / "sub" / "m.ply")
    leftover.write_text("partial")
    (tmp_path / "sub" / "real.ply").write_text("ok")
    assert remove_temporaries(tmp_path) == [leftover]
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["real.ply"]
