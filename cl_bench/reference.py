"""Published numbers that ``clbench-report --paper <name>`` puts beside ours, and the paper's
claims that it judges on our runs.

Each entry maps our strategy names to the paper's values in our column names (see
:func:`cl_bench.report.groups.summarise`). Only numbers stated in the paper are given; a missing
key means "not reported".

Claims (``"claims"``, read by :func:`cl_bench.report.claims.claims_table`) are data: each has an
``id``, the ``claim`` in words, ``short`` (the claim and its tests in <= 60 characters, for
``claims.md``), ``paper`` (the paper's numbers, one per test in order, ``;`` between), one or
more ``tests`` (all must hold on a seed for the claim to hold on it) and optionally ``why_not``,
a note shown when it does not hold on every seed (``{cfg[<key>]}`` is replaced by that config
value of the test's runs). A test is ``{"strategy", "quantity" (its name in the table), "value",
"op", "threshold", "floor"?}``:

* ``value``, one run's number, in the task's own units (Dice in [0, 1], MAE in years, ...):
  ``{"final": task}`` R[after the stream's last task][task] (``matrix.csv``);
  ``{"just_learned": task}`` R[after task][task]; ``{"bwt": task}`` the task's backward
  transfer s * (final - just learned), s = +1 if higher is better else -1;
  ``{"group": metric, "key": k}`` ``metrics.json`` ``groups[metric][k]`` (e.g. ``bwt_gem``);
  ``{"detail": k, "task": task, "data_checks": k2}`` ``metrics.json``
  ``details[after last task][task][k]``, else ``data_checks.json`` ``[task][k2]``;
  ``{"params": k, "task": task}`` ``params.json`` ``tasks[task][k]``;
  ``{"ratio": [value, value]}`` the first over the second.
* ``op``: ``<=``, ``>=``, ``<``, ``>`` or ``==`` (exact); ``threshold``: a number, or
  ``{"times": f, "of": value, "label", "strategy"?}``: f x that value of the same seed's run of
  ``strategy`` (default: the test's own), or f x its mean over seeds where that seed is missing.
* ``floor``: ``{stream: {"label", "why"}}``, the best value any model can reach on that stream
  (e.g. :data:`AGE_MAE_FLOOR`), stated beside the test's threshold and under its block.
"""

from __future__ import annotations

#: the MAE (years) of always predicting the training mean age, on the same test subjects
MEAN_PREDICTOR = {"detail": "mae_mean_predictor", "task": "brain_age",
                  "data_checks": "mean_predictor_mae"}
#: the lowest brain-age MAE any predictor can reach on the embedded stream: its generator scales
#: each subject's atrophy by a brain-reserve factor ~ N(1, 0.25) (cl_bench/data/brain_synth.py),
#: so even the exact atrophy gives age only to ~5.4 y MAE (the posterior median's, Monte Carlo:
#: 5.40 y, 0.33 x the mean predictor's 16.5 y); real data (brats_ixi) has no known floor
AGE_MAE_FLOOR = {"brain_seg_age": {
    "label": "generator floor ≈ 5.4 y",
    "why": "the embedded generator's brain-reserve factor N(1, 0.25) caps any age predictor's "
           "MAE at ≈ 5.4 y (0.33 × the mean predictor's)"}}


def _final_age_mae(strategy: str, op: str, times: float) -> dict:
    """A claim test: ``strategy``'s final brain_age MAE (years) ``op`` ``times`` the mean
    predictor's MAE on the same test set."""
    return {"strategy": strategy, "quantity": "brain_age MAE (years), final",
            "value": {"final": "brain_age"}, "op": op, "floor": AGE_MAE_FLOOR,
            "threshold": {"times": times, "of": MEAN_PREDICTOR, "label": "mean predictor's MAE"}}

#: name -> {"citation", "note", "rows": {strategy: {"label", column: value or (mean, std)}},
#:          "claims": [claim, ...] (module docstring)}
PAPERS: dict[str, dict] = {
    "brain_mri_fm": {
        "citation": "Continual learning of a frozen brain-MRI foundation model: tumour "
                    "segmentation (BraTS) then brain age (IXI), arXiv 2602.23533 (abstract)",
        "note": "paper: Dice after the last task; brain-age MAE on an unstated normalised "
                "scale (compare with our `mae_normalised`, MAE / SD of the training ages); "
                "their foundation model, shots and LoRA rank are not published",
        "rows": {
            "seq_ft": {"label": "paper: sequential FT", "tumour_seg dice": 0.16,
                       "tumour_seg dice (just learned)": 0.80},
            "seq_lp": {"label": "paper: sequential LP", "tumour_seg dice": 0.79,
                       "brain_age mae_normalised": 1.45},
            "lora": {"label": "paper: LoRA per task", "tumour_seg dice": (0.62, 0.07),
                     "brain_age mae_normalised": (0.16, 0.05), "bwt_gem dice": 0.0,
                     "bwt_gem mae": 0.0, "trainable %": "< 0.1"},
        },
        "claims": [
            {"id": "a", "claim": "sequential fine-tuning forgets tumour segmentation "
                                 "(paper: Dice 0.80 -> 0.16)",
             "short": "seq_ft forgets: tumour Dice final ≤ 0.5 × just learned",
             "paper": "0.16 / 0.80 = 0.20",
             "tests": [{"strategy": "seq_ft",
                        "quantity": "tumour_seg Dice after brain_age / just learned",
                        "value": {"ratio": [{"final": "tumour_seg"},
                                            {"just_learned": "tumour_seg"}]},
                        "op": "<=", "threshold": 0.5}]},
            {"id": "b", "claim": "sequential linear probing keeps the Dice but fails on brain "
                                 "age (paper: MAE 1.45 normalised)",
             "short": "seq_lp keeps Dice (BWT ≥ -0.01), age MAE ≥ mean pred.",
             "paper": "–; 1.45 norm.",
             "tests": [{"strategy": "seq_lp", "quantity": "tumour_seg Dice BWT",
                        "value": {"bwt": "tumour_seg"}, "op": ">=", "threshold": -0.01},
                       _final_age_mae("seq_lp", ">=", 1.0)]},
            {"id": "c", "claim": "one LoRA adapter per task is good at both tasks",
             "short": "lora: Dice ≥ 0.75 × seq_ft's learned, MAE ≤ 0.5 × mean pred.",
             "paper": "0.62 ± 0.07; 0.16 ± 0.05 norm.",
             "tests": [{"strategy": "lora", "quantity": "tumour_seg Dice, final",
                        "value": {"final": "tumour_seg"}, "op": ">=",
                        "threshold": {"times": 0.75, "strategy": "seq_ft",
                                      "of": {"just_learned": "tumour_seg"},
                                      "label": "seq_ft's just-learned tumour_seg Dice"}},
                       _final_age_mae("lora", "<=", 0.5)]},
            {"id": "d", "claim": "LoRA has exactly zero backward transfer (paper: BWT 0)",
             "short": "lora's BWT is exactly 0 (Dice; MAE)", "paper": "0; 0",
             "tests": [{"strategy": "lora", "quantity": "BWT (GEM) of dice",
                        "value": {"group": "dice", "key": "bwt_gem"}, "op": "==",
                        "threshold": 0.0},
                       {"strategy": "lora", "quantity": "BWT (GEM) of mae",
                        "value": {"group": "mae", "key": "bwt_gem"}, "op": "==",
                        "threshold": 0.0}]},
            {"id": "e", "claim": "LoRA adapters are < 0.1 % of the parameters",
             "short": "lora's adapters < 0.1 % of the backbone (tumour; age task)",
             "paper": "< 0.1 %",
             "tests": [{"strategy": "lora", "quantity": f"{task} adapter, % of backbone",
                        "value": {"params": "adapter_pct_of_backbone", "task": task},
                        "op": "<", "threshold": 0.1} for task in ("tumour_seg", "brain_age")],
             "why_not": "LoRA of rank r on a linear layer C_in -> C_out adds r (C_in + C_out) "
                        "weights to its C_in C_out (2r/C of a C-wide layer; with the layers it "
                        "leaves alone, of order r/C of the backbone): below 0.1 % needs layers "
                        "~1000 r wide or more, far wider than this backbone's "
                        "(r = {cfg[strategy.rank]} here); the paper's "
                        "backbone, rank and adapted layers are not published"},
        ],
    },
}
