"""Config schema and validated construction of objects from ``_target_`` nodes.

Top-level keys are typed by :class:`ClBenchConfig` (registered in Hydra's ConfigStore as
``clbench_schema``), so ``seed=abc`` or an unknown top-level key fails at start with the key's
name. Group nodes (``backbone``, ``tasks``, ``strategy``, ``logger``) are checked by :func:`build`
against the signature of their ``_target_`` before anything is constructed.
"""

from __future__ import annotations

import dataclasses
import difflib
import errno
import importlib
import inspect
import os
import re
import tempfile
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import annotated_types as at
from hydra.core.config_store import ConfigStore
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from cl_bench.errors import ClBenchError, ConfigError
from cl_bench.ranges import (NonBlankStr, NonNegativeFloat, NonNegativeInt, PositiveInt,
                             check_value, type_hints)

#: config keys that do not change a run's results: they may differ between a run and its
#: resumption (cl_bench.checkpoint, cl_bench.cli) and never split runs into groups in a report
#: (cl_bench.report)
RUN_LOCAL_KEYS = ("resume", "results_dir", "train.progress_bar", "hardware.num_threads", "logger",
                  "search.objective", "search.spaces", "hardware.fill_uninitialized_memory",
                  "eval.probes")


#: Lightning 2's precision names (``lightning.fabric.connector._PRECISION_INPUT``)
PRECISIONS = ("auto", "64-true", "64", "32-true", "32", "16-mixed", "16", "bf16-mixed", "bf16",
              "16-true", "bf16-true", "transformer-engine", "transformer-engine-float16")
ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "tpu", "auto")


def _device_count(text: str) -> bool:
    """Lightning's ``devices`` given as text: a non-zero int (``"2"``, ``"-1"``)."""
    return re.fullmatch(r"-?\d+", text) is not None and int(text) != 0


#: Lightning devices: a count, -1 (all), "auto", the device indices, or a count as text
Devices = (PositiveInt | Literal[-1, "auto"] | Annotated[list[NonNegativeInt], at.MinLen(1)]
           | Annotated[str, at.Predicate(_device_count), at.Doc("a non-zero int as a string")])


def hint(annotation: Any) -> dict:
    """Field metadata: the range of a field whose annotation OmegaConf cannot type (a
    ``Literal`` choice, a union), written in the vocabulary of :mod:`cl_bench.ranges`; the field
    itself is typed plainly (``str``, ``Any``)."""
    return {"hint": annotation}


# A schema field's range is its annotation, as on the constructors (``max_steps: PositiveInt``;
# OmegaConf types the field by the annotation's base, ``int``), or, where OmegaConf cannot type
# a field by it, ``metadata=hint(...)``; :func:`validate` checks both with ranges.check_value.


@dataclass
class TrainConfig:
    """Per-task training loop settings (a new Lightning Trainer per task)."""

    max_steps: PositiveInt = 600  #: optimiser steps per task
    batch_size: PositiveInt = 2
    eval_batch_size: PositiveInt = 4
    log_every_n_steps: PositiveInt = 10
    progress_bar: bool = True
    #: mid-task checkpoint period (epoch ends; 0 = never)
    checkpoint_every_n_epochs: NonNegativeInt = 5
    #: ... but no mid-task checkpoint sooner than this many seconds after the last (or the start)
    checkpoint_min_interval_s: NonNegativeFloat = 60.0
    #: frozen work once per training sample: a frozen backbone's outputs (seq_lp), LwF's teacher
    #: outputs (cl_bench.models.feature_cache); false recomputes them every step
    cache_frozen_features: bool = True
    #: linear learning-rate warm-up over the first steps of every task, every parameter group
    #: (0 = none; cl_bench.training.LitTask)
    warmup_steps: NonNegativeInt = 0
    #: segmentation class weights of the task loss: none, or median_frequency (Eigen & Fergus
    #: 2015, arXiv 1411.4734) from the task's training labels (cl_bench.models.losses.TaskLoss)
    class_weights: str = field(default="median_frequency",
                               metadata=hint(Literal["none", "median_frequency"]))
    #: steps between validation checks of the task being trained (its metric on its validation
    #: set, val_checks.csv; cl_bench.training.ValidationChecks); 0 = none. A task without a
    #: validation split (tasks.n_val = 0) has no checks. The default (with the two below) was
    #: chosen on validation curves: results/reference/bench/validation_curves
    val_every_n_steps: NonNegativeInt = 100
    #: early stopping: stop a task after this many validation checks in a row without a better
    #: validation metric (0 = off: every task trains max_steps); needs val_every_n_steps > 0
    early_stopping_patience: NonNegativeInt = 1
    #: at the end of a task, go back to the weights of its best validation check (trainable
    #: parameters and buffers); false: keep the last step's
    early_stopping_restore_best: bool = True


@dataclass
class HardwareConfig:
    """Where and how a task trains (``conf/hardware``)."""

    #: Lightning accelerator: cpu, gpu, auto
    accelerator: str = field(default="cpu", metadata=hint(Literal[ACCELERATORS]))
    #: Lightning devices: int, list or "auto"
    devices: Any = field(default=1, metadata=hint(Devices))
    strategy: str = "auto"        #: Lightning strategy: auto, ddp, ddp_spawn, ...
    #: Lightning num_nodes (multi-node DDP)
    num_nodes: PositiveInt = 1
    #: Lightning precision, e.g. 32-true, bf16-mixed; auto: bf16-mixed on a CPU with native
    #: bfloat16 (AMX / AVX512-BF16) for an encoder checked under it (AUTO_BF16), else 32-true
    #: (cl_bench.hardware.resolve_precision)
    precision: str = field(default="auto", metadata=hint(Literal[PRECISIONS]))
    deterministic: bool = True    #: torch deterministic algorithms (bit-reproducible on CPU)
    #: with ``deterministic``: fill every new tensor with NaN (PyTorch's
    #: torch.utils.deterministic.fill_uninitialized_memory, its default), a debugging aid that
    #: exposes kernels reading memory they never wrote; it cost 4-8 % of the main job's step
    #: and changes no result of a correct kernel, so it is off by default
    fill_uninitialized_memory: bool = False
    #: torch.compile the encoder and heads (cl_bench.runner.compile_model); off: 7 min of
    #: compilation on 2 cores for the Swin job (results/reference/bench/swin_speed_options/speed_options.md)
    compile: bool = False
    #: torch intra-op threads
    num_threads: PositiveInt = 2
    slurm: Any = None             #: hardware=slurm: partition, time, cpus, mem, gpus, ... (cli)


@dataclass
class EvalConfig:
    """How the R matrix is measured."""

    #: ``oracle`` (each test sample runs with its own task's adapter and head) or ``predicted``
    #: (the strategy retrieves the task: task-agnostic inference; proteus, duallora)
    task_id: str = field(default="oracle", metadata=hint(Literal["oracle", "predicted"]))
    #: the representation probes after each task (``probes.json``: weight movement per stage,
    #: the reliance probe's rows); false skips them (R and every metric are unchanged)
    probes: bool = True


@dataclass
class SearchConfig:
    """A hyperparameter search's keys (``clbench -m hydra/sweeper=optuna``; cl_bench.search)."""

    #: what the search optimises: a statistic of the validation R, ``val.<stat>`` or
    #: ``val.<metric>.<stat>`` (cl_bench.search.objective; direction from the metric's kind)
    objective: str = "val.maa"
    #: set by the sweeper on each trial (its Optuna trial number): the run evaluates R on the
    #: validation split only and never touches the test split (null: a normal run)
    trial: Optional[NonNegativeInt] = None
    #: per-strategy search spaces of a preset (``{strategy name: {key: sweep}}``), read by the
    #: sweeper's ``params`` through an interpolation (conf/experiment/split_mnist_tuned.yaml)
    spaces: Any = None


#: the largest seed: the runner seeds task t with seed * 1000 + t, within Lightning's 32-bit range
MAX_SEED = (2 ** 32 - 1) // 1000 - 1
Seed = Annotated[int, at.Interval(ge=0, le=MAX_SEED)]


@dataclass
class ClBenchConfig:
    """Schema of the composed config (group contents are checked by :func:`build`)."""

    seed: Seed = 0
    train: TrainConfig = field(default_factory=TrainConfig)
    results_dir: NonBlankStr = "results"
    backbone: Any = None
    tasks: Any = None
    strategy: Any = None
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    logger: Any = None
    experiment: Any = None
    resume: Optional[str] = None  #: a run directory to continue (see cl_bench.checkpoint)


ConfigStore.instance().store(name="clbench_schema", node=ClBenchConfig)


def check_creatable(path: Path, key: str) -> None:
    """Check that directory ``path`` can be made and written, before Hydra makes it (and
    would fail with a traceback).

    Its nearest existing ancestor must be a directory in which a directory can really be made:
    a temporary one is made and removed there, which also catches what permission bits do not
    tell (root on a read-only or virtual file system such as ``/proc``).

    Args:
        path: the directory to be made (or an existing one to be written in).
        key: the config key that names it, for the message.

    Raises:
        ConfigError: one line naming ``key``, ``path`` and why it cannot be made.
    """
    path = Path(path)
    ancestor = path
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"{key}: cannot create {path}: {ancestor} is a file, not a directory")
    try:
        os.rmdir(tempfile.mkdtemp(dir=ancestor, prefix=".clbench-write-check."))
    except OSError as e:
        why = {errno.EACCES: f"no write permission in {ancestor}",
               errno.EPERM: f"no write permission in {ancestor}",
               errno.EROFS: f"{ancestor} is on a read-only file system",
               errno.ENOENT: f"{ancestor} does not take new directories"}.get(
            e.errno, f"{ancestor} does not take new directories ({e.strerror or e})")
        where = "write in" if ancestor == path else "create"
        raise ConfigError(f"{key}: cannot {where} {path}: {why}; choose another "
                          f"{key}") from None


def _results_dir(path: str) -> str:
    """``${clbench_dir:${results_dir}}`` in the sweep directories: ``results_dir`` itself,
    after :func:`check_creatable`."""
    check_creatable(Path(str(path)), "results_dir")
    return str(path)


def _run_dir(resume: str | None, default: str) -> str:
    """``hydra.run.dir``: the directory given by ``resume=``, else ``default``.

    Raises:
        ConfigError: ``default`` (``results_dir``/...) cannot be created or written
            (:func:`check_creatable`, before Hydra creates the run directory
            and would fail with a traceback).
    """
    if resume not in (None, "", "None", "null"):
        return str(resume)
    check_creatable(Path(default), "results_dir")
    return default


def _output_subdir(resume: str | None) -> str:
    """``hydra.output_subdir``: a resumed run keeps its original ``.hydra/`` files."""
    return ".hydra" if resume in (None, "", "None", "null") else ".hydra/resumed"


# here, not in cl_bench.cli: composing through Hydra's compose API (tests, notebooks) needs them too
OmegaConf.register_new_resolver("clbench_dir", _results_dir, replace=True)
OmegaConf.register_new_resolver("clbench_run_dir", _run_dir, replace=True)
OmegaConf.register_new_resolver("clbench_output_subdir", _output_subdir, replace=True)


def _check_accelerator(hardware) -> None:
    """A GPU / MPS accelerator on a machine without one is refused before any work (Lightning
    would refuse it only when the first task's trainer is made)."""
    if hardware is None:
        return
    import torch

    acc = hardware.get("accelerator")
    if acc in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"hardware.accelerator: {acc} requested but torch sees no CUDA GPU "
                          "here (torch.cuda.is_available() is False); use hardware=cpu")
    if acc == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("hardware.accelerator: mps requested but torch.backends.mps is not "
                          "available here; use hardware=cpu")


def did_you_mean(key: str, options: typing.Iterable[str]) -> str:
    """``"; did you mean train.max_steps?"`` for the option closest to a misspelt key.

    Args:
        key: the unknown key as given, dotted (``train.max_stpes``); its last part is matched.
        options: the valid names at that level (``max_steps``, ...).

    Returns:
        the phrase, or ``""`` if no option is close (:func:`difflib.get_close_matches`).
    """
    parent, _, name = str(key).rpartition(".")
    close = difflib.get_close_matches(name, [str(o) for o in options], n=1, cutoff=0.6)
    return f"; did you mean {parent + '.' if parent else ''}{close[0]}?" if close else ""


def unknown_key(key: str, options: typing.Iterable[str]) -> ConfigError:
    """The error of an unknown config key: ``"train.max_stpes: unknown key; valid keys:
    max_steps, ...; did you mean train.max_steps?"``.

    Args:
        key: the full dotted key as the user spelled it.
        options: the valid names at that level.

    Returns:
        the :class:`ConfigError` to raise.
    """
    options = [str(o) for o in options]
    return ConfigError(f"{key}: unknown key; valid keys: {', '.join(options)}"
                       f"{did_you_mean(key, options)}")


def _check_known(schema: type, node: DictConfig | None, prefix: str = "") -> None:
    """Refuse a key of ``node`` that ``schema`` does not declare: one added with ``+`` or
    ``++`` on the command line (Hydra adds those to any config, a typed one too)."""
    if not isinstance(node, DictConfig):
        return
    names = [f.name for f in dataclasses.fields(schema)]
    for name in node.keys():
        if name not in names and not (not prefix and name == "hydra"):
            raise unknown_key(f"{prefix}{name}", names)


def _check_fields(schema: type, node: DictConfig | None, prefix: str = "",
                  absent_ok: bool = True) -> None:
    """Check the values of ``node`` against the ranges of ``schema``'s fields (each field's
    annotation, or its ``metadata["hint"]``); a nested dataclass (a section) is left out, and
    so is a field absent from ``node`` if ``absent_ok`` (else it is checked as None)."""
    if node is None:
        return
    hints = typing.get_type_hints(schema, include_extras=True)
    for f in dataclasses.fields(schema):
        annotation = f.metadata.get("hint", hints[f.name])
        if (f.name not in node and absent_ok or annotation is Any
                or dataclasses.is_dataclass(annotation)):
            continue
        value = node.get(f.name)
        if isinstance(value, (DictConfig, ListConfig)):
            value = OmegaConf.to_container(value, resolve=True)
        check_value(f"{prefix}{f.name}", value, annotation)


def validate(cfg: DictConfig) -> None:
    """Check the top-level keys' ranges before any heavy work (the ranges are declared on the
    schema's fields above, in the vocabulary of :mod:`cl_bench.ranges`); the groups are checked
    by :func:`check_node`.

    Every key must be one the schema declares: one added with ``+`` (``+train.max_stpes=10``,
    ``+foo=1``) is refused like any unknown key (the groups' ``+`` keys: :func:`check_node`).

    Args:
        cfg: the composed config.

    Raises:
        ConfigError: one message naming the first unknown key (with the closest valid one) or
            the first key out of range, its value and the range, e.g.
            ``train.max_steps: expected an int > 0, got 0 (int)``.
    """
    sections = (("train", TrainConfig), ("hardware", HardwareConfig), ("eval", EvalConfig),
                ("search", SearchConfig))
    _check_known(ClBenchConfig, cfg)
    for section, schema in sections:
        _check_known(schema, cfg.get(section), f"{section}.")
    for section, schema in sections:
        _check_fields(schema, cfg.get(section), f"{section}.")
    _check_accelerator(cfg.get("hardware"))
    _check_fields(ClBenchConfig, cfg, absent_ok=False)
    _check_early_stopping(cfg.get("train"))


def _check_early_stopping(train) -> None:
    """Early stopping needs validation checks to count (``train.val_every_n_steps > 0``)."""
    if train is None:
        return
    patience, every = train.get("early_stopping_patience", 0), train.get("val_every_n_steps", 0)
    if patience and not every:
        raise ConfigError(f"train.early_stopping_patience={patience} needs validation checks: "
                          "set train.val_every_n_steps > 0 (e.g. 50)")


def locate(path: str) -> Any:
    """Import ``package.module.attr`` (quietly; Hydra's own locator logs on failure).

    Raises:
        ImportError / AttributeError: nothing importable at ``path``.
    """
    module, _, attr = path.rpartition(".")
    obj = importlib.import_module(module)
    return getattr(obj, attr)


#: keys every ``tasks`` node may carry besides its factory's arguments, with their types:
#: applied to the built stream by :func:`build_stream`, not passed to the factory
STREAM_KEYS: dict[str, Any] = {"n_val": NonNegativeInt, "max_tasks": Optional[PositiveInt],
                               "n_val_by_task": Optional[dict]}


def spell_stream_keys(args: typing.Sequence[str], conf_dir: str | Path) -> list[str]:
    """Command-line overrides with the stream keys (:data:`STREAM_KEYS`) made addable where
    the chosen stream's config lacks them.

    ``clbench --help`` lists ``tasks.max_tasks`` and the other stream keys, which not every
    ``conf/tasks`` option spells out; Hydra refuses to set a key a config lacks unless the
    override adds it. So ``tasks.max_tasks=1`` is passed on as ``++tasks.max_tasks=1`` (set,
    or add if absent) when the stream of the first run (the command's config composed with
    each sweep at its first value) has no ``max_tasks``; where it has the key, the override is
    kept as typed (and recorded so in ``.hydra/overrides.yaml``). ``+`` / ``++`` / ``~``
    overrides and every other argument are kept as given; if that config does not compose,
    nothing is changed and Hydra reports the error.

    Args:
        args: the command line's arguments (after the program name; flags are passed over).
        conf_dir: the config directory (``conf/``).

    Returns:
        the arguments, the absent stream keys' overrides prefixed ``++``.
    """
    keys = {f"tasks.{k}" for k in STREAM_KEYS}
    asked = [a for a in args if "=" in a and a.partition("=")[0] in keys]
    if not asked:
        return list(args)
    present = _first_stream_keys([a for a in args if a not in asked], conf_dir)
    if present is None:
        return list(args)
    return [f"++{a}" if a in asked and a.partition("=")[0][len("tasks."):] not in present
            else a for a in args]


def _first_stream_keys(args: typing.Sequence[str], conf_dir: str | Path) -> set[str] | None:
    """The keys of ``tasks`` in the config of ``args``' first run (each sweep at its first
    value; flags and ``hydra`` overrides left out, the arguments read by Hydra's own parser),
    or ``None`` if it does not compose."""
    import contextlib
    import io

    from hydra import compose, initialize_config_dir
    from hydra._internal.utils import get_args_parser
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    point = []
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # a bad flag: Hydra says so later
            overrides = get_args_parser().parse_known_args(list(args))[0].overrides
        for o in OverridesParser.create().parse_overrides(overrides):
            if o.key_or_group.startswith("hydra"):
                continue
            if o.is_sweep_override():
                first = next(iter(o.sweep_string_iterator()), None)
                if first is None:
                    return None
                point.append(f"{o.get_key_element()}={first}")
            else:
                point.append(o.input_line)
        if GlobalHydra.instance().is_initialized():
            GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            cfg = compose("config", overrides=point)
    except (Exception, SystemExit):  # any failure: Hydra reports it on the real command
        return None
    tasks = cfg.get("tasks")
    return set(tasks.keys()) if isinstance(tasks, DictConfig) else None


def check_node(node: DictConfig, key: str) -> None:
    """Check a ``_target_`` node's keys and value types against the target's signature.

    Raises:
        ConfigError: missing ``_target_``, an unknown target, an unknown key (listing the valid
            ones) or a value of the wrong type, each naming ``<key>.<name>``.
    """
    if not isinstance(node, DictConfig) or "_target_" not in node:
        raise ConfigError(f"{key}: expected a config with a _target_, got {node!r}")
    try:
        target = locate(node._target_)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"{key}._target_: cannot import {node._target_!r} ({e})") from None
    fn = target.__init__ if inspect.isclass(target) else target
    sig = inspect.signature(fn)
    hints = type_hints(fn)
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    valid = [p for p in sig.parameters if p not in ("self", "args", "kwargs")]
    for name in node:
        if OmegaConf.is_missing(node, name):
            raise ConfigError(f"{key}.{name}: required but not set; give it on the command line "
                              f"({key}.{name}=...)")
        if name.startswith("_") or name == "name" and name not in sig.parameters:
            continue
        if key == "tasks" and name in STREAM_KEYS:
            hint, value = STREAM_KEYS[name], OmegaConf.to_container(node, resolve=True)[name]
            check_value(f"{key}.{name}", value, hint)
            continue
        if name not in sig.parameters:
            if takes_kwargs:
                continue
            options = valid + (list(STREAM_KEYS) if key == "tasks" else [])
            raise ConfigError(f"{key}.{name}: unknown key for {node._target_}; valid keys: "
                              f"{', '.join(options)}{did_you_mean(f'{key}.{name}', options)}")
        value = OmegaConf.to_container(node, resolve=True)[name]
        check_value(f"{key}.{name}", value, hints.get(name, sig.parameters[name].annotation))


def build(node: DictConfig, key: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` after :func:`check_node`; unwraps our errors.

    Raises:
        ConfigError / DataError: from validation or from the target's constructor, with the
        message alone (Hydra's wrapper is removed).
    """
    check_node(node, key)
    cfg = OmegaConf.to_container(node, resolve=True)
    if key == "tasks":
        for k in STREAM_KEYS:
            cfg.pop(k, None)
    if "name" in cfg and "name" not in inspect.signature(locate(cfg["_target_"])).parameters:
        cfg.pop("name")
    try:
        return instantiate(cfg, **kwargs, _convert_="all")
    except InstantiationException as e:
        cause = e.__cause__ or e.__context__
        while cause is not None and not isinstance(cause, ClBenchError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise cause from None
        raise


def build_stream(cfg: DictConfig) -> list:
    """The stream of ``cfg.tasks`` (:func:`build`), with ``tasks.n_val`` validation samples per
    task (``tasks.n_val_by_task``: per task where it differs) carved from its training set by
    the run's ``seed``
    (:func:`~cl_bench.data.base.carve_validation`), cut to its first ``tasks.max_tasks`` tasks
    if that is set (e.g. ``+tasks.max_tasks=1``: the first task alone, for a probe or a timing).

    Raises:
        ConfigError / DataError: from the stream's factory, or a bad ``tasks.n_val`` or
        ``tasks.max_tasks``.
    """
    from cl_bench.data.base import carve_validation

    full = build(cfg.tasks, "tasks")
    stream = full[:cfg.tasks.get("max_tasks")]  # its range: STREAM_KEYS
    if len(stream) < len(full):  # a CISS stream's classes are those of the steps kept
        kept = [c for t in stream for c in t.classes]
        for t in stream:
            if t.stream_classes:
                t.stream_classes = list(kept)
    by_task = cfg.tasks.get("n_val_by_task")
    stream = carve_validation(stream, cfg.tasks.get("n_val", 0), int(cfg.seed),
                              None if by_task is None else OmegaConf.to_container(by_task))
    search = cfg.get("search")
    if search is not None and search.get("trial") is not None:
        seal_test_split(stream, int(search.trial))
    return stream


def seal_test_split(stream: list, trial: int) -> None:
    """A search trial's stream (``search.trial`` set): every task's validation set takes the
    place of its test set (R, the probes and every strategy's diagnostics then measure
    validation samples), and the test set is dropped before anything could read it. The run's
    metrics.json says ``eval_split: val``.

    Raises:
        ConfigError: ``tasks.n_val`` is 0 (a search needs validation samples; names the key).
    """
    if any(t.val is None for t in stream):
        raise ConfigError(f"search.trial={trial}: a search trial evaluates on the validation "
                          "split, and this stream has none; set tasks.n_val > 0 (validation "
                          "samples per task, carved from its training set)")
    for t in stream:
        t.test, t.val = t.val, None
