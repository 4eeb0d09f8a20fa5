#!/usr/bin/env bash
# Sets up (if needed) and runs the main job on the shipped example: ML/MM MD of T4 lysozyme L99A
# with p-xylene (the ML region) in TIP3P water, electrostatic embedding with PME. Until a trained
# model ships, the ML region is described by its force-field charges behind the model interface
# (--model fixed-charge). Extra arguments go to `mlpolar md`; running again resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/mlpolar md --model fixed-charge --steps 20 --equilibration-steps 0 \
    --report-interval 5 --checkpoint-interval 10 --output runs/example_md "$@"
