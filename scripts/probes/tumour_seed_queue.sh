#!/usr/bin/env bash
# The tumour-task seed probe (scripts/probes/tumour_seed_probe.py) for lora on the default stream:
# the protocol's default and two candidate remedies, seeds 0-2, two runs at a time, one thread each.
# (SKIP=n skips the first n jobs: the queue was restarted after base seeds 0 and 1 started.)
# Chosen on validation Dice only (the probe never reads test subjects).
#   OUT=results/reference/brain_mri_fm/seed_probe bash scripts/probes/tumour_seed_queue.sh
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-results/reference/brain_mri_fm/seed_probe}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"
jobs_list=(
  "base 0 " "base 1 "
  "classweights 0 --class-weights" "classweights 1 --class-weights"
  "base 2 " "classweights 2 --class-weights"
  "warmup 0 --warmup 60" "warmup 1 --warmup 60" "warmup 2 --warmup 60"
)
running() { pgrep -f "scripts/probes/tumour_seed_probe.py" | wc -l; }
for job in "${jobs_list[@]:${SKIP:-0}}"; do
  read -r name seed extra <<<"$job"
  while [ "$(running)" -ge 2 ]; do sleep 10; done
  echo "start $name seed $seed $(date +%T)"
  $PY scripts/probes/tumour_seed_probe.py --seed "$seed" $extra --out "$OUT/${name}_seed$seed.json" \
    strategy=lora > "$OUT/${name}_seed$seed.log" 2>&1 &
  sleep 5
done
wait
while [ "$(running)" -ge 1 ]; do sleep 10; done
echo "all done $(date +%T)"
