#!/bin/bash
# Grow a label store in pieces: MD to K frames, label them, K += STEP, up to LAST.
# Usage (from anywhere; run with setsid so that the job is its own process group):
#   setsid bash data/labels/grow_store.sh data/configs/NAME.yaml STEP LAST > data/labels/NAME.log 2>&1 &
# The group id is written to data/labels/NAME.pid. Resumable: run it again.
# Stop:  kill -- -$(cat data/labels/NAME.pid)
# Pause/resume (nice does not yield under autogroup): kill -STOP / -CONT -- -$(cat data/labels/NAME.pid)
set -u
config=$1 step=$2 last=$3
cd "$(dirname "$0")/../.."
name=$(basename "$config" .yaml)
echo $$ > "data/labels/$name.pid"
source .venv/bin/activate
export PYTHONPATH=python
for n in $(seq "$step" "$step" "$last"); do
  python -m mlpolar.data.generate --config "$config" --n-frames "$n" --no-progress \
    || echo "[grow_store] some configurations failed at n_frames=$n (re-run retries them)"
done
