"""One writer per run directory.

A run holds an OS file lock (the ``filelock`` library: ``fcntl.flock`` on POSIX, ``msvcrt`` on
Windows) on ``<run_dir>/.clbench.lock`` from before it writes anything until it ends, and records
who holds it in ``<run_dir>/.clbench.lock.json`` (host, PID, start time). A second ``clbench`` on
the same directory (a duplicate ``resume=``, a SLURM requeue while the old job still runs, two
sweeps with one ``hydra.sweep.dir``) is refused with one line naming the holder instead of
interleaving its writes with the first. The operating system drops the lock when the holding
process dies, however it dies (``kill -9``, OOM, a node failure on a local disk), so a stale lock is
taken over by the next run without anyone deleting files. On a network file system the lock is as
good as its ``flock`` support (NFSv4 and Lustre with ``flock`` mounts provide it).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from filelock import FileLock, Timeout

from cl_bench.errors import RunDirBusy

LOCK_NAME = ".clbench.lock"


class RunLock:
    """Context manager: hold ``run_dir``'s lock for the duration of a run.

    Args:
        run_dir: the run directory (created if missing).

    Raises:
        RunDirBusy: on entry, if another live process holds the lock (names its host, PID and
            start time, and the directory); nothing in ``run_dir`` is changed.
    """

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.owner_path = self.run_dir / (LOCK_NAME + ".json")
        self._lock = FileLock(str(self.path), timeout=0)

    def __enter__(self) -> "RunLock":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except Timeout:
            raise RunDirBusy(f"{self.run_dir} is in use by another clbench ({self._holder()}); "
                              "wait for it to end or stop it, then run again (a killed run's lock "
                              "is released by the system); nothing was changed") from None
        owner = {"host": socket.gethostname(), "pid": os.getpid(),
                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        self.owner_path.write_text(json.dumps(owner) + "\n")
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.owner_path.unlink(missing_ok=True)
        finally:
            self._lock.release()

    def _holder(self) -> str:
        try:
            o = json.loads(self.owner_path.read_text())
            return f"host {o['host']}, PID {o['pid']}, since {o['since']}"
        except (OSError, ValueError, KeyError):
            return "holder unknown"
