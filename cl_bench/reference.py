"""Published numbers that ``clbench-report --paper <name>`` puts beside ours.

Each entry maps our strategy names to the paper's values in our column names (see
:func:`cl_bench.report.summarise`). Only numbers stated in the paper are given; a missing key
means "not reported".
"""

from __future__ import annotations

#: name -> {"citation", "note", "rows": {strategy: {"label", column: value or (mean, std)}}}
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
    },
}
