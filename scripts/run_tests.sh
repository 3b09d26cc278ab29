#!/usr/bin/env bash
# Installs dependencies, builds, runs the fuzz targets for a bounded time (scripts/fuzz.sh), then the
# whole test suite (CPU; GPU tests skip without a GPU), whose summary closes the output.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
scripts/build.sh
# libFuzzer targets under ASan+UBSan, CADRE_FUZZ_SECONDS each (default 45; 0 skips them).
fuzz_seconds=${CADRE_FUZZ_SECONDS:-45}
if [ "$fuzz_seconds" != 0 ]; then
  scripts/fuzz.sh "$fuzz_seconds"
fi
cd "${CADRE_BUILD_DIR:-build}"
ctest --output-on-failure -j "${CADRE_TEST_JOBS:-2}"
