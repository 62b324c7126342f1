#!/usr/bin/env bash
# issue 37's 3-seed table (main rows, then the ablations), code at fc8abfd, fp32 pinned so that the
# table is one numerics whatever CPU a later session continues it on; continues when rerun
# Started 2026-12-07 13:40 on a 2-core AMD EPYC (two runs at a time, one thread each) from a git
# worktree at fc8abfd (git worktree add --detach /work/wt_table fc8abfd). Rerun this file to
# continue: finished runs are kept, cut ones continue from their checkpoints (clbench resume=).
# When it ends (the issue-24 table is already in swin_brain_ssl_val_split/): collect the runs here
# (scripts/collect_runs.sh) and rewrite README.md and the README's "What the default job gives".
set -euo pipefail
cd /work/wt_table
export PYTHONPATH=/work/wt_table BIN=/work/main/.venv/bin
export SWEEP=/work/table/sweep OUT=/work/table/report THREADS=1 PARALLEL=2 NUMERICS=hardware.precision=32-true
bash scripts/reproduce_brain_mri.sh >> /work/table/table.log 2>&1
