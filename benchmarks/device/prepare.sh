#!/usr/bin/env bash
# Build the device kit (.device/p1 ... pN) here, online; see benchmarks/device/README.md.
# Environment: DEVICE_PY (3.12), DEVICE_DIR (.device), FACEENGINE_SHARED (../shared), DEVICE_LIMIT_MB (64).
set -euo pipefail
exec python3 "$(dirname "$0")/prepare.py" "$@"
