#!/usr/bin/env bash
# The GPU machine in as few device calls as possible: runs the named stages in order, each under
# its own time limit, and packs every result file they wrote (benchmarks/results/) into one
# archive under $OUT (the device tool returns few files; unpack it here with
# `tar -xzf results.tar.gz` in the repository root). A stage's build is reused by the next one
# while the machine stays warm (the build directory is git-ignored and kept between calls).
#
#   scripts/gpu_session.sh check            scripts/gpu_check.sh (quick benches): build, every
#                                           test, bench kernel, Hugging Face parity
#   scripts/gpu_session.sh train1           scripts/gpu_train_bench.sh, 1-GPU cells
#   scripts/gpu_session.sh parallel         scripts/gpu_parallel_bench.sh (dry at 1 GPU)
#   scripts/gpu_session.sh profile          scripts/gpu_profile_bench.sh (simulator profiles)
#   scripts/gpu_session.sh mla              scripts/gpu_mla_bench.sh (latent attention cells)
#   scripts/gpu_session.sh check train1 ... several, in order
#   CADRE_STAGE_LIMIT_S=300                 per-stage limit (default 560)
set -uo pipefail
cd "$(dirname "$0")/.."
build=${CADRE_BUILD_DIR:-build-gpu-check}
limit=${CADRE_STAGE_LIMIT_S:-560}
stamp=$(mktemp)
rc=0
for stage in "$@"; do
  echo "== stage $stage ($(date -u +%T))"
  case "$stage" in
    check) CADRE_BENCH_QUICK=1 timeout "$limit" scripts/gpu_check.sh ;;
    train1) CADRE_TRAIN_ONLY_GPUS=1 CADRE_TRAIN_QUICK=${CADRE_TRAIN_QUICK:-} \
              timeout "$limit" scripts/gpu_train_bench.sh "$build" ;;
    parallel) timeout "$limit" scripts/gpu_parallel_bench.sh "$build" ;;
    profile) timeout "$limit" scripts/gpu_profile_bench.sh "$build" ;;
    mla) timeout "$limit" scripts/gpu_mla_bench.sh "$build" ;;
    *) echo "gpu_session: unknown stage '$stage'; accepted: check train1 parallel profile mla"
       rc=2; continue ;;
  esac
  stage_rc=$?
  echo "== stage $stage rc=$stage_rc ($(date -u +%T))"
  [ $stage_rc -eq 0 ] || rc=$stage_rc
done
if [ -n "${OUT:-}" ]; then
  find benchmarks/results docs -newer "$stamp" -type f -print0 |
    tar -czf "$OUT/results.tar.gz" --null -T -
  tar -tzf "$OUT/results.tar.gz" | sed 's/^/   returned: /'
fi
rm -f "$stamp"
exit $rc
