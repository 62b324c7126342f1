"""The paper's claims judged on our runs, seed by seed: :func:`claims_table`, the rows of
``claims.csv`` and ``claims.md`` (``clbench-report --paper NAME`` for a paper of
:data:`cl_bench.reference.PAPERS` that states claims; the files: :mod:`cl_bench.report.claims_md`).

Claims are judged per setting (stream, backbone and the shared config values the strategies are
compared on; conf/'s default first: :mod:`cl_bench.report.claim_settings`). ``claims.csv`` keeps
every test of every claim in every setting.
"""

from __future__ import annotations

import json
import math
import operator

import numpy as np
import pandas as pd

from cl_bench.errors import ClBenchError
from cl_bench.reference import PAPERS
from cl_bench.report.claim_settings import (_claim_tasks, _conf_default, _default_first,
                                            _headings, _settings)
from cl_bench.report.tables import fmt_mean_std


#: a claim test's comparison op -> (holds(value, threshold), margin(value, threshold), symbol);
#: the margin is positive on the holding side, -|value - threshold| for "==" (0 when it holds)
OPS = {"<=": (operator.le, lambda v, t: t - v, "≤"),
       ">=": (operator.ge, lambda v, t: v - t, "≥"),
       "<": (operator.lt, lambda v, t: t - v, "<"),
       ">": (operator.gt, lambda v, t: v - t, ">"),
       "==": (operator.eq, lambda v, t: -abs(v - t), "=")}

#: the columns of ``claims.csv``, the full table (one row per claim and per test of a claim)
CLAIM_COLUMNS = ("setting", "claim", "statement", "strategy", "quantity", "value mean", "value std",
                 "per seed", "op", "threshold", "threshold mean", "margin mean", "margin std",
                 "seeds holding", "seeds measured", "verdict", "note")
#: strings per test row: the value, per seed and margin as text, ``holds`` as ``k/n``
CLAIM_TEXT = ("value", "per seed ✓ holds", "margin (> 0: holds side)", "holds")
#: the columns of a ``claims.md`` block (one row per claim) -> their headers there
CLAIM_MD = {"claim": "claim", "md statement": "statement", "md ours": "ours (mean ± std, n)",
            "md paper": "paper", "md holds": "holds"}


def _number(v) -> float:
    """A JSON value as a float: NaN for None, a missing key, a boolean or a non-number."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def _seed(seed) -> int | str:
    try:
        return int(seed) if float(seed).is_integer() else str(seed)
    except (TypeError, ValueError):
        return str(seed)


def _show(v: float) -> str:
    """One number as in the tables, but a tiny non-zero one (|v| < 5e-4) in ``.2g`` so that it
    never reads as 0 (an "exactly 0" claim)."""
    return f"{v:.2g}" if v and abs(v) < 5e-4 else fmt_mean_std(v, None)


def _mean_std(x: list[float]) -> tuple[float, float]:
    """Mean and sample std (ddof=1; NaN for fewer than two values; both NaN for none)."""
    return (float(np.mean(x)) if x else math.nan,
            float(np.std(x, ddof=1)) if len(x) > 1 else math.nan)


def _pm(mean: float, std: float) -> str:
    """``mean ± std`` as :func:`fmt_mean_std`, in ``.2g`` for a tiny
    non-zero mean (:func:`_show`)."""
    if not (mean and abs(mean) < 5e-4):
        return fmt_mean_std(mean, std)
    return _show(mean) + ("" if math.isnan(std) else f" ± {std:.2g}")


def _verdict(holds: list[bool]) -> str:
    """``holds`` (every seed), ``fails`` (no seed), ``mixed (k/n)`` or ``not measured``."""
    k, n = sum(holds), len(holds)
    return ("not measured" if not n else "holds" if k == n else "fails" if not k
            else f"mixed ({k}/{n})")


def _measure(rec: pd.Series, spec: dict, checks: dict | None) -> tuple[float, bool]:
    """One run's value of a claim quantity ``spec`` (vocabulary: :mod:`cl_bench.reference`).

    Returns:
        ``(value, from_checks)``: a float in the quantity's own units (Dice, MAE in years, % of
        the backbone, or a ratio of two), NaN where the run's files do not record it or a ratio's
        denominator is 0; ``from_checks``: the value came from ``data_checks.json``.

    Raises:
        ValueError: an unknown ``spec`` (a mistake in :mod:`cl_bench.reference`).
    """
    if "ratio" in spec:
        (num, c1), (den, c2) = (_measure(rec, q, checks) for q in spec["ratio"])
        return (num / den if den else math.nan), c1 or c2
    m, metrics = rec["_matrix"], rec["_metrics"]
    last = f"after_{m.columns[-1]}" if len(m.columns) else None  # after the stream's last task

    def cell(row, task):
        return float(m.at[row, task]) if row in m.index and task in m.columns else math.nan

    if "final" in spec:
        return cell(last, spec["final"]), False
    if "just_learned" in spec:
        return cell(f"after_{spec['just_learned']}", spec["just_learned"]), False
    if "bwt" in spec:
        task = spec["bwt"]
        sign = 1.0 if rec["_units"].get(task, {}).get("higher_is_better", True) else -1.0
        return sign * (cell(last, task) - cell(f"after_{task}", task)), False
    if "group" in spec:
        return _number(metrics.get("groups", {}).get(spec["group"], {}).get(spec["key"])), False
    if "detail" in spec:
        row = metrics.get("details", {}).get(last, {}).get(spec["task"], {})
        v = _number(row.get(spec["detail"]))
        if math.isnan(v) and checks and spec.get("data_checks"):
            v = _number(checks.get(spec["task"], {}).get(spec["data_checks"]))
            return v, not math.isnan(v)
        return v, False
    if "params" in spec:
        task = rec["_params"].get("tasks", {}).get(spec["task"], {})
        return _number(task.get(spec["params"])), False
    raise ValueError(f"unknown claim quantity {spec!r}")


def _per_seed(runs: pd.DataFrame, strategy: str, spec: dict, checks: dict | None
              ) -> tuple[dict, bool]:
    """``({seed: value}, from_checks)``: quantity ``spec`` of ``strategy``'s runs, the mean of a
    seed's runs (normally one), for the seeds where it is measured."""
    values, from_checks = {}, False
    for seed, g in runs[runs["strategy"] == strategy].groupby("seed", sort=True, dropna=False):
        got = [_measure(r, spec, checks) for _, r in g.iterrows()]
        x = [v for v, _ in got if math.isfinite(v)]
        from_checks |= any(c for v, c in got if math.isfinite(v))
        if x:
            values[_seed(seed)] = float(np.mean(x))
    return values, from_checks


def _judge(runs: pd.DataFrame, test: dict, checks: dict | None,
           partial: frozenset = frozenset()) -> dict:
    """One claim test, seed by seed (``runs``: the complete runs of one setting; ``partial``:
    the strategies of its partial runs).

    Returns:
        ``{"value", "threshold", "margin", "holds"}`` (each ``{seed: ...}`` over the seeds where
        both value and threshold are measured), ``notes``: why it is not measured, where a
        value came from ``data_checks.json``, which seeds compare with a reference mean; and
        ``why``: why it is not measured in <= 6 words (``""`` when it is).
    """
    strategy, thr = test["strategy"], test["threshold"]
    ref_strategy = thr.get("strategy", strategy) if isinstance(thr, dict) else strategy
    values, from_checks = _per_seed(runs, strategy, test["value"], checks)
    notes = [f"{test['quantity']} from data_checks.json (not in the runs' metrics.json)"
             ] if from_checks else []
    if isinstance(thr, dict):
        ref, ref_checks = _per_seed(runs, ref_strategy, thr["of"], checks)
        if ref_checks:
            notes.append(f"the {thr['label']} from data_checks.json (not in the runs' "
                         f"metrics.json)")
        mean = float(np.mean(list(ref.values()))) if ref else math.nan
        thresholds = {s: thr.get("times", 1.0) * ref.get(s, mean) for s in values}
        unmatched = [s for s in values if ref and s not in ref]
        if unmatched:
            notes.append(f"seed(s) {', '.join(map(str, unmatched))}: no seed-matched "
                         f"{ref_strategy} value, compared with the {thr['label']} averaged over "
                         f"{ref_strategy}'s seeds")
    else:
        thresholds = {s: float(thr) for s in values}
    holds, margin, _ = OPS[test["op"]]
    seeds = [s for s in values if math.isfinite(thresholds[s])]
    why = ""
    if not (runs["strategy"] == strategy).any():
        notes.append(f"not measured: no complete {strategy} runs")
        why = f"no {'complete ' if strategy in partial else ''}{strategy} runs"
    elif not values:
        notes.append(f"not measured: the {strategy} runs do not record {test['quantity']}")
        why = f"not recorded by the {strategy} runs"
    elif not seeds and not (runs["strategy"] == ref_strategy).any():
        notes.append(f"not measured: no complete {ref_strategy} runs for the {thr['label']}")
        why = f"no {'complete ' if ref_strategy in partial else ''}{ref_strategy} runs"
    elif not seeds:
        notes.append(f"not measured: the {ref_strategy} runs do not record the {thr['label']}"
                     + (", nor does any data_checks.json" if "data_checks" in thr["of"] else ""))
        why = f"no {thr['label']}"
    return {"value": {s: values[s] for s in seeds}, "threshold": {s: thresholds[s] for s in seeds},
            "margin": {s: margin(values[s], thresholds[s]) for s in seeds},
            "holds": {s: bool(holds(values[s], thresholds[s])) for s in seeds}, "notes": notes,
            "why": why}


def _test_row(tid: str, test: dict, j: dict, stream: str | None = None) -> dict:
    """A claim test's row: the ``claims.csv`` numbers and their strings (:data:`CLAIM_TEXT`);
    the threshold names the ``stream``'s floor where the test states one."""
    seeds, thr, sym = list(j["value"]), test["threshold"], OPS[test["op"]][2]
    (v, v_sd), (t, _), (mg, mg_sd) = (_mean_std(list(j[k].values()))
                                      for k in ("value", "threshold", "margin"))
    if isinstance(thr, dict):
        times = thr.get("times", 1.0)
        threshold = f"{sym} {'' if times == 1 else f'{times:g} × '}{thr['label']}"
        threshold += f" = {_pm(*_mean_std(list(j['threshold'].values())))}" if seeds else ""
    else:
        threshold = f"{sym} {thr:g}"
    if stream in test.get("floor", {}):
        threshold += f" ({test['floor'][stream]['label']})"
    per_seed = ", ".join(
        f"s{s} {_show(j['value'][s])}"
        + (f" ({sym} {_show(j['threshold'][s])})" if isinstance(thr, dict) else "")
        + (" ✓" if j["holds"][s] else " ✗") for s in seeds)
    k = sum(j["holds"].values())
    return {"claim": tid, "statement": "", "strategy": test["strategy"],
            "quantity": test["quantity"], "value mean": v, "value std": v_sd,
            "per seed": json.dumps({str(s): j["value"][s] for s in seeds}), "op": test["op"],
            "threshold": threshold, "threshold mean": t, "margin mean": mg, "margin std": mg_sd,
            "seeds holding": k, "seeds measured": len(seeds),
            "verdict": _verdict(list(j["holds"].values())), "note": "; ".join(j["notes"]),
            "value": _pm(v, v_sd), "per seed ✓ holds": per_seed or "–",
            "margin (> 0: holds side)": _pm(mg, mg_sd),
            "holds": f"{k}/{len(seeds)}" if seeds else "–"}


class _CfgValues(dict):
    """``{cfg[key]}`` in a claim's ``why_not``: the config key's values over ``runs``."""

    def __init__(self, runs: pd.DataFrame):
        super().__init__()
        self.runs = runs

    def __missing__(self, key: str) -> str:
        col = self.runs[f"cfg:{key}"].dropna() if f"cfg:{key}" in self.runs else []
        values = dict.fromkeys(f"{v:g}" if isinstance(v, float) else str(v) for v in col)
        return ", ".join(values) or "?"


def _judge_claims(runs: pd.DataFrame, paper: str, checks: dict | None, default: dict | None
                  ) -> tuple[pd.DataFrame, list[dict], list[str]]:
    """:func:`claims_table`'s work, by setting: ``(claims, blocks, notes)``, each block
    ``{"setting", "heading", "lead", "stream", "notes"}`` in the table's order (the default
    setting first; ``lead``: a line under the heading), ``notes`` those about no setting in
    particular."""
    if paper not in PAPERS:
        raise ClBenchError(f"--paper {paper!r}: unknown; known: {', '.join(sorted(PAPERS))}")
    claims = PAPERS[paper].get("claims", [])
    tasks = _claim_tasks(claims)
    settings, notes = _settings(runs, tasks), []
    default = _conf_default() if default is None else default
    settings, exact = _default_first(settings, default)
    if not settings:  # every claim "not measured", on no runs
        settings, exact = [("–", {}, runs.iloc[0:0])], False
        notes.append(f"no run measured all of {', '.join(sorted(tasks))}: nothing to judge")
        heads, lead = ["–"], ""
    else:
        heads, lead = _headings(settings, exact, default)
    rows, blocks = [], []
    for (setting, values, g), heading in zip(settings, heads):
        stream = values.get("tasks")
        done = g[g["complete"]]
        partial = [f"{r.strategy} seed {_seed(r.seed)}" for r in g[~g["complete"]].itertuples()]
        block = {"setting": setting, "heading": heading, "lead": "" if blocks else lead,
                 "stream": stream, "notes": []}
        if partial:
            block["notes"].append("partial runs left out (claims are about the whole stream): "
                                  + ", ".join(partial))
        for claim in claims:
            claim_rows, claim_notes = _claim_rows(claim, done, checks,
                                                  frozenset(g[~g["complete"]]["strategy"]), stream)
            rows += [dict(r, setting=setting) for r in claim_rows]
            block["notes"] += claim_notes
        floors: dict[str, list[str]] = {}
        for claim in claims:
            for t in claim["tests"]:
                if stream in t.get("floor", {}):
                    floor = t["floor"][stream]
                    floors.setdefault(f"{floor['label']}: {floor['why']}", []).append(claim["id"])
        block["notes"] += [f"({', '.join(dict.fromkeys(ids))}) {text}"
                           for text, ids in floors.items()]
        blocks.append(block)
    columns = list(dict.fromkeys(CLAIM_COLUMNS + CLAIM_TEXT + tuple(CLAIM_MD)))
    return pd.DataFrame(rows).reindex(columns=columns), blocks, notes


def claims_table(runs: pd.DataFrame, paper: str, checks: dict | None = None,
                 default: dict | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Judge each claim of ``paper`` (``PAPERS[paper]["claims"]``, e.g. those of the brain-MRI
    foundation-model paper, arXiv 2602.23533) on our runs, seed by seed.

    Per setting (:func:`_settings`; normally one sweep: one; the default setting first, then the
    closest to it: :func:`_default_first`), every test of a claim takes its quantity from each
    complete run of its strategy (partial runs are left out and counted in the notes), compares
    it per seed with its threshold and counts the seeds where it holds; a claim holds on a seed
    where all its tests do. Verdicts: ``holds`` (every measured seed), ``fails`` (none),
    ``mixed (k/n)``, ``not measured`` (no seed with a value, e.g. a strategy's runs are
    missing) — reported whichever way they come out.

    Args:
        runs: from :func:`load_runs`; paper: a key of ``PAPERS``; checks: a ``data_checks.json``
            (``scripts/brain_data_checks.py``), used where the runs do not record a ``detail``;
            default: the default config, flattened (``{"tasks": ..., "backbone": ...,
            "backbone.decoder": ...}``; ``None``: conf/'s, :func:`_conf_default`; ``{}``: none).

    Returns:
        ``(claims, notes)``: one row per claim, plus one per test (``b.1``, ``b.2``) for a claim
        of several tests, columns :data:`CLAIM_COLUMNS` + :data:`CLAIM_TEXT` (values, thresholds
        and margins in the quantity's units: Dice, MAE in years, %; ``margin`` = value -
        threshold signed so that > 0 is the holding side, -|value - threshold| for ``==``;
        ``per seed`` is ``{"<seed>": value}`` JSON) + the keys of :data:`CLAIM_MD` (a claim's
        row in ``claims.md``), and the notes (reasons, sources, each failing claim's
        ``why_not``, the floors; prefixed ``[setting]`` where there are several settings).

    Raises:
        ClBenchError: an unknown ``paper``.
        ValueError: a claim quantity :mod:`cl_bench.reference` does not define.
    """
    table, blocks, notes = _judge_claims(runs, paper, checks, default)
    where = len(blocks) > 1
    return table, notes + [f"[{b['setting']}] {n}" if where else n for b in blocks
                           for n in ([b["lead"]] if b["lead"] else []) + b["notes"]]


def _claim_rows(claim: dict, runs: pd.DataFrame, checks: dict | None,
                partial: frozenset = frozenset(), stream: str | None = None
                ) -> tuple[list[dict], list[str]]:
    """One claim on the complete ``runs`` of one setting (``partial``: the strategies of its
    partial runs; ``stream``: its stream): its row (its only test's, or a summary of all tests
    over the seeds measured by every test, with its ``claims.md`` cells) and, for several
    tests, one row each; and the notes, prefixed with the test's id."""
    tests = claim["tests"]
    ids = [claim["id"]] if len(tests) == 1 else [f"{claim['id']}.{i}"
                                                 for i in range(1, len(tests) + 1)]
    judged = [_judge(runs, t, checks, partial) for t in tests]
    parts = [_test_row(i, t, j, stream) for i, t, j in zip(ids, tests, judged)]
    seeds = [s for s in judged[0]["holds"] if all(s in j["holds"] for j in judged)]
    holds = {s: all(j["holds"][s] for j in judged) for s in seeds}
    k = sum(holds.values())
    head = dict(parts[0]) if len(tests) == 1 else {
        "claim": claim["id"], "strategy": ", ".join(dict.fromkeys(t["strategy"] for t in tests)),
        "quantity": " and ".join(ids), "seeds holding": k, "seeds measured": len(holds),
        "holds": f"{k}/{len(holds)}" if holds else "–",
        "per seed ✓ holds": ", ".join(f"s{s} {'✓' if h else '✗'}" for s, h in holds.items())
        or "–"}
    head.update(statement=claim["claim"], verdict=_verdict(list(holds.values())))
    head.update(_md_cells(claim, parts, judged, head))
    notes = [f"({i}) {n}" for i, j in zip(ids, judged) for n in j["notes"]]
    if head["verdict"].startswith(("fails", "mixed")) and claim.get("why_not"):
        mine = runs[runs["strategy"].isin([t["strategy"] for t in tests])]
        notes.append(f"({claim['id']}) why not: " + claim["why_not"].format(cfg=_CfgValues(mine)))
    return [head] + (parts if len(tests) > 1 else []), notes


def _md_cells(claim: dict, parts: list[dict], judged: list[dict], head: dict) -> dict:
    """A claim's ``claims.md`` cells (:data:`CLAIM_MD`): its ``short`` statement; ours: each
    test's mean ± std (MAE with `` y``), ``;`` between, and the seeds counted (``(n=3)``; per
    test where they differ), or ``not measured (why)``; the paper's numbers; the verdict with
    ``k/n``, or ``not judged (why)`` where only some tests are measured."""
    why = next((j["why"] for j in judged if j["why"]), "") or "no seed measured by all"
    counts = [p["seeds measured"] for p in parts]
    cells = ["–" if not n else p["value"] + (" y" if "(years)" in p["quantity"] else "")
             for p, n in zip(parts, counts)]
    counted = sorted({n for n in counts if n})
    if not counted:
        ours = f"not measured ({why})"
    elif len(counted) == 1:
        ours = "; ".join(cells) + f" (n={counted[0]})"
    else:
        ours = "; ".join(c + (f" (n={n})" if n else "") for c, n in zip(cells, counts))
    verdict = head["verdict"]
    judged_cell = ("–" if not counted else f"not judged ({why})" if verdict == "not measured"
                   else verdict if verdict.startswith("mixed") else f"{verdict} ({head['holds']})")
    return {"md statement": claim.get("short", claim["claim"]), "md ours": ours,
            "md paper": claim.get("paper", "–"), "md holds": judged_cell}
