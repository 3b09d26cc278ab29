#!/usr/bin/env bash
# Installs Cadre's build dependencies from the OS package manager (Debian 12 / Ubuntu 24.04 names).
# Idempotent and quiet when everything is already there.
set -euo pipefail
# clang + libclang-rt-dev: the libFuzzer/sanitizer builds (scripts/fuzz.sh); iproute2 + util-linux
# (ip, unshare): the multi-node test's network namespaces (scripts/multinode_test.sh).
packages=(cmake g++ make libtorch-dev libopenmpi-dev openmpi-bin libprotobuf-dev protobuf-compiler
          libgtest-dev libbenchmark-dev nlohmann-json3-dev librsvg2-bin
          clang libclang-rt-dev iproute2 util-linux)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "install_deps: installing ${missing[*]}"
sudo_cmd=""
if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$sudo_cmd apt-get update -qq
$sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
