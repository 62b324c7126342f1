"""scripts/pretrain_swin.py: the foundation model's pretraining resumes bit for bit and ships a
whole Swin UNETR the default backbone loads strictly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "pretrain_swin.py"


def pretrain(tmp: Path, cache: Path, name: str, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CLBENCH_CACHE": str(cache)}
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--steps", "4", "--n-volumes", "2", "--warmup", "2",
         "--save-every", "2", "--threads", "1", "--out", str(tmp / name / "fm.safetensors"),
         *extra], capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)


@pytest.mark.slow
def test_pretraining_resumes_bit_for_bit_and_ships_a_whole_swin_unetr(tmp_path):
    cache = tmp_path / "cache"
    straight = pretrain(tmp_path, cache, "straight")
    assert straight.returncode == 0, straight.stderr[-2000:]
    cut = pretrain(tmp_path, cache, "cut", "--stop-at", "2")  # as if killed after step 2
    assert cut.returncode == 0 and "stopped at step 2" in cut.stdout
    resumed = pretrain(tmp_path, cache, "cut")
    assert resumed.returncode == 0 and "resuming at step 2" in resumed.stdout
    a = load_file(str(tmp_path / "straight" / "fm.safetensors"))
    b = load_file(str(tmp_path / "cut" / "fm.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a Swin UNETR state dict: the encoder under swinViT.*, the decoder under MONAI's names
    assert any(k.startswith("swinViT.layers4") for k in a)
    assert {"encoder2", "encoder10", "decoder1", "decoder5"} <= {k.split(".")[0] for k in a}
    assert not any(k.startswith(("out.", "tissue", "reconstruction")) for k in a)
    card = json.loads((tmp_path / "cut" / "fm.json").read_text())
    assert card["steps_done"] == 4 and card["terms"] == ["tissue", "inpaint"]
    assert card["pool"]["volumes"] == 2 and card["pool"]["healthy"] == 1
    assert [p["step"] for p in card["loss_curve"]] == []  # fewer than 50 steps: no window yet
    # a recipe of another length is not continued by mistake
    other = subprocess.run(
        [sys.executable, str(SCRIPT), "--steps", "5", "--n-volumes", "2", "--threads", "1",
         "--out", str(tmp_path / "cut" / "fm.safetensors")], capture_output=True, text=True,
        env={**os.environ, "CLBENCH_CACHE": str(cache)}, cwd=ROOT, timeout=300)
    assert other.returncode != 0 and "another recipe or length" in other.stderr
