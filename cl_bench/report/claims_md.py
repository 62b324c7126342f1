"""The claims' files: ``claims.md`` and ``claims.csv`` (:func:`write_claims`).

``claims.md`` has one block per setting (stream, backbone and the shared config values the
strategies are compared on; conf/'s default first), the setting named once in its heading, one
short row per claim measured there; the claims no setting measured are listed in one line at
the end. ``claims.csv`` keeps every test of every claim in every setting.
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pandas as pd

from cl_bench.reference import PAPERS
from cl_bench.report.claims import CLAIM_COLUMNS, CLAIM_MD, _judge_claims


#: the longest line ``claims.md`` should have (notes are wrapped to fit)
CLAIM_MD_WIDTH = 160


def _data_checks(dirs: list[Path]) -> tuple[dict | None, str | None, list[str]]:
    """The first readable ``data_checks.json`` directly in ``dirs`` (``None`` if none), where it
    is (``<dir name>/data_checks.json``) and a note for each one that could not be read (it is
    then passed over)."""
    problems = []
    for f in (d / "data_checks.json" for d in dirs):
        if f.is_file():
            try:
                checks = json.loads(f.read_text())
            except (OSError, ValueError) as e:
                problems.append(f"{f.parent.name}/data_checks.json unreadable "
                                f"({type(e).__name__}: {e}): not used")
                continue
            if isinstance(checks, dict):
                return checks, f"{f.parent.name}/data_checks.json", problems
            problems.append(f"{f.parent.name}/data_checks.json is not a JSON object: not used")
    return None, None, problems


def _bullets(notes: list[str]) -> str:
    """Markdown list items, wrapped to 100 characters."""
    return "".join(textwrap.fill(n, 100, initial_indent="- ", subsequent_indent="  ",
                                 break_on_hyphens=False, break_long_words=False) + "\n"
                   for n in notes)


def claims_markdown(claims: pd.DataFrame, blocks: list[dict], notes: list[str], paper: str
                    ) -> str:
    """``claims.md``: the legend and ``notes``, then one block per setting (``blocks`` of
    :func:`_judge_claims`): its heading (the setting, named once), a table of one short row per
    claim measured there (:data:`CLAIM_MD`) and its notes but those on what was not measured;
    a ``why_not`` stated in full once. The claims measured in no test of a setting get no row:
    one line at the end of its block lists them, with why.

    Args:
        claims: from :func:`_judge_claims`; blocks: its blocks; notes: lines for the top;
        paper: a key of :data:`cl_bench.reference.PAPERS`.

    Returns:
        The markdown.
    """
    ids = [c["id"] for c in PAPERS[paper].get("claims", [])]
    legend = (
        "One block per setting, the default first, the others named by how they differ from "
        "it; one row per claim. ours: mean ± std over "
        "seeds (sample std) of each quantity the claim tests, in the statement's order, `;` "
        "between, over n seeds; MAE in years (y); mean pred.: always predicting the training "
        "mean age. paper: its numbers (norm.: MAE on its unstated normalised scale). holds: the "
        "seeds where every test holds. Each test per seed, its threshold and margin: claims.csv.")
    md = ("## The paper's claims on our runs\n\n" + _bullets(
        [legend, f"Source: {PAPERS[paper]['citation']}."] + notes))
    seen: set[str] = set()
    for block in blocks:
        rows = claims[(claims["setting"] == block["setting"]) & claims["claim"].isin(ids)]
        missing = rows["md ours"].fillna("").str.startswith("not measured")
        whys: dict[str, list[str]] = {}
        for cid, ours in zip(rows.loc[missing, "claim"], rows.loc[missing, "md ours"]):
            why = re.sub(r"^not measured \((.*)\)$", r"\1", ours)
            whys.setdefault(why, []).append(cid)
        rows = rows[~missing]
        shown = []
        for n in block["notes"]:
            if re.match(r"\([\w.]+\) not measured", n):
                continue
            if re.match(r"\(\w+\) why not: ", n) and n in seen:
                n = n.split(":", 1)[0] + ": as in the first block that fails it"
            seen.add(n)
            shown.append(n)
        if whys:
            shown.append("Not measured here: " + "; ".join(
                f"{', '.join(cids)} ({why})" for why, cids in whys.items()) + ".")
        md += (f"\n### {block['heading']}\n\n"
               + (textwrap.fill(block["lead"], 100) + "\n\n" if block["lead"] else "")
               + (rows[list(CLAIM_MD)].rename(columns=CLAIM_MD).fillna("–").to_markdown(
                   index=False, disable_numparse=True) + "\n\n" if len(rows) else "")
               + _bullets(shown))
    return md


def write_claims(runs: pd.DataFrame, paper: str, out: Path, dirs: list[Path],
                 default: dict | None = None) -> str:
    """Write ``claims.md`` (:func:`claims_markdown`) and ``claims.csv`` (:func:`claims_table`,
    :data:`CLAIM_COLUMNS`) into ``out``, with the mean predictor of ``data_checks.json`` from
    ``dirs`` (the report's inputs and ``out``) where the runs lack it; ``default`` as in
    :func:`claims_table`.

    Args:
        runs: from :func:`load_runs`; paper: a key of :data:`cl_bench.reference.PAPERS`;
        out: the report's directory; dirs: where to look for ``data_checks.json``; default:
        the default config, flattened (None: conf/'s).

    Returns:
        The markdown of ``claims.md``.

    Raises:
        ClBenchError: an unknown ``paper``.
    """
    checks, where, problems = _data_checks(dirs)
    claims, blocks, notes = _judge_claims(runs, paper, checks, default)
    used = claims["note"].fillna("").str.contains("from data_checks.json", regex=False)
    if where and used.any():
        problems.append(f"data_checks.json read: {where}")
    md = claims_markdown(claims, blocks, problems + notes, paper)
    (out / "claims.md").write_text(md)
    claims[list(CLAIM_COLUMNS)].to_csv(out / "claims.csv", index=False, float_format="%.6g")
    return md
