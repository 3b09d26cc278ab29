#!/usr/bin/env bash
# Training profiles on the GPU machine, in one call: builds `cadre` (GPU configuration) if
# BUILD_DIR lacks it, then runs the GPU training benchmark's cells plus two shorter contexts (so
# calibration can separate per-token cost from fixed per-call cost) and one cell without
# recomputation, each with output.profile=true. Writes, under benchmarks/results/profiles/,
# <gpu>x<n>_<run>.profile.json per run and <gpu>x<n>_profile_bench.jsonl (each run's summary with
# its peak memory); copies them to $OUT when it is set (the device tool). `cadre calibrate`
# (CPU) fits the simulator to them; docs/simulation.md, "Calibration".
#
#   scripts/gpu_profile_bench.sh [BUILD_DIR]     (default build-gpu-check)
#   CADRE_PROFILE_STEPS=6                        steps per run (two warm-up steps are skipped)
#   CADRE_PROFILE_SKIP_128K_DOC=1                leaves out the one-128K-document cell (~80 s)
# Six steps: the first two build the cuDNN graphs of the largest shape classes (a built class
# serves every smaller one within 2x its tile grid), so the four measured steps are steady state;
# a cell whose measured steps still build a graph is flagged here and left out of the step-time
# gate by scripts/validate_simulator.py (docs/simulation.md, "Validation"). The eleven 1-GPU cells
# took 125 s with four steps (h200x1_profile_bench.log); two more steps add about 50 s (~2.5 s a
# 64K step, ~3.4 s at 128K), so a build plus the runs stays inside one device call.
set -uo pipefail
cd "$(dirname "$0")/.."
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
build_dir=${1:-build-gpu-check}
cadre="$build_dir/bin/cadre"
steps=${CADRE_PROFILE_STEPS:-6}
start_s=$(date +%s)
if [ ! -x "$cadre" ] || [ -n "${CADRE_PROFILE_REBUILD:-}" ]; then
  torch_prefix=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
  echo "== building $cadre (GPU configuration)"
  timeout 420 cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release -DCADRE_GPU=ON \
      -DCMAKE_PREFIX_PATH="$torch_prefix" -DCADRE_BUILD_BENCHMARKS=OFF >/tmp/cadre_profile_build.log 2>&1 &&
    timeout 420 cmake --build "$build_dir" --target cadre -j "$(nproc)" >>/tmp/cadre_profile_build.log 2>&1 ||
    { grep -E 'error' /tmp/cadre_profile_build.log | head -40; echo "build FAILED"; exit 2; }
  echo "   built in $(( $(date +%s) - start_s )) s"
fi
source scripts/gpu_names.sh
slug=$gpu_slug
results=benchmarks/results/profiles
mkdir -p "$results" out/profile_bench
prefix="$results/${slug:-gpu}x${gpus}"
jsonl="${prefix}_profile_bench.jsonl"
log="${prefix}_profile_bench.log"
: >"$jsonl"
: >"$log"
mpirun_flags="--allow-run-as-root --oversubscribe --bind-to none --mca btl self,vader,tcp"

# run NAME NP DIST CONTEXT [--set ...]
run() {
  local name=$1 np=$2 dist=$3 context=$4
  shift 4
  [ "$np" -le "$gpus" ] || return 0
  local dir="out/profile_bench/$name"
  rm -rf "$dir"
  echo "== $name (np $np, $dist, context $context) at $(( $(date +%s) - start_s )) s" | tee -a "$log"
  if timeout 240 mpirun $mpirun_flags -np "$np" "$cadre" train --config configs/train_1b.pbtxt \
      --set cluster.num_gpus="$np" --set cluster.gpus_per_node="$np" \
      --set data.distribution="$dist" --set data.context_length="$context" \
      --set training.steps="$steps" --set training.warmup_steps=2 \
      --set training.checkpoint_every=0 --set training.recompute=linear \
      --set data.packing=fill --set output.profile=true \
      --set output.dir="$dir" "$@" >>"$log" 2>&1; then
    cp "$dir/profile.json" "${prefix}_${name}.profile.json"
    python3 - "$dir/summary.json" "$dir/profile.json" "$name" "$np" >>"$jsonl" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
p = json.load(open(sys.argv[2]))
peaks = [int(r["peak_allocated_bytes"]) for st in p["steps"] for r in st["ranks"]]
reserved = [int(r["peak_reserved_bytes"]) for st in p["steps"] for r in st["ranks"]]
s["run"] = sys.argv[3]; s["gpus"] = int(sys.argv[4])
s["peak_allocated_gib"] = max(peaks) / 2**30 if peaks else 0
s["peak_reserved_gib"] = max(reserved) / 2**30 if reserved else 0
print(json.dumps(s))
PY
    tail -n 1 "$jsonl" | cut -c1-400
    python3 -c 'import json,sys; r=json.loads(open(sys.argv[1]).readlines()[-1]); n=int(r.get("kernel_graphs_built_in_measured_steps",0))+int(r.get("kernel_choices_measured_in_measured_steps",0)); n and print("   NOTE: %d cuDNN graph builds or kernel-choice timings in the measured steps; %s steady steps (%.0f ms)" % (n, r.get("steady_steps",0), r.get("steady_step_ms",0)))' "$jsonl" | tee -a "$log"
  else
    echo "   FAILED (see $log)" | tee -a "$log"
    tail -n 20 "$log"
  fi
}

for dist in wlb prolong; do
  run "1gpu_${dist}_colocated" 1 "$dist" 65536 --set training.attention=colocated
  run "1gpu_${dist}_cad" 1 "$dist" 65536 --set training.attention=cad
  run "1gpu_${dist}_cad_nopp" 1 "$dist" 65536 --set training.attention=cad --set training.ping_pong=false
done
run "1gpu_prolong128k_colocated" 1 prolong 131072 --set training.attention=colocated
run "1gpu_prolong128k_cad" 1 prolong 131072 --set training.attention=cad
run "1gpu_wlb16k_colocated" 1 wlb 16384 --set training.attention=colocated
run "1gpu_wlb32k_colocated" 1 wlb 32768 --set training.attention=colocated
run "1gpu_wlb16k_norecompute_colocated" 1 wlb 16384 --set training.attention=colocated \
    --set training.recompute=none
# One document per step (the kernel-bound cells): whole packing of a fixed-length document.
one_doc() { echo --set data.distribution=fixed --set data.fixed_tokens="$1" --set data.packing=whole; }
run "1gpu_onedoc64k_colocated" 1 fixed 65536 $(one_doc 65536) --set training.attention=colocated
run "1gpu_onedoc64k_cad" 1 fixed 65536 $(one_doc 65536) --set training.attention=cad
[ -n "${CADRE_PROFILE_SKIP_128K_DOC:-}" ] ||
  run "1gpu_onedoc128k_colocated" 1 fixed 131072 $(one_doc 131072) --set training.attention=colocated
for dist in wlb prolong; do
  run "2gpu_${dist}_colocated" 2 "$dist" 65536 --set training.attention=colocated
  run "2gpu_${dist}_cad" 2 "$dist" 65536 --set training.attention=cad
  run "2gpu_${dist}_cad_nopp" 2 "$dist" 65536 --set training.attention=cad --set training.ping_pong=false
done
run "2gpu_prolong128k_cad" 2 prolong 131072 --set training.attention=cad
echo "== done in $(( $(date +%s) - start_s )) s; profiles in $results" | tee -a "$log"
if [ -n "${OUT:-}" ]; then mkdir -p "$OUT/profiles" && cp "$results"/* "$OUT/profiles/"; fi
true
