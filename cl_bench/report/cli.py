"""``clbench-report``: turn run directories into a paper table (mean ± std over seeds) and figures.

    clbench-report results/brain_mri_fm/brain_seg_age/2026-11-24_15-00-00 --paper brain_mri_fm
    clbench-report results/multirun/* --format latex --out paper/

Every directory holding a ``metrics.json`` under the given paths is one run. A group is the runs
whose configs match except for the seed (:func:`cl_bench.report.groups.group_keys`: run-local
keys and the places data and results live aside; a key one run sets with ``+key=`` and another lacks
differs); its numbers are the mean ± std over those seeds. The report names each group ``G1``,
``G2``, ... in its tables and figures and says which config keys separate the groups. A group
with unfinished runs is shown with status ``partial``: its ``runs`` column says how many, its
metrics average the runs' completed tasks (as in ``metrics.json``'s partial convention), never
silently dropping them. A regression task's mean predictor (always answering the training
mean) stands beside its MAE, and a line says whether the model beats it.

Writes into ``--out`` (default ``<first dir>/report``): ``report.md``, ``report.tex`` (a pdflatex
document in ASCII, tables of at most 10 columns), ``report.csv`` (numeric ``<quantity> mean`` /
``<quantity> std`` columns), ``runs.csv`` (one row per run), ``heatmaps.png`` (the seed-mean R
of each group, one colour scale per metric), ``curves.png`` (each task's metric after every
training step, mean ± std band per group) and ``losses.png`` (each task's training loss per
step, from the CSV logger; not written without one). Every number is rounded as the terminal
summary rounds it (:func:`cl_bench.summary.fmt_value`). With ``--paper`` naming a paper that
states claims (:mod:`cl_bench.reference`), also ``claims.csv``: each claim and each of its
tests judged on our runs, per seed, with its margin (see
:func:`cl_bench.report.claims.claims_table`), and ``claims.md``: one block per setting, conf/'s
default first, one short row per measured claim (:func:`cl_bench.report.claims_md.claims_markdown`),
printed after the table with ``--format markdown`` (the default).

A directory that holds a hyperparameter search (``clbench -m hydra/sweeper=optuna``; its trials
are runs like any other, one group per trial, measured on the validation split) also gets the
study's report (:mod:`cl_bench.search.study`): ``best_config.yaml``, ``best_overrides.txt``,
``trials.csv``, ``history.png`` and ``importance.png`` in ``<sweep dir>/study/`` (with ``--out``:
``<out>/study/``, or ``<out>/study_<sweep dir name>/`` for several searches), and the best trial
printed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from cl_bench.errors import ClBenchError
from cl_bench.reference import PAPERS
from cl_bench.report.claims_md import write_claims
from cl_bench.report.figures import plot_curves, plot_heatmaps, plot_losses
from cl_bench.report.groups import group_keys, summarise
from cl_bench.report.load import PRIVATE, load_runs
from cl_bench.report.tables import baseline_lines, groups_line, latex_document, markdown_table, table
from cl_bench.search.study import best_line, is_study_dir, load_study, write_study_report


def write_report(dirs: list[str | Path], out: str | Path | None = None, fmt: str = "markdown",
                 paper: str | None = None) -> tuple[pd.DataFrame, str, list[str]]:
    """Load, summarise and write every report file (module docstring) into ``out``.

    Args:
        dirs: run or sweep directories; out: the output directory (None: ``<first dir>/report``);
        fmt: what to return as text (markdown, latex or csv); paper: a key of
        :data:`cl_bench.reference.PAPERS` (its published rows, and its claims if it states any).

    Returns:
        ``(summary, text, skipped)``: the numeric summary, the table rendered in ``fmt``
        (markdown, latex or csv; in markdown followed by ``claims.md`` when ``paper`` states
        claims) and the runs that could not be read.

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
    claims = (write_claims(runs, paper, out, [*map(Path, dirs), out])
              if paper and PAPERS[paper].get("claims") else "")
    keys = group_keys(runs)
    plot_heatmaps(runs, keys, out / "heatmaps.png")
    plot_curves(runs, keys, out / "curves.png")
    losses = plot_losses(runs, keys, out / "losses.png")
    if losses is None and (out / "losses.png").exists():
        (out / "losses.png").unlink()  # an older report's: not these runs'
    notes = [groups_line(runs, summary)]
    versus = baseline_lines(summary)
    if versus:
        notes.append("Against the mean predictor (always answering the training mean): "
                     + "; ".join(versus) + ".")
    notes.append("Figures: heatmaps.png, curves.png"
                 + (", losses.png" if losses is not None else
                    " (no losses.png: no run logged its loss; logger=csv does)") + ".")
    if paper:
        notes.append(f"{PAPERS[paper]['note']}. Source: {PAPERS[paper]['citation']}.")
    md = "\n\n".join([notes[0], markdown_table(human), *notes[1:]]) + "\n"
    fixed = [c for c in summary.columns if not c.endswith((" mean", " std")) and c != "n"]
    tex = latex_document(human, fixed, notes)
    (out / "report.md").write_text(md)
    (out / "report.tex").write_text(tex)
    summary.to_csv(out / "report.csv", index=False, float_format="%.6g")
    runs.drop(columns=list(PRIVATE)).to_csv(out / "runs.csv", index=False)
    text = {"markdown": md, "latex": tex,
            "csv": summary.to_csv(index=False, float_format="%.6g")}[fmt]
    if claims and fmt == "markdown":
        text += "\n" + claims
    return summary, text, skipped


def _study_reports(dirs: list[str], out: str | None) -> tuple[list[str], list[str]]:
    """The study report (:func:`cl_bench.search.study.write_study_report`) of every search
    among ``dirs``: the lines to print (one per file, then the best trial) and the errors (one
    line per search whose study could not be read; the other reports are still written)."""
    studies = [d for d in dirs if is_study_dir(d)]
    lines, errors = [], []
    for d in studies:
        where = (None if out is None else Path(out) / "study" if len(studies) == 1
                 else Path(out) / f"study_{Path(d).resolve().name}")
        try:
            study = load_study(d)
            written = write_study_report(d, where, study=study)
        except ClBenchError as e:
            errors.append(f"study {d}: {e}")
            continue
        for name, path in written.items():
            why = ""
            if name.endswith("_note"):
                why = " (" + path.read_text().strip().split(": ", 1)[-1] + ")"
            lines.append(f"clbench-report: wrote {path}{why}")
        lines.append(f"clbench-report: {study.study_name}: "
                     + (best_line(study) or "best: no complete trial yet"))
    return lines, errors


def main(argv: list[str] | None = None) -> None:
    """``clbench-report DIR [DIR ...] [--format F] [--out OUT] [--paper NAME]``: write the
    report (:func:`write_report`), print it and where it went.

    Args:
        argv: the arguments (None: ``sys.argv[1:]``).

    Returns:
        Nothing; exits with code 2 after one line per user error (unreadable directories, no
        runs, an unknown paper or format, a search whose study cannot be read).
    """
    p = argparse.ArgumentParser(prog="clbench-report", description=__doc__.split("\n")[0])
    p.add_argument("dirs", nargs="+", help="run or sweep directories (searched recursively)")
    p.add_argument("--format", default="markdown", choices=["markdown", "latex", "csv"])
    p.add_argument("--out", default=None, help="output directory (default: <first dir>/report; "
                   "a search's study report: <sweep dir>/study)")
    p.add_argument("--paper", default=None, help=f"add published numbers: {', '.join(PAPERS)}")
    args = p.parse_args(argv)
    study_lines, study_errors = _study_reports(args.dirs, args.out)
    try:
        _, text, skipped = write_report(args.dirs, args.out, args.format, args.paper)
    except ClBenchError as e:
        print("\n".join(study_lines), end="\n" if study_lines else "")
        for line in study_errors + [str(e)]:
            print(f"clbench-report: error: {line}", file=sys.stderr)
        sys.exit(2)
    print(text)
    for s in skipped:
        print(f"clbench-report: skipped: {s}", file=sys.stderr)
    out = args.out or str(Path(args.dirs[0]) / "report")
    print(f"clbench-report: wrote {out}")
    for line in study_lines:
        print(line)
    for line in study_errors:
        print(f"clbench-report: error: {line}", file=sys.stderr)
    if study_errors:
        sys.exit(2)


if __name__ == "__main__":
    main()
