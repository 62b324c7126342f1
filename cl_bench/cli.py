"""``clbench``: the Hydra entry point. Nothing else lives here."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import cl_bench.config  # noqa: F401  (registers the config schema)
from cl_bench.errors import ClBenchError

log = logging.getLogger("cl_bench")
#: the repository's conf/ (an absolute path, so console scripts and ``python -m`` agree)
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> None:
    """Run one experiment; user errors print one line and exit with code 2."""
    from cl_bench.runner import run

    run_dir = HydraConfig.get().runtime.output_dir
    try:
        run(cfg, run_dir)
    except ClBenchError as e:
        print(f"clbench: error: {e}", file=sys.stderr)
        if (Path(run_dir) / "matrix.csv").exists():
            print(f"clbench: completed rows are kept in {run_dir}/matrix.csv", file=sys.stderr)
        sys.exit(2)
    print(f"clbench: results written to {run_dir}")
    return None


if __name__ == "__main__":
    main()
