"""Loggers: one per run; W&B offline holds config, per-task curves, the R table and the heatmap."""

from __future__ import annotations

import json
import struct
import time

import pandas as pd

from cl_bench.runner import run
from tests.conftest import tiny_overrides


def test_csv_logger_has_every_task_curve_and_r_rows(compose_cfg, tmp_path):
    run(compose_cfg("strategy=seq_lp", "logger=csv", "train.log_every_n_steps=1"), tmp_path)
    (metrics_csv,) = (tmp_path / "logs" / "csv").rglob("metrics.csv")
    df = pd.read_csv(metrics_csv)
    assert {"tumour_seg/task_loss", "brain_age/task_loss", "R/tumour_seg", "R/brain_age"} <= set(
        df.columns)
    r_rows = df.dropna(subset=["R/tumour_seg"])
    assert len(r_rows) == 3  # init + after each of the two tasks
    matrix = pd.read_csv(tmp_path / "matrix.csv", index_col=0)
    assert list(r_rows["R/brain_age"].round(4)) == list(matrix["brain_age"].round(4))
    (hparams,) = (tmp_path / "logs" / "csv").rglob("hparams.yaml")
    assert "seq_lp" in hparams.read_text()


def test_a_wandb_run_in_a_sweep_is_named_by_its_job_and_grouped_by_the_sweep(
        cli, data_cache, tmp_path, monkeypatch):
    """``clbench -m ... logger=wandb``: the job's W&B run is named by its strategy, stream and
    seed, and its group is the sweep directory's name (every seed of a sweep in one group)."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_home"))
    sweep = tmp_path / "sweep_2026"
    tiny = [o for o in tiny_overrides(data_cache) if not o.startswith("logger=")]
    proc = cli("-m", "strategy=seq_lp", "seed=3", "logger=wandb", *tiny,
               "train.max_steps=1", "eval.probes=false", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (offline,) = (sweep / "0_seq_lp_seed3" / "logs" / "wandb").glob("offline-run-*")
    records = _finished_records(offline)
    (named,) = {(r.run.display_name, r.run.run_group) for r in records if r.HasField("run")}
    assert named == ("seq_lp_brain_seg_age_seed3", "sweep_2026")


def _finished_records(offline):
    """The records of an offline W&B run directory once its log holds the ``exit`` record
    (wandb's service process may still be writing when ``finish()`` returns; up to a minute)."""
    deadline = time.time() + 60
    while True:
        try:
            records = list(wandb_records(next(offline.glob("run-*.wandb"))))
        except Exception:  # a half-written record: not finished yet
            records = []
        if "exit" in [r.WhichOneof("record_type") for r in records] or time.time() > deadline:
            return records
        time.sleep(0.5)


def wandb_records(path):
    """The protobuf records of an offline ``run-<id>.wandb`` file (LevelDB log framing: 32 KiB
    blocks, 7-byte record headers; wandb's 7-byte file header first)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, buf, block = path.read_bytes(), 7, b"", 32768
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = block - pos % block
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if left < 7 or (n == 0 and kind == 0):  # block trailer / padding
            pos += left
            continue
        buf, pos = buf + data[pos + 7:pos + 7 + n], pos + 7 + n
        if kind in (1, 4):  # FULL or LAST fragment
            record = pb.Record()
            record.ParseFromString(buf)
            buf = b""
            yield record


def test_wandb_offline_run_holds_config_metrics_table_and_heatmap(compose_cfg, tmp_path,
                                                                monkeypatch, capfd):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_SILENT", raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_home"))
    capfd.readouterr()
    run(compose_cfg("strategy=lora", "logger=wandb", "train.log_every_n_steps=1"), tmp_path)
    printed = capfd.readouterr()
    assert "anonymous" not in printed.out + printed.err  # wandb's "has no effect" warning
    (offline,) = (tmp_path / "logs" / "wandb").glob("offline-run-*")  # offline by default
    # wandb's service process may still be writing the log when finish() returns: seen once
    # with two xdist workers on 2 busy cores (an empty log); give it up to a minute
    records = _finished_records(offline)
    kinds = [r.WhichOneof("record_type") for r in records]
    assert "exit" in kinds  # the run was finished

    # named by the run, grouped by its directory (not under Hydra: no sweep)
    (named,) = {(r.run.display_name, r.run.run_group) for r in records if r.HasField("run")}
    assert named == ("lora_brain_seg_age_seed0", tmp_path.name)

    config = {i.key: json.loads(i.value_json) for r in records if r.HasField("config")
              for i in r.config.update}
    assert config["strategy"]["name"] == "lora" and config["tasks"]["name"] == "brain_seg_age"

    history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
               for r in records if r.HasField("history")]
    r_rows = [h for h in history if "R/brain_age" in h]
    matrix = pd.read_csv(tmp_path / "matrix.csv", index_col=0)
    assert [round(h["R/brain_age"], 3) for h in r_rows] == list(matrix["brain_age"].round(3))
    assert any("tumour_seg/task_loss" in h for h in history)
    assert any("brain_age/task_loss" in h for h in history)

    media = offline / "files" / "media"
    tables = sorted(media.glob("table/R_matrix_*.table.json"),
                    key=lambda p: int(p.name.split("_")[2]))
    assert len(tables) == 3  # after init and after each task
    last = json.loads(tables[-1].read_text())
    assert last["columns"] == ["row", "tumour_seg", "brain_age"] and len(last["data"]) == 3
    assert abs(last["data"][-1][2] - matrix.loc["after_brain_age", "brain_age"]) < 1e-3
    assert len(list(media.glob("images/heatmap_*.png"))) == 3
