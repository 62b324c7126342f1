#!/usr/bin/env bash
# How this table's runs were made (2026-12-02, 2-core Intel Xeon): the same `one` command as
# scripts/reproduce_brain_mri.sh (PARALLEL=2, one thread each), in this order: lora's three seeds
# (the robustness the issue asks about) and seed 0 of seq_ft and seq_lp first, the rest after.
#   bash results/reference/brain_mri_fm/queue_issue24.sh
cd "$(dirname "$0")/../../.."
export BIN=.venv/bin SWEEP=${SWEEP:-results/brain_mri_fm/sweep_issue24_layer} EXTRA="" THREADS=1
mkdir -p "$SWEEP/logs"
one() {  # strategy seed name [overrides...]
  local s=$1 seed=$2 name=$3; shift 3
  echo "run: $name $(date +%T)"
  "$BIN/clbench" -m experiment=brain_mri_fm train.progress_bar=false logger=none \
    "strategy=$s" "seed=$seed" "hardware.num_threads=$THREADS" "hydra.sweep.dir=$SWEEP" \
    "hydra.sweep.subdir=$name" "$@" > "$SWEEP/logs/$name.log" 2>&1 || echo "FAILED: $name"
  echo "done: $name $(date +%T)"
}
running() { pgrep -f "clbench -m experiment=brain_mri_fm" | wc -l; }
# Session 1 (2026-12-02) ran the first seven: lora_seed2 was put after the linear-decoder ablation
# of seq_ft, the run that can show forgetting, when the reliance probe showed that the default
# decoder reads only stage 0, and after seq_lp's cheap seeds 1-2.
# Session 2 (2026-12-03, the same 2-core Intel Xeon model) ran the rest: START=7 skips the done ones.
# Ablations are seed 0 only (compute): the shallow age head on seq_lp (the earlier design where seq_lp
# equalled lora on age), the image-skip decoder on seq_lp (what a decoder reaches with a frozen
# backbone), the paper-like budget (linear decoder) on lora and seq_lp (seq_ft's is above).
queue=(
  "lora 0 lora_seed0" "seq_ft 0 seq_ft_seed0" "seq_lp 0 seq_lp_seed0" "lora 1 lora_seed1"
  "seq_ft 0 linear_decoder_seq_ft_seed0 backbone.decoder=linear"
  "seq_lp 1 seq_lp_seed1" "seq_lp 2 seq_lp_seed2"
  "lora 2 lora_seed2" "seq_ft 1 seq_ft_seed1" "seq_ft 2 seq_ft_seed2"
  "lora 0 linear_decoder_lora_seed0 backbone.decoder=linear"
  "seq_lp 0 linear_decoder_seq_lp_seed0 backbone.decoder=linear"
  "seq_lp 0 shallow_age_seq_lp_seed0 backbone.regression_stages=[0,1] backbone.regression_rectify=true"
  "seq_lp 0 image_skip_seq_lp_seed0 backbone.decoder_image_skip=true"
  "scratch 0 scratch_seed0" "scratch 1 scratch_seed1"
  "scratch 2 scratch_seed2"
)
queue=("${queue[@]:${START:-0}}")
for job in "${queue[@]}"; do
  while [ "$(running)" -ge 2 ]; do sleep 15; done
  one $job &
  sleep 20
done
wait
echo "all done $(date +%T)"
