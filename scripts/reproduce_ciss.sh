#!/usr/bin/env bash
# Reproduce the CISS table on seg_mnist (the STAR comparison, Chen et al. NeurIPS 2023 / TPAMI
# 2025): 6-1 overlapped and 6-2 disjoint, seq_ft / lwf / star / star_lite / joint, 3 seeds, then
# one report whose table has each run's base/new/all mIoU after the last step.
#
#   bash scripts/reproduce_ciss.sh                      # local, sequential (~2 h on one core)
#   bash scripts/reproduce_ciss.sh hardware=slurm       # as SLURM job arrays
#   STRATEGIES=seq_ft,star SEEDS=0 bash scripts/reproduce_ciss.sh   # a subset
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-$( [ -x .venv/bin/clbench ] && echo .venv/bin || dirname "$(command -v clbench)")}
SWEEP=${SWEEP:-results/ciss/sweep_$(date +%Y-%m-%d_%H-%M-%S)}
STRATEGIES=${STRATEGIES:-seq_ft,lwf,star,star_lite,joint}
SEEDS=${SEEDS:-0,1,2}
run() { "$BIN/clbench" -m experiment=ciss_seg_mnist train.progress_bar=false logger=none \
        "strategy=$STRATEGIES" "seed=$SEEDS" "$@"; }
run tasks=seg_mnist_6-1 tasks.setting=overlapped "hydra.sweep.dir=$SWEEP/6-1_overlapped" "${@}"
run tasks=seg_mnist_6-2 tasks.setting=disjoint "hydra.sweep.dir=$SWEEP/6-2_disjoint" "${@}"
"$BIN/clbench-report" "$SWEEP" --out "$SWEEP/report" --format markdown
echo "table (miou_base / miou_new / miou_all (last step) per protocol and strategy): $SWEEP/report/report.md"
