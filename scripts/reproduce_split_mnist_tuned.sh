#!/usr/bin/env bash
# The tuned class-IL Split-MNIST rows (results/reference/split_mnist_tuned/): for each of ewc,
# lwf and er, an Optuna search of its lr and regulariser on the validation R (12 trials, seed 0,
# conf/experiment/split_mnist_tuned.yaml), then the best config on the test split over seeds
# 0-2 (clbench-best), then one report of the three. ER keeps 1,000 samples (100 per class) as in
# the untuned table (scripts/reproduce_split_mnist.sh). One thread per run, as there.
#
#   bash scripts/reproduce_split_mnist_tuned.sh                   # local, sequential (~15 min)
#   bash scripts/reproduce_split_mnist_tuned.sh hardware=slurm    # trials as SLURM jobs
#   PHASE=search bash scripts/reproduce_split_mnist_tuned.sh      # only the searches
#   PHASE=best bash scripts/reproduce_split_mnist_tuned.sh        # only the test runs + table
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-$( [ -x .venv/bin/clbench ] && echo .venv/bin || dirname "$(command -v clbench)")}
SWEEP=${SWEEP:-results/split_mnist_tuned/sweep_$(date +%Y-%m-%d_%H-%M-%S)}
OUT=${OUT:-$SWEEP/report}
STRATEGIES=${STRATEGIES:-ewc lwf er}
SEEDS=${SEEDS:-0,1,2}
PHASE=${PHASE:-all}
extra() { [ "$1" = er ] && echo strategy.buffer_size=1000 || true; }
for s in $STRATEGIES; do
    if [ "$PHASE" != best ]; then
        "$BIN/clbench" -m experiment=split_mnist_tuned "strategy=$s" $(extra "$s") \
            train.progress_bar=false logger=none hardware.num_threads=1 \
            "hydra.sweep.dir=$SWEEP/$s" "$@"
    fi
    if [ "$PHASE" != search ]; then
        "$BIN/clbench-best" "$SWEEP/$s" "seed=$SEEDS" "$@"
    fi
done
if [ "$PHASE" != search ]; then
    "$BIN/clbench-report" $(for s in $STRATEGIES; do echo "$SWEEP/$s/best"; done) --out "$OUT" \
        --format markdown
    echo "table: $OUT/report.md"
fi
