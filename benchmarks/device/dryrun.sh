#!/usr/bin/env bash
# Rehearse the device calls here, on the CPU, and check they fit the device's 8 minutes.
#
# Each call gets a fresh copy of the working tree in a NEW folder (tracked and untracked-not-ignored files only:
# no .git, no .venv, no engine/_proto, no ../shared beside it), as the run tool may lay it out, with only that
# call's part carried; the stash lives outside every copy (DEVICE_STASH, like /tmp on the device), so only what
# run.py put there survives between calls. Same command each time, DEVICE_QUICK=1 (tiny sizes; the GPU steps
# run on the CPU provider). At the end the device-time ledger (machine start charged once + every call's wall
# time + transfers) must be within DEVICE_TOTAL_S (480 s): "simulated device time" below; exit 1 if not, or if
# a call failed.
#
#   KIT: a kit (default <repo>/.device); PYTHON: the interpreter the calls use. Two ways:
#   - the real kit on a Python that looks like the device image (README.md, "Rehearsal here"):
#       DEVICE_PY=3.11 DEVICE_DIR=$PWD/.device-py311 bash benchmarks/device/prepare.sh
#       KIT=$PWD/.device-py311 PYTHON=/tmp/devsim/bin/python bash benchmarks/device/dryrun.sh
#   - offline, on this checkout's own Python (what tests/test_device_kit.py runs, with DEVICE_STEPS=e2e-cuda):
#       DEVICE_OFFLINE=1 DEVICE_DIR=/tmp/kit-offline bash benchmarks/device/prepare.sh
#       KIT=/tmp/kit-offline PYTHON=.venv/bin/python bash benchmarks/device/dryrun.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
KIT=${KIT:-$ROOT/.device}
PYTHON=${PYTHON:?set PYTHON to the interpreter the calls should use}
WORK=${DRYRUN_DIR:-$(mktemp -d /tmp/fe-dryrun-XXXX)}
export DEVICE_STASH=${DEVICE_STASH:-$WORK/device-tmp/faceengine-device/stash}
export DEVICE_QUICK=${DEVICE_QUICK:-1}
TOTAL=${DEVICE_TOTAL_S:-480}
parts=$(ls -d "$KIT"/p[0-9]* | sort -V)
start=$(date +%s)
failed=0
n=0
for part in $parts; do
  n=$((n + 1))
  name=$(basename "$part")
  rm -rf "$WORK"/repo-*  # the last call's tree is gone, as when the tool lays the repository out elsewhere
  repo="$WORK/repo-$n"
  mkdir -p "$repo/.device" "$WORK/out-$name"
  (cd "$ROOT" && git ls-files -z -co --exclude-standard | tar --null -T - --ignore-failed-read -cf - 2>/dev/null) \
    | tar -xf - -C "$repo"
  cp -al "$part" "$repo/.device/$name" 2>/dev/null || cp -a "$part" "$repo/.device/$name"
  t=$(date +%s)
  echo "=== call $n in $repo with carry .device/$name"
  rc=0
  (cd "$repo" && OUT="$WORK/out-$name" PYTHON="$PYTHON" timeout 600 bash benchmarks/device/run.sh) || rc=$?
  [ "$rc" -eq 0 ] || failed=1
  echo "=== call $name: rc $rc in $(( $(date +%s) - t )) s; back: $(ls "$WORK/out-$name" | tr '\n' ' ')"
done
rm -rf "$WORK"/repo-*
simulated=$("$PYTHON" - "$DEVICE_STASH/ledger.json" "${DEVICE_CALL_OVERHEAD_S:-10}" <<'EOF'
import json, sys
led = json.load(open(sys.argv[1]))
print(round(led["start_s"] + sum(c["wall_s"] + float(sys.argv[2]) for c in led["calls"])))
EOF
)
echo "=== dry run: $(( $(date +%s) - start )) s wall, $n calls; simulated device time ${simulated} s of ${TOTAL} s" \
     "(machine start + calls + transfers); results in $WORK/out-*"
for marker in "$DEVICE_STASH"/done/*; do  # every step that ran: rc 0 (or skipped, saying why)
  [ -e "$marker" ] || continue
  state=$(cat "$marker")
  echo "=== step $(basename "$marker"): $state"
  case "$state" in 0|skipped*) ;; *) failed=1 ;; esac
done
if [ "$simulated" -gt "${TOTAL%.*}" ]; then
  echo "=== OVER the device budget"
  failed=1
fi
exit $failed
