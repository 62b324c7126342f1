"""cl_bench.files: every file (and adapter directory) a run writes appears whole or not at all."""

from __future__ import annotations

import pytest

from cl_bench.errors import StorageError
from cl_bench.files import atomic_dir, atomic_write, write_text


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "m.json"
    write_text(path, "old")
    write_text(path, "new")
    assert path.read_text() == "new"
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.json"]


def test_a_failed_write_keeps_the_old_file_and_names_it(tmp_path):
    path = tmp_path / "m.json"
    write_text(path, "old")

    def fail(tmp):
        open(tmp, "w").write("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(StorageError, match="m.json.*No space left.*previous version is unchanged"):
        atomic_write(path, fail)
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]


def test_atomic_dir_swaps_a_whole_directory(tmp_path):
    target = tmp_path / "adapters" / "task_a"
    atomic_dir(target, lambda d: (d / "a.txt").write_text("1"))
    atomic_dir(target, lambda d: (d / "b.txt").write_text("2"))  # a rerun of the same save
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["task_a"]


def test_a_failed_directory_write_keeps_the_old_one(tmp_path):
    target = tmp_path / "task_a"
    atomic_dir(target, lambda d: (d / "a.txt").write_text("1"))

    def fail(d):
        (d / "half.txt").write_text("x")
        raise OSError(13, "Permission denied")

    with pytest.raises(StorageError, match="task_a.*Permission denied"):
        atomic_dir(target, fail)
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["task_a"]
