#!/usr/bin/env bash
# The GPU check in one call (about 2.5 minutes on 2x H200 with 32 cores; each stage has its own
# time limit so a hang cannot eat the device call): configures and builds the GPU
# configuration, runs the whole test suite (GPU and 2-rank NCCL tests included), runs
# `cadre bench kernel` and `cadre bench comm`, checks Cadre's exported weights against Hugging Face
# transformers (scripts/hf_parity_check.sh), and writes a summary, the logs and the JSON results
# under benchmarks/results/ (copied to $OUT too when it is set, for the device tool).
#
#   scripts/gpu_check.sh                 full run
#   CADRE_BENCH_QUICK=1 scripts/gpu_check.sh   fewer repeats, no calibration grid
#
# A stage that fails is reported in the summary and the later stages still run; the exit code is
# non-zero unless every stage passed (bench comm skipped on a one-GPU machine counts as passed).
set -uo pipefail
cd "$(dirname "$0")/.."

# NVLink multicast stays off (docs/gpu.md says why).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1

build_dir=${CADRE_BUILD_DIR:-build-gpu-check}
jobs=${CADRE_JOBS:-$(nproc)}
results=benchmarks/results
mkdir -p "$results"
start_s=$(date +%s)
elapsed() { echo $(( $(date +%s) - start_s )); }

source scripts/gpu_names.sh
gpu_count=$gpus
slug=$gpu_slug
prefix="$results/${slug}x${gpu_count}"
log="${prefix}_gpu_check.log"
summary="${prefix}_gpu_check_summary.md"
kernel_json="${prefix}_bench_kernel.json"
# The quick run has no calibration grid: it writes beside the full run's table, which
# `cadre calibrate`, the simulator's calibration and tests/launch/test_cli.cc read.
[ "${CADRE_BENCH_QUICK:-0}" = 1 ] && kernel_json="${prefix}_bench_kernel_quick.json"
calibration_json="${prefix}_flash_attention_calibration.json"
kernel_mha_json="${prefix}_bench_kernel_mha.json"
comm_json="${prefix}_bench_comm.json"
: >"$log"

say() { echo "$@" | tee -a "$log"; }
status_build=skipped status_tests=skipped status_kernel=skipped status_comm=skipped

say "== cadre gpu_check $(date -u +%FT%TZ) on $(hostname)"
{
  nvidia-smi -L
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  nvidia-smi topo -m
  nvcc --version | tail -2
  cmake --version | head -1
  mpirun --version 2>&1 | head -1
  grep -E '#define NCCL_(MAJOR|MINOR|PATCH)' /usr/include/nccl.h 2>/dev/null
  python3 - <<'EOF'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(),
      "nccl", torch.cuda.nccl.version(), "devices", torch.cuda.device_count())
print("cmake prefix", torch.utils.cmake_prefix_path)
print(torch.ops.aten._flash_attention_forward.default._schema)
print(torch.ops.aten._flash_attention_backward.default._schema)
EOF
} 2>&1 | tee -a "$log"

# --- build ------------------------------------------------------------------------------------
torch_prefix=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
benchmarks=OFF
if ls /usr/lib/*/cmake/benchmark /usr/local/lib/cmake/benchmark >/dev/null 2>&1; then
  benchmarks=ON
fi
say "== configure + build ($build_dir, -j$jobs, Google Benchmark: $benchmarks) at $(elapsed) s"
if timeout 360 cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release -DCADRE_GPU=ON \
    -DCMAKE_PREFIX_PATH="$torch_prefix" -DCADRE_BUILD_BENCHMARKS=$benchmarks >>"$log" 2>&1 &&
   timeout 360 cmake --build "$build_dir" -j "$jobs" >>"$log" 2>&1; then
  status_build=ok
else
  status_build=FAILED
  grep -E 'error|Error' "$log" | head -40
fi
say "   build: $status_build at $(elapsed) s"

# --- tests ------------------------------------------------------------------------------------
if [ "$status_build" = ok ]; then
  say "== tests at $(elapsed) s"
  # CPU suites in parallel, then the GPU suites one at a time (they share the GPUs).
  timeout 240 ctest --test-dir "$build_dir" --output-on-failure -j 8 -E '_gpu_test' >>"$log" 2>&1
  cpu_rc=$?
  timeout 200 ctest --test-dir "$build_dir" --output-on-failure -j 1 -R '_gpu_test' -V >>"$log" 2>&1
  gpu_rc=$?
  [ $cpu_rc -eq 0 ] && [ $gpu_rc -eq 0 ] && status_tests=ok || status_tests="FAILED (cpu rc $cpu_rc, gpu rc $gpu_rc)"
  grep -E '^\s*[0-9]+/[0-9]+ Test|tests passed|tests failed|\[flash vs' "$log" | tee -a "$summary.tmp"
  say "   tests: $status_tests at $(elapsed) s"
fi

# --- benchmarks -------------------------------------------------------------------------------
cadre="$build_dir/bin/cadre"
kernel_args=(--out "$kernel_json" --calibration-out "$calibration_json")
comm_args=(--out "$comm_json")
if [ "${CADRE_BENCH_QUICK:-0}" = 1 ]; then
  kernel_args+=(--repeats 5 --warmup 2 --no-calibration)
  comm_args+=(--repeats 5 --warmup 2)
fi
if [ -x "$cadre" ]; then
  say "== cadre bench kernel at $(elapsed) s"
  timeout 240 "$cadre" bench kernel "${kernel_args[@]}" 2>&1 | tee "${prefix}_bench_kernel.txt" | tee -a "$log"
  [ "${PIPESTATUS[0]}" -eq 0 ] && status_kernel=ok || status_kernel=FAILED
  # The same shard table with as many KV heads as query heads (no GQA): separates the cost of
  # LibTorch's GQA backward (gradients of every query head per key row, then summed) from the
  # kernel's own efficiency on short query shards.
  # cuDNN: the comparison with FlashAttention-2 and the shard table of auto (cudnn-split).
  say "== cadre bench kernel --kernel auto --compare at $(elapsed) s"
  timeout 180 "$cadre" bench kernel --kernel auto --compare --no-calibration --repeats 5 --warmup 2 \
    --kv-rows-cap 524288 --out "${prefix}_bench_kernel_auto.json" 2>&1 | tee -a "$log"
  if [ "${CADRE_BENCH_QUICK:-0}" != 1 ]; then
    say "== cadre bench kernel --kv-heads 32 (no GQA) at $(elapsed) s"
    timeout 120 "$cadre" bench kernel --kv-heads 32 --no-calibration --repeats 5 --warmup 2 \
      --out "$kernel_mha_json" 2>&1 | tee "${prefix}_bench_kernel_mha.txt" | tee -a "$log"
  fi
  if [ "$gpu_count" -ge 2 ]; then
    say "== cadre bench comm (mpirun -np 2) at $(elapsed) s"
    timeout 150 mpirun --allow-run-as-root --bind-to none -np 2 -x NCCL_NVLS_ENABLE \
      "$cadre" bench comm "${comm_args[@]}" 2>&1 | tee "${prefix}_bench_comm.txt" | tee -a "$log"
    [ "${PIPESTATUS[0]}" -eq 0 ] && status_comm=ok || status_comm=FAILED
  else
    say "== cadre bench comm skipped: it needs 2 GPUs, this machine has $gpu_count"
    status_comm="skipped (needs 2 GPUs)"
  fi
fi

# --- Hugging Face parity (transformers is installed on the GPU machines) ----------------------
status_hf=skipped
if [ -x "$cadre" ]; then
  say "== hf parity (scripts/hf_parity_check.sh) at $(elapsed) s"
  CADRE_BUILD_DIR="$build_dir" timeout 240 scripts/hf_parity_check.sh 2>&1 |
    tee "${prefix}_hf_parity.txt" | tee -a "$log"
  [ "${PIPESTATUS[0]}" -eq 0 ] && status_hf=ok || status_hf=FAILED
fi

# --- summary ----------------------------------------------------------------------------------
{
  echo "# cadre gpu_check: ${gpu_count}x ${gpu_name:-no GPU}, $(date -u +%FT%TZ)"
  echo
  echo "| stage | status |"
  echo "|---|---|"
  echo "| build | $status_build |"
  echo "| tests | $status_tests |"
  echo "| bench kernel | $status_kernel |"
  echo "| bench comm | $status_comm |"
  echo "| hf parity | $status_hf |"
  echo
  echo "total $(elapsed) s. Versions and the operator schemas are at the top of $(basename "$log")."
  echo
  echo '## tests'
  echo '```'
  cat "$summary.tmp" 2>/dev/null
  echo '```'
  echo
  echo '## bench kernel'
  echo '```'
  cat "${prefix}_bench_kernel.txt" 2>/dev/null
  echo '```'
  echo
  echo '## bench kernel, 32 KV heads (no GQA)'
  echo '```'
  cat "${prefix}_bench_kernel_mha.txt" 2>/dev/null
  echo '```'
  echo
  echo '## bench comm'
  echo '```'
  cat "${prefix}_bench_comm.txt" 2>/dev/null
  echo '```'
  echo
  echo '## hf parity'
  echo '```'
  cat "${prefix}_hf_parity.txt" 2>/dev/null
  echo '```'
} >"$summary"
rm -f "$summary.tmp" "${prefix}_bench_kernel.txt" "${prefix}_bench_kernel_mha.txt" "${prefix}_bench_comm.txt" \
  "${prefix}_hf_parity.txt"
cat "$summary"

if [ -n "${OUT:-}" ]; then
  for f in "$summary" "$log" "$kernel_json" "$calibration_json" "$kernel_mha_json" "$comm_json" \
           "${prefix}_bench_kernel_auto.json"; do
    [ -f "$f" ] && cp "$f" "$OUT/"
  done
fi
# bench comm skipped for want of a second GPU is not a failure of this machine's check.
[ "$status_build" = ok ] && [ "$status_tests" = ok ] && [ "$status_kernel" = ok ] &&
  [ "$status_hf" = ok ] &&
  { [ "$status_comm" = ok ] || [ "$status_comm" = "skipped (needs 2 GPUs)" ]; }
