"""The report's figures: ``heatmaps.png`` (each group's seed-mean R), ``curves.png`` (each
task's metric after every training step) and ``losses.png`` (the training loss of each task).

Every figure names a group as the tables do (``G1``, ``G2``, ...) with a short label (the values
that differ between groups) and ends in a key: each group's full setting, the values all groups
share and the abbreviations. In ``heatmaps.png`` a metric has one colour scale in every panel,
shown by its colour bar (bright = better whatever the metric's direction), so one value has one
colour; a regression task's mean predictor is a row of its own.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize

from cl_bench.report.groups import _compared, _missing, iter_groups, short_keys, show_value
from cl_bench.report.load import ARROW
from cl_bench.summary import fmt_value, metric_label, versus_baseline


#: colour maps of the first, second, ... metric of a report (reversed for lower-is-better)
CMAPS = ("viridis", "cividis", "plasma", "magma")
#: the label of a heatmap's mean-predictor row
BASELINE_ROW = "predicting the mean"
#: points per character of the figures' text, roughly (DejaVu Sans): what fits a panel
_CHAR_PT = 0.6


def describe_groups(runs: pd.DataFrame, keys: list[str]) -> tuple[list[dict], list[str]]:
    """The groups as the figures name them.

    Args:
        runs: from :func:`load_runs`; keys: the group keys.

    Returns:
        ``(groups, shared)``: per group ``{"name": "G1", "label": "lora · max_tasks=1",
        "runs": its runs}`` (the label: the group keys' values that differ between groups,
        a config key as ``short name=value``, a key the group does not set left out), and the
        values every group shares (``tasks digits``, ``backbone vit2d_digits``).
    """
    groups = iter_groups(runs, keys)
    varying = [k for k in keys if len({_compared(k.removeprefix("cfg:"), v[k])
                                       for v, _ in groups}) > 1]
    short = short_keys([k for k in varying if k.startswith("cfg:")])
    out = []
    for i, (values, g) in enumerate(groups, start=1):
        parts = []
        for k in varying:
            if k.startswith("cfg:"):
                if not _missing(values[k]):
                    parts.append(f"{short[k]}={show_value(values[k])}")
            else:
                parts.append(show_value(values[k]))
        out.append({"name": f"G{i}", "label": " · ".join(parts), "runs": g})
    first = groups[0][0] if groups else {}
    shared = [f"{short_keys([k])[k] if k.startswith('cfg:') else k} {show_value(first[k])}"
              for k in keys if k not in varying and not _missing(first.get(k))]
    return out, shared


def _fits(text: str, width_in: float, fontsize: float) -> bool:
    return len(text) * fontsize * _CHAR_PT <= width_in * 72


def panel_title(group: dict, width_in: float, fontsize: float = 9) -> str:
    """A panel's title: ``G1 lora · max_tasks=1 (n=2)``, shortened to its name, first value
    and run count, then its name and run count, until it fits ``width_in`` inches (the key
    under the figure says the rest).

    Args:
        group: from :func:`describe_groups`; width_in: the panel's width; fontsize: in points.

    Returns:
        The title.
    """
    n = f"(n={len(group['runs'])})"
    parts = group["label"].split(" · ") if group["label"] else []
    for text in (" ".join([group["name"], group["label"], n]),
                 " ".join([group["name"], parts[0] + " …" if len(parts) > 1 else "", n])
                 if parts else "", f"{group['name']} {n}"):
        if text and _fits(text.replace("  ", " "), width_in, fontsize):
            return text.replace("  ", " ")
    return group["name"]


def short_label(group: dict, max_chars: int = 30) -> str:
    """A group's name in a legend: ``G1 lora · max_tasks=1``, or ``G1 lora …`` (its first
    value) when longer than ``max_chars`` (the figure's key says the rest).

    Args:
        group: from :func:`describe_groups`; max_chars: the longest label.

    Returns:
        The label.
    """
    text = f"{group['name']} {group['label']}".strip()
    if len(text) <= max_chars:
        return text
    first = group["label"].split(" · ")[0]
    text = f"{group['name']} {first} …"
    return text if len(text) <= max_chars else group["name"]


def figure_key(groups: list[dict], shared: list[str], extra: list[str], width_in: float,
               fontsize: float = 8) -> list[str]:
    """The lines of a figure's key: each group's full label and run count, the values every
    group shares, then ``extra`` (abbreviations), wrapped to ``width_in`` inches.

    Args:
        groups, shared: from :func:`describe_groups`; extra: more lines; width_in: the
            figure's width; fontsize: in points.

    Returns:
        The lines.
    """
    lines = [f"{g['name']}: {g['label'] or 'the others'} ({len(g['runs'])} run"
             f"{'s' if len(g['runs']) != 1 else ''})" for g in groups]
    if shared:
        lines.append("all groups: " + ", ".join(shared))
    lines += extra
    width = max(int(width_in * 72 / (fontsize * _CHAR_PT)), 30)
    return [w for line in lines for w in textwrap.wrap(line, width, subsequent_indent="    ",
                                                       break_long_words=False,
                                                       break_on_hyphens=False)]


def _mean_matrix(g: pd.DataFrame) -> pd.DataFrame:
    """The seed-mean R of a group (the longest run's rows; a partial run's missing rows are
    NaN, left out of the mean)."""
    mats = list(g["_matrix"])
    index = max((m.index for m in mats), key=len)
    return pd.concat([m.reindex(index) for m in mats]).groupby(level=0).mean().reindex(index)


def _mean_baselines(g: pd.DataFrame) -> dict[str, float]:
    """Per regression task, the group's mean predictor (the mean over its runs)."""
    found: dict[str, list[float]] = {}
    for b in g["_baselines"]:
        for task, v in (b or {}).items():
            found.setdefault(task, []).append(v)
    return {t: float(np.mean(v)) for t, v in found.items()}


def _metric_of(units: dict, task: str) -> tuple[str, str, bool]:
    u = units.get(task, {})
    return u.get("metric", ""), u.get("units", ""), bool(u.get("higher_is_better", True))


def metric_scales(runs: pd.DataFrame, keys: list[str]) -> dict[tuple, dict]:
    """One colour scale per metric (name, units, direction) for every heatmap panel.

    A higher-is-better metric whose values all lie in [0, 1] (Dice, accuracy) runs from 0 to 1;
    a lower-is-better one with a mean predictor from 0 (perfect) to the largest mean predictor
    (as bad as always guessing the mean: the worst colour, whatever the other cells); any other
    from the smallest to the largest seed-mean value of any group.

    Args:
        runs: from :func:`load_runs`; keys: the group keys.

    Returns:
        ``{(metric, units, higher_is_better): {"vmin", "vmax", "cmap", "extend"}}`` in the order
        the metrics first appear; ``cmap`` is reversed for lower-is-better, so bright is better.
    """
    values: dict[tuple, list[float]] = {}
    bases: dict[tuple, list[float]] = {}
    for _, g in iter_groups(runs, keys):
        units = {k: v for u in g["_units"] for k, v in u.items()}
        mean = _mean_matrix(g)
        for task in mean.columns:
            key = _metric_of(units, task)
            values.setdefault(key, []).extend(mean[task].to_numpy(float).tolist())
        for task, b in _mean_baselines(g).items():
            bases.setdefault(_metric_of(units, task), []).append(b)
    scales = {}
    for i, (key, vals) in enumerate(values.items()):
        x = np.array([v for v in vals if np.isfinite(v)], float)
        lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 1.0)
        extend = "neither"
        if key[2] and x.size and lo >= 0 and hi <= 1:
            lo, hi = 0.0, 1.0
        elif not key[2] and bases.get(key):
            lo, hi = min(0.0, lo), max(bases[key])
            extend = "max" if x.size and x.max() > hi else "neither"
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        cmap = CMAPS[i % len(CMAPS)] + ("" if key[2] else "_r")
        scales[key] = {"vmin": lo, "vmax": hi, "cmap": cmap, "extend": extend}
    return scales


def _scale_label(key: tuple) -> str:
    metric, units, hib = key
    return f"{metric_label(metric)}{f' ({units})' if units else ''} {ARROW[hib]}"


def _versus(v: float, b: float) -> str:
    """A lower-is-better value against its mean predictor, compared as both are shown."""
    verdict = versus_baseline(v, {"mean_predictor": b}, higher_is_better=False) or ""
    return "= the mean" if verdict.startswith("no better") else (
        "worse than the mean" if verdict.startswith("worse") else "")


def plot_heatmaps(runs: pd.DataFrame, keys: list[str], path: Path) -> dict:
    """A grid of seed-mean R matrices, one panel per group, titled by the group's short name
    (:func:`panel_title`), with one colour scale and colour bar per metric
    (:func:`metric_scales`), values annotated in native units by
    :func:`cl_bench.summary.fmt_value`; a regression task's mean predictor as a last row, and a
    cell no better than it marked so; the key (:func:`figure_key`) under the grid.

    Args:
        runs: from :func:`load_runs`; keys: the group keys; path: the PNG.

    Returns:
        What was drawn: ``titles`` (per panel), ``scales`` (:func:`metric_scales`), ``cells``
        (``{(group, row, task): (text, RGBA colour)}``), ``key`` (its lines) and ``colorbars``
        (each colour bar's label, one per metric).
    """
    groups, shared = describe_groups(runs, keys)
    scales = metric_scales(runs, keys)
    mats = [_mean_matrix(g["runs"]) for g in groups]
    bases = [_mean_baselines(g["runs"]) for g in groups]
    ncol = min(3, len(groups))
    nrow = math.ceil(len(groups) / ncol)
    n_tasks = max(m.shape[1] for m in mats)
    n_rows = max(len(m) + bool(b) for m, b in zip(mats, bases))
    panel_w, panel_h = 1.9 + 1.15 * n_tasks, 1.3 + 0.42 * n_rows
    width = panel_w * ncol + 1.1 * len(scales)
    key = figure_key(groups, shared, _heatmap_key_extra(any(bases)), width)
    key_h = 0.2 + 0.16 * len(key)
    fig = plt.figure(figsize=(width, panel_h * nrow + key_h + 0.5), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[panel_h * nrow + 0.5, key_h])
    axes = top.subplots(nrow, ncol, squeeze=False)
    for ax in axes.flat[len(groups):]:
        ax.axis("off")
    titles, cells = [], {}
    for ax, group, mean, base in zip(axes.flat, groups, mats, bases):
        cells.update(_heatmap_panel(ax, group, mean, base, scales))
        title = panel_title(group, panel_w - 1.2)
        ax.set_title(title, fontsize=9)
        titles.append(title)
    colorbars = _colour_bars(top, axes, scales)
    top.suptitle("R, mean over seeds", fontsize=10)
    bottom.text(0.01, 0.98, "\n".join(key), ha="left", va="top", fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return {"titles": titles, "scales": scales, "cells": cells, "key": key,
            "colorbars": colorbars}


def _heatmap_key_extra(with_baseline: bool) -> list[str]:
    """The lines of ``heatmaps.png``'s key after the groups': what ``n``, the rows and the
    colours mean, and (``with_baseline``: some group has a mean-predictor row) that row."""
    extra = ["n: runs (seeds) averaged; a key missing from a group's line: its runs do not "
             "set it",
             "rows: R after training each task (init: before any); colour: bright = better, "
             "one scale per metric (colour bars)"]
    if with_baseline:
        extra.append(f"{BASELINE_ROW}: the MAE of always answering the training mean; a value "
                     "no better than it says so")
    return extra


def _heatmap_cell(v: float, row: str, task: str, base: dict[str, float], norm: Normalize,
                  cmap) -> tuple[str, tuple]:
    """One cell of a heatmap panel: ``(text, RGBA colour)``. The text is ``v`` by
    :func:`cl_bench.summary.fmt_value` (``–`` where not measured), a value no better than the
    task's mean predictor (``base``) marked so, a mean-predictor row's cell of a task without one
    blank; the colour is ``cmap(norm(v))``, light grey where not measured."""
    colour = (0.92, 0.92, 0.92, 1.0) if not np.isfinite(v) else cmap(norm(v))
    text = "–" if not np.isfinite(v) else fmt_value(v)
    if (np.isfinite(v) and task in base and row != BASELINE_ROW
            and _versus(v, base[task])):
        text += "\n" + _versus(v, base[task])
    if row == BASELINE_ROW and not np.isfinite(v):
        text = ""
    return text, colour


def _heatmap_panel(ax, group: dict, mean: pd.DataFrame, base: dict[str, float],
                   scales: dict[tuple, dict]) -> dict:
    """Draw one group's panel on ``ax``: its seed-mean R (``mean``, rows ``init``,
    ``after_<task>``; columns the tasks) and, with a mean predictor (``base``, per task), a last
    row of it; each cell coloured on its metric's scale (``scales``, :func:`metric_scales`) and
    annotated (:func:`_heatmap_cell`), the axes labelled with the tasks and rows.

    Returns:
        The panel's cells: ``{(group name, row, task): (text, RGBA colour)}``.
    """
    units = {k: v for u in group["runs"]["_units"] for k, v in u.items()}
    rows = list(mean.index) + ([BASELINE_ROW] if base else [])
    rgba = np.ones((len(rows), mean.shape[1], 4))
    cells = {}
    for j, task in enumerate(mean.columns):
        s = scales[_metric_of(units, task)]
        norm, cmap = Normalize(s["vmin"], s["vmax"], clip=True), plt.get_cmap(s["cmap"])
        col = list(mean[task].to_numpy(float)) + ([base.get(task, np.nan)] if base else [])
        for i, v in enumerate(col):
            text, colour = _heatmap_cell(v, rows[i], task, base, norm, cmap)
            rgba[i, j] = colour
            lum = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
            ax.text(j, i, text, ha="center", va="center", fontsize=8 if "\n" not in text
                    else 6.5, color="white" if lum < 0.5 else "black")
            cells[(group["name"], rows[i], task)] = (text, tuple(float(c) for c in colour))
    ax.imshow(rgba, aspect="auto", interpolation="nearest")
    if base:
        ax.axhline(len(mean) - 0.5, color="white", linewidth=2)
    ax.set_xticks(range(mean.shape[1]), [f"{t}\n{_scale_label(_metric_of(units, t))}"
                                         for t in mean.columns], fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    return cells


def _colour_bars(top, axes, scales: dict[tuple, dict]) -> list[str]:
    """One colour bar per metric (``scales``, :func:`metric_scales`) beside the panels
    (``axes``) of subfigure ``top``, each outside the last, the first metric's nearest.

    Returns:
        The bars' labels, in the order of ``scales``.
    """
    colorbars = []
    for k, s in reversed(scales.items()):  # each bar goes outside the last: the first nearest
        bar = top.colorbar(ScalarMappable(Normalize(s["vmin"], s["vmax"]), s["cmap"]),
                           ax=axes.ravel().tolist(), label=_scale_label(k), extend=s["extend"],
                           shrink=0.7, aspect=25)
        colorbars.insert(0, bar.ax.get_ylabel())
    return colorbars


def _figure_with_key(width: float, main_h: float, key: list[str], ncols: int, n_lines: int):
    """A figure of one row of ``ncols`` panels above its key's lines: ``(fig, top subfigure,
    axes)``, the axes drawing ``n_lines`` lines in as many colours (``tab20`` beyond 10)."""
    key_h = 0.2 + 0.15 * len(key)
    fig = plt.figure(figsize=(width, main_h + key_h), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[main_h, key_h])
    bottom.text(0.01, 0.98, "\n".join(key), ha="left", va="top", fontsize=8)
    axes = top.subplots(1, ncols, squeeze=False)[0]
    colours = plt.get_cmap("tab10" if n_lines <= 10 else "tab20").colors
    for ax in axes:
        ax.set_prop_cycle(color=colours)
    return fig, top, axes


def _legend(fig, handles: dict) -> list[str]:
    """One legend for the whole figure, each group once, under the panels."""
    labels = list(handles)
    fig.legend([handles[k] for k in labels], labels, loc="outside lower center",
               ncols=min(3, len(labels)), fontsize=8, frameon=False)
    return labels


def plot_curves(runs: pd.DataFrame, keys: list[str], path: Path) -> list[str]:
    """One panel per task j: R[i][j] after each training step i (mean ± std band per group);
    runs of different streams in one report each draw on their own tasks' panels. One legend,
    each group once (``G1 lora``, as in the tables), and the key under it.

    Args:
        runs: from :func:`load_runs`; keys: the group keys; path: the PNG.

    Returns:
        The legend's labels, in order.
    """
    groups, shared = describe_groups(runs, keys)
    tasks = list(dict.fromkeys(t for m in runs["_matrix"] for t in m.columns))
    units = {k: v for u in runs["_units"] for k, v in u.items()}
    width = max(4.2 * len(tasks), 6.0)
    key = figure_key(groups, shared, ["band: ± std over the group's runs"], width)
    fig, top, axes = _figure_with_key(width, 3.6 + 0.25 * math.ceil(len(groups) / 3), key,
                                      len(tasks), len(groups))
    handles = {}
    for ax, task in zip(axes, tasks):
        for group in groups:
            g = group["runs"]
            have = [m[task].rename(i) for i, m in enumerate(g["_matrix"]) if task in m.columns]
            if not have:
                continue
            task_rows = list(max((m.index for m in g["_matrix"] if task in m.columns), key=len))
            series = pd.concat(have, axis=1).reindex(task_rows)
            mean, std = series.mean(axis=1), series.std(axis=1, ddof=1).fillna(0)
            x = np.arange(len(mean))
            label = short_label(group)
            (line,) = ax.plot(x, mean, marker="o", label=label)
            ax.fill_between(x, mean - std, mean + std, alpha=0.2, color=line.get_color())
            handles.setdefault(label, line)
            ax.set_xticks(range(len(task_rows)), task_rows, rotation=15, fontsize=7)
        ax.set_ylabel(_scale_label(_metric_of(units, task)))
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("after training")
    labels = _legend(top, handles)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return labels


def plot_losses(runs: pd.DataFrame, keys: list[str], path: Path) -> list[str] | None:
    """One panel per task: its training loss against the step (the CSV logger's
    ``<task>/task_loss``, :func:`read_losses`), the mean over each group's
    runs, one line per group, one legend.

    Args:
        runs: from :func:`load_runs`; keys: the group keys; path: the PNG.

    Returns:
        The legend's labels, or ``None`` when no run logged a loss (nothing is written).
    """
    if not any(len(x) for x in runs["_losses"]):
        return None
    groups, shared = describe_groups(runs, keys)
    tasks = list(dict.fromkeys(t for x in runs["_losses"] for t in x["task"]))
    width = max(4.2 * len(tasks), 6.0)
    key = figure_key(groups, shared, ["loss: the task's training loss (the strategy's own "
                                      "terms left out), mean over the group's runs"], width)
    fig, top, axes = _figure_with_key(width, 3.4 + 0.25 * math.ceil(len(groups) / 3), key,
                                      len(tasks), len(groups))
    handles = {}
    for ax, task in zip(axes, tasks):
        for group in groups:
            curves = [x[x["task"] == task].set_index("step")["loss"] for x in group["runs"]["_losses"]
                      if len(x) and (x["task"] == task).any()]
            if not curves:
                continue
            mean = pd.concat(curves, axis=1).mean(axis=1).sort_index()
            label = short_label(group)
            (line,) = ax.plot(mean.index, mean.to_numpy(), label=label)
            handles.setdefault(label, line)
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("training step")
        ax.set_ylabel("train loss")
    labels = _legend(top, handles)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return labels
