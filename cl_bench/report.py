"""``clbench-report``: turn run directories into a paper table (mean ± std over seeds) and figures.

    clbench-report results/brain_mri_fm/brain_seg_age/2026-11-24_15-00-00 --paper brain_mri_fm
    clbench-report results/multirun/* --format latex --out paper/

Every directory holding a ``metrics.json`` under the given paths is one run. Runs are grouped by
the sweep's varying keys — always ``tasks``, ``strategy``, ``backbone``, plus every config key
whose value differs between runs (paths, ``seed``, ``results_dir``, ``resume``, ``hydra.*`` and
run-local keys excluded) — and averaged over seeds. A group with unfinished runs is shown with
status ``partial``: its ``runs`` column says how many, its metrics average the runs' completed
tasks (as in ``metrics.json``'s partial convention), never silently dropping them.

Writes into ``--out`` (default ``<first dir>/report``): ``report.md``, ``report.tex``,
``report.csv`` (numeric ``<quantity> mean`` / ``<quantity> std`` columns), ``runs.csv`` (one row
per run), ``heatmaps.png`` (the seed-mean R of each group) and ``curves.png`` (each task's metric
after every training step, mean ± std band per group).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from cl_bench.errors import ClBenchError  # noqa: E402
from cl_bench.reference import PAPERS  # noqa: E402

#: config keys never used for grouping (they do not define an experiment)
IGNORED = ("seed", "results_dir", "resume", "train.progress_bar", "hardware.num_threads",
           "run_dir")
#: per metric group, the stream-level quantities reported (metrics.json "groups")
GROUP_KEYS = ("final_average", "mft", "maa", "bwt_gem", "bwt_sefe", "forgetting_max")
ARROW = {True: "↑", False: "↓"}


def _flatten(d, prefix: str = "") -> dict:
    if not isinstance(d, dict):
        return {prefix: d}
    out = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _ignored(key: str) -> bool:
    leaf = key.rsplit(".", 1)[-1]
    return (key in IGNORED or key.startswith(("hydra.", "logger.")) or key.endswith(
        ("_dir", "dir", "path", "root", "table", "weights", "_target_")))


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _load_run(metrics_path: Path) -> dict:
    """One run directory -> a flat record (config keys + results). Raises on unreadable files."""
    run = metrics_path.parent
    m = json.loads(metrics_path.read_text())
    cfg_path = run / ".hydra" / "config.yaml"
    cfg = {}
    if cfg_path.is_file():
        cfg = _flatten(OmegaConf.to_container(OmegaConf.load(cfg_path), resolve=False))
    rec = {f"cfg:{k}": (json.dumps(v) if isinstance(v, list) else v) for k, v in cfg.items()}
    rec.update(run=str(run), tasks=m.get("tasks") or cfg.get("tasks.name"),
               strategy=m.get("strategy") or cfg.get("strategy.name"),
               backbone=m.get("backbone") or cfg.get("backbone.name"),
               seed=m.get("seed", cfg.get("seed")), complete=bool(m.get("complete")),
               tasks_completed=m.get("tasks_completed", 0), num_tasks=m.get("num_tasks"))
    units = m.get("units", {})
    for task, u in units.items():
        col = _task_col(task, u)
        rec[col] = m.get("per_task", {}).get(task, {}).get("final", np.nan)
        rec[f"{task} {u['metric']} (just learned)"] = (
            m.get("per_task", {}).get(task, {}).get("just_learned", np.nan))
    last = list(m.get("details", {}))[-1] if m.get("details") else None
    for task, vals in (m["details"][last].items() if last and last != "init" else []):
        if "mae_normalised" in vals:
            rec[f"{task} mae_normalised ↓"] = vals["mae_normalised"]
    for metric, g in m.get("groups", {}).items():
        for key in GROUP_KEYS:
            if key in ("final_average", "mft") and len(g.get("tasks", [])) < 2:
                continue  # one task: the same as its final / just-learned column
            rec[f"{key} {metric}"] = g.get(key, np.nan) if g.get(key) is not None else np.nan
    for key, value in m.get("ciss", {}).get("last", {}).items():  # CISS: base / new / all
        rec[f"{key} (last step)"] = value if value is not None else np.nan
    params = _read_json(run / "params.json") or {}
    pct = [p["trainable_pct"] for p in params.get("tasks", {}).values()]
    rec["trainable %"] = float(np.mean(pct)) if pct else np.nan
    timing = _read_json(run / "timing.json") or {}
    rec["wall time (s)"] = timing.get("total_s", np.nan)
    rec["peak RSS (MB)"] = timing.get("peak_rss_mb", np.nan)
    if "peak_gpu_mb" in timing:
        rec["peak GPU (MB)"] = timing["peak_gpu_mb"]
    rec["_units"] = units
    rec["_matrix"] = pd.read_csv(run / "matrix.csv", index_col=0)
    return rec


def _task_col(task: str, u: dict) -> str:
    unit = f" ({u['units']})" if u.get("units") else ""
    return f"{task} {u['metric']}{unit} {ARROW[bool(u['higher_is_better'])]}"


def load_runs(dirs: list[str | Path]) -> tuple[pd.DataFrame, list[str]]:
    """Read every run (a directory with ``metrics.json``) under ``dirs``.

    Returns:
        ``(runs, skipped)``: one row per run (group keys, ``seed``, ``complete``, one column per
        task's final metric in native units, per-metric-group BWT/forgetting/MFN/MFT/MAA,
        ``trainable %``, ``wall time (s)``, ``peak RSS (MB)`` (and ``peak GPU (MB)`` for runs on a
        GPU); the R matrix in the ``_matrix`` column) and
        ``"<file>: <reason>"`` for each run that could not be read.

    Raises:
        ClBenchError: a directory that does not exist or cannot be read, or no runs at all.
    """
    found = []
    for d in map(Path, dirs):
        try:
            if not d.is_dir():
                raise ClBenchError(f"cannot read results dir '{d}': "
                                   f"{'not a directory' if d.exists() else 'no such directory'}")
            found += [(d, p) for p in sorted(d.rglob("metrics.json"))]
        except PermissionError as e:
            raise ClBenchError(f"cannot read results dir '{d}': {e.strerror}") from None
    records, skipped = [], []
    for base, path in found:
        try:
            rec = _load_run(path)
            rec["run"] = str(Path(base.name) / path.parent.relative_to(base))  # no abs paths
            records.append(rec)
        except (OSError, ValueError, KeyError, TypeError, pd.errors.ParserError) as e:
            skipped.append(f"{path}: {type(e).__name__}: {e}")
    if not records:
        raise ClBenchError(f"no runs (metrics.json) under {', '.join(map(str, dirs))}"
                           + (f"; unreadable: {'; '.join(skipped)}" if skipped else ""))
    return pd.DataFrame.from_records(records), skipped


def group_keys(runs: pd.DataFrame) -> list[str]:
    """``tasks``, ``strategy``, ``backbone`` + config keys that vary between runs of the
    same strategy (so a strategy's own hyper-parameters do not split it by themselves)."""
    keys = ["tasks", "strategy", "backbone"]
    cfg_cols = [c for c in runs.columns if c.startswith("cfg:") and not _ignored(c[4:])]
    for col in cfg_cols:
        values = runs[col].astype(str)
        if values.nunique() > 1 and (runs.assign(_v=values).groupby("strategy")["_v"]
                                     .nunique() > 1).any():
            keys.append(col)
    return keys


def _quantities(runs: pd.DataFrame) -> list[str]:
    skip = {"run", "seed", "complete", "tasks_completed", "num_tasks", "_units", "_matrix",
            "tasks", "strategy", "backbone"}
    cols = [c for c in runs.columns if c not in skip and not c.startswith("cfg:")]
    return [c for c in cols if "(just learned)" not in c] + [c for c in cols if
                                                             "(just learned)" in c]


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds per group (std with ddof=1; NaN for a single run).

    Returns:
        One row per group: the group keys, ``runs`` (``"3"`` or ``"3 (1 partial)"``),
        ``status`` (``complete`` / ``partial``), ``n`` and ``<quantity> mean`` /
        ``<quantity> std`` for every quantity of :func:`load_runs`.
    """
    keys = group_keys(runs)
    rows = []
    for values, g in runs.groupby(keys, sort=False, dropna=False):
        row = dict(zip(keys, values if isinstance(values, tuple) else (values,)))
        partial = int((~g["complete"]).sum())
        row["runs"] = f"{len(g)}" + (f" ({partial} partial)" if partial else "")
        row["status"] = "partial" if partial else "complete"
        row["n"] = len(g)
        for q in _quantities(runs):
            x = pd.to_numeric(g[q], errors="coerce").dropna()
            row[f"{q} mean"] = x.mean() if len(x) else np.nan
            row[f"{q} std"] = x.std(ddof=1) if len(x) > 1 else np.nan
        rows.append(row)
    out = pd.DataFrame(rows)
    return out.rename(columns={k: k[4:] for k in keys if k.startswith("cfg:")})


def _fmt(mean, std) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    digits = 3 if abs(mean) < 10 else 1
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def table(summary: pd.DataFrame, paper: str | None = None) -> pd.DataFrame:
    """The human table: ``mean ± std`` strings (``–`` where not measured), plus the paper's rows.

    Raises:
        ClBenchError: an unknown ``paper`` (lists the known ones).
    """
    quantities = [c[:-5] for c in summary.columns if c.endswith(" mean")]
    quantities = [q for q in quantities if summary[f"{q} mean"].notna().any()]
    fixed = [c for c in summary.columns if not c.endswith((" mean", " std")) and c != "n"]
    rows = []
    for _, r in summary.iterrows():
        row = {c: r[c] for c in fixed}
        row.update({q: _fmt(r[f"{q} mean"], r[f"{q} std"]) for q in quantities})
        rows.append(row)
    if paper is not None:
        if paper not in PAPERS:
            raise ClBenchError(f"--paper {paper!r}: unknown; known: {', '.join(sorted(PAPERS))}")
        for strategy, ref in PAPERS[paper]["rows"].items():
            row = {c: "" for c in fixed}
            row.update(strategy=ref["label"], status="published", runs="")
            for q in quantities:
                base = q.replace(" (years)", "").replace(" ↑", "").replace(" ↓", "")
                v = ref.get(base, ref.get(q))
                row[q] = ("–" if v is None else _fmt(*v) if isinstance(v, tuple)
                          else v if isinstance(v, str) else _fmt(float(v), None))
            rows.append(row)
    return pd.DataFrame(rows)


def plot_heatmaps(runs: pd.DataFrame, keys: list[str], path: Path) -> None:
    """A grid of seed-mean R matrices, one panel per group; each column coloured on its own
    scale from worse (dark) to better (bright), values annotated in native units."""
    groups = list(runs.groupby(keys, sort=False, dropna=False))
    ncol = min(3, len(groups))
    nrow = math.ceil(len(groups) / ncol)
    fig, axes = plt.subplots(nrow, ncol, squeeze=False, figsize=(4.6 * ncol, 3.4 * nrow))
    for ax in axes.flat[len(groups):]:
        ax.axis("off")
    for ax, (values, g) in zip(axes.flat, groups):
        mats = [m for m in g["_matrix"]]
        index = max((m.index for m in mats), key=len)
        mean = pd.concat([m.reindex(index) for m in mats]).groupby(level=0).mean().reindex(index)
        units = g["_units"].iloc[0]
        shade = np.zeros(mean.shape)
        for j, task in enumerate(mean.columns):
            col = mean[task].to_numpy(float)
            lo, hi = np.nanmin(col), np.nanmax(col)
            frac = (col - lo) / (hi - lo) if hi > lo else np.full_like(col, 0.5)
            shade[:, j] = frac if units.get(task, {}).get("higher_is_better", True) else 1 - frac
        ax.imshow(shade, cmap="viridis", vmin=0, vmax=1, aspect="auto")
        for (i, j), v in np.ndenumerate(mean.to_numpy(float)):
            ax.text(j, i, "–" if np.isnan(v) else (f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"),
                    ha="center", va="center", fontsize=8,
                    color="white" if shade[i, j] < 0.5 else "black")
        labels = [f"{t}\n{units.get(t, {}).get('metric', '')} "
                  f"{ARROW[units.get(t, {}).get('higher_is_better', True)]}" for t in mean.columns]
        ax.set_xticks(range(mean.shape[1]), labels, fontsize=8)
        ax.set_yticks(range(len(mean)), list(mean.index), fontsize=8)
        name = " / ".join(str(v) for v in (values if isinstance(values, tuple) else (values,)))
        ax.set_title(f"{name} (n={len(g)})", fontsize=9)
    fig.suptitle("R matrices, mean over seeds (colour per column: dark = worse)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(runs: pd.DataFrame, keys: list[str], path: Path) -> None:
    """One panel per task j: R[i][j] after each training step i (mean ± std band per group);
    runs of different streams in one report each draw on their own tasks' panels."""
    tasks = list(dict.fromkeys(t for m in runs["_matrix"] for t in m.columns))
    units = {k: v for u in runs["_units"] for k, v in u.items()}
    fig, axes = plt.subplots(1, len(tasks), squeeze=False, figsize=(5 * len(tasks), 3.6))
    for ax, task in zip(axes[0], tasks):
        for values, g in runs.groupby(keys, sort=False, dropna=False):
            have = [m[task].rename(i) for i, m in enumerate(g["_matrix"]) if task in m.columns]
            if not have:
                continue
            series = pd.concat(have, axis=1)
            task_rows = list(max((m.index for m in g["_matrix"] if task in m.columns), key=len))
            series = series.reindex(task_rows)
            mean, std = series.mean(axis=1), series.std(axis=1, ddof=1).fillna(0)
            x = np.arange(len(mean))
            label = " / ".join(str(v) for v in (values if isinstance(values, tuple)
                                                else (values,))[1:2])
            ax.plot(x, mean, marker="o", label=label)
            ax.fill_between(x, mean - std, mean + std, alpha=0.2)
            ax.set_xticks(range(len(task_rows)), task_rows, rotation=15, fontsize=8)
        u = units.get(task, {})
        unit = f" ({u['units']})" if u.get("units") else ""
        ax.set_ylabel(f"{u.get('metric', '')}{unit} {ARROW[u.get('higher_is_better', True)]}")
        ax.set_title(task)
        ax.set_xlabel("after training")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(dirs: list[str | Path], out: str | Path | None = None, fmt: str = "markdown",
                 paper: str | None = None) -> tuple[pd.DataFrame, str, list[str]]:
    """Load, summarise and write every report file (module docstring) into ``out``.

    Returns:
        ``(summary, text, skipped)``: the numeric summary, the table rendered in ``fmt``
        (markdown, latex or csv) and the runs that could not be read.

    Raises:
        ClBenchError: unreadable dirs, no runs, an unknown ``paper`` or ``fmt``.
    """
    if fmt not in ("markdown", "latex", "csv"):
        raise ClBenchError(f"--format {fmt!r}: expected markdown, latex or csv")
    runs, skipped = load_runs(dirs)
    summary = summarise(runs)
    human = table(summary, paper)
    out = Path(out) if out else Path(dirs[0]) / "report"
    out.mkdir(parents=True, exist_ok=True)
    note = f"\n\n{PAPERS[paper]['note']}. Source: {PAPERS[paper]['citation']}.\n" if paper else "\n"
    md = human.to_markdown(index=False) + note
    (out / "report.md").write_text(md)
    (out / "report.tex").write_text(human.to_latex(index=False, escape=True))
    summary.to_csv(out / "report.csv", index=False, float_format="%.6g")
    runs.drop(columns=["_units", "_matrix"]).to_csv(out / "runs.csv", index=False)
    keys = group_keys(runs)
    plot_heatmaps(runs, keys, out / "heatmaps.png")
    plot_curves(runs, keys, out / "curves.png")
    text = {"markdown": md, "latex": human.to_latex(index=False, escape=True),
            "csv": summary.to_csv(index=False, float_format="%.6g")}[fmt]
    return summary, text, skipped


def main(argv: list[str] | None = None) -> None:
    """``clbench-report DIR [DIR ...] [--format F] [--out OUT] [--paper NAME]``; user errors
    print one line and exit with code 2."""
    p = argparse.ArgumentParser(prog="clbench-report", description=__doc__.split("\n")[0])
    p.add_argument("dirs", nargs="+", help="run or sweep directories (searched recursively)")
    p.add_argument("--format", default="markdown", choices=["markdown", "latex", "csv"])
    p.add_argument("--out", default=None, help="output directory (default: <first dir>/report)")
    p.add_argument("--paper", default=None, help=f"add published numbers: {', '.join(PAPERS)}")
    args = p.parse_args(argv)
    try:
        _, text, skipped = write_report(args.dirs, args.out, args.format, args.paper)
    except ClBenchError as e:
        print(f"clbench-report: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(text)
    for s in skipped:
        print(f"clbench-report: skipped: {s}", file=sys.stderr)
    out = args.out or str(Path(args.dirs[0]) / "report")
    print(f"clbench-report: wrote {out}")


if __name__ == "__main__":
    main()
