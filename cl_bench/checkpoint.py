"""Resumable runs: task-boundary state, Lightning's mid-task checkpoints, config identity.

A run directory holds (docs/architecture.md §1)::

    checkpoints/config.yaml        the run's config (without run-local keys), written at start
    checkpoints/state.pt           after the last finished task: model + strategy state, R rows,
                                   per-row details, timing, params, RNG states, tasks_done (the
                                   data cursor: index of the next task)
    checkpoints/<task>/mid_task.ckpt
                                   Lightning checkpoint of the task in progress (model, optimiser,
                                   loop counters = the cursor within the task, RNG states,
                                   strategy state), written every ``train.checkpoint_every_n_epochs``
                                   epochs; removed once the task's boundary state is saved

Resuming replays ``strategy.before_task`` for the finished tasks (it builds structure: adapters,
heads' trainability), loads ``state.pt``, then continues the task in progress from its
``mid_task.ckpt`` if there is one. Mid-task checkpoints are taken at epoch ends only, where
Lightning resumes exactly; with ``hardware.deterministic`` on CPU a resumed run's ``matrix.csv``
equals an uninterrupted run's byte for byte (tested in ``tests/test_resume.py``). Under DDP the
period counts unsharded batches, so a mid-task checkpoint may fall inside an epoch and the
continuation is close but not guaranteed bit-identical; task-boundary resumes stay exact.
"""

from __future__ import annotations

import random
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from cl_bench.config import RUN_LOCAL_KEYS
from cl_bench.errors import ConfigError, DataError
from cl_bench.files import atomic_write

#: bump when the layout of state.pt changes
STATE_VERSION = 1


def ckpt_dir(run_dir: Path) -> Path:
    """``<run_dir>/checkpoints``."""
    return Path(run_dir) / "checkpoints"


def mid_task_dir(run_dir: Path, task_name: str) -> Path:
    """Directory of Lightning's checkpoint for the task in progress."""
    return ckpt_dir(run_dir) / task_name


def mid_task_path(run_dir: Path, task_name: str) -> Path | None:
    """The task's mid-task checkpoint file, or ``None`` if there is none."""
    p = mid_task_dir(run_dir, task_name) / "mid_task.ckpt"
    return p if p.is_file() else None


def check_mid_task(run_dir: Path, path: Path) -> None:
    """Refuse a mid-task checkpoint that cannot be read whole (truncated by a full disk or a
    copy, not a torch file) or that cl_bench did not write (another Lightning or torch
    checkpoint) before Lightning loads it; nothing is deleted.

    Raises:
        DataError: naming the file and what to do (move it away: the task then restarts from
        its beginning, the finished tasks are kept).
    """
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()  # CRC of every member: a truncated file fails here
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        bad = str(e) or type(e).__name__
    if not bad:
        try:  # memory-mapped: the keys are read, the tensors are not
            keys = set(torch.load(path, map_location="cpu", weights_only=False, mmap=True))
        except Exception as e:
            keys, bad = set(), (str(e).strip().splitlines() or [type(e).__name__])[0]
        if not bad and not {"cl_bench", "pytorch-lightning_version", "state_dict"} <= keys:
            bad = "not written by cl_bench: no 'cl_bench' / Lightning entries"
    if bad:
        raise DataError(f"resume: {path} is not a readable cl_bench checkpoint ({bad}); nothing "
                        f"was changed. Move it out of {path.parent} to restart this task from "
                        "its beginning (finished tasks are kept)")


def identity(cfg: DictConfig) -> dict:
    """The part of ``cfg`` that decides a run's results (unresolved, run-local keys dropped)."""
    c = OmegaConf.to_container(cfg, resolve=False)
    c.pop("hydra", None)
    for key in RUN_LOCAL_KEYS:
        node, *rest = key.split(".")
        if not rest:
            c.pop(node, None)
        elif isinstance(c.get(node), dict):
            c[node].pop(rest[0], None)
    if c.get("search") == {"trial": None}:  # not a search trial: as a run made before the
        c.pop("search")                      # search keys existed (issue 27), so it resumes
    return c


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def config_diff(a: dict, b: dict) -> list[str]:
    """``["train.max_steps: 2 → 50", ...]``: the flattened keys whose values differ, ``a``'s
    value first (``<absent>`` where a config lacks the key).

    A node whose ``name`` differs (another strategy, stream or backbone) is one entry, its
    ``name``'s, rather than every key the two options do not share.

    Args:
        a, b: two configs as plain containers (:func:`identity`).

    Returns:
        the entries, sorted by key.
    """
    fa, fb = _flatten(a), _flatten(b)
    differ = [k for k in sorted(set(fa) | set(fb)) if fa.get(k, "<absent>") != fb.get(k, "<absent>")]
    names = {k for k in differ if k.endswith(".name") and k in fa and k in fb}
    renamed = tuple(k[:-len("name")] for k in names)  # "strategy."
    return [f"{k}: {fa.get(k, '<absent>')!r} → {fb.get(k, '<absent>')!r}" for k in differ
            if k in names or not k.startswith(renamed)]


def saved_config(run_dir: Path) -> DictConfig | None:
    """The config a run directory was started with, or ``None`` if it has none.

    Raises:
        ConfigError: ``checkpoints/config.yaml`` exists but cannot be read.
    """
    path = ckpt_dir(run_dir) / "config.yaml"
    if not path.is_file():
        return None
    try:
        return OmegaConf.load(path)
    except Exception as e:  # any parse error is the file's fault
        raise ConfigError(f"resume: cannot read {path}: {e}") from None


def claim_run_dir(run_dir: Path, cfg: DictConfig, write: bool = True) -> bool:
    """Check ``run_dir`` may hold this run; record the config. Returns True when resuming.

    A directory that already holds a run's ``checkpoints/config.yaml`` is resumed if the config
    matches (the same command again, or a SLURM requeue of the same job); nothing is written
    before the check. ``write=False`` (DDP ranks > 0) only reads.

    Raises:
        ConfigError: the directory holds a run of another config (names the differing keys) or
            results of a run without checkpoints (which cannot be resumed).
    """
    run_dir = Path(run_dir)
    old = saved_config(run_dir)
    mine = identity(cfg)
    if old is not None:
        diff = config_diff(identity(old), mine)
        if diff:
            shown = "; ".join(diff[:6]) + (f"; ... ({len(diff)} keys)" if len(diff) > 6 else "")
            raise ConfigError(
                f"resume: {run_dir} holds a run of another config ({shown}; there → here). "
                f"Resume it with its own config (just `resume={run_dir}`) or start a new run; "
                "nothing was changed on disk")
        return True
    if (run_dir / "matrix.csv").exists():
        raise ConfigError(f"resume: {run_dir} holds results but no checkpoints/config.yaml, so "
                          "it cannot be resumed; start a new run (nothing was changed on disk)")
    if write:
        atomic_write(ckpt_dir(run_dir) / "config.yaml",
                     lambda tmp: OmegaConf.save(OmegaConf.create(mine), tmp))
    return False


def rng_state() -> dict:
    """Python, NumPy and torch (CPU, and CUDA if present) RNG states, as tensors and plain
    values (loadable with ``torch.load(weights_only=True)``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore :func:`rng_state`."""
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class RunState:
    """A run's progress through its stream, kept between tasks in ``checkpoints/state.pt``
    (with the weights, the strategy's state and the RNG states: :meth:`to_dict`).

    Attributes:
        task_names: the stream's task names, in order (a resume on another stream is refused);
        tasks_done: the data cursor, the index of the next task to train;
        rows: R on the test sets, ``{row label: [metric of task j]}`` (labels ``init``,
            ``after_<task>``); details: per row, per task, every score of ``evaluate_task``;
        val_rows, val_details: the same on the validation sets (empty without ``tasks.n_val``);
        other_rows, retrieval: a task-agnostic strategy's R in the other task-id mode and its
            task-retrieval accuracies, per row;
        probes: ``probes.json`` (``movement`` and ``reliance`` per row);
        timing: ``timing.json`` (seconds; ``tasks``, ``total_s``, ``peak_rss_mb`` ...);
        params: ``params.json`` (parameter counts per task).
    """

    task_names: list[str]
    tasks_done: int = 0
    rows: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)
    val_rows: dict = field(default_factory=dict)
    val_details: dict = field(default_factory=dict)
    other_rows: dict = field(default_factory=dict)
    retrieval: dict = field(default_factory=dict)
    probes: dict = field(default_factory=lambda: {"movement": {}, "reliance": {}})
    timing: dict = field(default_factory=lambda: {"tasks": {}})
    params: dict = field(default_factory=lambda: {"tasks": {}})

    def to_dict(self, model_state: dict, strategy_state: dict) -> dict:
        """The ``state.pt`` payload (without ``version`` and ``rng``, which
        :func:`save_boundary` adds): these fields plus the model's and the strategy's state."""
        return {"tasks_done": self.tasks_done, "task_names": list(self.task_names),
                "model": model_state, "strategy": strategy_state, "rows": self.rows,
                "val_rows": self.val_rows, "val_details": self.val_details,
                "probes": self.probes, "other_rows": self.other_rows,
                "retrieval": self.retrieval, "details": self.details, "timing": self.timing,
                "params": self.params}

    @classmethod
    def from_dict(cls, state: dict) -> RunState:
        """The fields of a loaded ``state.pt`` (:func:`load_boundary`); entries an older
        state file lacks (``val_rows``, ``probes`` ...) start empty."""
        out = cls(task_names=list(state["task_names"]), tasks_done=int(state["tasks_done"]),
                  rows=state["rows"], details=state["details"], timing=state["timing"],
                  params=state["params"])
        for name in ("val_rows", "val_details", "other_rows", "retrieval", "probes"):
            if name in state:
                setattr(out, name, state[name])
        return out


def save_boundary(run_dir: Path, state: dict) -> None:
    """Atomically write ``checkpoints/state.pt`` (``state`` gets ``version`` and RNG states)."""
    state = dict(state, version=STATE_VERSION, rng=rng_state())
    atomic_write(ckpt_dir(run_dir) / "state.pt", lambda tmp: torch.save(state, tmp))


def load_boundary(run_dir: Path) -> dict | None:
    """The last task-boundary state, or ``None`` if no task finished yet.

    Raises:
        ConfigError: an unreadable ``state.pt`` or one of another format version.
    """
    path = ckpt_dir(run_dir) / "state.pt"
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"resume: cannot read {path} ({reason}); nothing was changed. It is "
                          "truncated or not a cl_bench state file: restore it, or start the "
                          "run in a new directory") from None
    if not isinstance(state, dict) or "version" not in state:
        raise ConfigError(f"resume: {path} is not a cl_bench state file (no format version); "
                          "nothing was changed")
    if state.get("version") != STATE_VERSION:
        raise ConfigError(f"resume: {path} has format version {state.get('version')}, this "
                          f"cl_bench writes {STATE_VERSION}; resume with the version that made it")
    return state
