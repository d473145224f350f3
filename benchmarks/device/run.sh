#!/usr/bin/env bash
# Device side of the kit: run on the GPU machine from the repository root, the same command in every call
# (only `carry` changes: .device/p1, then p2, ...). See benchmarks/device/README.md.
set -uo pipefail
export PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" "$(dirname "$0")/run.py" "$@"
