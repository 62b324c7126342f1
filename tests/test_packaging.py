"""A non-editable install (a built wheel) carries conf/ and composes configs from it."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: several minutes of subprocess runs on 2 cores: `pytest -m "not slow"` leaves them out of a
#: quick loop (make test and CI run everything)
pytestmark = pytest.mark.slow


def test_wheel_ships_every_config_and_the_cli_finds_them(tmp_path):
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                            "--no-build-isolation", "-w", str(tmp_path / "dist"), str(ROOT)],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert build.returncode == 0, build.stderr[-2000:]
    # setuptools' complaints about our packaging (a deprecated license table, conf groups that
    # are not declared packages) would drown a real problem in a user's install log
    noise = [line for line in (build.stdout + build.stderr).splitlines()
             if "Warning" in line or "deprecated" in line.lower() or "absent from" in line]
    assert not noise, "\n".join(noise)
    (wheel,) = (tmp_path / "dist").glob("cl_bench-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"cl_bench/conf/{p.relative_to(ROOT / 'conf')}" for p in
                (ROOT / "conf").rglob("*.yaml")}
    assert expected and expected <= names, sorted(expected - names)
    # every module ships, those of the subpackages (strategies/star/, strategies/proteus/) too
    # (setup.py finds the packages)
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "cl_bench").rglob("*.py")
               if "__pycache__" not in p.parts}
    assert sources <= names, sorted(sources - names)
    assert "cl_bench/assets/vit3d_tiny_mae.safetensors" in names
    assert "cl_bench/assets/vit2d_mnist_uci.safetensors" in names
    assert "cl_bench/assets/unet2d_uci.safetensors" in names
    assert "cl_bench/assets/swin_brain_ssl.safetensors" in names
    # the Optuna sweeper's Hydra plugin (issue 27) and its config
    assert "hydra_plugins/clbench_optuna_sweeper/optuna_sweeper.py" in names
    assert "cl_bench/conf/hydra/sweeper/optuna.yaml" in names

    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                              "--target", str(target), str(wheel)],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-2000:]
    env = dict(os.environ, PYTHONPATH=str(target))
    proc = subprocess.run([sys.executable, "-c", "import cl_bench.composition as c; print(c.CONF_DIR)"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.stdout.strip() == str(target / "cl_bench" / "conf"), proc.stderr
    cfg = subprocess.run([sys.executable, "-m", "cl_bench.cli", "experiment=brain_mri_fm",
                          "hardware=slurm", "--cfg", "job"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert cfg.returncode == 0, cfg.stderr[-2000:]
    assert "name: swin_unetr" in cfg.stdout and "partition: debug" in cfg.stdout
    search = subprocess.run([sys.executable, "-m", "cl_bench.cli", "experiment=split_mnist_tuned",
                             "strategy=ewc", "--cfg", "all", "-p", "hydra.sweeper", "--resolve"],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert search.returncode == 0, search.stderr[-2000:]
    assert "ClBenchOptunaSweeper" in search.stdout and "strategy.ewc_lambda" in search.stdout
