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


@pytest.fixture
def set_umask():
    """``set_umask(mask)``: the process's umask for the test, restored afterwards."""
    import os

    previous = os.umask(0o022)
    os.umask(previous)
    yield os.umask
    os.umask(previous)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_written_files_and_directories_get_the_umasks_modes(tmp_path, set_umask, mask):
    """Teammates on a shared machine read results like ``cli.log``: the atomic writer's
    temporary names are private (0600 / 0700), the renamed results are not."""
    import os
    import stat

    from cl_bench.files import write_json

    set_umask(mask)
    write_json(tmp_path / "metrics.json", {"a": 1})
    write_text(tmp_path / "matrix.csv", "row\n")
    write_text(tmp_path / "matrix.csv", "row,a\n")  # replaced: the new file's mode again

    def adapter(d):
        (d / "adapter_config.json").write_text("{}")
        fd = os.open(d / "adapter_model.safetensors", os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)  # a writer that makes its file private (safetensors does)
        (d / "sub").mkdir(mode=0o700)

    atomic_dir(tmp_path / "adapters" / "t0", adapter)
    atomic_dir(tmp_path / "adapters" / "t0", adapter)  # a rerun swaps the directory
    plain = tmp_path / "plain.log"
    plain.write_text("as cli.log is made")
    file_mode, dir_mode = 0o666 & ~mask, 0o777 & ~mask
    assert stat.S_IMODE(plain.stat().st_mode) == file_mode
    for p in [tmp_path / "metrics.json", tmp_path / "matrix.csv",
              *(tmp_path / "adapters").rglob("*")]:
        want = dir_mode if p.is_dir() else file_mode
        assert stat.S_IMODE(p.stat().st_mode) == want, (p, oct(p.stat().st_mode))


def test_a_runs_results_get_the_umasks_modes(cli, tmp_path, set_umask):
    """A real run under umask 027: matrix.csv, metrics.json, heatmap.png, state.pt, the
    adapters ... all 0640 (directories 0750), as Hydra's cli.log is."""
    import stat

    set_umask(0o027)
    proc = cli("tasks=digits", "train.max_steps=1", "train.batch_size=16", "logger=none",
               "train.progress_bar=false", "hardware.num_threads=1", "eval.probes=false",
               f"hydra.run.dir={tmp_path}/run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "run"
    files = {p.relative_to(run_dir).as_posix(): stat.S_IMODE(p.stat().st_mode)
             for p in run_dir.rglob("*")}
    for name in ("matrix.csv", "metrics.json", "heatmap.png", "checkpoints/state.pt",
                 "checkpoints/config.yaml", "cli.log"):
        assert files.get(name) == 0o640, (name, files)
    wrong = {k: oct(v) for k, v in files.items()
             if v != (0o750 if (run_dir / k).is_dir() else 0o640)}
    assert not wrong, wrong
