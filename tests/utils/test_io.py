"""Atomic writes: whole files or the old ones, never a half-written file; ordinary permissions."""

from __future__ import annotations

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
