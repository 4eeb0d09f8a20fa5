#!/bin/bash
# Grow the flexible-ligand p-xylene/water set (data/configs/pxylene_water_flex.yaml) in pieces of
# 20 frames (MD 20 frames, then label them), up to 300. Resumable: re-run this script.
# Run with setsid; stop: kill -- -$(cat data/labels/continue_pxylene_water_flex.pid)
# Pause/resume (nice does not yield under autogroup): kill -STOP / -CONT -- -$(cat ...pid)
cd "$(dirname "$0")/../.."
echo $$ > data/labels/continue_pxylene_water_flex.pid
source .venv/bin/activate
export PYTHONPATH=python
for n in $(seq 20 20 300); do
  python -m mlpolar.data.generate --config data/configs/pxylene_water_flex.yaml \
      --n-frames "$n" --no-progress || echo "[continue] some configurations failed at n_frames=$n (re-run retries them)"
done
