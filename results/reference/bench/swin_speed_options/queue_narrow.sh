#!/usr/bin/env bash
# Issue 25: the narrow decoder (backbone.decoder_feature_size=6, 600 steps) over 3 seeds, for its
# validation Dice and MAE in the speed-options table (its step: 0.53x / 0.64x of the old one).
# Run after / beside queue_candidates.sh: it starts a run whenever fewer than two clbench runs
# are going (one thread each), on the 2-core Intel Xeon (AMX) of 2026-12-03.
#   bash results/reference/bench/swin_speed_options/queue_narrow.sh
cd "$(dirname "$0")/../../../.."
SWEEP=${SWEEP:-results/bench_issue25/candidates}
mkdir -p "$SWEEP/logs"
running() { pgrep -f "hydra.run.dir=$SWEEP" | wc -l; }
for seed in ${SEEDS:-0 1 2}; do
  while [ "$(running)" -ge 2 ]; do sleep 15; done
  name=narrow_seed$seed
  echo "run: $name $(date +%T)"
  ( .venv/bin/clbench strategy=lora "seed=$seed" hardware.num_threads=1 train.progress_bar=false \
      logger=csv "hydra.run.dir=$SWEEP/$name" backbone.decoder_feature_size=6 \
      > "$SWEEP/logs/$name.log" 2>&1 || echo "FAILED: $name"; echo "done: $name $(date +%T)" ) &
  sleep 20
done
wait
echo "all done $(date +%T)"
