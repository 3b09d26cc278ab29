#!/usr/bin/env bash
# The split kernels' forward prefix chunk length on the GPU machine: `bench kernel` shard rows
# (128-512-query shards against prefixes spread over 128K, beside whole documents of equal work)
# for cudnn-split at chunk lengths CADRE_SWEEP_CHUNKS ("32768 8192"; prefix_chunks.h), then `auto`
# as training runs it, at head dims CADRE_SWEEP_DIMS ("64 128"), 512K key rows at most (7 shards
# of 128 queries; CADRE_SWEEP_2M=1 adds 2M: 31). CADRE_SWEEP_VARIANTS adds cudnn-split rows at
# 32K chunks: "serial" (its diagonal call before the prefix call rather than beside it,
# CADRE_SPLIT_SERIAL), "batch-order" (prefix chunks in batch order, not longest first,
# CADRE_SPLIT_KEEP_ORDER).
# Writes benchmarks/results/<gpu>_chunk_sweep.txt.
#   scripts/gpu_chunk_sweep.sh [BUILD_DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-gpu-check}
source scripts/gpu_names.sh
gpu=${gpu_slug}x1
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
  for variant in ${CADRE_SWEEP_VARIANTS:-}; do
    case "$variant" in
      serial) row "d $d cudnn-split chunk 32768 cap 512K, diagonal call serial" \
                CADRE_SPLIT_SERIAL=1 --head-dim "$d" --kernel cudnn-split \
                --prefix-chunk-keys 32768 --kv-rows-cap 524288 ;;
      batch-order) row "d $d cudnn-split chunk 32768 cap 512K, chunks in batch order" \
                     CADRE_SPLIT_KEEP_ORDER=1 --head-dim "$d" --kernel cudnn-split \
                     --prefix-chunk-keys 32768 --kv-rows-cap 524288 ;;
      *) echo "gpu_chunk_sweep: unknown variant '$variant'; accepted: serial batch-order" ;;
    esac
  done
  row "d $d auto cap 512K" - --head-dim "$d" --kernel auto --kv-rows-cap 524288
  if [ -n "${CADRE_SWEEP_2M:-}" ]; then
    row "d $d auto cap 2M" - --head-dim "$d" --kernel auto --kv-rows-cap 2097152
  fi
done
