"""The report's tables: numbers as text (one rounding rule), ``report.md`` and ``report.tex``.

Every number the report prints goes through :func:`cl_bench.summary.fmt_value` (the terminal
summary's rule), a standard deviation with its mean's decimals (:func:`fmt_mean_std`).
``report.tex`` is a whole pdflatex document in ASCII: the groups' key table, then the
quantities in tables of at most :data:`LATEX_COLUMNS` columns, each scaled to the text width.
"""

from __future__ import annotations

import math
import re
from decimal import ROUND_HALF_UP, Decimal

import pandas as pd

from cl_bench.errors import ClBenchError
from cl_bench.reference import PAPERS
from cl_bench.report.groups import UNSET, _missing, separating_keys, show_value
from cl_bench.report.load import MEAN_PREDICTOR
from cl_bench.summary import decimals, fmt_value, versus_baseline


#: the most columns one table of ``report.tex`` has
LATEX_COLUMNS = 10
#: what ``report.tex`` writes for the report's non-ASCII characters (anything else: ``?``)
LATEX_TEXT = {"↑": r"$\uparrow$", "↓": r"$\downarrow$", "±": r"$\pm$", "–": "--", "—": "---",
              "≤": r"$\le$", "≥": r"$\ge$", "×": r"$\times$", "≈": r"$\approx$",
              "·": r"$\cdot$", "→": r"$\to$", "✓": "yes", "✗": "no", "µ": r"$\mu$",
              "’": "'", "‘": "`", "“": "``", "”": "''", "…": "...", "°": r"$^\circ$"}
#: LaTeX's special characters, escaped
LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                 "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                 "^": r"\textasciicircum{}", "<": r"\textless{}", ">": r"\textgreater{}",
                 "|": r"\textbar{}"}


def fixed(v: float, digits: int) -> str:
    """``v`` with ``digits`` decimals by :func:`cl_bench.summary.fmt_value`'s rule: the value
    itself where ``digits`` is what that rule gives it; otherwise (a std beside its mean) its 6
    significant digits rounded half up in decimal arithmetic, as ``fmt_value`` does.

    Args:
        v: a finite number; digits: the decimals.

    Returns:
        The text.
    """
    if decimals(v) == digits:
        return fmt_value(v)
    d = Decimal(f"{v:.6g}").quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP)
    return f"{d.copy_abs() if d.is_zero() else d:f}"


def fmt_mean_std(mean, std) -> str:
    """``mean ± std`` as every table of the report shows it.

    Args:
        mean: the mean (None or NaN: not measured); std: its std (None or NaN: one value).

    Returns:
        ``–`` where not measured, ``fmt_value(mean)`` for one value, else ``<mean> ± <std>``
        with the std given the mean's decimals (``16.2 ± 1.0``, ``0.400 ± 0.141``).
    """
    if _missing(mean):
        return "–"
    if _missing(std):
        return fmt_value(mean)
    return f"{fmt_value(mean)} ± {fixed(float(std), decimals(float(mean)))}"


def table(summary: pd.DataFrame, paper: str | None = None) -> pd.DataFrame:
    """The human table: ``mean ± std`` strings (``–`` where not measured), plus the paper's rows.

    Args:
        summary: from :func:`summarise`; paper: a key of
            :data:`cl_bench.reference.PAPERS` whose published rows are appended (None: none).

    Returns:
        One row per group (then per published row): the fixed columns (``group``, the group
        keys, ``runs``, ``status``; a key a group does not set as ``–``) and one text column per
        quantity measured by some group.

    Raises:
        ClBenchError: an unknown ``paper`` (lists the known ones).
    """
    quantities = [c[:-5] for c in summary.columns if c.endswith(" mean")]
    quantities = [q for q in quantities if summary[f"{q} mean"].notna().any()]
    fixed_cols = [c for c in summary.columns if not c.endswith((" mean", " std")) and c != "n"]
    rows = []
    for _, r in summary.iterrows():
        row = {c: (show_value(r[c]) if c not in ("runs", "status") else r[c])
               for c in fixed_cols}
        row.update({q: fmt_mean_std(r[f"{q} mean"], r[f"{q} std"]) for q in quantities})
        rows.append(row)
    if paper is not None:
        if paper not in PAPERS:
            raise ClBenchError(f"--paper {paper!r}: unknown; known: {', '.join(sorted(PAPERS))}")
        for strategy, ref in PAPERS[paper]["rows"].items():
            row = {c: "" for c in fixed_cols}
            row.update(strategy=ref["label"], status="published", runs="")
            for q in quantities:
                base = q.replace(" (years)", "").replace(" ↑", "").replace(" ↓", "")
                v = ref.get(base, ref.get(q))
                row[q] = ("–" if v is None else fmt_mean_std(*v) if isinstance(v, tuple)
                          else v if isinstance(v, str) else fmt_value(float(v)))
            rows.append(row)
    return pd.DataFrame(rows)


def markdown_table(human: pd.DataFrame) -> str:
    """``human`` (:func:`table`) as a markdown table, every cell exactly as formatted (no
    re-parsing of numbers: ``0.500`` stays ``0.500``).

    Args:
        human: the table of text cells.

    Returns:
        The markdown.
    """
    return human.to_markdown(index=False, disable_numparse=True)


def baseline_lines(summary: pd.DataFrame) -> list[str]:
    """One line per group and regression task whose mean predictor the runs recorded: the
    group's final MAE beside predicting the mean, said plainly (``G2 seq_ft: brain_age MAE
    18.9 years, worse than predicting the mean (16.3 years)``), compared as both are shown.

    Args:
        summary: from :func:`summarise`.

    Returns:
        The lines (none without a mean predictor).
    """
    suffix = f", {MEAN_PREDICTOR} mean"
    lines = []
    for col in [c for c in summary.columns if c.endswith(suffix)]:
        task_metric = col[:-len(suffix)]  # "<task> mae (years)"
        value_col = f"{task_metric} ↓ mean"
        if value_col not in summary:
            continue
        task, metric = task_metric.split(" ", 1)
        unit = metric.split("(", 1)[1].rstrip(")") if "(" in metric else ""
        name = metric.split(" (", 1)[0].upper() if metric.startswith("mae") else metric
        for _, r in summary.iterrows():
            v, b = r[value_col], r[col]
            if _missing(v) or _missing(b):
                continue
            verdict = versus_baseline(v, {"mean_predictor": b}, higher_is_better=False)
            u = f" {unit}" if unit else ""
            lines.append(f"{r['group']} {r['strategy']}: {task} {name} {fmt_value(v)}{u}, "
                         f"{verdict} ({fmt_value(b)}{u})")
    return lines


def latex_escape(text) -> str:
    """``text`` as LaTeX source in ASCII: its special characters escaped, the report's symbols
    as LaTeX (:data:`LATEX_TEXT`: ``↑`` -> ``$\\uparrow$``, ``±`` -> ``$\\pm$``, ``–`` ->
    ``--``), any other non-ASCII character as ``?``; a leading ``[`` braced (after ``\\\\`` it
    would read as a length).

    Args:
        text: any value (shown with ``str``).

    Returns:
        The LaTeX source.
    """
    out = "".join(LATEX_SPECIAL.get(ch, ch) for ch in str(text))
    out = "".join(LATEX_TEXT.get(ch, ch) for ch in out)
    out = out.encode("ascii", "replace").decode("ascii")
    return "{}" + out if out.startswith("[") else out


def _header(name: str, width: int = 14) -> str:
    """A column header in LaTeX, broken into lines of about ``width`` characters (at spaces,
    or after a ``.`` or ``_`` of a config key)."""
    lines: list[str] = []
    for piece in re.findall(r"[^ ._]*[._]?(?: |$)?|.", str(name)):
        if lines and len(lines[-1]) + len(piece.rstrip()) <= width:
            lines[-1] += piece
        elif piece:
            lines.append(piece)
    lines = [line.strip() for line in lines if line.strip()]
    if len(lines) <= 1:
        return latex_escape(name)
    return (r"\begin{tabular}[b]{@{}c@{}}" + r"\\".join(latex_escape(line) for line in lines)
            + r"\end{tabular}")


def _tabular(frame: pd.DataFrame, caption: str, left: int) -> str:
    """One LaTeX table of ``frame`` (text cells; the first ``left`` columns flush left, the
    numbers flush right), scaled to the text width."""
    spec = "l" * min(left, frame.shape[1]) + "r" * max(0, frame.shape[1] - left)
    lines = [r"\begin{table}[htbp]", r"\centering", r"\caption{" + latex_escape(caption) + "}",
             r"\resizebox{\textwidth}{!}{%", r"\begin{tabular}{" + spec + "}", r"\hline",
             " & ".join(_header(c) for c in frame.columns) + r" \\", r"\hline"]
    lines += [" & ".join(latex_escape(v) for v in row) + r" \\"
              for row in frame.astype(str).itertuples(index=False)]
    lines += [r"\hline", r"\end{tabular}}", r"\end{table}", ""]
    return "\n".join(lines)


def latex_document(human: pd.DataFrame, keys: list[str], notes: list[str],
                   title: str = "clbench-report") -> str:
    """``report.tex``: a pdflatex document (``article``, ``graphicx`` only) in ASCII.

    The columns every group shares one value of (``tasks``, ``backbone`` of a one-stream
    report) go into the first caption; the groups' keys (``group``, ``strategy``, the other
    group keys, ``runs``, ``status``) form a key table; the quantities follow in tables of
    ``group``, ``strategy`` and at most :data:`LATEX_COLUMNS` - 2 quantities. A table whose
    key columns alone exceed :data:`LATEX_COLUMNS` is split the same way.

    Args:
        human: from :func:`table`; keys: its columns that are not quantities (``group``, the
            group keys, ``runs``, ``status``); notes: paragraphs printed under the title (the groups'
            keys, baselines, the paper's note); title: the section title.

    Returns:
        The document's source.
    """
    keys = [c for c in human.columns if c in keys]
    qty = [c for c in human.columns if c not in keys]
    ours = human[human["status"] != "published"] if "status" in human else human
    shared = {c: ours[c].iloc[0] for c in keys
              if c not in ("group", "strategy") and len(ours) > 1
              and ours[c].astype(str).nunique() == 1 and str(ours[c].iloc[0]) not in ("", UNSET)}
    keys = [c for c in keys if c not in shared]
    lead = ["group", "strategy"] if "strategy" in keys else ["group"]
    body = [r"\documentclass{article}", r"\usepackage{graphicx}", r"\begin{document}",
            r"\sloppy",
            r"\section*{" + latex_escape(title) + "}", ""]
    body += [latex_escape(n) + "\n" for n in notes]
    groups_caption = "Groups" + ("; all: " + ", ".join(f"{k} {v}" for k, v in shared.items())
                                 if shared else "")
    rest = [c for c in keys if c not in lead]
    step = LATEX_COLUMNS - len(lead)
    for i in range(0, max(len(rest), 1), step):
        part = ours[lead + rest[i:i + step]]
        body.append(_tabular(part, groups_caption + (" (continued)" if i else ""),
                             part.shape[1]))
    for k, i in enumerate(range(0, len(qty), step)):
        part = human[lead + qty[i:i + step]]
        body.append(_tabular(part, f"Results ({k + 1}/{math.ceil(len(qty) / step)}): mean "
                                   f"± std over seeds", len(lead)))
    body.append(r"\end{document}")
    return "\n".join(body) + "\n"


def groups_line(runs: pd.DataFrame, summary: pd.DataFrame) -> str:
    """The line above the report's table: how many groups, which keys separate them (and the
    other config keys that differ between them, each strategy's own), and what a group is.

    Args:
        runs: from :func:`load_runs`; summary: from :func:`summarise`.

    Returns:
        The line, e.g. ``"Groups G1-G2: the runs of one config but for the seed. Separated by:
        tasks.max_tasks (– = not set)."``.
    """
    split, others = separating_keys(runs)
    names = list(summary["group"])
    line = (f"Group {names[0]}: the runs of one config but for the seed." if len(names) == 1
            else f"Groups {names[0]}-{names[-1]}: each the runs of one config but for the seed.")
    shown = [k.removeprefix("cfg:") for k in split]
    if shown:
        line += f" Separated by: {', '.join(shown)}."
    if others:
        own = [k.removeprefix("cfg:") for k in others]
        if len(own) > 6:
            own = own[:6] + [f"{len(others) - 6} more"]
        line += f" Also differing between them (constant within a strategy): {', '.join(own)}."
    if any(summary[k].isna().any() for k in shown if k in summary):
        line += " –: the key is not set."
    return line
