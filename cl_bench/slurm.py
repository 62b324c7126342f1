"""``hardware=slurm`` checks that run before anything is submitted (a Hydra callback).

A wrong partition would otherwise surface as an ``sbatch`` error inside submitit's traceback after
the sweep directory was made; here it is one line naming ``hardware.slurm.partition`` and the
partitions the cluster has.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


def partitions() -> list[str] | None:
    """Partition names from ``sinfo`` (the default one without its ``*``), or ``None`` when
    ``sinfo`` is missing or does not answer (no cluster reachable)."""
    if shutil.which("sinfo") is None:
        return None
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True,
                             timeout=20, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return None
    return [p.strip().rstrip("*") for p in out.split() if p.strip()]


class SlurmPreflight(Callback):
    """Hydra callback of ``conf/hardware/slurm.yaml``.

    Args:
        partition: ``hardware.slurm.partition``.

    Exits with code 2 and one line when no SLURM cluster answers or the partition is unknown
    (before any job is submitted or any directory is made).
    """

    def __init__(self, partition: str | None = None):
        self.partition = partition

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        names = partitions()
        if names is None:
            self._fail("hardware=slurm: no SLURM cluster answers here (`sinfo` is missing or "
                       "failed); run on a login node, or use scripts/slurm_local.sh to start "
                       "a one-node test cluster")
        if self.partition is not None and self.partition not in names:
            self._fail(f"hardware.slurm.partition={self.partition!r} is not a partition of this "
                       f"cluster; sinfo lists: {', '.join(names) or '(none)'}")

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        log.warning("hardware=slurm without -m/--multirun runs here, not through SLURM; add -m "
                    "to submit a job array")

    @staticmethod
    def _fail(message: str) -> None:
        print(f"clbench: error: {message}", file=sys.stderr)
        sys.exit(2)
