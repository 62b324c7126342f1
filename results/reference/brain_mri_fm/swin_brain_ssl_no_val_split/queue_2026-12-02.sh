#!/usr/bin/env bash
# the rest of scripts/reproduce_brain_mri.sh's queue (same `one` command), two at a time
cd /work/main
export BIN=.venv/bin SWEEP=results/brain_mri_fm/sweep_issue13_head EXTRA="" THREADS=1
one() {
  echo "run: $1 seed $2 $(date +%T)"
  "$BIN/clbench" -m experiment=brain_mri_fm train.progress_bar=false logger=none \
    "strategy=$1" "seed=$2" "hardware.num_threads=$THREADS" "hydra.sweep.dir=$SWEEP" \
    "hydra.sweep.subdir=$1_seed$2" $EXTRA > "$SWEEP/logs/$1_seed$2.log" 2>&1 \
    || echo "FAILED: $1 $2"
  echo "done: $1 seed $2 $(date +%T)"
}
running() { pgrep -f "clbench -m experiment=brain_mri_fm" | wc -l; }
for job in "lora 2" "seq_ft 0" "seq_ft 1" "seq_ft 2" "seq_lp 0" "seq_lp 1" "seq_lp 2"; do
  while [ "$(running)" -ge 2 ]; do sleep 15; done
  one $job &
  sleep 20
done
wait
while [ "$(running)" -ge 1 ]; do sleep 15; done
echo all done $(date +%T)
