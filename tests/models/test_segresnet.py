"""backbone=segresnet (SegResNet, Myronenko 2018, arXiv 1810.11654): the encoder's levels and its
heads, its LoRA targets (the residual blocks' convolutions; peft wraps ``nn.Conv3d``), a MONAI
checkpoint's encoder loaded strictly, and two steps of lora and seq_ft on a tiny brain stream.
Its row of the strategy x backbone matrix (tests/strategies/test_matrix.py) is declared here
(``MATRIX_OVERRIDES``, ``MATRIX_REFUSED``)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

from cl_bench.config import build
from cl_bench.data.base import Task
from cl_bench.errors import ConfigError, DataError
from cl_bench.models.segresnet import SegResNetEncoder, make_segresnet_model

CONF = str(Path(__file__).resolve().parents[2] / "conf")
#: SegResNet's layers and code paths at a small shape: 3 levels of one block (16, 8, 4 voxels);
#: 8 channels at the first, the default LoRA rank's floor (strategy.rank <= a target's width)
SMALL = ["backbone=segresnet", "backbone.blocks_down=[1,1,1]"]
#: brain_seg_age made tiny (tumour segmentation, then brain age; 2 training subjects per task),
#: as the matrix's other brain rows (32^3: strategy=scratch's U-Net needs it)
MATRIX_OVERRIDES = ["tasks=brain_seg_age", "tasks.n_train=3", "tasks.n_val=1", "tasks.n_test=1",
                    "tasks.age_n_train=null", "tasks.age_n_test=null", "tasks.n_val_by_task=null",
                    "tasks.size=32", *SMALL]
#: strategies that refuse a convolutional backbone on purpose: strategy -> their one line
MATRIX_REFUSED = {
    "inflora": r"^strategy=inflora: the backbone has no attention with a fused 'qkv'",
    **{s: rf"^strategy={s}: the backbone's default targets \['conv1.conv', 'conv2.conv'\] hold "
          r"no Linear layer" for s in ("duallora", "proteus")},
}
SHAPE = dict(img_size=16, blocks_down=[1, 1, 1])


def test_levels_and_heads_have_their_shapes():
    torch.manual_seed(0)
    model = make_segresnet_model(**SHAPE)
    x = torch.randn(2, 1, 16, 16, 16)
    deepest, levels = model.backbone(x)
    assert [tuple(h.shape) for h in levels] == [(2, 8 << k, 16 >> k, 16 >> k, 16 >> k)
                                                for k in range(3)]
    assert deepest is levels[-1] and model.encoder.level_channels == [8, 16, 32]
    assert not hasattr(model.encoder, "stage_channels")  # the Swin reliance probe does not apply
    stream = [Task("seg", "segmentation", None, None, num_classes=3),
              Task("age", "regression", None, None),
              Task("cls", "classification", None, None, num_classes=5, classes=[0, 1, 2, 3, 4])]
    model.add_heads(stream)
    assert tuple(model(x, "seg").shape) == (2, 3, 16, 16, 16)
    assert tuple(model(x, "age").shape) == (2,)
    assert tuple(model(x, "cls").shape) == (2, 5)
    # a class-incremental stream needs one shared head, which this family does not build
    shared = [Task(f"t{k}", "classification", None, None, num_classes=2, classes=[2 * k, 2 * k + 1],
                   scenario="class_il") for k in range(2)]
    with pytest.raises(ConfigError, match=r"^backbone=segresnet: task 't0' .* not supported"):
        make_segresnet_model(**SHAPE).add_heads(shared)
    # 2D images work as well (MONAI's SegResNet is 2D or 3D)
    flat = make_segresnet_model(**SHAPE, spatial_dims=2)
    flat.add_heads(stream[:1])
    assert tuple(flat(torch.randn(2, 1, 16, 16), "seg").shape) == (2, 3, 16, 16)


def test_bad_settings_are_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"^backbone.img_size \(34\) must be divisible by 4"):
        SegResNetEncoder(img_size=34, blocks_down=[1, 1, 1])
    with pytest.raises(ConfigError, match=r"^backbone.num_groups \(3\) must divide"):
        SegResNetEncoder(img_size=16, num_groups=3)
    with pytest.raises(ConfigError, match=r"^backbone.init_filters: expected an int > 0"):
        make_segresnet_model(init_filters=0)
    with pytest.raises(ConfigError, match=r"^backbone.blocks_down: expected"):
        SegResNetEncoder(blocks_down=[])


def test_lora_targets_are_the_residual_convolutions():
    from cl_bench.strategies.lora import LoRA

    model = make_segresnet_model(**SHAPE)
    stream = [Task("seg", "segmentation", None, None, num_classes=3)]
    model.add_heads(stream)
    strategy = LoRA(rank=2)
    strategy.setup(model, stream)
    assert strategy.target_modules == ["conv1.conv", "conv2.conv"]
    strategy.before_task(0, stream[0])
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in model.backbone.named_parameters()
               if "lora_A" in n}
    convs = {n for n, m in model.encoder.named_modules() if isinstance(m, torch.nn.Conv3d)}
    # every residual block's two 3x3x3 convolutions (3 levels x 1 block), nothing else: the
    # initial and the down-sampling convolutions stay as they are
    assert len(adapted) == 2 * 3 and all(n.endswith(("conv1.conv", "conv2.conv")) for n in adapted)
    assert {n.replace("base_model.model.", "").split(".lora_A")[0] for n in adapted} <= {
        n.replace(".base_layer", "") for n in convs}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or n.startswith("heads.seg.") for n in trainable)


def test_a_monai_segresnet_checkpoint_loads_its_encoder_strictly(tmp_path):
    from monai.networks.nets import SegResNet

    torch.manual_seed(3)
    ref = SegResNet(init_filters=8, blocks_down=(1, 1, 1), blocks_up=(1, 1), out_channels=3)
    path = tmp_path / "segresnet.pt"  # a training script's layout: wrapped, prefixed, decoder kept
    torch.save({"state_dict": {f"model.{k}": v for k, v in ref.state_dict().items()}}, path)
    enc = SegResNetEncoder(**SHAPE, weights=str(path))
    got = enc.net.state_dict()
    assert got and all(torch.equal(v, ref.state_dict()[k]) for k, v in got.items())
    with pytest.raises(DataError, match=r"does not fit the configured SegResNet encoder"):
        SegResNetEncoder(img_size=16, init_filters=16, blocks_down=[1, 1, 1], weights=str(path))
    with pytest.raises(DataError, match="no checkpoint file"):
        SegResNetEncoder(**SHAPE, weights=str(tmp_path / "missing.pt"))


def _cfg(cache: Path, strategy: str):
    from tests.conftest import THREADS

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=[
            *MATRIX_OVERRIDES, "tasks.size=16", f"tasks.cache_dir={cache}", f"strategy={strategy}",
            "train.max_steps=2", "train.batch_size=2", "train.eval_batch_size=4",
            "train.progress_bar=false", "train.checkpoint_every_n_epochs=0", "logger=none",
            "hardware.precision=32-true", f"hardware.num_threads={THREADS}"])


def _base_weights(model) -> dict[str, torch.Tensor]:
    return {n.replace(".base_layer", ""): p.detach().clone()
            for n, p in model.encoder.named_parameters() if "lora_" not in n}


@pytest.mark.parametrize("strategy", ["lora", "seq_ft"])
def test_two_steps_of_lora_and_seq_ft_on_a_tiny_brain_stream(strategy, tmp_path, data_cache):
    from cl_bench.runner import run

    cfg = _cfg(data_cache, strategy)
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # the runner's backbone init
    before = _base_weights(build(cfg.backbone, "backbone"))
    out = run(cfg, tmp_path)
    R = pd.read_csv(tmp_path / "matrix.csv", index_col=0)
    assert list(R.columns) == ["tumour_seg", "brain_age"]
    assert np.isfinite(R.loc[["after_tumour_seg", "after_brain_age"]].to_numpy()).all(), R
    params = json.loads((tmp_path / "params.json").read_text())["tasks"]
    after = _base_weights(out.model)
    assert after.keys() == before.keys()
    moved = [n for n in before if not torch.equal(before[n], after[n])]
    movement = json.loads((tmp_path / "probes.json").read_text())["movement"]
    assert "net.down_layers.0" in movement["after_tumour_seg"]  # per level
    if strategy == "lora":  # the backbone stays; each task trains its adapter and its head
        assert not moved
        for task in ("tumour_seg", "brain_age"):
            p = params[task]
            assert p["adapter"] > 0 and p["trainable_backbone"] == 0
            assert p["trainable"] == p["adapter"] + p["head"]
        assert R.loc["after_brain_age", "tumour_seg"] == R.loc["after_tumour_seg", "tumour_seg"]
    else:  # seq_ft trains the whole backbone
        assert moved and params["tumour_seg"]["trainable_backbone"] == params["tumour_seg"][
            "backbone"]
