#!/usr/bin/env bash
# scripts/device_check.sh OUTDIR [--quick] [--cpu] [--only STEP,...] [--timeout STEP=SECONDS] [--timeout-scale F]
#
# One check of the project's CUDA code paths (issue 16), under 8 minutes on one H100 / H200: the CUDA tests,
# `isr bench` (default config and ResNet-50 at 30 instances, fp32 / fp16 / bf16, with the naive baseline), a real
# CUDA out-of-memory recovery, GPU memory freed on release / lifecycle deactivate, and a `isr train --amp` smoke.
# Each step runs in its own process with its own timeout; every step runs and is reported, whatever failed before.
# Writes OUTDIR/device_check.json, device_check.md and device_check.log (the steps: scripts/device_check.py).
# Without CUDA it says so and makes a CPU dry run of the same steps (a few minutes; --quick: about one).
#
#   here (no GPU):            nice -n 19 bash scripts/device_check.sh /tmp/check
#   a GPU machine, set up:    make setup && bash scripts/device_check.sh check
#   through the device tool:  run(command="bash scripts/device_check.sh $OUT/check", timeout_s=560,
#                                 carry=[".venv", "install", "build"])   -- only if those fit its 64 MiB carry limit
#     They do not today: .venv holds torch, Open3D, PyBullet and the ROS 2 wheels (about 7 GB). Without .venv the
#     script falls back to the machine's python3 (it has torch with CUDA) with the package from the source tree, and
#     names what is missing: there the steps that need Open3D (the pipeline), PyBullet (isr bench's frame, isr synth)
#     or ROS 2 (messages, the node) fail with the module named. Small missing wheels can travel in .whl/ (see the
#     device tool's README): they are installed to /tmp/isr_site first. The 3 files come back from $OUT/check.
#
# Exit status: 0 nothing failed (also a CPU dry run where nothing failed), 1 a step failed, 2 bad arguments.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root" || exit 2
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
  echo "usage: scripts/device_check.sh OUTDIR [--quick] [--cpu] [--only STEP,...] [--timeout STEP=SECONDS]" >&2
  exit 2
fi

if [ -x .venv/bin/python ] && [ -d install ]; then
  # shellcheck source=/dev/null
  source ./env.sh
  py=python
  export ISR_DEVICE_CHECK_SETUP="project environment (.venv, install/)"
elif [ -x .venv/bin/python ]; then
  echo "device_check: install/ is missing (the colcon build of the messages): run 'make setup'." \
    "Continuing; the steps that need the ROS 2 messages will fail." >&2
  # shellcheck source=/dev/null
  source ./env.sh
  py=python
  export ISR_DEVICE_CHECK_SETUP=".venv without install/ (run make setup)"
else
  echo "device_check: not set up: .venv/ is missing. Run 'make setup' (needs the network), then run this again." >&2
  echo "device_check: falling back to $(command -v python3) with the package from the source tree." >&2
  if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/isr_site \
      .whl/*.whl && export PYTHONPATH="/tmp/isr_site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  export PYTHONPATH="$root/instance_seg_ros${PYTHONPATH:+:$PYTHONPATH}"
  py=python3
  export ISR_DEVICE_CHECK_SETUP="no .venv: fell back to $(command -v python3) (run make setup for the full check)"
fi
export PYTHONUNBUFFERED=1
exec "$py" scripts/device_check.py "$@"
