#!/usr/bin/env bash
# The CPU test suite built with AddressSanitizer + UndefinedBehaviorSanitizer (g++) into
# build-asan/, then run (not in CI: it doubles the build time; docs/reliability.md has the numbers).
# LeakSanitizer is off: Open MPI and its components leak by design at exit (thousands of small
# allocations in libopen-pal, hwloc and dlopened components), which would fail every MPI test.
#
#   scripts/sanitize_tests.sh [ctest options]      e.g. -R cadre_runtime
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${CADRE_ASAN_BUILD_DIR:-build-asan}
flags="-fsanitize=address,undefined -fno-omit-frame-pointer"
cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS="$flags" \
  -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" -DCADRE_BUILD_BENCHMARKS=OFF \
  -DCADRE_GPU=OFF >/dev/null
cmake --build "$build_dir" -j "${CADRE_JOBS:-$(nproc)}"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
cd "$build_dir"
ctest --output-on-failure -j "${CADRE_TEST_JOBS:-2}" "$@"
