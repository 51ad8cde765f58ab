#!/usr/bin/env bash
# One GPU trip, as one call of the device tool, from the repository root:
#
#   carry: runs/trip-packs   (train-*.cmcpack and validation-*.cmcpack; with the tracked files
#                             under 64 MiB in all)
#   run:   bash training/recipes/trip_on_device.sh [SECONDS] [CONTEXT_LOSS_WEIGHT (0.1)]
#
# Trains for SECONDS (default 420) from the bundled model on the packs its ledger has not seen,
# then leaves in $OUT what comes back (at most 8 files under 16 MiB): the model's weight shards,
# one tar of its small files and the logs. Unpack here with
#   mkdir -p runs/trip/model && cp FILES_AT/model*.safetensors runs/trip/model/ &&
#   tar -xf FILES_AT/trip-small.tar -C runs/trip
# then judge it: python -m cmc.training.recipes.trip judge --base cmc/default_model \
#   --candidate runs/trip/model --data runs/processed --limit 1000 --out runs/trip/judge
set -euo pipefail
SECONDS_BUDGET="${1:-420}"
WEIGHT="${2:-0.1}"  # the context loss: see the ablation in the README
WORK="${TMPDIR:-/tmp}/cmc-trip"
OUT="${OUT:-$WORK-out}"
mkdir -p "$OUT" "$WORK"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader || true
# shellcheck disable=SC2086  # TRIP_EXTRA: more flags of the recipe, e.g. for a CPU dry run
python -m cmc.training.recipes.trip train --packs runs/trip-packs --base cmc/default_model \
    --out "$WORK" --seconds "$SECONDS_BUDGET" --context-loss-weight "$WEIGHT" ${TRIP_EXTRA:-} \
    2>&1 | tee "$WORK/trip.log"
cp "$WORK"/model/*.safetensors "$OUT"/
small=(model run/metrics.jsonl run.log trip.log)
[ -f "$WORK/probe.log" ] && small+=(probe.log)
tar -cf "$OUT/trip-small.tar" -C "$WORK" --exclude='*.safetensors' "${small[@]}"
ls -la "$OUT"
