#!/usr/bin/env bash
# The split kernels' forward prefix chunk length on the GPU machine: `bench kernel` shard rows
# (128-512-query shards against prefixes spread over 128K, beside whole documents of equal work)
# for cudnn-split at chunk lengths CADRE_SWEEP_CHUNKS ("32768 8192"; prefix_chunks.h), then `auto`
# as training runs it, at head dims CADRE_SWEEP_DIMS ("64 128"), 512K key rows at most (7 shards
# of 128 queries; CADRE_SWEEP_2M=1 adds 2M: 31). Writes benchmarks/results/<gpu>_chunk_sweep.txt.
#   scripts/gpu_chunk_sweep.sh [BUILD_DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-gpu-check}
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr 'A-Z' 'a-z' |
      sed -e 's/nvidia//' -e 's/[^a-z0-9]//g')x1
out="benchmarks/results/${gpu}_chunk_sweep.txt"
: >"$out"
row() {  # label, environment (VAR=value or -), then bench arguments
  local label=$1 setting=$2
  shift 2
  [ "$setting" = - ] && setting=CADRE_NOTHING=
  echo "-- $label" | tee -a "$out"
  env "$setting" timeout 90 "$build/bin/cadre" bench kernel --no-calibration --repeats 5 --warmup 2 \
    --heads 32 --kv-heads 8 --shards 128,256,512 "$@" 2>&1 |
    grep -E '^ +(128|256|512) |graphs built|error' | tee -a "$out"
}
for d in ${CADRE_SWEEP_DIMS:-64 128}; do
  for chunk in ${CADRE_SWEEP_CHUNKS:-32768 8192}; do
    row "d $d cudnn-split chunk $chunk cap 512K" - --head-dim "$d" \
      --kernel cudnn-split --prefix-chunk-keys "$chunk" --kv-rows-cap 524288
  done
  row "d $d auto cap 512K" - --head-dim "$d" --kernel auto --kv-rows-cap 524288
  [ -n "${CADRE_SWEEP_2M:-}" ] &&
    row "d $d auto cap 2M" - --head-dim "$d" --kernel auto --kv-rows-cap 2097152
done
