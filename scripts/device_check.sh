#!/usr/bin/env bash
# The GPU checks in one device call (docs/device.md). Runs ON the device machine:
#   build the CUDA kernels against its torch (sm_90), run every CUDA test, run the GPU benchmarks.
# Usage (device tool):  run(command="bash scripts/device_check.sh [all|tests|bench]",
#                           carry=[".whl"], timeout_s=590)
# Each step has its own time limit so that one slow step cannot take the others' results with
# it. $OUT gets at most 7 files (the tool returns 8): log.txt (every step's output), tests.xml,
# embedding_cuda.csv, electrostatics_23k_cuda.csv, electrostatics_cuda.csv, model_cuda.csv,
# electrostatics_cuda.png.
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-all}
OUT=${OUT:-$PWD/device_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
t0=$SECONDS
LOG=$OUT/log.txt
step() { echo "== $1 ($((SECONDS - t0)) s)" | tee -a "$LOG"; }

if ls .whl/*.whl >/dev/null 2>&1; then
  step "wheels"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/python${PYTHONPATH:+:$PYTHONPATH}

step "machine"
{ nvidia-smi; nproc; python3 -c "import torch; print('torch', torch.__version__, 'cuda',
torch.version.cuda, torch.cuda.get_device_name())"; } >> "$LOG" 2>&1
tail -2 "$LOG"

step "build (sm_90)"
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} MLPOLAR_CUDA_ARCH=${MLPOLAR_CUDA_ARCH:-90}
export MLPOLAR_BUILD_JOBS=$(nproc)
if ! timeout 300 python3 -m pip install -q --no-index --no-build-isolation --no-deps -e . \
     >> "$LOG" 2>&1; then
  echo "BUILD FAILED"; tail -40 "$LOG"; exit 1
fi
python3 -c "import mlpolar; print('library', mlpolar.library_path(), 'cuda kernels',
mlpolar.cuda_available())" 2>&1 | tee -a "$LOG"

if [ "$MODE" = all ] || [ "$MODE" = tests ]; then
  step "CUDA tests"
  # the device-parametrised tests have 'cuda' in their ids; test_build checks the registration
  timeout 240 python3 -m pytest -q -p no:cacheprovider -k "cuda or registered" \
    --junitxml="$OUT/tests.xml" tests/test_build.py tests/test_ops.py \
    tests/electrostatics tests/model > "$OUT/tests.log" 2>&1
  rc=$?; cat "$OUT/tests.log" >> "$LOG"; rm "$OUT/tests.log"
  echo "pytest exit $rc" | tee -a "$LOG"; grep -E "passed|failed|error" "$LOG" | tail -3
fi

if [ "$MODE" = all ] || [ "$MODE" = bench ]; then
  step "benchmarks"
  # issue 3's H100 target: 50 ML sites in 25k MM charges, forward + backward < 50 us
  timeout 90 python3 benchmarks/embedding.py --device cuda --n-ml 20,50,200 --n-mm 5000,25000,100000 \
    --methods mlpolar-f32,mlpolar-f64,mlpolar-ewald-f64,torch-f64 --repeats 20 \
    --out "$OUT/embedding_cuda.csv" >> "$LOG" 2>&1
  echo "embedding exit $?" | tee -a "$LOG"
  # the electrostatics target: 23.5k atoms (a solvated protein-ligand box), energy + forces
  # under 1 ms on an H100. Its own short run, before the broad comparison: the script writes its
  # CSV only at the end, so a timeout there cannot take this row with it. Charges only, OpenMM
  # (CUDA) alongside; above 10000 atoms the accuracy reference is mlpolar-f64 at tolerance 1e-7
  # on the GPU (OpenMM's single-threaded Reference platform would take most of the step). About 4
  # fresh processes of a few seconds each. 100000 atoms is left out: 4 more processes and a 730^3
  # float64 reference grid would add about a minute to a call whose step limits already exceed
  # its 590 s.
  timeout 75 python3 benchmarks/electrostatics.py --device cuda --sizes 23500 --cases charges \
    --methods mlpolar-f32,mlpolar-f64,openmm --ref-max-n charges=10000 --repeats 20 --min-time 0.2 \
    --csv "$OUT/electrostatics_23k_cuda.csv" --png "" >> "$LOG" 2>&1
  echo "electrostatics 23.5k exit $?" | tee -a "$LOG"
  timeout 120 python3 benchmarks/electrostatics.py --device cuda --sizes 1000,10000,30000 \
    --peers openmm,torchpme --repeats 5 --min-time 0.2 --csv "$OUT/electrostatics_cuda.csv" \
    --png "$OUT/electrostatics_cuda.png" >> "$LOG" 2>&1
  echo "electrostatics exit $?" | tee -a "$LOG"
  timeout 90 python3 benchmarks/model.py --device cuda --sizes 20 50 200 --mm 0 25000 \
    --no-polarmace --out "$OUT" >> "$LOG" 2>&1
  echo "model exit $?" | tee -a "$LOG"
fi
step "done"
