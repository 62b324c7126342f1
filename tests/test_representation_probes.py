"""Representation probes (cl_bench.representation_probes) and ``clbench-probe`` (cl_bench.probe_cli):
real probes on a tiny synthetic stream whose answers are known, and the command end to end."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from cl_bench.data.base import ArrayDataset, Task
from cl_bench.errors import ConfigError
from cl_bench.representation_probes import COLUMNS, probe_model, stage_names

SIDE = 64


@pytest.fixture
def one_thread():
    """The probes run on one torch thread (the machine is shared); the setting is restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class WithDecoder(nn.Module):
    """A Swin encoder plus a stand-in for a shared decoder: a 6th, full-resolution feature map
    ``(B, 2, S, S, S)`` (the image and its square), as ``backbone.decoder=shared`` returns."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, x):
        deepest, stages = self.encoder(x)
        return deepest, [*stages, torch.cat([x, x * x], 1)]


def _stream(rng: np.random.Generator) -> list[Task]:
    """Regression: the target is 20 + 60 x the subject's brightness (the image's mean, up to
    noise); segmentation: a bright 16^3 cube labelled 1 at a random place on noise."""
    def age_set(n):
        b = rng.uniform(0, 1, n)
        x = rng.normal(0, 0.3, (n, 1, SIDE, SIDE, SIDE)) + b[:, None, None, None, None]
        return ArrayDataset(x.astype(np.float32), (20 + 60 * b).astype(np.float32))

    def seg_set(n):
        x = rng.normal(0, 0.3, (n, 1, SIDE, SIDE, SIDE)).astype(np.float32)
        y = np.zeros((n, 1, SIDE, SIDE, SIDE), np.int64)
        for i in range(n):
            a, b, c = rng.integers(4, SIDE - 20, 3)
            x[i, 0, a:a + 16, b:b + 16, c:c + 16] += 2.0
            y[i, 0, a:a + 16, b:b + 16, c:c + 16] = 1
        return ArrayDataset(x, y)

    return [Task("cube_seg", "segmentation", seg_set(5), seg_set(1), num_classes=2, val=seg_set(3)),
            Task("bright_age", "regression", age_set(8), age_set(1), units="years", val=age_set(4))]


@pytest.fixture(scope="module")
def probed():
    """``probe_model`` once on a random-init Swin (feature size 12) with a stand-in decoder."""
    from cl_bench.models.continual import make_swin_model

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = make_swin_model(img_size=SIDE, feature_size=12, num_heads=(3, 6, 12, 24),
                            decoder="unetr")  # five stages; the sixth is the stand-in's
    model.backbone = WithDecoder(model.backbone)
    model.train()
    try:
        table = probe_model(model, _stream(np.random.default_rng(0)), batch_size=4, seed=0)
    finally:
        torch.set_num_threads(before)
    assert model.training  # its mode is restored
    return table


def _value(table, task, stage, metric):
    sel = table[(table.task == task) & (table.stage == stage) & (table.metric == metric)]
    assert len(sel) == 1, sel
    return float(sel.value.iloc[0])


def test_table_columns_and_stages(probed):
    stages = ["stage0", "stage1", "stage2", "stage3", "stage4", "decoder"]
    assert list(probed.columns) == COLUMNS
    seg = probed[probed.task == "cube_seg"]
    assert list(seg.stage) == stages and set(seg.metric) == {"dice"}
    age = probed[probed.task == "bright_age"]
    assert list(age.stage) == ["mean"] + [s for s in stages for _ in range(2)]
    assert list(age.metric) == ["mae"] + ["mae", "r2"] * 6
    assert set(age.units[age.metric == "mae"]) == {"years"}
    assert set(probed.split) == {"val"}
    assert list(seg.n_train.unique()) == [5] and list(seg.n_eval.unique()) == [3]
    assert list(age.n_train.unique()) == [8] and list(age.n_eval.unique()) == [4]
    ridge = age[age.stage != "mean"]
    assert ridge.alpha.between(1e-3, 1e5).all() and age[age.stage == "mean"].alpha.isna().all()


def test_ridge_probe_reads_brightness(probed):
    """The stage-0 average is a linear map of the image's mean: the ridge probe must beat the
    training mean by far (the mean predictor's MAE on uniform 20..80 targets is ~15 years)."""
    mean = _value(probed, "bright_age", "mean", "mae")
    assert mean > 5
    assert _value(probed, "bright_age", "stage0", "mae") < 0.3 * mean
    assert _value(probed, "bright_age", "stage0", "r2") > 0.8
    assert _value(probed, "bright_age", "decoder", "mae") < 0.3 * mean


def test_logistic_probe_finds_the_cube(probed):
    assert _value(probed, "cube_seg", "stage0", "dice") > 0.5
    assert _value(probed, "cube_seg", "decoder", "dice") > 0.9  # the image itself, thresholded
    assert probed[probed.metric == "dice"].value.between(0, 1).all()


def test_stage_names():
    assert stage_names(5) == ["stage0", "stage1", "stage2", "stage3", "stage4"]
    assert stage_names(6)[-1] == "decoder"


def test_shared_decoder_is_named_decoder(one_thread):
    """A Swin built with ``decoder="shared"`` returns its decoder's full-resolution features
    as a sixth entry: the probes call it ``decoder``."""
    from cl_bench.models.continual import make_swin_model
    from cl_bench.representation_probes import iter_stage_batches

    try:
        model = make_swin_model(img_size=SIDE, feature_size=12, num_heads=(3, 6, 12, 24),
                                decoder="shared", decoder_feature_size=6)
    except ConfigError:
        pytest.skip("this checkout's Swin has no shared decoder")
    data = ArrayDataset(np.zeros((1, 1, SIDE, SIDE, SIDE), np.float32), np.zeros(1, np.float32))
    stages, _ = next(iter_stage_batches(model, data))
    assert list(stages) == ["stage0", "stage1", "stage2", "stage3", "stage4", "decoder"]
    assert stages["decoder"].shape == (1, 6, SIDE, SIDE, SIDE)


def test_token_backbone_is_refused(one_thread):
    """A ViT's stages are token lists (B, N, D), not maps: one ConfigError naming backbone."""
    class Tokens(nn.Module):
        def forward(self, x):
            t = torch.zeros(len(x), 8, 4)
            return t, [t, t]

    data = ArrayDataset(np.zeros((2, 1, 8, 8, 8), np.float32), np.zeros(2, np.float32))
    stream = [Task("age", "regression", data, data, val=data)]
    with pytest.raises(ConfigError, match=r"^backbone: clbench-probe needs a backbone with staged "
                                          r"feature maps \(swin_unetr\)"):
        probe_model(Tokens(), stream)


# ------------------------------------------------------------------------------------------------
# the command


def _probe_cli(monkeypatch, capsys, tmp_path, *args):
    """``clbench-probe *args`` in this process: exit code, stdout, stderr."""
    from cl_bench import probe_cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sys, "argv", ["clbench-probe", *args])
    capsys.readouterr()
    code = 0
    try:
        probe_cli.main()
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_command_end_to_end(monkeypatch, capsys, tmp_path, one_thread):
    """Two random Swins of one seed: the same features, so every row's value is its random
    twin's and none is better; the CSV and JSON hold what was printed."""
    code, out, err = _probe_cli(
        monkeypatch, capsys, tmp_path, "backbone=swin_unetr", "tasks=brain_seg_age",
        "tasks.n_train=7", "tasks.n_val=3", "tasks.n_test=1", "tasks.age_n_train=7",
        "tasks.age_n_test=1", "tasks.n_val_by_task.brain_age=3", "backbone.weights=null",
        "backbone.decoder=unetr", "backbone.feature_size=12",
        "hardware.num_threads=1",
        "probe.out=out/probes.csv", "probe.max_voxels=500")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("clbench-probe: backbone swin_unetr (weights: null) vs random init")
    assert lines[1].startswith("split: val (tumour_seg 4 train / 3 val; brain_age 4 train / 3 val")
    assert lines[1].endswith("; MAE in years (brain_age)")
    assert lines[2].split()[:6] == ["task", "stage", "metric", "backbone", "random", "better"]
    body = [line.split() for line in lines[3:-1]]
    assert [r[:3] for r in body] == (
        [["tumour_seg", f"stage{k}", "dice"] for k in range(5)] + [["brain_age", "mean", "mae"]]
        + [["brain_age", f"stage{k}", m] for k in range(5) for m in ("mae", "r2")])
    for r in body:  # backbone == random; better: "no", blank for the mean predictor
        assert r[3] == r[4] and (r[5:6] == ["no"] or r[1] == "mean" and len(r) == 5), r
    assert lines[-1] == "clbench-probe: wrote out/probes.csv and out/probes.json"
    table = pd.read_csv(tmp_path / "out" / "probes.csv")
    assert list(table.columns[:9]) == ["task", "kind", "stage", "metric", "value", "random",
                                       "better", "units", "split"]
    assert np.allclose(table.value, table.random, equal_nan=True) and len(table) == len(body)
    saved = json.loads((tmp_path / "out" / "probes.json").read_text())
    assert saved["seed"] == 0 and saved["probe"]["max_voxels"] == 500
    assert len(saved["rows"]) == len(table) and saved["rows"][5]["better"] is None


@pytest.mark.parametrize("args, start", [
    (["backbone.weights=/no/such/ckpt.safetensors"], "clbench-probe: error: backbone.weights: "),
    (["probe.max_voxel=3"], "clbench-probe: error: probe.max_voxel=3: unknown key"),
    (["probe.max_voxels=1"], "clbench-probe: error: probe.max_voxels: expected an int >= 2"),
    (["backbone=nosuch"], "clbench-probe: error: backbone=nosuch: no such option"),
    (["--oops"], "clbench-probe: error: --oops: unknown option"),
    (["backbone=vit3d_tiny", "backbone.weights=null", "backbone.num_layers=2"],
     "clbench-probe: error: backbone: clbench-probe needs a backbone with staged feature maps"),
])
def test_command_user_errors(monkeypatch, capsys, tmp_path, args, start):
    """A user mistake: one line on stderr naming it, exit code 2, nothing on stdout (a ViT is
    refused before any data is made: the cache stays empty)."""
    code, out, err = _probe_cli(monkeypatch, capsys, tmp_path, *args, "hardware.num_threads=1")
    assert not (tmp_path / "cache").exists()
    assert code == 2 and out == ""
    assert err.startswith(start) and err.count("\n") == 1, err


def test_command_help(monkeypatch, capsys, tmp_path):
    code, out, _ = _probe_cli(monkeypatch, capsys, tmp_path, "--help")
    assert code == 0 and out.startswith("usage: clbench-probe")
    assert "probe.out=" in out and "probe.max_voxels=4000" in out


def test_compose_accepts_stream_keys_as_help_spells_them():
    """``clbench-probe tasks.max_tasks=1`` (no ``+``) composes, as ``clbench`` accepts it."""
    from cl_bench.probe_cli import compose_config

    for spelt in ("tasks.max_tasks=1", "+tasks.max_tasks=1"):
        cfg = compose_config(["tasks=digits", spelt])
        assert cfg.tasks.max_tasks == 1
