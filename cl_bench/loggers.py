"""One Lightning logger per run, shared by the stream's Trainers, plus R rows as they come.

``conf/logger``: ``csv`` (Lightning ``CSVLogger``, default), ``wandb`` (Lightning ``WandbLogger``,
offline unless the user sets ``WANDB_MODE``), ``none``. Training curves are logged by
:class:`~cl_bench.training.LitTask` under ``<task>/...`` names, so one logger serves all tasks.
After every row of R the runner calls :func:`log_row`: the row's values as ``R/<task>`` metrics
(x-axis: rows done), and, where the logger supports them (W&B), the matrix as a table and the
heatmap as an image.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf

from cl_bench.config import build


def make_logger(cfg: DictConfig, run_dir: Path) -> Logger | None:
    """Build ``cfg.logger`` with ``save_dir=<run_dir>/logs`` and log the resolved config.

    W&B runs offline (``WANDB_MODE=offline``) unless ``WANDB_MODE`` is already set; its files
    land in ``<run_dir>/logs/wandb/``. A W&B run without ``logger.name`` / ``logger.group`` is
    named and grouped by :func:`wandb_name_and_group` (the run's strategy, stream and seed; the
    sweep, or the run directory), and Lightning's ``anonymous=None`` is not passed on (wandb
    would warn that the setting has no effect).

    Args:
        cfg: the run's config; run_dir: the run's output directory.

    Returns:
        The logger, or ``None`` for ``logger=none``.

    Raises:
        ConfigError: a bad key or value in ``cfg.logger``.
    """
    node = cfg.get("logger")
    if not node or not node.get("_target_"):
        return None
    extra = {}
    wandb = "wandb" in str(node._target_).lower()
    if wandb:
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_SILENT", "true")
        name, group = wandb_name_and_group(cfg, run_dir)
        extra = {"name": node.get("name") or name, "group": node.get("group") or group}
    save_dir = Path(run_dir) / "logs"
    save_dir.mkdir(parents=True, exist_ok=True)
    logger = build(node, "logger", save_dir=str(save_dir), **extra)
    init = getattr(logger, "_wandb_init", None)  # WandbLogger's wandb.init arguments
    if wandb and isinstance(init, dict) and init.get("anonymous") is None:
        init.pop("anonymous", None)  # wandb >= 0.19 warns about any value, None included
    logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    return logger


def wandb_name_and_group(cfg: DictConfig, run_dir: Path) -> tuple[str, str]:
    """A W&B run's name and group when the config sets none.

    Args:
        cfg: the run's config (``strategy.name``, ``tasks.name``, ``seed``);
        run_dir: the run's output directory.

    Returns:
        ``(name, group)``: the name ``<strategy>_<stream>_seed<seed>`` (``lora_brain_seg_age_seed0``);
        the group the sweep directory's name in a multirun (every job and seed of the sweep
        together), else the run directory's name (a resumed run stays in its group).
    """
    name = f"{cfg.strategy.get('name')}_{cfg.tasks.get('name')}_seed{cfg.seed}"
    group = Path(run_dir).name
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:
            group = Path(hc.sweep.dir).name
    except (ImportError, ValueError):  # not under Hydra's command line (a test, a notebook)
        pass
    return name, group


def log_row(logger: Logger | None, row_index: int, label: str, df: pd.DataFrame,
            heatmap: Path) -> None:
    """Log row ``label`` of R (``df``: rows so far × tasks) to ``logger``.

    Args:
        row_index: 0 for ``init``, t for the row after task t (1-based), used as the step.
        heatmap: path of the PNG written for the rows so far.
    """
    if logger is None:
        return
    values = {f"R/{task}": float(v) for task, v in df.loc[label].items()}
    logger.log_metrics(values, step=row_index)
    if hasattr(logger, "log_table"):  # W&B: the matrix so far as a table
        logger.log_table("R_matrix", dataframe=df.reset_index(), step=row_index)
    if hasattr(logger, "log_image"):
        logger.log_image("heatmap", [str(heatmap)], step=row_index)
    logger.save()


def close_logger(logger: Logger | None) -> None:
    """Flush and close (ends the W&B run so its offline directory is complete)."""
    if logger is None:
        return
    logger.finalize("success")
    experiment = getattr(logger, "_experiment", None)
    if experiment is not None and hasattr(experiment, "finish"):
        experiment.finish()
