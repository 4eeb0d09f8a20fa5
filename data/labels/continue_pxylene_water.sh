#!/bin/bash
# Grow the p-xylene/water production set in pieces of 20 frames (MD 20 frames, then label them),
# up to 700. Resumable: re-run this script. Stop: kill the PID written to continue.pid.
cd "$(dirname "$0")/../.."
source .venv/bin/activate
export PYTHONPATH=python
for n in $(seq 40 20 700); do
  nice -n 10 python -m mlpolar.data.generate --config data/configs/pxylene_water_production.yaml \
      --n-frames "$n" --no-progress || echo "[continue] some configurations failed at n_frames=$n (re-run retries them)"
done
