"""End to end through Hydra's compose API on tiny volumes, one test per strategy."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from cl_bench.config import build
from cl_bench.runner import run


def backbone_base_weights(model) -> dict[str, torch.Tensor]:
    """The encoder's own weights (LoRA factors excluded), keyed by their ViT name."""
    return {n.replace("base_model.model.", "").replace(".base_layer", ""): p.detach().clone()
            for n, p in model.backbone.named_parameters() if "lora_" not in n}


@pytest.fixture
def initial_backbone(compose_cfg):
    def _initial(strategy):
        cfg = compose_cfg(f"strategy={strategy}")
        torch.manual_seed(cfg.seed)
        import lightning as L
        L.seed_everything(cfg.seed, verbose=False)
        return backbone_base_weights(build(cfg.backbone, "backbone"))
    return _initial


@pytest.mark.parametrize("strategy", ["seq_ft", "seq_lp", "lora"])
def test_stream_runs_and_writes_results(strategy, compose_cfg, initial_backbone, tmp_path):
    cfg = compose_cfg(f"strategy={strategy}")
    before = initial_backbone(strategy)
    out = run(cfg, tmp_path)

    for name in ("matrix.csv", "metrics.json", "heatmap.png", "params.json", "timing.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    R = pd.read_csv(tmp_path / "matrix.csv", index_col=0)
    assert list(R.index) == ["init", "after_tumour_seg", "after_brain_age"]
    assert list(R.columns) == ["tumour_seg", "brain_age"]
    assert R.shape == (3, 2) and np.isfinite(R.to_numpy()).all()
    assert ((R["tumour_seg"] >= 0) & (R["tumour_seg"] <= 1)).all()  # Dice
    assert (R["brain_age"] > 0).all()  # MAE in years

    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["complete"] is True
    assert metrics["units"]["brain_age"] == {"metric": "mae", "units": "years",
                                             "higher_is_better": False}
    assert metrics["stream"] is None  # Dice and MAE are never averaged together
    # the age task's baseline, always answering the training mean, beside its numbers: the
    # same test set in every row, so one value (issue 39)
    mean = {row["brain_age"]["mae_mean_predictor"] for row in metrics["details"].values()}
    assert len(mean) == 1 and metrics["baselines"] == {"brain_age": {"mean_predictor": mean.pop()}}
    assert set(metrics["groups"]) == {"dice", "mae"}

    params = json.loads((tmp_path / "params.json").read_text())
    assert set(params["tasks"]) == {"tumour_seg", "brain_age"}

    after = backbone_base_weights(out.model)
    assert set(after) == set(before)
    changed = any(not torch.equal(before[k], after[k]) for k in before)
    if strategy == "seq_ft":
        assert changed, "seq_ft must update the backbone"
        assert params["tasks"]["tumour_seg"]["trainable"] > params["backbone_params"]
    else:
        assert not changed, f"{strategy} must leave the backbone untouched"
    if strategy in ("lora", "seq_lp"):
        # an old task is re-evaluated after the next one, and nothing it uses has changed
        assert R.loc["after_brain_age", "tumour_seg"] == R.loc["after_tumour_seg", "tumour_seg"]
        assert metrics["per_task"]["tumour_seg"]["bwt"] == 0.0
        assert metrics["groups"]["dice"]["bwt_gem"] == 0.0
        assert metrics["per_task"]["brain_age"]["bwt"] == 0.0
    if strategy == "lora":
        adapters = sorted(p.name for p in (tmp_path / "adapters").iterdir() if p.is_dir())
        assert adapters == ["brain_age", "tumour_seg"]
        assert (tmp_path / "adapters" / "tumour_seg" / "adapter_model.safetensors").is_file()
        assert 0 < params["tasks"]["tumour_seg"]["adapter"] < params["backbone_params"]
