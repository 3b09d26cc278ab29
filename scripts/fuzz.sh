#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/) with clang, AddressSanitizer and UndefinedBehaviorSanitizer
# into build-fuzz/, and runs each for a fixed time from its committed seed corpus (fuzz/corpus/).
# A crash, a sanitizer report, a leak, a timeout or an accepted invalid input (the targets abort)
# fails the script; the input that did it is kept under build-fuzz/artifacts/.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET ...]     (default: 45 s; every target)
#   CADRE_FUZZ_BUILD_DIR (build-fuzz), CADRE_JOBS (nproc)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-45}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(fuzz_config fuzz_plan fuzz_checkpoint fuzz_token_file)
build_dir=${CADRE_FUZZ_BUILD_DIR:-build-fuzz}
jobs=${CADRE_JOBS:-$(nproc)}
command -v clang++ >/dev/null || { echo "fuzz: clang++ not found (scripts/install_deps.sh installs clang)"; exit 1; }

start=$(date +%s)
flags="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fsanitize=fuzzer-no-link -fno-omit-frame-pointer -g"
cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_CXX_FLAGS="$flags" -DCADRE_FUZZ=ON \
  -DCADRE_BUILD_TESTS=OFF -DCADRE_BUILD_BENCHMARKS=OFF -DCADRE_GPU=OFF >/dev/null
cmake --build "$build_dir" --target "${targets[@]}" -j "$jobs" >"$build_dir/fuzz_build.log" 2>&1 ||
  { tail -50 "$build_dir/fuzz_build.log"; echo "fuzz: build failed"; exit 1; }
built=$(date +%s)
echo "fuzz: built ${targets[*]} in $((built - start)) s"

artifacts=$build_dir/artifacts
scratch=$(mktemp -d "${TMPDIR:-/tmp}/cadre_fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$artifacts"
export CADRE_FUZZ_SCRATCH=$scratch
# Leaks count as failures; UBSan stops at the first report with a stack.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
failed=()
for t in "${targets[@]}"; do
  seeds=fuzz/corpus/${t#fuzz_}
  [ -d "$seeds" ] || { echo "fuzz: no seed corpus $seeds"; exit 1; }
  work=$scratch/corpus_$t
  mkdir -p "$work"
  log=$build_dir/$t.log
  echo "fuzz: $t for $seconds s from $(ls "$seeds" | wc -l) seeds"
  # New inputs go to a scratch corpus: the committed one changes only by hand.
  if "$build_dir/fuzz/$t" -max_total_time="$seconds" -timeout=20 -rss_limit_mb=2560 -max_len=65536 \
       -print_final_stats=1 -artifact_prefix="$artifacts/$t-" "$work" "$seeds" >"$log" 2>&1; then
    grep -E "^stat::number_of_executed_units|^stat::new_units_added" "$log" | tr '\n' ' '
    echo "corpus $(ls "$work" | wc -l) inputs"
  else
    tail -60 "$log"
    echo "fuzz: $t FAILED (log $log; inputs in $artifacts)"
    failed+=("$t")
  fi
done
echo "fuzz: done in $(($(date +%s) - start)) s (build $((built - start)) s)"
[ ${#failed[@]} -eq 0 ] || { echo "fuzz: failed: ${failed[*]}"; exit 1; }
