#!/usr/bin/env bash
# issue 38's zoo table on the default protocol (issue 37's: swin_brain_fm, shared decoder, LoRA-family
# targets from the backbone, the validation split): ewc lwf er joint olora reglora inflora duallora
# proteus x seeds 0-2, fp32 pinned (as the issue-37 table, so the two are one numerics whatever CPU a
# later session continues them on), two runs at a time, one thread each. The seq_ft / seq_lp / lora /
# scratch rows come from the issue-37 table (results/reference/brain_mri_fm/): issue 38 changed
# neither those strategies nor the protocol.
# Code: a git worktree at e7e22f8 (the LoRA family on the Swin UNETR, 7e6b8a9, and the report's retrieval
# columns)
# (git worktree add --detach /work/wt_zoo e7e22f8). Start it after ../brain_mri_fm/queue.sh has finished
# (both fill the machine). Rerun this file to continue: finished runs are kept, cut ones continue
# from their checkpoints (clbench resume=); say in the README which were resumed (their cli.log).
# When it ends: (this folder's old vit3d_tiny table is already in vit3d_tiny_no_val_split/)
# collect the runs here (scripts/collect_runs.sh), and rewrite the README's zoo section from it.
set -euo pipefail
WT=${WT:-/work/wt_zoo}
[ -d "$WT" ] || git -C "$(dirname "$0")" worktree add --detach "$WT" e7e22f8
cd "$WT"
export PYTHONPATH=$WT BIN=${BIN:-/work/main/.venv/bin}
export SWEEP=${SWEEP:-/work/zoo/sweep} OUT=${OUT:-/work/zoo/report} THREADS=1 PARALLEL=2
export NUMERICS=hardware.precision=32-true ABLATIONS=""
export STRATEGIES="ewc lwf er joint olora reglora inflora duallora proteus"
mkdir -p "$SWEEP"
bash scripts/reproduce_brain_mri.sh >> "$SWEEP/../zoo.log" 2>&1
