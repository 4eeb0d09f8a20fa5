#!/bin/bash
# Grow the T4L99A pocket train set in pieces of 10 frames (MD 10 frames, then label them).
# The test set (100) and the first train piece (20, t4l99a_pocket_train.yaml) are complete; their
# trajectories were caches and are gone, so new train frames come from a second trajectory with
# its own seed and store (t4l99a_pocket_train_b.yaml, 280 more). Resumable: re-run this script.
# Stop: kill the process group of this script (run it with setsid; its PID is in
# data/labels/continue_pocket.pid):  kill -- -$(cat data/labels/continue_pocket.pid)
cd "$(dirname "$0")/../.."
echo $$ > data/labels/continue_pocket.pid
source .venv/bin/activate
export PYTHONPATH=python
for n in $(seq 10 10 280); do
  nice -n 10 python -m mlpolar.data.generate --config data/configs/t4l99a_pocket_train_b.yaml \
      --n-frames "$n" --no-progress || echo "[continue] some configurations failed (n_frames=$n; re-run retries them)"
done
