#!/bin/bash
# Grow the T4L99A pocket sets in pieces of 20 frames (MD 20 frames, then label them): first the
# test set (100, its own trajectory), then the train set (300). Resumable: re-run this script.
# Stop: kill the process group of this script (its PID is in data/labels/continue_pocket.pid).
cd "$(dirname "$0")/../.."
echo $$ > data/labels/continue_pocket.pid
source .venv/bin/activate
export PYTHONPATH=python
for set in test:100 train:300; do
  name=${set%%:*}; total=${set##*:}
  for n in $(seq 20 20 "$total"); do
    nice -n 10 python -m mlpolar.data.generate --config "data/configs/t4l99a_pocket_$name.yaml" \
        --n-frames "$n" --no-progress || echo "[continue] some configurations failed ($name, n_frames=$n; re-run retries them)"
  done
done
