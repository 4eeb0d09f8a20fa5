#!/bin/bash
# Grow the T4L99A pocket train set in pieces of 5 frames (MD 5 frames, then label them).
# The test set (100) and the first two train pieces (t4l99a_pocket_train.yaml and _b.yaml, 20
# each) are complete; their trajectories were caches and are gone, so new train frames come from a
# third trajectory with its own seed and store (t4l99a_pocket_train_c.yaml, 260 more).
# Resumable within a checkout: re-run this script (data/traj/ must still be there).
# Stop: kill the process group of this script (run it with setsid; its PID is in
# data/labels/continue_pocket.pid):  kill -- -$(cat data/labels/continue_pocket.pid)
cd "$(dirname "$0")/../.."
echo $$ > data/labels/continue_pocket.pid
source .venv/bin/activate
export PYTHONPATH=python
for n in $(seq 5 5 260); do
  nice -n 10 python -m mlpolar.data.generate --config data/configs/t4l99a_pocket_train_c.yaml \
      --n-frames "$n" --no-progress || echo "[continue] some configurations failed (n_frames=$n; re-run retries them)"
done
