#!/usr/bin/env bash
# Configures and builds Cadre (CPU build unless a CUDA LibTorch and NCCL are found) into build/.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${CADRE_BUILD_DIR:-build}
jobs=${CADRE_JOBS:-$(nproc)}
cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build "$build_dir" -j "$jobs"
