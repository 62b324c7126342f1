#!/usr/bin/env bash
# Issue 25: the 3-seed validation runs of the speed candidates for the main job (lora, default
# stream), two at a time with one thread each, on the 2-core Intel Xeon (AMX) of 2026-12-03.
# Each candidate is judged against the 600-step fp32 reference runs of the same seeds on
# *validation* Dice and MAE (matrix_val.csv; results/reference/brain_mri_fm/runs/lora_seed*).
#   es:         Lightning EarlyStopping on each task's validation loss (checked every 100 steps,
#               patience 2: a task stops after 200 steps without a lower validation loss)
#   bash results/reference/bench/swin_speed_options/queue_candidates.sh
# Tried first and stopped (2026-12-03): narrow_es (the same plus backbone.decoder_feature_size=6).
# Its tumour training loss fell far slower than the default decoder's (seed 1: 1.50 at step 290,
# where every default seed is below 0.1 by step 200), so it was dropped before any validation
# number existed.
cd "$(dirname "$0")/../../../.."
SWEEP=${SWEEP:-results/bench_issue25/candidates}
mkdir -p "$SWEEP/logs"
one() {  # name seed overrides...
  local name=$1 seed=$2; shift 2
  echo "run: ${name}_seed$seed $(date +%T)"
  .venv/bin/clbench strategy=lora "seed=$seed" hardware.num_threads=1 train.progress_bar=false \
    logger=csv "hydra.run.dir=$SWEEP/${name}_seed$seed" "$@" \
    > "$SWEEP/logs/${name}_seed$seed.log" 2>&1 || echo "FAILED: ${name}_seed$seed"
  echo "done: ${name}_seed$seed $(date +%T)"
}
ES="train.early_stopping_patience=2 train.val_every_n_steps=100"
for seed in ${SEEDS:-0 1 2}; do
  while [ "$(jobs -r | wc -l)" -ge 2 ]; do sleep 10; done
  one es "$seed" $ES &
  sleep 5
done
wait
echo "all done $(date +%T)"
