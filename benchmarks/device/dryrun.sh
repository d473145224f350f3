#!/usr/bin/env bash
# Rehearse the device calls here, on the CPU: a copy of the working tree as the run tool makes it (tracked and
# untracked-not-ignored files only: no .git, no .venv, no engine/_proto, no ../shared beside it), one call per
# part with only that part carried, the same command each time, DEVICE_QUICK=1 (tiny sizes; the GPU steps run
# on the CPU provider). PYTHON must be an interpreter that looks like the device image (numpy, opencv, onnx,
# onnxruntime, pillow, matplotlib, msgpack, pyyaml, requests, click, filelock, attrs, aiohttp and nothing of
# the engine's own dependencies); KIT a kit prepared for its Python version, e.g.
#   DEVICE_PY=3.11 DEVICE_DIR=$PWD/.device-py311 bash benchmarks/device/prepare.sh
#   KIT=$PWD/.device-py311 PYTHON=/tmp/devsim/bin/python bash benchmarks/device/dryrun.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
KIT=${KIT:-$ROOT/.device}
PYTHON=${PYTHON:?set PYTHON to an interpreter that looks like the device image}
WORK=${DRYRUN_DIR:-$(mktemp -d /tmp/fe-dryrun-XXXX)}
mkdir -p "$WORK/repo"
(cd "$ROOT" && git ls-files -z -co --exclude-standard | xargs -0 -I{} cp --parents {} "$WORK/repo/")
parts=$(ls -d "$KIT"/p[0-9]* | sort -V)
start=$(date +%s)
for part in $parts; do
  name=$(basename "$part")
  mkdir -p "$WORK/repo/.device" "$WORK/out-$name"
  cp -al "$part" "$WORK/repo/.device/$name" 2>/dev/null || cp -a "$part" "$WORK/repo/.device/$name"
  t=$(date +%s)
  echo "=== call with carry .device/$name"
  rc=0
  (cd "$WORK/repo" && OUT="$WORK/out-$name" DEVICE_QUICK=1 PYTHON="$PYTHON" timeout 600 bash benchmarks/device/run.sh) \
    || rc=$?
  echo "=== call $name: rc $rc in $(( $(date +%s) - t )) s; back: $(ls "$WORK/out-$name" | tr '\n' ' ')"
done
echo "=== dry run: $(( $(date +%s) - start )) s in all; results in $WORK/out-*"
