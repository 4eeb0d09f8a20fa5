#!/usr/bin/env bash
# Before and after a device call (docs/device.md), on this machine.
#   bash scripts/device_prepare.sh            wheels into .whl/, label stores set aside, tree size
#   bash scripts/device_prepare.sh --restore  label stores back
# Why the stores: the device tool sends the working tree (tracked and untracked-not-ignored files)
# with a 64 MiB limit, and the committed QM/MM label stores alone are about 45 MB and growing.
# Files that are not there do not travel, so they wait in ../device_aside/ during the call.
set -euo pipefail
cd "$(dirname "$0")/.."
ASIDE=../device_aside
if [ "${1:-}" = "--restore" ]; then
  if [ -d "$ASIDE/labels" ]; then
    mv -n "$ASIDE"/labels/*.h5 data/labels/ && rmdir "$ASIDE/labels"
  fi
  git status --short data/labels
  echo "label stores restored"
  exit 0
fi
for pid in data/labels/*.pid; do
  [ -e "$pid" ] || continue
  if kill -0 -- "-$(cat "$pid")" 2>/dev/null; then
    echo "a labelling job ($pid) is running: it writes data/labels/*.h5; stop it first" >&2
    exit 1
  fi
done
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
# The device image has Python 3.12 and torch (cu130) but no OpenMM: carry OpenMM, its CUDA 13
# platform and torch-pme (a benchmark peer), the versions this project pins.
plat=""
for n in 17 24 27 28 31 34 35; do plat="$plat --platform manylinux_2_${n}_x86_64"; done
have() { ls .whl/"$1"-*.whl >/dev/null 2>&1; }
for spec in openmm==8.6.1 openmm-cuda-13==8.6.1 torch-pme==0.5.0; do
  name=${spec%%==*}
  have "${name//-/_}" || have "$name" || \
    .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp $plat -d .whl "$spec"
done
mkdir -p "$ASIDE/labels"
for f in data/labels/*.h5; do
  [ -e "$f" ] && mv "$f" "$ASIDE/labels/"
done
size=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | \
        xargs -0 -I{} sh -c 'test -f "{}" && stat -c %s "{}"' | awk '{s+=$1} END {print s}')
whl=$(du -cb .whl/*.whl | tail -1 | cut -f1)
echo "travelling: working tree $((size / 1048576)) MiB + .whl $((whl / 1048576)) MiB (limit 64 MiB)"
echo "label stores are in $ASIDE/labels until: bash scripts/device_prepare.sh --restore"
