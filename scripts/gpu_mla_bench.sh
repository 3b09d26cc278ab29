#!/usr/bin/env bash
# Latent attention on the GPU machine (issue: MLA/TPLA): the attention kernel at q/k 192, v 128
# (cuDNN native beside FlashAttention-2 with V padded to 192, from `bench kernel --compare-only`)
# and a DeepSeek-V2-Lite-like model (1.73B, dense FFN) trained at 64K tokens on one GPU, bf16,
# recompute linear, CAD (latent shipping) against colocated, plus llama-1b at the same settings
# as the grouped-query reference. Results: benchmarks/results/<gpu>x<n>_mla_bench.{jsonl,md,log}.
#
#   scripts/gpu_mla_bench.sh BUILD_DIR          (BUILD_DIR holds a GPU build: bin/cadre)
#   CADRE_MLA_STEPS=5                           steps per cell (the first two are warm-up)
set -uo pipefail
cd "$(dirname "$0")/.."
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
build_dir=${1:-build-gpu-check}
cadre="$build_dir/bin/cadre"
[ -x "$cadre" ] || { echo "gpu_mla_bench: no $cadre (build the GPU configuration first)"; exit 2; }
steps=${CADRE_MLA_STEPS:-5}
source scripts/gpu_names.sh
slug=$gpu_slug
results=benchmarks/results
mkdir -p "$results" out/mla_bench
prefix="$results/${slug}x${gpus}_mla_bench"
jsonl="$prefix.jsonl" log="$prefix.log"
: >"$jsonl"
: >"$log"
rc=0
echo "== bench kernel --compare-only $(date -u +%T)" | tee -a "$log"
timeout 150 "$cadre" bench kernel --compare-only --repeats 5 --warmup 2 \
  --out "${prefix}_kernel_compare.json" 2>&1 | tee -a "$log" || rc=1

# cell NAME PRESET [--set ...]
cell() {
  local name=$1 preset=$2
  shift 2
  local dir="out/mla_bench/$name"
  rm -rf "$dir"
  echo "== $name ($preset) $(date -u +%T)" | tee -a "$log"
  if timeout 200 "$cadre" train --config configs/train_1b.pbtxt --set model.preset="$preset" \
      --set cluster.num_gpus=1 --set cluster.gpus_per_node=1 --set data.distribution=prolong \
      --set data.context_length=65536 --set training.steps="$steps" \
      --set training.warmup_steps=2 --set training.checkpoint_every=0 \
      --set training.recompute=linear --set output.dir="$dir" "$@" >>"$log" 2>&1; then
    python3 - "$dir/summary.json" "$name" >>"$jsonl" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
s["run"] = sys.argv[2]
print(json.dumps(s))
PY
    tail -n 2 "$log" | head -n 1
  else
    echo "   FAILED (see $log)" | tee -a "$log"
    tail -n 20 "$log"
    rc=1
  fi
}
cell mla_lite_cad deepseek-v2-lite-like --set training.attention=cad
cell mla_lite_colocated deepseek-v2-lite-like --set training.attention=colocated
cell llama1b_cad llama-1b --set training.attention=cad

python3 - "$jsonl" "$prefix.md" "$gpu_name" "$(git rev-parse --short HEAD 2>/dev/null)" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
with open(sys.argv[2], "w") as out:
    out.write(f"# Latent attention on {sys.argv[3]}, commit {sys.argv[4]}\n\n")
    out.write("One GPU, ProLong-like documents, 64K tokens per step, bf16, recompute linear, "
              "means over the steps after two warm-up steps.\n\n")
    out.write("| run | model | attention | step ms | tokens/s | MFU | graphs built (measured steps) | peak GiB |\n")
    out.write("|---|---|---|---|---|---|---|---|\n")
    for r in rows:
        peak = r.get("peak_memory_bytes", 0) / 2**30
        out.write(f"| {r['run']} | {r['model']} | {r['attention']} | {r['step_ms']:.0f} | "
                  f"{r['tokens_per_s']:.0f} | {r['mfu']:.3f} | "
                  f"{r.get('kernel_graphs_built_in_measured_steps', '-')} | {peak:.1f} |\n")
print(open(sys.argv[2]).read())
PY
exit $rc
