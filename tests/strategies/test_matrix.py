"""Every strategy on every backbone: composed, set up and trained (issue 38).

Each cell is a real run (:func:`cl_bench.runner.run`) of the backbone's own kind of stream, made
tiny: two tasks, two optimiser steps each, a few samples, no probes (``eval.probes=false``). It
passes when R has a finite row after each task and every task trained something; or, for a
combination refused on purpose, when the run stops with one line that says why (the
:data:`REFUSED` table) and leaves no run directory behind. The tables below must name every
``conf/backbone`` and ``conf/strategy`` file, so a new one is tested from the day it lands; a new
backbone may instead declare its row in its own test, ``tests/models/test_<name>.py``
(``MATRIX_OVERRIDES``, ``MATRIX_REFUSED``: :func:`declared_rows`).
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from cl_bench.errors import ConfigError
from cl_bench.runner import run
from tests.conftest import CONF, THREADS

COMMON = ["train.max_steps=2", "train.batch_size=2", "train.eval_batch_size=4",
          "train.progress_bar=false", "train.checkpoint_every_n_epochs=0", "logger=none",
          "eval.probes=false", "hardware.precision=32-true", f"hardware.num_threads={THREADS}"]

#: brain_seg_age made tiny (tumour segmentation, then brain age; 2 training subjects per task)
BRAIN = ["tasks=brain_seg_age", "tasks.n_train=3", "tasks.n_val=1", "tasks.n_test=1",
         "tasks.age_n_train=null", "tasks.age_n_test=null", "tasks.n_val_by_task=null"]

#: ViT-B's shape cut down (the layers and code paths stay those of the backbone)
SMALL_VIT = ["backbone.hidden_size=48", "backbone.mlp_dim=96", "backbone.num_heads=3",
             "backbone.num_layers=2"]

#: backbone -> the overrides of its stream (the stream kind it serves) and of a small shape
BACKBONES = {
    # the default job's whole Swin UNETR (shared decoder), narrow and one block per stage
    "swin_unetr": [*BRAIN, "tasks.size=64", "backbone=swin_unetr", "backbone.weights=null",
                   "backbone.feature_size=12", "backbone.depths=[1,1,1,1]",
                   "backbone.num_heads=[3,3,3,3]", "backbone.decoder_feature_size=8"],
    "unetr": [*BRAIN, "tasks.size=32", "backbone=unetr", "backbone.weights=null", *SMALL_VIT,
              "backbone.decoder_feature_size=4"],
    "vit3d_tiny": [*BRAIN, "tasks.size=32", "backbone=vit3d_tiny", "backbone.weights=null",
                   "backbone.num_layers=2"],
    "vit3d_base": [*BRAIN, "tasks.size=32", "backbone=vit3d_base", *SMALL_VIT],
    "vit2d_digits": ["tasks=digits", "tasks.n_tasks=2", "tasks.n_train_per_class=8",
                     "tasks.n_test_per_class=4", "backbone=vit2d_digits",
                     "backbone.weights=null"],
    "vit2d_mnist": ["tasks=split_mnist", "tasks.n_tasks=2", "tasks.n_train_per_class=8",
                    "tasks.n_test_per_class=4", "backbone=vit2d_mnist", "backbone.weights=null"],
    # class-incremental segmentation (CISS): seg_mnist 6-4, two steps
    "unet2d": ["tasks=seg_mnist_6-4", "tasks.n_train=16", "tasks.n_test=4", "tasks.size=32",
               "tasks.scale_min=10", "tasks.scale_max=14", "backbone=unet2d",
               "backbone.weights=null"],
}


def declared_rows() -> dict:
    """``{backbone: its test module}`` for the ``conf/backbone`` files the table above does not
    name whose test, ``tests/models/test_<name>.py``, declares its row: ``MATRIX_OVERRIDES``
    (its stream and a small shape, as :data:`BACKBONES`' values) and optionally
    ``MATRIX_REFUSED`` (``{strategy: regex}``, as :data:`REFUSED`'s). A new backbone is then
    its module, its YAML and its test."""
    out = {}
    for name in sorted(p.stem for p in Path(CONF, "backbone").glob("*.yaml")):
        test = Path(__file__).resolve().parents[1] / "models" / f"test_{name}.py"
        if name in BACKBONES or not test.is_file():
            continue
        spec = importlib.util.spec_from_file_location(f"matrix_row_{name}", test)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if hasattr(module, "MATRIX_OVERRIDES"):
            out[name] = module
    return out


DECLARED = declared_rows()
BACKBONES.update({name: list(m.MATRIX_OVERRIDES) for name, m in DECLARED.items()})

STRATEGIES = sorted(p.stem for p in Path(CONF, "strategy").glob("*.yaml"))
#: strategy -> its settings made small (STAR-Lite derives prototypes in 500,000 AdamW steps)
SMALL_STRATEGY = {"star_lite": ["strategy.lite_iters=50"]}

#: (strategy, backbone) -> the one line (a regex) of a combination refused on purpose
REFUSED: dict[tuple[str, str], str] = {
    # STAR's prototype replay is defined for class-incremental segmentation only
    **{(s, b): rf"^strategy={s} needs a class-incremental segmentation stream"
       for s in ("star", "star_lite") for b in BACKBONES if b != "unet2d"},
    # on the class-incremental stream: a module per task cannot be chosen without a task id ...
    **{(s, "unet2d"): rf"^strategy={s} keeps one module per task and needs the task id at test"
       for s in ("lora", "duallora", "proteus")},
    ("scratch", "unet2d"): r"^strategy=scratch: .* shares a label space with other tasks",
    # ... and a convolutional U-Net has no attention (InfLoRA) nor default LoRA targets
    **{(s, "unet2d"): r"^strategy.target_modules: the backbone .* declares no LoRA targets; "
                      r"name the layers to adapt" for s in ("olora", "reglora")},
    ("inflora", "unet2d"): r"^strategy=inflora: the backbone has no attention with a fused 'qkv'",
}
REFUSED.update({(s, name): reason for name, m in DECLARED.items()
                for s, reason in getattr(m, "MATRIX_REFUSED", {}).items()})


def _cfg(strategy: str, backbone: str, cache: Path):
    overrides = BACKBONES[backbone]
    if "tasks=brain_seg_age" in overrides:  # generated volumes: one cache for the session
        overrides = [*overrides, f"tasks.cache_dir={cache}"]
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=[*COMMON, *overrides, f"strategy={strategy}",
                                            *SMALL_STRATEGY.get(strategy, [])])


def test_the_matrix_names_every_backbone_and_strategy():
    assert sorted(BACKBONES) == sorted(p.stem for p in Path(CONF, "backbone").glob("*.yaml"))
    assert {"lora", "olora", "reglora", "inflora", "duallora", "proteus"} <= set(STRATEGIES)
    assert all(s in STRATEGIES and b in BACKBONES for s, b in REFUSED)


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_strategy_runs_on_backbone(strategy, backbone, tmp_path, data_cache):
    cfg = _cfg(strategy, backbone, data_cache)
    run_dir = tmp_path / "run"
    reason = REFUSED.get((strategy, backbone))
    if reason is not None:
        with pytest.raises(ConfigError) as refused:
            run(cfg, run_dir)
        message = str(refused.value)
        assert "\n" not in message and re.search(reason, message), message
        assert not run_dir.exists()  # refused before anything was written
        return
    run(cfg, run_dir)
    R = pd.read_csv(run_dir / "matrix.csv", index_col=0)
    assert len(R.columns) == 2 and list(R.index)[-2:] == [f"after_{t}" for t in R.columns]
    assert np.isfinite(R.loc[[f"after_{t}" for t in R.columns]].to_numpy()).all(), R
    assert not (run_dir / "probes.json").exists()  # eval.probes=false
    params = json.loads((run_dir / "params.json").read_text())
    for task in R.columns:
        assert params["tasks"][task]["trainable"] > 0, (task, params["tasks"][task])


def test_lora_family_targets_on_the_swin_unetr(data_cache):
    """The default targets come from the backbone: the attention and the shared decoder's
    convolutions for the peft-based methods, the attention alone for the Linear-only ones,
    every fused qkv for InfLoRA; a convolution named for a Linear-only method is refused."""
    from cl_bench.runner import build_run
    from cl_bench.strategies.inflora import fused_attentions

    def targets(strategy, *more):
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            cfg = compose("config", overrides=[*COMMON, *BACKBONES["swin_unetr"], *more,
                                               f"tasks.cache_dir={data_cache}",
                                               f"strategy={strategy}"])
        model, s, _, _ = build_run(cfg)
        return model, s

    swin = ["attn.qkv", "attn.proj"]
    for name in ("lora", "olora", "reglora"):
        assert targets(name)[1].target_modules == [*swin, "conv1.conv", "conv2.conv"], name
    assert targets("duallora")[1].target_modules == swin
    model, proteus = targets("proteus")
    assert proteus.target_modules == swin
    assert len(proteus.layers) == 8 and all(n.endswith(("attn.qkv", "attn.proj"))
                                            for n in proteus.layers)
    model, inflora = targets("inflora")
    assert list(inflora._blocks()) == list(fused_attentions(model.encoder))
    assert len(inflora._blocks()) == 4  # depths [1,1,1,1]: one window attention per stage
    with pytest.raises(ConfigError, match=r"^strategy.target_modules: \['conv1.conv'\] are "
                                          r"convolutions; strategy=duallora is defined on Linear"):
        targets("duallora", "strategy.target_modules=[attn.qkv,conv1.conv]")
