"""The paper's claims (arXiv 2602.23533) judged by ``clbench-report --paper brain_mri_fm`` on
hand-made run directories with known numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cl_bench.metrics import cl_metrics
from cl_bench.report.claim_settings import _conf_default
from cl_bench.report.claims import claims_table
from cl_bench.report.claims_md import CLAIM_MD_WIDTH, write_claims
from cl_bench.report.cli import write_report
from cl_bench.report.load import load_runs

TASKS = ["tumour_seg", "brain_age"]
UNITS = {"tumour_seg": {"metric": "dice", "units": "", "higher_is_better": True},
         "brain_age": {"metric": "mae", "units": "years", "higher_is_better": False}}


def brain_run(root: Path, strategy: str, seed: int, dice: tuple[float, float], mae: float,
              mean_mae: float | None = 16.0, adapter_pct: float | None = None,
              complete: bool = True, tasks: list[str] = TASKS, stream: str = "brain_seg_age",
              backbone: str = "swin_unetr", backbone_cfg: dict | None = None) -> Path:
    """A run directory as clbench writes it: R = init (Dice 0, MAE 20 y), after tumour_seg
    (Dice ``dice[0]``), after brain_age (Dice ``dice[1]``, MAE ``mae`` years; dropped if not
    ``complete``); ``mean_mae`` the mean predictor's MAE in metrics.json (None: not recorded);
    ``adapter_pct`` each task's adapter in % of the backbone in params.json (None: not recorded);
    ``tasks``, ``stream``, ``backbone``: the task, stream and backbone names; ``backbone_cfg``
    more ``backbone.*`` config values.
    """
    run = root / f"{strategy}_{backbone}_seed{seed}" / ("partial" if not complete else "")
    (run / ".hydra").mkdir(parents=True)
    R = [[0.0, 20.0], [dice[0], 20.0], [dice[1], mae]][:3 if complete else 2]
    rows = ["init"] + [f"after_{t}" for t in tasks][:len(R) - 1]
    pd.DataFrame(R, index=pd.Index(rows, name="row"), columns=tasks).to_csv(run / "matrix.csv")
    metrics = cl_metrics(np.array(R[1:], float), np.array(R[0], float),
                         higher_is_better=[True, False], task_names=tasks,
                         metric_names=["dice", "mae"])
    seg, age = tasks
    details = {r: {seg: {"dice": v[0]}, age: {"mae": v[1], "mae_normalised": v[1] / 20}}
               for r, v in zip(rows, R)}
    if mean_mae is not None:
        for r in rows:
            details[r][age]["mae_mean_predictor"] = mean_mae
    metrics.update(units={seg: UNITS["tumour_seg"], age: UNITS["brain_age"]},
                   strategy=strategy, seed=seed, tasks=stream, backbone=backbone,
                   details=details)
    (run / "metrics.json").write_text(json.dumps(metrics))
    params = {t: {"trainable": 10, "total": 100, "trainable_pct": 10.0, "backbone": 1000,
                  "head": 5, "adapter": 0} for t in tasks}
    if adapter_pct is not None:
        for t in tasks:
            params[t].update(adapter=int(10 * adapter_pct), adapter_pct_of_backbone=adapter_pct)
    (run / "params.json").write_text(json.dumps({"tasks": params, "backbone_params": 1000}))
    (run / ".hydra" / "config.yaml").write_text(
        f"seed: {seed}\nstrategy:\n  name: {strategy}\n  lr: 0.001\n"
        + ("  rank: 8\n" if strategy == "lora" else "")
        + f"tasks:\n  name: {stream}\nbackbone:\n  name: {backbone}\n"
        + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in (backbone_cfg or {}).items()))
    return run


def add_seq_ft(root: Path, **kw) -> None:
    """Ratios final / just learned 0.2/0.8 = 0.25, 0.4/0.8 = 0.5 (on the threshold), 0.4/0.6."""
    for seed, dice in ((0, (0.8, 0.2)), (1, (0.8, 0.4)), (2, (0.6, 0.4))):
        brain_run(root, "seq_ft", seed, dice, 12.0, **kw)


def add_seq_lp(root: Path, mean_mae: float | None = 16.0, **kw) -> None:
    """Dice BWT 0, 0, -0.05; MAE 16.5, 17, 15 years against the mean predictor's 16."""
    for seed, dice, mae in ((0, (0.7, 0.7), 16.5), (1, (0.7, 0.7), 17.0),
                            (2, (0.7, 0.65), 15.0)):
        brain_run(root, "seq_lp", seed, dice, mae, mean_mae=mean_mae, **kw)


def add_lora(root: Path, mean_mae: float | None = 16.0, pct: float | None = 1.724, **kw) -> None:
    """Seeds 0, 1 and 3 (seq_ft has no seed 3): Dice 0.62, 0.58, 0.60 kept exactly; MAE 6, 7, 9."""
    for seed, d, mae in ((0, 0.62, 6.0), (1, 0.58, 7.0), (3, 0.60, 9.0)):
        brain_run(root, "lora", seed, (d, d), mae, mean_mae=mean_mae, adapter_pct=pct, **kw)


@pytest.fixture
def sweep(tmp_path) -> Path:
    root = tmp_path / "sweep"
    add_seq_ft(root)
    add_seq_lp(root)
    add_lora(root)
    brain_run(root, "seq_ft", 7, (0.9, 0.0), 30.0, complete=False)  # left out: partial
    brain_run(root, "scratch", 0, (0.5, 0.5), 10.0)  # in no claim
    return root


def rows(claims: pd.DataFrame) -> dict[str, pd.Series]:
    return {r["claim"]: r for _, r in claims.iterrows()}


def test_each_claim_per_seed_with_margins(sweep):
    claims, notes = claims_table(load_runs([sweep])[0], "brain_mri_fm")
    r = rows(claims)
    assert list(r) == ["a", "b", "b.1", "b.2", "c", "c.1", "c.2", "d", "d.1", "d.2", "e", "e.1",
                       "e.2"]
    assert set(claims["setting"]) == {"brain_seg_age / swin_unetr"}
    # (a) seq_ft forgets: ratio <= 0.5 on seeds 0 (0.25) and 1 (0.5 exactly), not on 2 (2/3)
    a = r["a"]
    ratios = [0.25, 0.5, 0.4 / 0.6]
    assert json.loads(a["per seed"]) == pytest.approx({"0": 0.25, "1": 0.5, "2": 0.4 / 0.6})
    assert a["value mean"] == pytest.approx(np.mean(ratios))
    assert a["value std"] == pytest.approx(np.std(ratios, ddof=1))
    assert a["threshold mean"] == 0.5 and a["op"] == "<="
    assert a["margin mean"] == pytest.approx(np.mean([0.25, 0.0, 0.5 - 0.4 / 0.6]))
    assert (a["seeds holding"], a["seeds measured"]) == (2, 3)
    assert a["verdict"] == "mixed (2/3)" and a["holds"] == "2/3"
    assert a["per seed ✓ holds"] == "s0 0.250 ✓, s1 0.500 ✓, s2 0.667 ✗"
    # (b) seq_lp: Dice BWT 0, 0, -0.05 against -0.01; MAE 16.5, 17, 15 against 16
    b1, b2 = r["b.1"], r["b.2"]
    assert json.loads(b1["per seed"]) == pytest.approx({"0": 0.0, "1": 0.0, "2": -0.05})
    assert b1["margin mean"] == pytest.approx(np.mean([0.01, 0.01, -0.04]))
    assert b1["verdict"] == "mixed (2/3)"
    assert b2["value mean"] == pytest.approx(np.mean([16.5, 17.0, 15.0]))
    assert b2["threshold mean"] == 16.0
    assert b2["margin mean"] == pytest.approx(np.mean([0.5, 1.0, -1.0]))
    assert b2["threshold"] == "≥ mean predictor's MAE = 16.0 ± 0.0 (generator floor ≈ 5.4 y)"
    assert r["b"]["verdict"] == "mixed (2/3)"
    assert r["b"]["per seed ✓ holds"] == "s0 ✓, s1 ✓, s2 ✗"
    # (c) lora Dice against 0.75 x seq_ft's just-learned Dice: seed-matched 0.6, 0.6; lora's
    # seed 3 has no seq_ft run, so 0.75 x seq_ft's mean (0.8 + 0.8 + 0.6) / 3 = 0.55
    c1, c2 = r["c.1"], r["c.2"]
    assert json.loads(c1["per seed"]) == pytest.approx({"0": 0.62, "1": 0.58, "3": 0.60})
    assert c1["threshold mean"] == pytest.approx(np.mean([0.6, 0.6, 0.55]))
    assert c1["margin mean"] == pytest.approx(np.mean([0.02, -0.02, 0.05]))
    assert c1["verdict"] == "mixed (2/3)"
    assert c1["per seed ✓ holds"] == ("s0 0.620 (≥ 0.600) ✓, s1 0.580 (≥ 0.600) ✗, "
                                      "s3 0.600 (≥ 0.550) ✓")
    assert "(c.1) seed(s) 3: no seed-matched seq_ft value, compared with the seq_ft's " \
           "just-learned tumour_seg Dice averaged over seq_ft's seeds" in notes
    # ... and MAE 6, 7, 9 against 0.5 x 16 = 8; both hold only on seed 0
    assert c2["margin mean"] == pytest.approx(np.mean([2.0, 1.0, -1.0]))
    assert c2["verdict"] == "mixed (2/3)"
    assert r["c"]["verdict"] == "mixed (1/3)"
    assert r["c"]["per seed ✓ holds"] == "s0 ✓, s1 ✗, s3 ✗"
    # (d) lora keeps R exactly: BWT 0.0 for both metrics on every seed
    for part in ("d.1", "d.2"):
        assert json.loads(r[part]["per seed"]) == {"0": 0.0, "1": 0.0, "3": 0.0}
        assert r[part]["margin mean"] == 0.0 and r[part]["verdict"] == "holds"
    assert r["d"]["verdict"] == "holds" and r["d"]["holds"] == "3/3"
    # (e) adapters 1.724 % of the backbone: fails by 1.624 on every seed, and says why
    for part in ("e.1", "e.2"):
        assert r[part]["value mean"] == pytest.approx(1.724)
        assert r[part]["margin mean"] == pytest.approx(0.1 - 1.724)
        assert r[part]["verdict"] == "fails" and r[part]["holds"] == "0/3"
    assert r["e"]["verdict"] == "fails"
    why = [n for n in notes if n.startswith("(e) why not:")]
    assert len(why) == 1 and "(r = 8 here)" in why[0] and "r/C" in why[0]
    assert "partial runs left out (claims are about the whole stream): seq_ft seed 7" in notes


def test_claims_files_and_printed_markdown(sweep, tmp_path):
    out = tmp_path / "out"
    summary, text, skipped = write_report([sweep], out, "markdown", "brain_mri_fm")
    md = (out / "claims.md").read_text()
    assert md in text and text.startswith((out / "report.md").read_text())
    assert "arXiv 2602.23533" in md and "mixed (2/3)" in md
    assert blocks(md)[0][1]["e"] == ["lora's adapters < 0.1 % of the backbone (tumour; age task)",
                                     "1.724 ± 0.000; 1.724 ± 0.000 (n=3)", "< 0.1 %",
                                     "fails (0/3)"]
    csv = pd.read_csv(out / "claims.csv")
    assert list(csv["claim"]) == ["a", "b", "b.1", "b.2", "c", "c.1", "c.2", "d", "d.1", "d.2",
                                  "e", "e.1", "e.2"]
    assert list(csv["verdict"]) == ["mixed (2/3)"] * 4 + ["mixed (1/3)", "mixed (2/3)",
                                                          "mixed (2/3)"] + ["holds"] * 3 + [
        "fails"] * 3
    assert csv.set_index("claim").loc["a", "margin mean"] == pytest.approx(
        np.mean([0.25, 0.0, 0.5 - 0.4 / 0.6]), abs=1e-6)
    # the existing report is as before: no claim columns in it
    assert "verdict" not in (out / "report.md").read_text()
    # csv / latex output print their table only (the claims are in the files)
    _, text, _ = write_report([sweep], tmp_path / "out2", "csv", "brain_mri_fm")
    assert "claims" not in text and (tmp_path / "out2" / "claims.csv").is_file()


def test_missing_strategies_are_not_measured(tmp_path):
    root = tmp_path / "sweep"
    add_lora(root)  # no seq_ft, no seq_lp
    claims, notes = claims_table(load_runs([root])[0], "brain_mri_fm")
    r = rows(claims)
    for cid in ("a", "b", "b.1", "b.2", "c", "c.1"):
        assert r[cid]["verdict"] == "not measured", cid
        assert r[cid]["holds"] == "–" and r[cid]["seeds measured"] == 0
    assert np.isnan(r["a"]["value mean"]) and r["a"]["per seed"] == "{}"
    assert "(a) not measured: no complete seq_ft runs" in notes
    assert "(c.1) not measured: no complete seq_ft runs for the seq_ft's just-learned " \
           "tumour_seg Dice" in notes
    assert r["c.2"]["verdict"] == "mixed (2/3)"  # lora's own numbers are still judged
    assert r["d"]["verdict"] == "holds" and r["e"]["verdict"] == "fails"
    # claims.md: c shows what was measured and says why it is not judged; a has no row
    assert (r["a"]["md ours"], r["a"]["md holds"]) == ("not measured (no seq_ft runs)", "–")
    assert (r["c"]["md ours"], r["c"]["md holds"]) == ("–; 7.333 ± 1.528 y (n=3)",
                                                       "not judged (no seq_ft runs)")


def test_mean_predictor_from_data_checks_else_not_measured(tmp_path):
    root = tmp_path / "sweep"
    add_seq_lp(root, mean_mae=None)
    add_lora(root, mean_mae=None, pct=None)
    out = tmp_path / "out"
    write_report([root], out, "markdown", "brain_mri_fm")
    r = pd.read_csv(out / "claims.csv").set_index("claim")
    assert r.loc["b.2", "verdict"] == "not measured" and r.loc["c.2", "verdict"] == "not measured"
    assert "the lora runs do not record the mean predictor's MAE, nor does any " \
           "data_checks.json" in r.loc["c.2", "note"]
    assert r.loc["e.1", "verdict"] == "not measured"  # params.json without the adapter share
    # scripts/brain_data_checks.py's file beside the report: its mean predictor is used
    (out / "data_checks.json").write_text(json.dumps(
        {"brain_age": {"mean_predictor_mae": 16.0}, "tumour_seg": {}}))
    write_report([root], out, "markdown", "brain_mri_fm")
    r = pd.read_csv(out / "claims.csv").set_index("claim")
    assert r.loc["b.2", "verdict"] == "mixed (2/3)" and r.loc["b.2", "threshold mean"] == 16.0
    assert r.loc["c.2", "verdict"] == "mixed (2/3)" and r.loc["c.2", "threshold mean"] == 8.0
    assert "mean predictor's MAE from data_checks.json" in r.loc["c.2", "note"]
    assert "- data_checks.json read: out/data_checks.json" in (out / "claims.md").read_text()


def test_bwt_must_be_exactly_zero_and_adapters_can_hold(tmp_path):
    root = tmp_path / "sweep"
    brain_run(root, "lora", 0, (0.6, 0.6), 6.0, adapter_pct=0.05)
    brain_run(root, "lora", 1, (0.6, 0.6 - 2 ** -20), 6.0, adapter_pct=0.05)
    claims, notes = claims_table(load_runs([root])[0], "brain_mri_fm")
    r = rows(claims)
    assert json.loads(r["d.1"]["per seed"]) == {"0": 0.0, "1": -2 ** -20}
    assert r["d.1"]["verdict"] == "mixed (1/2)" and r["d"]["verdict"] == "mixed (1/2)"
    assert r["d.1"]["per seed ✓ holds"] == "s0 0.000 ✓, s1 -9.5e-07 ✗"  # never shown as 0
    assert r["d.2"]["verdict"] == "holds"
    assert r["e.1"]["margin mean"] == pytest.approx(0.05) and r["e"]["verdict"] == "holds"
    assert not [n for n in notes if "why not" in n]


def test_runs_of_another_stream_are_not_judged(sweep, tmp_path):
    brain_run(sweep / "other", "seq_ft", 0, (0.8, 0.1), 9.0, tasks=["other_seg", "other_age"],
              stream="other")
    runs = load_runs([sweep])[0]
    assert set(runs["tasks"]) == {"brain_seg_age", "other"}
    claims, _ = claims_table(runs, "brain_mri_fm")
    assert set(claims["setting"]) == {"brain_seg_age / swin_unetr"}
    assert rows(claims)["a"]["seeds measured"] == 3


def test_each_backbone_is_judged_on_its_own(sweep, tmp_path):
    brain_run(sweep, "seq_ft", 0, (0.8, 0.7), 9.0, backbone="vit3d_tiny")  # forgets little
    out = tmp_path / "out"
    write_report([sweep], out, "markdown", "brain_mri_fm")
    csv = pd.read_csv(out / "claims.csv")
    a = csv[csv["claim"] == "a"].set_index("setting")
    assert a.loc["brain_seg_age / swin_unetr", "verdict"] == "mixed (2/3)"
    assert a.loc["brain_seg_age / vit3d_tiny", "verdict"] == "fails"
    assert a.loc["brain_seg_age / vit3d_tiny", "value mean"] == pytest.approx(0.875)
    md = (out / "claims.md").read_text()
    vit = dict(blocks(md))["brain_seg_age · vit3d_tiny"]
    assert vit["a"][1:] == ["0.875 (n=1)", "0.16 / 0.80 = 0.20", "fails (0/1)"]
    assert list(vit) == ["a"]  # b to e: no seq_lp or lora runs there, said in one line
    section = md.split("### brain_seg_age · vit3d_tiny\n", 1)[1]
    assert "- Not measured here: b (no seq_lp runs); c, d, e (no lora runs)." in section


def test_cli_prints_the_claims(sweep, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cl_bench.report.cli", str(sweep), "--paper",
                           "brain_mri_fm", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "## The paper's claims on our runs" in proc.stdout and "mixed (1/3)" in proc.stdout


def blocks(md: str) -> list[tuple[str, dict[str, list[str]]]]:
    """``claims.md`` as ``[(heading, {claim: [statement, ours, paper, holds]})]``; a claim
    listed twice in a block fails."""
    out = []
    for part in md.split("\n### ")[1:]:
        heading, body = part.split("\n", 1)
        cells = [[c.strip() for c in line.strip("|").split("|")] for line in body.splitlines()
                 if line.startswith("| ") and not line.startswith("| claim ")]
        table = {c[0]: c[1:] for c in cells}
        assert len(table) == len(cells), heading
        out.append((heading, table))
    return out


SHARED = {"decoder": "shared", "regression_stages": [4]}
DEFAULT = {"tasks": "brain_seg_age", "backbone": "swin_unetr", "backbone.decoder": "shared",
           "backbone.regression_stages": "[4]", "backbone.regression_rectify": False}


@pytest.fixture
def ablations(tmp_path) -> Path:
    """The default setting (``SHARED``: seq_ft, seq_lp, lora, a partial seq_ft) and two seq_lp
    ablations (seed 0 each) whose directories sort first: decoder=unetr (BWT 0, MAE 15 y) and
    regression_stages=[0, 1] (BWT -0.1, MAE 18 y)."""
    root = tmp_path / "sweep"
    add_seq_ft(root / "main", backbone_cfg=SHARED)
    add_seq_lp(root / "main", backbone_cfg=SHARED)
    add_lora(root / "main", backbone_cfg=SHARED)
    brain_run(root / "main", "seq_ft", 7, (0.9, 0.0), 30.0, complete=False, backbone_cfg=SHARED)
    brain_run(root / "a_unetr", "seq_lp", 0, (0.7, 0.7), 15.0,
              backbone_cfg=dict(SHARED, decoder="unetr"))
    brain_run(root / "a_shallow", "seq_lp", 0, (0.7, 0.6), 18.0,
              backbone_cfg=dict(SHARED, regression_stages=[0, 1]))
    return root


def test_claims_md_one_short_row_per_claim_default_first(ablations, tmp_path):
    runs = load_runs([ablations])[0]
    md = write_claims(runs, "brain_mri_fm", tmp_path, [ablations], default=DEFAULT)
    assert md == (tmp_path / "claims.md").read_text()
    got = blocks(md)
    # the default first, every setting named once: by the keys that differ between the settings,
    # without "backbone."; the others by how they differ from the default
    assert [h for h, _ in got] == [
        "brain_seg_age · swin_unetr · decoder=shared · regression_stages=[4] (default)",
        "brain_seg_age · swin_unetr · regression_stages=[0, 1]",
        "brain_seg_age · swin_unetr · decoder=unetr"]
    for name in ("decoder=shared", "decoder=unetr", "regression_stages=[0, 1]"):
        assert md.count(name) == 1, name
    assert "backbone.decoder" not in md and "swin_unetr / " not in md
    # one row per claim measured there (no b.1, b.2), with the numbers of the runs
    assert [list(table) for _, table in got] == [["a", "b", "c", "d", "e"], ["b"], ["b"]]
    for _, table in got:
        assert all(len(statement) <= 70 for statement, *_ in table.values())
    default = got[0][1]
    assert default["a"][1:] == ["0.472 ± 0.210 (n=3)", "0.16 / 0.80 = 0.20", "mixed (2/3)"]
    assert default["b"][1:] == ["-0.017 ± 0.029; 16.2 ± 1.0 y (n=3)", "–; 1.45 norm.",
                                "mixed (2/3)"]
    assert default["c"][1:] == ["0.600 ± 0.020; 7.333 ± 1.528 y (n=3)",
                                "0.62 ± 0.07; 0.16 ± 0.05 norm.", "mixed (1/3)"]
    assert default["d"][1:] == ["0.000 ± 0.000; 0.000 ± 0.000 (n=3)", "0; 0", "holds (3/3)"]
    assert default["e"][3] == "fails (0/3)"
    shallow, unetr = got[1][1], got[2][1]
    assert shallow["b"][1:] == ["-0.100; 18.0 y (n=1)", "–; 1.45 norm.", "fails (0/1)"]
    assert unetr["b"][1] == "0.000; 15.0 y (n=1)" and unetr["b"][3] == "fails (0/1)"
    # no "not measured" rows: one line at the end of each block says which and why
    sections = md.split("\n### ")[1:]
    assert "Not measured here" not in sections[0]
    for section in sections[1:]:
        assert section.count("- Not measured here: a (no seq_ft runs); c, d, e (no lora "
                             "runs).") == 1
    assert not [ln for ln in md.splitlines() if ln.startswith("|") and "not measured" in ln]
    # short lines; notes per block (claims.csv has every test whole)
    assert max(map(len, md.splitlines())) <= CLAIM_MD_WIDTH
    assert "not measured:" not in md
    assert md.count("partial runs left out") == 1 and md.count("(e) why not: LoRA of rank") == 1
    # the generator's floor beside every brain-age MAE claim: under each block, in the thresholds
    sections = md.split("\n### ")[1:]
    assert all("- (b, c) generator floor ≈ 5.4 y: the embedded generator's brain-reserve factor "
               "N(1, 0.25)" in s.replace("\n  ", " ") for s in sections)
    csv = pd.read_csv(tmp_path / "claims.csv")
    assert len(csv) == 3 * 13  # the CSV keeps every test of every claim
    assert list(dict.fromkeys(csv["setting"]))[0] == (
        "brain_seg_age / swin_unetr / backbone.decoder=shared / backbone.regression_stages=[4]")
    thresholds = csv.set_index(["setting", "claim"])["threshold"].xs("c.2", level="claim")
    floor = " (generator floor ≈ 5.4 y)"
    assert set(thresholds) == {"≤ 0.5 × mean predictor's MAE = 8.000 ± 0.000" + floor,
                               "≤ 0.5 × mean predictor's MAE" + floor}


def test_no_floor_on_real_data_and_the_closest_setting_first(tmp_path):
    root = tmp_path / "sweep"
    add_seq_lp(root / "z_main", stream="brats_ixi", backbone_cfg=dict(SHARED, decoder="unetr"))
    brain_run(root / "a_linear", "seq_lp", 0, (0.7, 0.7), 15.0, stream="brats_ixi",
              backbone_cfg=dict(SHARED, decoder="linear"))
    md = write_claims(load_runs([root])[0], "brain_mri_fm", tmp_path, [root],
                      default=dict(DEFAULT, tasks="brats_ixi"))
    assert "floor" not in md and "floor" not in (tmp_path / "claims.csv").read_text()
    # no setting is the default (decoder=shared): the one agreeing on most keys, then with more
    # runs, comes first, and says so
    assert [h for h, _ in blocks(md)] == ["brats_ixi · swin_unetr · decoder=unetr",
                                          "brats_ixi · swin_unetr · decoder=linear"]
    assert ("The setting closest to the default: no setting here is conf/'s default "
            "(decoder=shared).") in md


def test_the_default_setting_is_conf_s(tmp_path):
    decoder = _conf_default()["backbone.decoder"]
    root = tmp_path / "sweep"
    brain_run(root / "a", "seq_lp", 0, (0.7, 0.7), 15.0, backbone_cfg={"decoder": "zz_other"})
    brain_run(root / "b", "seq_lp", 0, (0.7, 0.7), 17.0, backbone_cfg={"decoder": decoder})
    md = write_claims(load_runs([root])[0], "brain_mri_fm", tmp_path, [root])
    assert [h for h, _ in blocks(md)] == [
        f"brain_seg_age · swin_unetr · decoder={decoder} (default)",
        "brain_seg_age · swin_unetr · decoder=zz_other"]
