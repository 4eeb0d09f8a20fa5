#!/usr/bin/env bash
# Sets up (if needed) and runs the main job on the shipped example: ML/MM MD of T4 lysozyme L99A
# with p-xylene (the ML region, the shipped model) in TIP3P water, electrostatic embedding with
# PME. A short run that fits a CPU (minimisation with the MM System, then 20 steps); extra
# arguments go to `mlpolar md` (e.g. --steps 50000 --platform CUDA); running again resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/mlpolar md --steps 20 --equilibration-steps 0 \
    --report-interval 5 --checkpoint-interval 10 --output runs/example_md "$@"
