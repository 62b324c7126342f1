"""Every file a run writes goes through here: written under a temporary name in the same
directory, then renamed over the target, so a reader, or a run killed mid-write, sees the old
file or the new one, never a part (docs/architecture.md §1). Floor 0: no heavy imports, so data
caches, strategies and scripts use it as the result files do.

Every file and directory written here gets the mode an ordinary ``open`` / ``mkdir`` would give
it under the process's umask (0644 / 0755 under the usual 022), as ``cli.log`` has: the
temporary names (:func:`tempfile.mkstemp`, :func:`tempfile.mkdtemp`) are private (0600 / 0700)
until they are renamed into place, so teammates on a shared machine could not read the results.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from cl_bench.errors import StorageError


def umask() -> int:
    """The process's file-mode creation mask (e.g. ``0o022``).

    Read from ``/proc/self/status`` where Linux has it (no change to the process); elsewhere
    set and restored at once with :func:`os.umask`.

    Returns:
        the umask's permission bits.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def share_like_umask(path: str | Path) -> None:
    """Give ``path`` (a file, or a directory and everything in it) the modes ``open`` /
    ``mkdir`` give under the umask: 0666 & ~umask for a file (0777 & ~umask if it was
    executable), 0777 & ~umask for a directory. Symbolic links are left alone.

    Args:
        path: a file or a directory just written under a private temporary name.

    Raises:
        OSError: a mode cannot be changed.
    """
    mask = umask()
    path = Path(path)
    entries = [path]
    if path.is_dir() and not path.is_symlink():
        entries += list(path.rglob("*"))
    for p in entries:
        if p.is_symlink():
            continue
        full = 0o777 if p.is_dir() or os.stat(p).st_mode & 0o111 else 0o666
        os.chmod(p, full & ~mask)


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
        share_like_umask(tmp)  # mkstemp's file is 0600: readable like any other new file
        os.replace(tmp, path)
    except OSError as e:
        previous = "its previous version is unchanged" if path.exists() else "it did not exist"
        raise StorageError(f"cannot write {path}: {e.strerror or e} ({previous}); free space or "
                           "fix the permissions, then resume the run") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON (:func:`atomic_write`).

    Args:
        path: the file to write.
        obj: anything :func:`json.dump` takes (numbers it cannot, e.g. numpy's, as floats).

    Raises:
        StorageError: the write failed.
    """
    def w(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, default=float)
            f.write("\n")
    atomic_write(path, w)


def write_text(path: Path, text: str) -> None:
    """Atomically write ``text`` (UTF-8; :func:`atomic_write`).

    Args:
        path: the file to write.
        text: its whole content.

    Raises:
        StorageError: the write failed.
    """
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def atomic_dir(path: Path, write) -> None:
    """Call ``write(tmp_dir)`` to fill a fresh temporary directory beside ``path``, then put it
    in ``path``'s place: a reader sees the old directory or the whole new one (an old one is
    renamed aside and removed, so between the two renames neither exists). The directory and
    its files get the umask's modes (:func:`share_like_umask`).

    Args:
        path: the directory to write.
        write: called with the temporary directory; fills it.

    Raises:
        StorageError: the write failed, naming ``path``; an old ``path`` is untouched.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
        write(tmp)
        share_like_umask(tmp)  # mkdtemp's directory is 0700, some writers' files 0600
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
