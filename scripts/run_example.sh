#!/usr/bin/env bash
# Sets up (if needed) and runs the shipped example.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python examples/water_box_electrostatics.py "$@"
