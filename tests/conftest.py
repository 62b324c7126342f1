"""Shared fixtures: Hydra compose of the real config tree, shrunk for a 2-core CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import cl_bench.config  # noqa: F401  (registers the schema)

CONF = str(Path(__file__).resolve().parents[1] / "conf")
#: pytest-xdist workers (``make test`` runs two on the 2-core machine) get one intra-op thread
#: each, and so do the runs they make (``hardware.num_threads``): two workers of two threads on
#: two cores only contend. A plain ``pytest`` keeps two threads.
THREADS = 1 if os.environ.get("PYTEST_XDIST_WORKER") else 2
torch.set_num_threads(THREADS)


def tiny_overrides(cache_dir: Path) -> list[str]:
    """A 32^3, 4-subject, 3-step version of the default job."""
    return ["tasks.size=32", "tasks.n_train=4",
            "tasks.age_n_train=null", "tasks.age_n_test=null", "tasks.n_val_by_task=null",
            "tasks.n_val=1", "tasks.n_test=2",
            f"tasks.cache_dir={cache_dir}",
            "backbone=vit3d_tiny", "backbone.weights=null", "backbone.num_layers=4", "train.max_steps=3",
            "train.progress_bar=false", "logger=csv",
            "hardware.precision=32-true",  # the same numbers on every CPU (auto: bf16 on some)
            f"hardware.num_threads={THREADS}"]


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> Path:
    """One generated-volume cache for the whole session."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def compose_cfg(data_cache):
    """``compose_cfg(*overrides)`` -> the composed config with the tiny overrides applied first."""
    def _compose(*overrides: str):
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            return compose("config", overrides=tiny_overrides(data_cache) + list(overrides))
    return _compose


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """``cli(*args, module="cl_bench.cli")`` -> a ``subprocess.CompletedProcess`` of the command
    line run *in this process* (``cl_bench.cli.main`` or ``cl_bench.report.cli.main`` with
    ``sys.argv`` set), from ``tmp_path`` with ``CLBENCH_CACHE=tmp_path/cache``: the same code
    path and exit codes as ``python -m``, without a new interpreter's 5-8 s of imports. Two
    command-line smoke tests still start real processes (test_cli_errors, test_terminal)."""
    import logging
    import subprocess
    import sys

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLBENCH_CACHE", str(tmp_path / "cache"))
    root = logging.getLogger()

    def _run(*args: str, module: str = "cl_bench.cli") -> subprocess.CompletedProcess:
        from cl_bench import cli as clbench_cli
        from cl_bench.report import cli as report_cli

        main = {"cl_bench.cli": clbench_cli.main, "cl_bench.report.cli": report_cli.main}[module]
        monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)  # main() sets it for Hydra
        monkeypatch.setattr(sys, "argv", [module, *args])
        handlers, level = list(root.handlers), root.level  # Hydra's job logging adds its own
        capsys.readouterr()
        code = 0
        try:
            main() if module == "cl_bench.cli" else main(list(args))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        finally:
            for h in root.handlers[:]:
                if h not in handlers:
                    root.removeHandler(h)
                    h.close()
            root.setLevel(level)
        out = capsys.readouterr()
        return subprocess.CompletedProcess([module, *args], code, out.out, out.err)

    return _run
