#!/bin/bash
# Grow the p-xylene/water production set in pieces of 20 frames (MD 20 frames, then label them),
# up to 700. Resumable: re-run this script.
# Stop: kill the process group of this script (run it with setsid; its PID, which is the group id,
# is in data/labels/continue_pxylene_water.pid):  kill -- -$(cat data/labels/continue_pxylene_water.pid)
# Killing by process name would also hit the Dask workers of other labelling jobs.
cd "$(dirname "$0")/../.."
echo $$ > data/labels/continue_pxylene_water.pid
source .venv/bin/activate
export PYTHONPATH=python
for n in $(seq 40 20 700); do
  nice -n 10 python -m mlpolar.data.generate --config data/configs/pxylene_water_production.yaml \
      --n-frames "$n" --no-progress || echo "[continue] some configurations failed at n_frames=$n (re-run retries them)"
done
