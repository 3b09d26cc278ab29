#!/usr/bin/env bash
# The GPU machine in as few device calls as possible: runs the named stages in order, each under
# its own time limit, and packs every result file they wrote (benchmarks/results/) into one
# archive under $OUT (the device tool returns few files; unpack it here with
# `tar -xzf results.tar.gz` in the repository root). A stage's build is reused by the next one
# while the machine stays warm (the build directory is git-ignored and kept between calls).
#
#   scripts/gpu_session.sh check            scripts/gpu_check.sh (quick benches): build, every
#                                           test, bench kernel, Hugging Face parity
#   scripts/gpu_session.sh build            configure and build the GPU configuration only
#   scripts/gpu_session.sh gputests         the GPU suites and the CPU suites that exercise the
#                                           GPU build's own code paths (training, tensor
#                                           parallelism, latent attention, the command line)
#   scripts/gpu_session.sh e2e              scripts/gpu_kernel_e2e.sh (kernels and fused ops
#                                           end to end, the HF peer)
#   scripts/gpu_session.sh gpuonly          the GPU suites alone (the first half of gputests)
#   scripts/gpu_session.sh fused            fused_ops_gpu_test alone
#   scripts/gpu_session.sh parity           scripts/hf_parity_check.sh (CADRE_PARITY_VARIANTS)
#   scripts/gpu_session.sh calgrid          `bench kernel --kernel auto` with its calibration
#                                           grid: the attention table of the kernel that runs,
#                                           at head dims CADRE_CALGRID_DIMS ("64 128")
#   scripts/gpu_session.sh compare          `bench kernel --compare-only` per cudnn setting
#                                           (CADRE_COMPARE_VARIANTS)
#   scripts/gpu_session.sh train1           scripts/gpu_train_bench.sh, 1-GPU cells
#   scripts/gpu_session.sh parallel         scripts/gpu_parallel_bench.sh (dry at 1 GPU)
#   scripts/gpu_session.sh profile          scripts/gpu_profile_bench.sh (simulator profiles)
#   scripts/gpu_session.sh mla              scripts/gpu_mla_bench.sh (latent attention cells)
#   scripts/gpu_session.sh chunks           scripts/gpu_chunk_sweep.sh (split prefix chunk length)
#   scripts/gpu_session.sh steady           scripts/gpu_steady_state.sh (new shape classes per step)
#   scripts/gpu_session.sh check train1 ... several, in order
#   CADRE_STAGE_LIMIT_S=300                 per-stage limit (default 560); STAGE:SECONDS (for
#                                           example profile:170) sets one stage's own
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu_names.sh
build=${CADRE_BUILD_DIR:-build-gpu-check}
stamp=$(mktemp)
rc=0
for arg in "$@"; do
  stage=${arg%%:*}
  limit=${CADRE_STAGE_LIMIT_S:-560}
  [ "$arg" != "$stage" ] && limit=${arg#*:}
  echo "== stage $stage, limit $limit s ($(date -u +%T))"
  case "$stage" in
    check) CADRE_BENCH_QUICK=1 timeout "$limit" scripts/gpu_check.sh ;;
    build)
      torch_prefix=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
      timeout "$limit" bash -c "cmake -S . -B '$build' -DCMAKE_BUILD_TYPE=Release -DCADRE_GPU=ON \
        -DCMAKE_PREFIX_PATH='$torch_prefix' >/dev/null && cmake --build '$build' -j $(nproc) 2>&1 |
        grep -E 'error|warning: unused|Error' ; exit \${PIPESTATUS[0]}" ;;
    gputests)
      timeout "$limit" bash -c "ctest --test-dir '$build' --output-on-failure -j 1 -R '_gpu_test' \
          -V 2>&1 | grep -E '^[0-9]+: \[|Test +#|tests passed|tests failed|Failure|Expected|Which is' ;
        ctest --test-dir '$build' --output-on-failure -j 8 \
          -R 'tensor_parallel|latent|launch_tests|runtime_tests|train_np' 2>&1 | tail -n 40" ;;
    gpuonly)
      timeout "$limit" bash -c "ctest --test-dir '$build' --output-on-failure -j 1 -R '_gpu_test' \
          -V 2>&1 | tee benchmarks/results/gpu_suites.log |
          grep -E 'Test +#|tests passed|tests failed|Failure|Expected|Which is|FAILED|graph cache'" ;;
    fused) timeout "$limit" ctest --test-dir "$build" -R fused_ops --output-on-failure |
             grep -E 'rms_norm.*cols 11264|tests passed|tests failed|Failure|actual' ;;
    e2e) timeout "$limit" scripts/gpu_kernel_e2e.sh "$build" ;;
    parity) CADRE_BUILD_DIR="$build" timeout "$limit" scripts/hf_parity_check.sh ;;
    calgrid)
      # One grid per head dim in CADRE_CALGRID_DIMS (default "64 128"), 32/8 heads; the stage's
      # limit is shared between them.
      timeout "$limit" bash -c '
        for d in ${CADRE_CALGRID_DIMS:-64 128}; do
          stem="benchmarks/results/$1_bench_kernel_auto_grid_d$d"
          "$0/bin/cadre" bench kernel --kernel auto --repeats 5 --warmup 2 \
            --heads 32 --kv-heads 8 --head-dim "$d" --kv-rows-cap 524288 --out "$stem.json" \
            --calibration-out "benchmarks/results/$1_auto_attention_calibration_d$d.json" \
            >"$stem.txt" 2>&1 || { tail -n 20 "$stem.txt"; exit 1; }
          tail -n 30 "$stem.txt"
        done' "$build" "${gpu_slug}x1" ;;
    compare)
      # cuDNN vs FlashAttention-2 on whole documents and packed steps, once per cudnn setting in
      # CADRE_COMPARE_VARIANTS (default: "default dense0 exact octave": CADRE_CUDNN_DENSE=0,
      # CADRE_CUDNN_BUCKET=exact|octave).
      for variant in ${CADRE_COMPARE_VARIANTS:-default dense0 exact octave}; do
        case "$variant" in
          default) env_set=() ;;
          dense0) env_set=(CADRE_CUDNN_DENSE=0) ;;
          exact|octave) env_set=(CADRE_CUDNN_BUCKET=$variant) ;;
          *) echo "gpu_session: unknown compare variant '$variant'"; continue ;;
        esac
        echo "-- compare $variant"
        env "${env_set[@]}" timeout "$limit" "$build/bin/cadre" bench kernel --compare-only \
          --repeats 5 --warmup 2 --out "benchmarks/results/${gpu_slug}x1_kernel_compare_$variant.json" \
          2>&1 | tee "benchmarks/results/${gpu_slug}x1_kernel_compare_$variant.txt" | grep -v '^$'
      done ;;
    train1) CADRE_TRAIN_ONLY_GPUS=1 CADRE_TRAIN_QUICK=${CADRE_TRAIN_QUICK:-} \
              timeout "$limit" scripts/gpu_train_bench.sh "$build" ;;
    parallel) timeout "$limit" scripts/gpu_parallel_bench.sh "$build" ;;
    profile) timeout "$limit" scripts/gpu_profile_bench.sh "$build" ;;
    mla) timeout "$limit" scripts/gpu_mla_bench.sh "$build" ;;
    chunks) timeout "$limit" scripts/gpu_chunk_sweep.sh "$build" ;;
    steady) timeout "$limit" scripts/gpu_steady_state.sh "$build" ;;
    *) echo "gpu_session: unknown stage '$stage'; accepted: check build gputests gpuonly fused e2e parity calgrid compare train1 parallel profile mla chunks steady"
       rc=2; continue ;;
  esac
  stage_rc=$?
  echo "== stage $stage rc=$stage_rc ($(date -u +%T))"
  [ $stage_rc -eq 0 ] || rc=$stage_rc
  # Packed after every stage, so that a device call cut short still returns what finished.
  if [ -n "${OUT:-}" ]; then
    find benchmarks/results docs -newer "$stamp" -type f -print0 |
      tar -czf "$OUT/results.tar.gz" --null -T -
  fi
done
[ -n "${OUT:-}" ] && tar -tzf "$OUT/results.tar.gz" | sed 's/^/   returned: /'

rm -f "$stamp"
exit $rc
