#!/usr/bin/env bash
# Issue 25: two more seeds (3, 4) of the main job (lora) before issue 25 (fp32, MONAI's explicit
# attention: hardware.precision=32-true backbone.fused_attention=false) and at the default
# (hardware.precision=auto: bf16-mixed on this CPU, fused attention), so that the bf16 default's
# -0.005 validation Dice of seeds 0-2 can be judged over 5 paired seeds. Nothing is chosen from
# these runs; they only add seeds. Two lanes, one thread each (the 2 cores of the machine):
#   LANE=a bash results/reference/bench/swin_speed_options/queue_seeds34.sh &   # seed 3: before, default
#   LANE=b bash results/reference/bench/swin_speed_options/queue_seeds34.sh &   # seed 4: before, default
# (from a worktree at a fixed commit).
cd "$(dirname "$0")/../../../.."
SWEEP=${SWEEP:-results/bench_issue25/seeds34}
mkdir -p "$SWEEP/logs"
case "${LANE:-a}" in a) seed=3 ;; b) seed=4 ;; *) echo "LANE must be a or b"; exit 2 ;; esac
run() {  # run <name> <overrides...>
  local name=$1; shift
  echo "run: $name $(date +%T)"
  .venv/bin/clbench strategy=lora "seed=$seed" hardware.num_threads=1 train.progress_bar=false \
    logger=csv "hydra.run.dir=$SWEEP/${name}_seed$seed" "$@" \
    > "$SWEEP/logs/${name}_seed$seed.log" 2>&1 || echo "FAILED: $name seed$seed"
  echo "done: $name $(date +%T)"
}
run before hardware.precision=32-true backbone.fused_attention=false
run default
echo "all done $(date +%T)"
