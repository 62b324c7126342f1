"""What a frozen backbone's stages know: closed-form probes per stage, beside a random backbone.

For every stage of a backbone with staged feature maps (MONAI's Swin transformer:
``stage0``...``stage4`` at 1/2 ... 1/32 of the input side, and ``decoder``, a shared decoder's
full-resolution features when the backbone returns a sixth entry), with the backbone frozen
(``eval`` mode, ``torch.inference_mode``, float32):

* **regression** tasks: the stage's global average ``(N, C_k)``, standardised with the training
  subjects' mean and SD, then ridge regression with its penalty chosen among
  ``np.logspace(-3, 5, 17)`` by the efficient leave-one-out error on the training subjects
  (scikit-learn's ``RidgeCV``); validation MAE in the task's units (years for brain age), R² and
  the chosen alpha. Beside it the mean predictor's MAE (always the training mean), a ``mean`` row.
* **segmentation** tasks: a per-voxel multinomial logistic regression on the stage's grid (one
  sample per voxel of that grid, i.e. per patch of the input): the label volume is sampled to the
  grid by nearest neighbour; per training subject all foreground voxels plus as many (at least 1)
  background voxels, drawn by a seeded generator, at most ``max_voxels``; features standardised
  with the training samples' statistics; ``LogisticRegression(max_iter=300,
  class_weight="balanced")`` at scikit-learn's default ``C=1.0`` (not tuned). On each
  validation subject the class scores on the grid are up-sampled trilinearly to the input side,
  the argmax is scored with the run's Dice (:class:`cl_bench.kinds.TaskScorer`: MONAI
  ``DiceMetric``, mean over the foreground labels present), so the number compares with R's.

Scored on the validation subjects (``task.val``, carved by ``tasks.n_val``), or on the test
subjects of a task that has none (said in the row's ``split``, and logged as a warning). Linear
probes on frozen features are the standard measure of a self-supervised representation (MAE, He et
al. 2022, arXiv 2111.06377, §4; DINOv2, Oquab et al. 2023, arXiv 2304.07193, §7), and a probe's
number means something only beside the same architecture at random initialisation (the control
of e.g. Zhang et al. 2016's colourisation probes, arXiv 1603.08511, and of DINOv2's tables): a
random backbone's features are already a rich random projection of the image, so the question
is what pretraining adds. :func:`probe_table` probes both.

Entry points: :func:`probe_model` (a model and a stream, no config: the pretraining script's
recipe choice) and :func:`probe_table` (a composed ``clbench`` config: the ``clbench-probe``
command, :mod:`cl_bench.probe_cli`).
"""

from __future__ import annotations

import logging
import warnings
from typing import Iterator

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf, open_dict

from cl_bench.data.base import Task
from cl_bench.errors import ConfigError

log = logging.getLogger(__name__)

#: ridge penalties RidgeCV chooses among (leave-one-out on the training subjects)
RIDGE_ALPHAS = np.logspace(-3, 5, 17)
#: the segmentation probe's LogisticRegression iterations (lbfgs)
LOGISTIC_MAX_ITER = 300
#: columns of :func:`probe_model`'s table, in order
COLUMNS = ["task", "kind", "stage", "metric", "value", "units", "split", "n_train", "n_eval",
           "alpha", "note"]
#: metrics where a lower value is better (the others: higher)
LOWER_IS_BETTER = {"mae"}
#: a class the probe never saw in training gets this score (finite: it is interpolated)
_ABSENT = -1e4


def stage_names(n: int) -> list[str]:
    """Names of a backbone's ``n`` stage outputs: ``stage0``... and, for a sixth entry (the
    shared decoder of ``backbone.decoder=shared``), ``decoder``."""
    names = [f"stage{k}" for k in range(n)]
    if n == 6:
        names[5] = "decoder"
    return names


def _backbone(model: torch.nn.Module) -> torch.nn.Module:
    """``model.backbone`` of a ``ContinualModel``, else the module itself (an encoder)."""
    return getattr(model, "backbone", model)


def _eval_dataset(task: Task):
    """``(dataset, split)``: the task's validation subjects, else its test subjects."""
    if task.val is not None and len(task.val):
        return task.val, "val"
    log.warning("probe: task %s has no validation subjects (tasks.n_val=0); scoring its probes "
                "on the test subjects (split: test)", task.name)
    return task.test, "test"


def _check_staged(stages: list, x: torch.Tensor) -> None:
    """Raise the :class:`ConfigError` of :func:`iter_stage_batches` unless every stage output
    is a feature map ``(B, C, *grid)`` of ``x``'s dimensionality."""
    if stages and all(isinstance(s, torch.Tensor) and s.dim() == x.dim() for s in stages):
        return
    shapes = sorted({str(tuple(s.shape)) if isinstance(s, torch.Tensor) else type(s).__name__
                     for s in stages})
    raise ConfigError("backbone: clbench-probe needs a backbone with staged feature maps "
                      f"(swin_unetr): its {len(stages)} stage outputs must be (B, C, *grid) maps, "
                      f"got {', '.join(shapes) or 'none'} for an input {tuple(x.shape)}")


@torch.inference_mode()
def check_backbone(model: torch.nn.Module) -> None:
    """One zero volume through the backbone (its ``in_channels``, ``img_size`` and
    ``spatial_dims``, when it declares them): refuses a backbone without staged feature maps
    before any data is made.

    Raises:
        ConfigError: see :func:`iter_stage_batches`.
    """
    enc = getattr(model, "encoder", _backbone(model))
    sizes = [getattr(enc, a, None) for a in ("in_channels", "img_size", "spatial_dims")]
    if any(not isinstance(v, int) for v in sizes):
        return
    c, side, dims = sizes
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(1, c, *(side,) * dims, device=next(model.parameters()).device)
        _check_staged(_backbone(model)(x)[1], x)
    finally:
        model.train(was_training)


@torch.inference_mode()
def iter_stage_batches(model: torch.nn.Module, dataset, batch_size: int = 4,
                       device: str | torch.device = "cpu"
                       ) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """The frozen backbone's stage outputs, batch by batch (the model is put in ``eval`` mode
    for the loop and back in its mode afterwards).

    Args:
        model: a ``ContinualModel`` (its ``backbone`` is run; heads are not needed) or an encoder
            returning ``(deepest, stages)``.
        dataset: items ``{"image": (C, *spatial), "label": ...}``; batch_size: volumes per pass;
        device: where the backbone runs (the model is moved there if it is elsewhere).

    Yields:
        ``({name: (B, C_k, *grid_k) float32 CPU tensor}, labels)`` with the names of
        :func:`stage_names` and the batch's labels as stored.

    Raises:
        ConfigError: a backbone whose stages are not feature maps ``(B, C, *grid)`` (a ViT's
            token lists), naming ``backbone``.
    """
    from cl_bench.evaluation import test_batches

    backbone = _backbone(model)
    was_training = model.training
    model.eval()
    first = next(model.parameters(), None)
    if first is not None and first.device != torch.device(device):
        model.to(device)
    try:
        for batch in test_batches(dataset, batch_size):
            x = batch["image"].to(device).float()
            _, stages = backbone(x)
            _check_staged(stages, x)
            yield ({n: s.float().cpu() for n, s in zip(stage_names(len(stages)), stages)},
                   batch["label"])
    finally:
        model.train(was_training)


def stage_features(model: torch.nn.Module, dataset, batch_size: int = 4,
                   device: str | torch.device = "cpu") -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Globally averaged stage features of every sample of ``dataset``.

    Args: as :func:`iter_stage_batches`.

    Returns:
        ``({stage name: (N, C_k) float64 array}, labels)``: each stage's mean over its grid, in
        the order of :func:`stage_names`; ``labels`` the stacked labels (regression: ``(N,)``
        targets in native units).

    Raises:
        ConfigError: see :func:`iter_stage_batches`.
    """
    pooled: dict[str, list[np.ndarray]] = {}
    labels = []
    for stages, label in iter_stage_batches(model, dataset, batch_size, device):
        for name, s in stages.items():
            pooled.setdefault(name, []).append(s.flatten(2).mean(-1).double().numpy())
        labels.append(torch.as_tensor(label).cpu().numpy())
    return ({n: np.concatenate(v) for n, v in pooled.items()},
            np.concatenate(labels) if labels else np.zeros(0))


def _standardiser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Training mean and SD per feature (an SD of 0, a constant feature, counts as 1)."""
    mean, sd = x.mean(0, dtype=np.float64), x.std(0, dtype=np.float64)
    return mean, np.where(sd > 1e-12, sd, 1.0)


def _row(task: Task, stage: str, metric: str, value: float, split: str, n_train: int,
         n_eval: int, alpha: float = float("nan"), note: str = "") -> dict:
    return {"task": task.name, "kind": task.kind, "stage": stage, "metric": metric,
            "value": float(value), "units": task.units if metric == "mae" else "",
            "split": split, "n_train": n_train, "n_eval": n_eval, "alpha": alpha, "note": note}


def probe_regression(model: torch.nn.Module, task: Task, batch_size: int = 4,
                     device: str | torch.device = "cpu") -> list[dict]:
    """Ridge probes of every stage's global average for one regression task (module docstring).

    Returns:
        rows (see :data:`COLUMNS`): ``mean`` / ``mae`` (the training mean's validation MAE),
        then per stage ``mae`` (task units) with its ``alpha``, and ``r2``.

    Raises:
        ConfigError: see :func:`iter_stage_batches`.
    """
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import mean_absolute_error, r2_score

    eval_set, split = _eval_dataset(task)
    train_x, train_y = stage_features(model, task.train, batch_size, device)
    eval_x, eval_y = stage_features(model, eval_set, batch_size, device)
    train_y, eval_y = train_y.astype(np.float64), eval_y.astype(np.float64)
    n_train, n_eval = len(train_y), len(eval_y)
    rows = [_row(task, "mean", "mae", mean_absolute_error(eval_y, np.full(n_eval, train_y.mean())),
                 split, n_train, n_eval)]
    for stage, x in train_x.items():
        mean, sd = _standardiser(x)
        ridge = RidgeCV(alphas=RIDGE_ALPHAS).fit((x - mean) / sd, train_y)
        pred = ridge.predict((eval_x[stage] - mean) / sd)
        alpha = float(ridge.alpha_)
        note = ("alpha at the grid's top: ~the mean predictor" if alpha == RIDGE_ALPHAS[-1]
                else "alpha at the grid's bottom" if alpha == RIDGE_ALPHAS[0] else "")
        rows.append(_row(task, stage, "mae", mean_absolute_error(eval_y, pred), split, n_train,
                         n_eval, alpha, note))
        rows.append(_row(task, stage, "r2", r2_score(eval_y, pred), split, n_train, n_eval,
                         alpha, note))
    return rows


def _sample_voxels(label: np.ndarray, max_voxels: int, rng: np.random.Generator) -> np.ndarray:
    """Indices into one subject's flattened grid labels: every foreground voxel and as many
    (at least 1) background voxels, at most ``max_voxels`` (the foreground then sampled down to
    half of it, keeping its class proportions in expectation)."""
    fg, bg = np.flatnonzero(label > 0), np.flatnonzero(label == 0)
    if len(fg) > max_voxels // 2:
        fg = rng.choice(fg, max_voxels // 2, replace=False)
    n_bg = min(len(bg), max(len(fg), 1), max_voxels - len(fg))
    return np.concatenate([fg, rng.choice(bg, n_bg, replace=False)])


def _grid_labels(label: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
    """``(B, 1, *spatial)`` labels -> ``(B, *grid)`` by nearest-neighbour sampling."""
    if tuple(label.shape[2:]) == tuple(grid):
        return label[:, 0].long()
    return F.interpolate(label.float(), size=grid, mode="nearest")[:, 0].long()


def probe_segmentation(model: torch.nn.Module, task: Task, batch_size: int = 4,
                       max_voxels: int = 4000, seed: int = 0,
                       device: str | torch.device = "cpu") -> list[dict]:
    """Per-voxel logistic probes of every stage for one segmentation task (module docstring).

    Two passes of the backbone: the training subjects (sampled voxels only are kept, so memory
    is ``max_voxels x C_k`` per subject and stage), then the evaluation subjects (each scored as
    it comes). ``LogisticRegression``'s ``C=1.0`` is scikit-learn's default, not tuned.

    Args:
        max_voxels: training voxels per subject and stage (> 1); seed: the voxel sampler's
            ``numpy.random.default_rng`` seed.

    Returns:
        rows (see :data:`COLUMNS`), one ``dice`` per stage (mean over the foreground labels
        present, as in R); ``note`` says when a stage's training samples held one class only
        (the probe then answers it everywhere) or lbfgs stopped at its iteration cap.

    Raises:
        ConfigError: see :func:`iter_stage_batches`; ``max_voxels`` < 2.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    from cl_bench.kinds import TaskScorer

    if max_voxels < 2:
        raise ConfigError(f"probe.max_voxels: expected an int >= 2, got {max_voxels}")
    eval_set, split = _eval_dataset(task)
    k = task.num_classes
    rng = np.random.default_rng(seed)
    feats: dict[str, list[np.ndarray]] = {}
    targets: dict[str, list[np.ndarray]] = {}
    n_train = 0
    for stages, label in iter_stage_batches(model, task.train, batch_size, device):
        n_train += len(label)
        for stage, s in stages.items():
            grid_labels = _grid_labels(label, s.shape[2:]).flatten(1).numpy()
            flat = s.flatten(2).numpy()  # (B, C, V)
            for b in range(len(label)):
                idx = _sample_voxels(grid_labels[b], max_voxels, rng)
                feats.setdefault(stage, []).append(flat[b][:, idx].T)
                targets.setdefault(stage, []).append(grid_labels[b][idx])
    probes = {}
    for stage in feats:
        x, y = np.concatenate(feats[stage]), np.concatenate(targets[stage])
        mean, sd = _standardiser(x)
        classes = np.unique(y)
        note = ""
        if len(classes) < 2:
            probes[stage] = (mean, sd, None, classes,
                             f"one class ({int(classes[0])}) in the training voxels")
            continue
        clf = LogisticRegression(max_iter=LOGISTIC_MAX_ITER, class_weight="balanced")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            clf.fit((x - mean) / sd, y)
        if any(issubclass(w.category, ConvergenceWarning) for w in caught):
            note = f"lbfgs stopped at max_iter={LOGISTIC_MAX_ITER}"
        probes[stage] = (mean, sd, clf, classes, note)
    scorers = {stage: TaskScorer(task) for stage in probes}
    n_eval = 0
    for stages, label in iter_stage_batches(model, eval_set, batch_size, device):
        n_eval += len(label)
        spatial = tuple(label.shape[2:])
        mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(spatial)]
        for stage, s in stages.items():
            mean, sd, clf, classes, _ = probes[stage]
            b, grid = s.shape[0], tuple(s.shape[2:])
            x = (s.flatten(2).transpose(1, 2).reshape(-1, s.shape[1]).double().numpy() - mean) / sd
            scores = np.full((len(x), k), _ABSENT)
            if clf is None:
                scores[:, classes[0]] = 0.0
            else:
                d = clf.decision_function(x)
                if d.ndim == 1:  # binary: the log-odds of classes[1] against classes[0]
                    d = np.stack([np.zeros_like(d), d], 1)
                scores[:, clf.classes_] = d
            logits = torch.from_numpy(scores).float().reshape(b, *grid, k).movedim(-1, 1)
            if grid != spatial:
                logits = F.interpolate(logits, size=spatial, mode=mode, align_corners=False)
            scorers[stage].update(logits.argmax(1), label)
    return [_row(task, stage, "dice", scorers[stage].result()["dice"], split, n_train, n_eval,
                 note=probes[stage][4]) for stage in probes]


def probe_model(model: torch.nn.Module, stream: list[Task], *, batch_size: int = 4,
                max_voxels: int = 4000, seed: int = 0,
                device: str | torch.device = "cpu") -> pd.DataFrame:
    """Probe every stage of ``model``'s frozen backbone on every task of ``stream``.

    Needs no config: a model and a stream (e.g. the pretraining script choosing its recipe on
    validation probes). About two backbone passes over each task's subjects plus the fits:
    a few minutes on one CPU thread for the 64^3 brain stream (24 train + 8 validation subjects
    per task, feature size 24).

    Args:
        model: a ``ContinualModel`` (its ``backbone``; heads unused) or a bare encoder returning
            ``(deepest, stages)`` with stages ``(B, C_k, *grid_k)``; not modified (its train/eval
            mode is restored).
        stream: tasks with ``train`` and ``val`` (or only ``test``: see module docstring);
            segmentation and regression tasks are probed, other kinds skipped with a warning.
        batch_size: volumes per backbone pass; max_voxels: see :func:`probe_segmentation`;
        seed: the voxel sampler's seed; device: where the backbone runs.

    Returns:
        a DataFrame with :data:`COLUMNS`: ``task, kind, stage`` (``mean``, ``stage0``...,
        ``decoder``), ``metric`` (``mae`` in ``units``, ``r2``, ``dice``), ``value``, ``split``
        (``val`` or ``test``), ``n_train``, ``n_eval`` (subjects), ``alpha`` (ridge penalty; NaN
        for the others), ``note`` (empty, or a caveat: a one-class stage, an alpha at the grid's
        top (the ridge then answers about the training mean) or bottom, an unconverged fit).

    Raises:
        ConfigError: a backbone without staged feature maps (names ``backbone``).
    """
    rows: list[dict] = []
    for i, task in enumerate(stream):
        if task.kind == "regression":
            rows += probe_regression(model, task, batch_size, device)
        elif task.kind == "segmentation":
            rows += probe_segmentation(model, task, batch_size, max_voxels, seed + i, device)
        else:
            log.warning("probe: task %s (%s) skipped: the probes are for segmentation and "
                        "regression tasks", task.name, task.kind)
    return pd.DataFrame(rows, columns=COLUMNS)


def _better(metric: str, value: float, random: float) -> bool | None:
    if any(np.isnan(v) for v in (value, random)):
        return None
    return bool(value < random) if metric in LOWER_IS_BETTER else bool(value > random)


def probe_table(cfg: DictConfig, *, seed: int | None = None, batch_size: int = 4,
                max_voxels: int = 4000, device: str | torch.device = "cpu") -> pd.DataFrame:
    """Probe the configured backbone and its randomly initialised twin on the configured stream.

    Builds what ``clbench`` would (the same validation of keys and ranges, the stream of
    :func:`cl_bench.config.build_stream` with ``tasks.n_val`` validation subjects, the model of
    ``cfg.backbone`` after ``torch.manual_seed(seed)``), then the same backbone config with
    ``weights=null`` after the same seed, and probes both with :func:`probe_model`.

    Args:
        cfg: a composed ``clbench`` config (``backbone``, ``tasks``, ``seed``, ...).
        seed: torch seed of both builds and the voxel sampler's seed; ``None``: ``cfg.seed``
            (which also carves the validation split).
        batch_size, max_voxels, device: as :func:`probe_model`.

    Returns:
        :func:`probe_model`'s columns with ``value`` (the configured backbone) followed by
        ``random`` (random init), ``better`` (``value`` better than ``random``: lower MAE,
        higher Dice / R²; ``None`` for the ``mean`` rows, which do not read the backbone) and
        ``alpha_random``.

    Raises:
        ConfigError, DataError: a bad config value or a missing / misfitting
        ``backbone.weights`` (before any data is generated), a backbone without staged feature
        maps.
    """
    from cl_bench.config import build, build_stream, check_node, validate

    seed = int(cfg.seed) if seed is None else int(seed)
    validate(cfg)
    for key in ("tasks", "backbone"):
        check_node(cfg[key], key)
    torch.manual_seed(seed)
    model = build(cfg.backbone, "backbone")  # before the data: a bad checkpoint fails fast
    random_node = OmegaConf.create(OmegaConf.to_container(cfg.backbone, resolve=True))
    with open_dict(random_node):
        random_node.weights = None
    torch.manual_seed(seed)
    random_model = build(random_node, "backbone")
    check_backbone(model)
    stream = build_stream(cfg)
    if hasattr(model, "check_stream"):
        model.check_stream(stream, cfg.backbone.get("name"))
    kwargs = {"batch_size": batch_size, "max_voxels": max_voxels, "seed": seed, "device": device}
    ours = probe_model(model, stream, **kwargs)
    del model
    theirs = probe_model(random_model, stream, **kwargs)
    keys = ["task", "stage", "metric"]
    table = ours.merge(theirs[keys + ["value", "alpha"]].rename(
        columns={"value": "random", "alpha": "alpha_random"}), on=keys, how="left")
    table["better"] = [None if r.stage == "mean" else _better(r.metric, r.value, r.random)
                       for r in table.itertuples()]
    order = COLUMNS[:COLUMNS.index("value") + 1] + ["random", "better"]
    return table[order + [c for c in table.columns if c not in order]]
