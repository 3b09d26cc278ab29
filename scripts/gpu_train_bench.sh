#!/usr/bin/env bash
# Training benchmark on the GPU machine (1 and 2 GPUs): a Llama-3.2-1B-like model, bf16, 64K
# tokens per GPU (and a 128K pair), WLB-like and ProLong-like documents; colocated attention
# against CAD with ping-pong on and off, in place and (2 GPUs) with a dedicated attention server.
# Each run's output.dir/summary.json (means over the steps after two warm-up steps) is appended to
# benchmarks/results/<gpu>_train_bench.jsonl, a table goes to <gpu>_train_bench.md, and one
# step of the 2-GPU CAD run is written as a Chrome trace (<gpu>_train_trace.json).
#
#   scripts/gpu_train_bench.sh BUILD_DIR        (BUILD_DIR holds a GPU build: bin/cadre)
#   CADRE_TRAIN_STEPS=6 CADRE_TRAIN_QUICK=1 ... (fewer cells: WLB-like only, no 128K)
#   CADRE_TRAIN_PACKING=whole ...               (data.packing; default fill: every rank gets
#                                                exactly its budget, see docs/data.md)
#   CADRE_TRAIN_ONLY_GPUS=1 ...                 (only the 1-GPU cells, or only the 2-GPU ones)
set -uo pipefail
cd "$(dirname "$0")/.."
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
build_dir=${1:-build-gpu-check}
cadre="$build_dir/bin/cadre"
[ -x "$cadre" ] || { echo "gpu_train_bench: no $cadre (build the GPU configuration first)"; exit 2; }
steps=${CADRE_TRAIN_STEPS:-6}
packing=${CADRE_TRAIN_PACKING:-fill}
only=${CADRE_TRAIN_ONLY_GPUS:-}
source scripts/gpu_names.sh
slug=$gpu_slug
results=benchmarks/results
mkdir -p "$results" out/train_bench
# CADRE_TRAIN_TAG=NAME writes <gpu>_train_bench_NAME.* instead (a variant beside the main table);
# CADRE_TRAIN_SET="--set a=b ..." adds settings to every cell.
prefix="$results/${slug}x${gpus}_train_bench${CADRE_TRAIN_TAG:+_$CADRE_TRAIN_TAG}"
# shellcheck disable=SC2206
extra_sets=(${CADRE_TRAIN_SET:-})
jsonl="$prefix.jsonl"
log="$prefix.log"
: >"$jsonl"
: >"$log"
mpirun_flags="--allow-run-as-root --oversubscribe --bind-to none --mca btl self,vader,tcp"

# run NAME NP DIST CONTEXT [--set ...]
run() {
  local name=$1 np=$2 dist=$3 context=$4
  shift 4
  if [ -n "$only" ] && [ "$np" != "$only" ]; then return; fi
  local dir="out/train_bench/$name"
  rm -rf "$dir"
  echo "== $name (np $np, $dist, context $context) $(date -u +%T)" | tee -a "$log"
  if timeout 240 mpirun $mpirun_flags -np "$np" "$cadre" train --config configs/train_1b.pbtxt \
      --set cluster.num_gpus="$np" --set cluster.gpus_per_node="$np" \
      --set data.distribution="$dist" --set data.context_length="$context" \
      --set training.steps="$steps" --set training.warmup_steps=2 \
      --set training.checkpoint_every=0 --set training.recompute=linear \
      --set data.packing="$packing" \
      --set output.dir="$dir" "${extra_sets[@]}" "$@" >>"$log" 2>&1; then
    python3 - "$dir/summary.json" "$name" "$np" >>"$jsonl" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
s["run"] = sys.argv[2]; s["gpus"] = int(sys.argv[3])
print(json.dumps(s))
PY
    tail -n 2 "$log" | head -n 1
  else
    echo "   FAILED (see $log)" | tee -a "$log"
    tail -n 20 "$log"
  fi
}

dists="wlb prolong"
[ -n "${CADRE_TRAIN_QUICK:-}" ] && dists="wlb"
for dist in $dists; do
  run "1gpu_${dist}_colocated" 1 "$dist" 65536 --set training.attention=colocated
  run "1gpu_${dist}_cad" 1 "$dist" 65536 --set training.attention=cad
  run "1gpu_${dist}_cad_nopp" 1 "$dist" 65536 --set training.attention=cad --set training.ping_pong=false
  if [ "$gpus" -ge 2 ]; then
    run "2gpu_${dist}_colocated" 2 "$dist" 65536 --set training.attention=colocated
    run "2gpu_${dist}_cad" 2 "$dist" 65536 --set training.attention=cad \
        --set output.trace=true --set training.trace_step=4
    run "2gpu_${dist}_cad_nopp" 2 "$dist" 65536 --set training.attention=cad --set training.ping_pong=false
    run "2gpu_${dist}_cad_dedicated" 2 "$dist" 65536 --set training.attention=cad \
        --set scheduler.server_mode=dedicated --set scheduler.num_dedicated_servers=1
    run "2gpu_${dist}_cad_noreduceoverlap" 2 "$dist" 65536 --set training.attention=cad \
        --set training.overlap_grad_reduce=false
    # Documents cut at the rank boundary stay whole (DistCA's sequential packing).
    run "2gpu_${dist}span_colocated" 2 "$dist" 65536 --set training.attention=colocated \
        --set data.packing=span
    run "2gpu_${dist}span_cad" 2 "$dist" 65536 --set training.attention=cad --set data.packing=span
  fi
done
if [ -z "${CADRE_TRAIN_QUICK:-}" ]; then
  run "1gpu_prolong128k_colocated" 1 prolong 131072 --set training.attention=colocated
  run "1gpu_prolong128k_cad" 1 prolong 131072 --set training.attention=cad
  if [ "$gpus" -ge 2 ]; then
    run "2gpu_prolong128k_colocated" 2 prolong 131072 --set training.attention=colocated
    run "2gpu_prolong128k_cad" 2 prolong 131072 --set training.attention=cad
  fi
fi
for dist in $dists; do
  [ -f "out/train_bench/2gpu_${dist}_cad/trace.json" ] &&
    cp "out/train_bench/2gpu_${dist}_cad/trace.json" "${prefix%_bench}_trace_${dist}.json"
done

python3 - "$jsonl" "$gpu_name" "$gpus" >"$prefix.md" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
packing = rows[0].get("packing", "whole") if rows else "?"
print(f"# cadre train on {sys.argv[3]}x {sys.argv[2]}: llama-1b, bf16, recompute=linear, data.packing={packing}\n")
print("Means over the steps after two warm-up steps; every run of a group sees the same documents.\n")
print("| run | GPUs | docs | context | tokens/s | MFU | step ms | attn imbalance before -> after | a2a ms | exposed ms | hidden | grad all-reduce ms | exposed | loss first -> last |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r['run']} | {r['gpus']} | {r['distribution']} | {r['context_length']//1024}K | {r['tokens_per_s']:.0f} | {100*r['mfu']:.1f}% | {r['step_ms']:.0f} | {r['imbalance_before']:.2f} -> {r['imbalance_after']:.2f} | {r['a2a_ms']:.1f} | {r['exposed_a2a_ms']:.1f} | {100*r['hidden_a2a_fraction']:.0f}% | {r['allreduce_ms']:.1f} | {r.get('exposed_allreduce_ms', 0):.1f} | {r['first_loss']:.3f} -> {r['last_loss']:.3f} |")
by = {r["run"]: r for r in rows}
print()
for g in ("1gpu", "2gpu"):
    for d in ("wlb", "prolong", "prolong128k", "wlbspan", "prolongspan"):
        base = by.get(f"{g}_{d}_colocated")
        for v in ("cad", "cad_nopp", "cad_dedicated", "cad_noreduceoverlap"):
            r = by.get(f"{g}_{d}_{v}")
            if base and r:
                print(f"- {g} {d}: {v} vs colocated: {base['step_ms']/r['step_ms']:.3f}x by step time (same documents), {r['tokens_per_s']/base['tokens_per_s']:.3f}x tokens/s")
PY
cat "$prefix.md"
if [ -n "${OUT:-}" ]; then cp "$jsonl" "$prefix.md" "$log" "$OUT"/ 2>/dev/null; cp "${prefix%_bench}"_trace_*.json "$OUT"/ 2>/dev/null; fi
true
