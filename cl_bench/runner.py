"""The task-stream loop (DESIGN §3): one model, a new Lightning Trainer per task, every task
evaluated after every task, results written atomically after each row."""

from __future__ import annotations

import logging
import math
import resource
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from cl_bench.config import build, check_node
from cl_bench.errors import ConfigError
from cl_bench.evaluation import evaluate_task
from cl_bench.models.lit import LitTask
from cl_bench.results import write_json, write_results

log = logging.getLogger(__name__)
# Lightning's banner lines ("GPU available: False", tips) are noise in a stream of many Trainers
logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
logging.getLogger("lightning.pytorch.accelerators.cuda").setLevel(logging.WARNING)
warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
warnings.filterwarnings("ignore", message=".*treespec.*")
warnings.filterwarnings("ignore", message=".*does not have many workers.*")


@dataclass
class RunOutput:
    """What :func:`run` returns: the final metrics and the trained objects (for inspection)."""

    metrics: dict
    model: torch.nn.Module
    strategy: object
    run_dir: Path


def _make_trainer(cfg: DictConfig, run_dir: Path, task_name: str, epochs: int) -> L.Trainer:
    hw = cfg.hardware
    logger = False
    if cfg.get("logger") and cfg.logger.get("_target_"):
        logger = build(cfg.logger, "logger", save_dir=str(run_dir / "logs"), name=task_name)
    try:
        return L.Trainer(max_steps=cfg.train.max_steps, max_epochs=epochs,
                         accelerator=hw.accelerator, devices=hw.devices,
                         precision=hw.precision, deterministic=hw.deterministic,
                         logger=logger, enable_checkpointing=False, enable_model_summary=False,
                         enable_progress_bar=cfg.train.progress_bar, default_root_dir=str(run_dir),
                         log_every_n_steps=cfg.train.log_every_n_steps)
    except (MisconfigurationException, ValueError, RuntimeError) as e:
        raise ConfigError(f"hardware: Lightning refused accelerator={hw.accelerator!r}, "
                          f"devices={hw.devices!r}, precision={hw.precision!r}: {e}") from None


def _count(params) -> int:
    return sum(p.numel() for p in params)


def run(cfg: DictConfig, run_dir: str | Path) -> RunOutput:
    """Run ``cfg.tasks`` through ``cfg.strategy`` on ``cfg.backbone``; write results to ``run_dir``.

    Returns:
        :class:`RunOutput` with the final metrics (also in ``run_dir/metrics.json``).

    Raises:
        ConfigError, DataError, TrainingError: user-caused problems, with rows done so far kept.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.hardware.num_threads)

    for key in ("strategy", "backbone", "tasks"):  # fail on any bad key before heavy work
        check_node(cfg[key], key)
    if cfg.get("logger") and cfg.logger.get("_target_"):
        check_node(cfg.logger, "logger")
    strategy = build(cfg.strategy, "strategy")
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # the same init whatever comes next
    model = build(cfg.backbone, "backbone")  # before the data: a bad checkpoint fails fast
    stream = build(cfg.tasks, "tasks")
    names = [t.name for t in stream]
    if not stream or len(set(names)) != len(names):
        raise ConfigError(f"tasks: expected a non-empty stream of uniquely named tasks, got {names}")
    torch.manual_seed(cfg.seed + 1)  # heads: independent of how the data were made (cache or not)
    for task in stream:
        channels = task.train[0]["image"].shape[0]
        if channels != model.encoder.in_channels:
            raise ConfigError(f"task {task.name!r} has {channels}-channel images but "
                              f"backbone.in_channels is {model.encoder.in_channels}; make them agree")
        model.add_head(task)
    strategy.setup(model, stream)

    extra = {"strategy": strategy.name, "seed": cfg.seed, "tasks": cfg.tasks.get("name"),
             "backbone": cfg.backbone.get("name"), "run_dir": str(run_dir)}
    rows, details, timing, params = {}, {}, {"tasks": {}}, {"tasks": {}}
    t0 = time.perf_counter()

    gpu = cfg.hardware.accelerator in ("gpu", "cuda") and torch.cuda.is_available()
    device, bf16 = ("cuda" if gpu else "cpu"), cfg.hardware.precision.startswith("bf16")

    def evaluate_row(label: str) -> float:
        start = time.perf_counter()
        scores = {t.name: evaluate_task(model, strategy, t, cfg.train.eval_batch_size, device, bf16)
                  for t in stream}
        rows[label] = [scores[t.name][t.metric] for t in stream]
        details[label] = scores
        return time.perf_counter() - start

    timing["init_eval_s"] = evaluate_row("init")
    write_results(run_dir, stream, rows, details, extra)

    for t, task in enumerate(stream):
        log.info("task %d/%d: %s (%s)", t + 1, len(stream), task.name, task.kind)
        strategy.before_task(t, task)
        trainable = _count(strategy.trainable_parameters())
        total = _count(model.parameters())
        backbone_total = _count(p for n, p in model.encoder.named_parameters() if "lora_" not in n)
        adapters = _count(p for n, p in model.backbone.named_parameters()
                          if "lora_" in n and f".{task.name}." in n)
        params["tasks"][task.name] = {
            "trainable": trainable, "total": total, "trainable_pct": 100.0 * trainable / total,
            "backbone": backbone_total, "head": _count(model.heads[task.name].parameters()),
            "adapter": adapters, "adapter_pct_of_backbone": 100.0 * adapters / backbone_total}
        params["backbone_params"] = backbone_total
        write_json(run_dir / "params.json", params)

        loader = DataLoader(task.train, batch_size=cfg.train.batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(cfg.seed * 1000 + t))
        start = time.perf_counter()
        epochs = math.ceil(cfg.train.max_steps / max(len(loader), 1))  # max_steps decides
        trainer = _make_trainer(cfg, run_dir, task.name, epochs)
        trainer.fit(LitTask(model, strategy, task, t), train_dataloaders=loader)
        strategy.after_task(t, task)
        train_s = time.perf_counter() - start
        eval_s = evaluate_row(f"after_{task.name}")
        strategy.save(run_dir, t, task)
        timing["tasks"][task.name] = {"train_s": train_s, "eval_s": eval_s}
        timing["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        timing["total_s"] = time.perf_counter() - t0
        write_json(run_dir / "timing.json", timing)
        metrics = write_results(run_dir, stream, rows, details, extra)
    return RunOutput(metrics, model, strategy, run_dir)
