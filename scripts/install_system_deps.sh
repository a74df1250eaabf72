#!/usr/bin/env bash
# Debian packages the Python wheels need at run time (idempotent; needs root or sudo).
#   libusb-1.0-0: open3d-cpu's shared library links against it.
set -euo pipefail
pkgs=(libusb-1.0-0)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing Debian packages: ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
