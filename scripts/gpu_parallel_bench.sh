#!/usr/bin/env bash
# Model-parallel training cells on the GPU machine (issue 11): measured peak memory per rank
# beside the simulator's estimate for the same cell (`cadre simulate --training-step` with the
# cell's own settings), and step time / tokens/s.
#   1 GPU : llama-1b and llama-3b at T=1 (the memory columns; the step time of T=1 is
#           scripts/gpu_train_bench.sh's 1-GPU cells, which must stay within 3%)
#   2 GPUs: llama-1b at T=2 (sequence parallel, colocated and cad) beside T=1 x D=2
#   8 GPUs: llama-8b-like at T=8 with the sharded optimizer, 128K tokens per TP group
#           (and 64K), sequence parallel, recompute=linear
# A cell that needs more GPUs than the machine has is dry-run at one GPU instead: the same
# settings at T=1 with a smaller model where the real one cannot fit (llama-8b -> llama-1b,
# 16K tokens), marked "dry" in the table, so the script is checked end to end on one GPU.
# Results: benchmarks/results/<gpu>x<n>_parallel_bench.{jsonl,md,log}.
#
#   scripts/gpu_parallel_bench.sh BUILD_DIR     (BUILD_DIR holds a GPU build: bin/cadre)
#   CADRE_PARALLEL_STEPS=5 ...                  (steps per cell; the first two are warm-up)
set -uo pipefail
cd "$(dirname "$0")/.."
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
build_dir=${1:-build-gpu-check}
cadre="$build_dir/bin/cadre"
[ -x "$cadre" ] || { echo "gpu_parallel_bench: no $cadre (build the GPU configuration first)"; exit 2; }
steps=${CADRE_PARALLEL_STEPS:-5}
source scripts/gpu_names.sh
slug=$gpu_slug
results=benchmarks/results
mkdir -p "$results" out/parallel_bench
prefix="$results/${slug}x${gpus}_parallel_bench"
jsonl="$prefix.jsonl"
log="$prefix.log"
: >"$jsonl"
: >"$log"
mpirun_flags="--allow-run-as-root --oversubscribe --bind-to none --mca btl self,vader,tcp"

# cell NAME NP TP MODEL CONTEXT [--set ...]: trains, then asks the simulator for the same cell.
cell() {
  local name=$1 np=$2 tp=$3 model=$4 context=$5
  shift 5
  local dry=0
  if [ "$np" -gt "$gpus" ]; then
    dry=1
    np=1
    tp=1
    if [ "$model" = "llama-8b" ]; then model=llama-1b; context=16384; fi
  fi
  local dir="out/parallel_bench/$name"
  rm -rf "$dir"
  echo "== $name (np $np, T=$tp, $model, context $context, dry $dry) $(date -u +%T)" | tee -a "$log"
  local common=(--set model.preset="$model" --set cluster.num_gpus="$np"
                --set cluster.gpus_per_node="$np" --set cluster.tensor_parallel="$tp"
                --set data.context_length="$context")
  # The cell's own settings ("$@": the sharded optimizer, attention, ...) go to the simulator
  # too, and it prices the very steps the run took (--training-step: the data loader's
  # documents), so the two columns compare like with like.
  common+=(--set data.distribution=prolong --set data.packing=fill
           --set training.steps="$steps" --set training.recompute=linear "$@")
  if timeout 480 mpirun $mpirun_flags -np "$np" "$cadre" train --config configs/train_1b.pbtxt \
      "${common[@]}" --set training.warmup_steps=2 --set training.checkpoint_every=0 \
      --set output.dir="$dir" >>"$log" 2>&1; then
    mkdir -p "$dir/simulate"
    "$cadre" simulate --training-step --config configs/train_1b.pbtxt "${common[@]}" \
      >"$dir/simulate/training_step.json" 2>>"$log" || echo "   (simulate failed)" | tee -a "$log"
    python3 - "$dir" "$name" "$np" "$tp" "$dry" >>"$jsonl" <<'PY'
import json, os, sys
d, name, np_, tp, dry = sys.argv[1:6]
s = json.load(open(os.path.join(d, "summary.json")))
s.update(run=name, gpus=int(np_), dry_run=dry == "1")
try:
    sim = json.load(open(os.path.join(d, "simulate", "training_step.json")))
    s["simulated_peak_memory_gib"] = sim["memory"]["peak_gib"]
    s["simulated_step_ms"] = sim["step_ms"]
except Exception:
    pass
print(json.dumps(s))
PY
    tail -n 2 "$log" | head -n 1
  else
    echo "   FAILED (see $log)" | tee -a "$log"
    tail -n 20 "$log"
  fi
}

cell 1gpu_llama1b_t1 1 1 llama-1b 65536
cell 1gpu_llama3b_t1 1 1 llama-3b 32768
cell 2gpu_llama1b_t1d2_colocated 2 1 llama-1b 65536 --set training.attention=colocated
cell 2gpu_llama1b_t2_colocated 2 2 llama-1b 65536 --set training.attention=colocated
cell 2gpu_llama1b_t2_cad 2 2 llama-1b 65536 --set training.attention=cad
cell 2gpu_llama1b_t2_nosp 2 2 llama-1b 65536 --set training.attention=cad \
    --set training.sequence_parallel=false
cell 8gpu_llama8b_t8_zero1_64k 8 8 llama-8b 65536 --set training.shard_optimizer=true
cell 8gpu_llama8b_t8_zero1_128k 8 8 llama-8b 131072 --set training.shard_optimizer=true

python3 - "$jsonl" "$gpu_name" "$gpus" >"$prefix.md" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(f"# cadre train under tensor parallelism on {sys.argv[3]}x {sys.argv[2]}: bf16, recompute=linear, prolong, packing fill\n")
print("Means over the steps after two warm-up steps. Peak memory: the CUDA caching allocator's peak of")
print("allocated bytes, max over ranks (summary.json peak_memory_bytes_per_rank), beside `cadre simulate --training-step`'s")
print("peak for the same cell. dry: run at one GPU, T=1 (the machine had too few GPUs).\n")
print("| run | dry | GPUs | T | model | context | tokens/s | MFU | step ms | peak GiB (max rank) | simulated GiB | loss first -> last |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    peak = r.get("peak_memory_bytes", 0) / 2**30
    sim = r.get("simulated_peak_memory_gib")
    sim_s = f"{sim:.1f}" if sim is not None else "-"
    print(f"| {r['run']} | {'yes' if r['dry_run'] else ''} | {r['gpus']} | {r.get('tensor_parallel', 1)} | {r['model']} | {r['context_length']//1024}K | {r['tokens_per_s']:.0f} | {100*r['mfu']:.1f}% | {r['step_ms']:.0f} | {peak:.1f} | {sim_s} | {r['first_loss']:.3f} -> {r['last_loss']:.3f} |")
PY
cat "$prefix.md"
if [ -n "${OUT:-}" ]; then cp "$jsonl" "$prefix.md" "$log" "$OUT"/ 2>/dev/null; fi
true
