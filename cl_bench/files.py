"""Every file a run writes goes through here: written under a temporary name in the same
directory, then renamed over the target, so a reader, or a run killed mid-write, sees the old
file or the new one, never a part (docs/architecture.md §1). Floor 0: no heavy imports, so data
caches, strategies and scripts use it as the result files do."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from cl_bench.errors import StorageError


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename over ``path`` (same directory, so the rename is
    atomic): a reader, or a run killed mid-write, sees the old file or the new one, never a part.

    Raises:
        StorageError: the write failed (disk full, file-size limit, permissions), naming
        ``path``; the old ``path`` is untouched and the temporary file removed.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
        os.close(fd)
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        previous = "its previous version is unchanged" if path.exists() else "it did not exist"
        raise StorageError(f"cannot write {path}: {e.strerror or e} ({previous}); free space or "
                           "fix the permissions, then resume the run") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    def w(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, default=float)
            f.write("\n")
    atomic_write(path, w)


def write_text(path: Path, text: str) -> None:
    """Atomically write ``text`` (UTF-8)."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def atomic_dir(path: Path, write) -> None:
    """Call ``write(tmp_dir)`` to fill a fresh temporary directory beside ``path``, then put it
    in ``path``'s place: a reader sees the old directory or the whole new one (an old one is
    renamed aside and removed, so between the two renames neither exists).

    Raises:
        StorageError: the write failed, naming ``path``; an old ``path`` is untouched.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
        write(tmp)
        if path.exists():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old."))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except OSError as e:
        raise StorageError(f"cannot write {path}/: {e.strerror or e}; free space or fix the "
                           "permissions, then resume the run") from None
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
