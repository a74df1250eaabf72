#!/usr/bin/env bash
# The ROS 2 wheels' exported CMake targets name include dirs of the machine that built them
# (/opt/python/cp311-cp311/...). CMake refuses missing paths, so point them at this venv's
# Python include dir and numpy's include dir. Idempotent.
set -euo pipefail
venv="${1:?usage: fix_wheel_cmake.sh VENV}"
py="$venv/bin/python"
py_inc="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
np_inc="$("$py" -c 'import numpy; print(numpy.get_include())')"
mapfile -t files < <(grep -l "/opt/python/cp311-cp311" "$venv"/share/*/cmake/*.cmake 2>/dev/null || true)
for f in "${files[@]}"; do
  sed -i \
    -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#${np_inc}#g" \
    -e "s#/opt/python/cp311-cp311/include/python3.11#${py_inc}#g" \
    "$f"
done
left=$( (grep -l "/opt/python/cp311-cp311" "$venv"/share/*/cmake/*.cmake 2>/dev/null || true) | wc -l)
echo "fix_wheel_cmake: rewrote ${#files[@]} file(s), ${left} still name /opt/python"
[ "$left" -eq 0 ]
