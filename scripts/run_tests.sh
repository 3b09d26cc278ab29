#!/usr/bin/env bash
# Installs dependencies, builds, and runs the whole test suite (CPU; GPU tests skip without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
scripts/build.sh
cd "${CADRE_BUILD_DIR:-build}"
ctest --output-on-failure -j "${CADRE_TEST_JOBS:-2}"
