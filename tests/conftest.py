"""Shared fixtures: Hydra compose of the real config tree, shrunk for a 2-core CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import cl_bench.config  # noqa: F401  (registers the schema)

CONF = str(Path(__file__).resolve().parents[1] / "conf")
torch.set_num_threads(2)


def tiny_overrides(cache_dir: Path) -> list[str]:
    """A 32^3, 4-subject, 3-step version of the default job."""
    return ["tasks.size=32", "tasks.n_train=4", "tasks.n_val=1", "tasks.n_test=2",
            f"tasks.cache_dir={cache_dir}",
            "backbone=vit3d_tiny", "backbone.weights=null", "backbone.num_layers=4", "train.max_steps=3",
            "train.progress_bar=false", "logger=csv",
            "hardware.precision=32-true"]  # the same numbers on every CPU (auto: bf16 on some)


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
