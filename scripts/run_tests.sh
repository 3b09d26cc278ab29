#!/usr/bin/env bash
# Installs dependencies, builds, runs the whole test suite (CPU; GPU tests skip without a GPU), then
# the fuzz targets for a bounded time (scripts/fuzz.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
scripts/build.sh
(cd "${CADRE_BUILD_DIR:-build}" && ctest --output-on-failure -j "${CADRE_TEST_JOBS:-2}")
# libFuzzer targets under ASan+UBSan, CADRE_FUZZ_SECONDS each (default 45; 0 skips them).
fuzz_seconds=${CADRE_FUZZ_SECONDS:-45}
if [ "$fuzz_seconds" != 0 ]; then
  scripts/fuzz.sh "$fuzz_seconds"
fi
