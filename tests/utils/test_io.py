"""Atomic writes: whole files or the old ones, never a half-written file; ordinary permissions."""

from __future__ import annotations

import errno
import json
import os
import stat

import pytest

from smartfed.utils.io import atomic_path, write_dir_atomic, write_json_atomic, write_text_atomic


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "summary.json"
    write_json_atomic(target, {"round": 1})
    # A crash half-way through writing the new content.
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text('{"round": 2, "trunc')
        raise RuntimeError("killed")
    assert json.loads(target.read_text()) == {"round": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_files_get_the_umask_permissions_not_mkstemp_private_ones(tmp_path):
    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644


def test_a_directory_is_replaced_only_once_complete(tmp_path):
    target = tmp_path / "final"
    write_dir_atomic(target, lambda d: (d / "weights").write_text("old"))

    def failing(directory):
        (directory / "weights").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_dir_atomic(target, failing)
    assert (target / "weights").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["final"]


@pytest.mark.parametrize(
    ("code", "hint"),
    [
        (errno.ENOSPC, "No space left on device; free some space"),
        (errno.EACCES, "Permission denied; make it writable"),
        (errno.EROFS, "Read-only file system; the file system is read-only"),
    ],
)
def test_storage_refusals_are_one_line_naming_the_file(tmp_path, monkeypatch, code, hint):
    from smartfed.errors import StorageError
    from smartfed.utils import io

    target = tmp_path / "metrics.jsonl"
    target.write_text("old\n")

    def refused(path):
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(io, "fsync_path", refused)
    with pytest.raises(StorageError) as caught:
        write_text_atomic(target, "new\n")
    assert str(caught.value).startswith(f"cannot write {target}: {hint}")
    assert "\n" not in str(caught.value)
    with pytest.raises(StorageError, match=f"cannot write {tmp_path / 'final'}: "):
        write_dir_atomic(tmp_path / "final", lambda d: (d / "w").write_text("x"))
    assert target.read_text() == "old\n"  # the old file, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]  # no temporaries


def test_a_safetensors_io_error_is_a_storage_error(tmp_path):
    from smartfed.utils.io import storage_error

    exc = RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, .. })")
    assert "No space left on device" in str(storage_error(exc, tmp_path / "final"))
    assert storage_error(RuntimeError("shape mismatch"), tmp_path) is None


def test_damaged_json_reads_are_one_line_naming_the_file(tmp_path):
    from smartfed.errors import DamagedFileError
    from smartfed.utils.io import read_json, read_jsonl

    path = tmp_path / "summary.json"
    with pytest.raises(DamagedFileError, match=f"{path} is missing"):
        read_json(path)
    path.write_text('{"rounds": 3')
    with pytest.raises(DamagedFileError, match="is damaged \\(not valid JSON"):
        read_json(path)
    path.write_text("[]")
    with pytest.raises(DamagedFileError, match="a JSON list, expected dict"):
        read_json(path)
    rows = tmp_path / "metrics.jsonl"
    rows.write_text('{"round": 1}\n{"round": 2, "tr')
    with pytest.raises(DamagedFileError, match=r"metrics\.jsonl:2 is damaged"):
        read_jsonl(rows)
    assert read_jsonl(tmp_path / "none.jsonl", missing_ok=True) == []
