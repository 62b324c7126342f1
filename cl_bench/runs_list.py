"""``clbench ls [DIR]``: the runs under ``DIR`` (default ``results/``), one line each.

    $ clbench ls results/
    run                              status       tasks  MFN             overrides
    digits/lora/2026-12-07_18-31-36  complete     3/3    accuracy 0.892  tasks=digits
    digits/lora/2026-12-07_18-40-02  interrupted  1/3    accuracy 0.912  tasks=digits seed=1

A run is a directory with Hydra's record (``.hydra/``) or a ``metrics.json``; its status comes
from the files the run leaves:

- ``complete``: ``metrics.json`` says every task is done;
- ``running``: the run's lock record (``.clbench.lock.json``, :mod:`cl_bench.lock`) names a
  live process on this host (a process on another host is taken as running);
- ``interrupted``: unfinished and resumable (``checkpoints/config.yaml``): Ctrl-C, SIGTERM, a
  crash or a kill after it started; ``clbench resume=<dir>`` continues it;
- ``failed``: unfinished and not resumable (stopped before its first checkpoint, or its metrics
  could not be computed).

``overrides`` are the run's command-line overrides (``.hydra/overrides.yaml``) but the run-local
ones (where results go, threads, the progress bar; ``hidden``); MFN is each metric group's mean
final value (``final_average`` of ``metrics.json``, over the finished tasks of an unfinished
run), rounded as the terminal summary rounds it (:func:`cl_bench.summary.fmt_value`).
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

from cl_bench.summary import fmt_value

#: what every listing leaves out of a run's overrides (Hydra's own keys)
ALWAYS_HIDDEN = ("hydra.",)
#: the listing's columns
COLUMNS = ("run", "status", "tasks", "MFN", "overrides")


def _read_json(path: Path) -> dict:
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _is_run(d: Path) -> bool:
    return (d / ".hydra").is_dir() or (d / "metrics.json").is_file()


def find_runs(root: Path) -> list[Path]:
    """The run directories under ``root`` (``root`` itself if it is one), sorted by path; a
    directory inside a run (its task-agnostic copy, its report) is not another run.

    Args:
        root: the directory to search.

    Returns:
        The run directories.
    """
    if _is_run(root):
        return [root]
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        d = Path(dirpath)
        if d != root and _is_run(d):
            found.append(d)
            dirnames[:] = []  # nothing inside a run is another run
        else:
            dirnames.sort()
    return sorted(found)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def run_status(run: Path) -> str:
    """The status of the run in ``run`` (module docstring): ``complete``, ``running``,
    ``interrupted`` or ``failed``.

    Args:
        run: a run directory.

    Returns:
        The status.
    """
    m = _read_json(run / "metrics.json")
    if m.get("complete"):
        return "complete"
    owner = _read_json(run / ".clbench.lock.json")
    if owner:
        if owner.get("host") != socket.gethostname():
            return "running"
        if isinstance(owner.get("pid"), int) and _alive(owner["pid"]):
            return "running"
    if m.get("error"):
        return "failed"
    if (run / "checkpoints" / "config.yaml").is_file():
        return "interrupted"
    return "failed"


def run_overrides(run: Path, hidden: tuple[str, ...] = ()) -> list[str]:
    """The run's command-line overrides (``.hydra/overrides.yaml``) but Hydra's and
    ``hidden``'s keys.

    Args:
        run: a run directory; hidden: config keys not shown (a key, or its subkeys).

    Returns:
        The overrides as typed (``+tasks.max_tasks=1``); none without Hydra's record.
    """
    from omegaconf import OmegaConf

    path = run / ".hydra" / "overrides.yaml"
    try:
        overrides = [str(o) for o in OmegaConf.to_container(OmegaConf.load(path))]
    except (OSError, ValueError, TypeError):
        return []
    out = []
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        if key.startswith(ALWAYS_HIDDEN) or any(key == h or key.startswith(h + ".")
                                                for h in hidden):
            continue
        out.append(o)
    return out


def run_line(run: Path, root: Path, hidden: tuple[str, ...] = ()) -> list[str]:
    """One run's cells in :data:`COLUMNS` order.

    Args:
        run: the run directory; root: the listed directory (runs are named relative to it);
        hidden: as in :func:`run_overrides`.

    Returns:
        ``[run, status, tasks done/total, MFN per metric group, overrides]``; ``–`` for what
        the run did not record.
    """
    m = _read_json(run / "metrics.json")
    done, total = m.get("tasks_completed"), m.get("num_tasks")
    tasks = f"{done}/{total}" if done is not None and total is not None else "–"
    groups = m.get("groups") or {}
    mfn = ", ".join(f"{name} {fmt_value(g.get('final_average'))}" for name, g in groups.items()
                    if isinstance(g, dict)) or "–"
    name = "." if run == root else str(run.relative_to(root))
    return [name, run_status(run), tasks, mfn, " ".join(run_overrides(run, hidden)) or "–"]


def listing(root: Path, hidden: tuple[str, ...] = ()) -> str:
    """The table ``clbench ls`` prints: a header and one line per run, columns aligned.

    Args:
        root: the directory to list; hidden: as in :func:`run_overrides`.

    Returns:
        The text (a line saying there is no run when there is none).
    """
    rows = [run_line(run, root, hidden) for run in find_runs(root)]
    if not rows:
        return f"no runs under {root}"
    table = [list(COLUMNS)] + rows
    widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1]
                     for r in table)


def main(argv: list[str], hidden: tuple[str, ...] = ()) -> int:
    """``clbench ls [DIR]``: print :func:`listing` of ``DIR`` (default ``results/``).

    Args:
        argv: the arguments after ``ls``; hidden: config keys left out of the overrides (the
            run-local keys, :data:`cl_bench.config.RUN_LOCAL_KEYS`, from ``clbench``).

    Returns:
        The exit code: 0, or 2 for a bad argument or a directory that cannot be listed (one
        line on stderr).
    """
    if any(a in ("-h", "--help") for a in argv):
        print("usage: clbench ls [DIR]   the runs under DIR (default results/): status, tasks "
              "done, MFN, overrides")
        return 0
    if len(argv) > 1 or any(a.startswith("-") for a in argv):
        print(f"clbench ls: error: unexpected argument(s) {' '.join(argv)}; usage: clbench ls "
              "[DIR]", file=sys.stderr)
        return 2
    root = Path(argv[0] if argv else "results")
    if not root.is_dir():
        print(f"clbench ls: error: {root}: "
              f"{'not a directory' if root.exists() else 'no such directory'}", file=sys.stderr)
        return 2
    try:
        print(listing(root, hidden))
    except PermissionError as e:
        print(f"clbench ls: error: cannot read {e.filename or root}: {e.strerror}",
              file=sys.stderr)
        return 2
    return 0
