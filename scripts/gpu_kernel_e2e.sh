#!/usr/bin/env bash
# End-to-end effect of the attention kernel on one GPU (issue: core attention at Hopper speed):
# llama-1b, bf16, recompute=linear, `cadre train` with training.attention_kernel=flash against
# auto (cuDNN), with and without the fused elementwise kernels (runtime/fused_ops.h), on one
# 64K-token document per step and on ProLong-like 64K with fill packing;
# then the peer (HF transformers' Llama, benchmarks/peer/hf_llama_step.py) on the same
# one-document cell. Writes benchmarks/results/<gpu>x1_kernel_e2e.{jsonl,md} (copied to $OUT).
#
#   scripts/gpu_kernel_e2e.sh BUILD_DIR      (BUILD_DIR holds a GPU build: bin/cadre)
set -uo pipefail
cd "$(dirname "$0")/.."
build_dir=${1:-build-gpu-check}
cadre="$build_dir/bin/cadre"
[ -x "$cadre" ] || { echo "gpu_kernel_e2e: no $cadre (build the GPU configuration first)"; exit 2; }
steps=${CADRE_E2E_STEPS:-5}
source scripts/gpu_names.sh
slug=$gpu_slug
prefix="benchmarks/results/${slug}x1_kernel_e2e"
jsonl="$prefix.jsonl" log="$prefix.log"
: >"$jsonl"
: >"$log"
mkdir -p out/e2e

# cell NAME KERNEL FUSED [--set ...]: the summary (means after two warm-up steps) as one JSON
# line. FUSED 0 turns the fused elementwise kernels off (CADRE_FUSED_OPS=0: the LibTorch
# compositions the runtime used before them).
cell() {
  local name=$1 kernel=$2 fused=$3
  shift 3
  local dir="out/e2e/$name"
  rm -rf "$dir"
  echo "== $name (kernel $kernel) $(date -u +%T)" | tee -a "$log"
  if timeout 200 mpirun --allow-run-as-root --oversubscribe --bind-to none -np 1 \
      -x CADRE_FUSED_OPS="$fused" "$cadre" train \
      --config configs/train_1b.pbtxt --set cluster.num_gpus=1 --set cluster.gpus_per_node=1 \
      --set training.steps="$steps" --set training.warmup_steps=2 --set training.checkpoint_every=0 \
      --set training.recompute=linear --set training.attention_kernel="$kernel" \
      --set data.context_length=65536 --set output.dir="$dir" "$@" >>"$log" 2>&1; then
    python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); s["run"]=sys.argv[2]; print(json.dumps(s))' \
      "$dir/summary.json" "$name" >>"$jsonl"
    tail -n 3 "$log" | head -n 2
  else
    echo "   FAILED (see $log)"; tail -n 15 "$log"
  fi
}

one_doc=(--set data.distribution=fixed --set data.fixed_tokens=65536 --set data.packing=whole)
prolong=(--set data.distribution=prolong --set data.packing=fill)
# The baseline is the runtime before the kernel issue (flash, unfused); then the cuDNN kernel
# alone (auto, unfused); then both (auto, fused).
cell onedoc64k_flash flash 0 "${one_doc[@]}"
cell onedoc64k_auto_unfused auto 0 "${one_doc[@]}"
cell onedoc64k_auto auto 1 "${one_doc[@]}"
cell prolong64k_fill_flash flash 0 "${prolong[@]}"
cell prolong64k_fill_auto_unfused auto 0 "${prolong[@]}"
cell prolong64k_fill_auto auto 1 "${prolong[@]}"
echo "== peer: HF transformers $(date -u +%T)" | tee -a "$log"
peer=$(timeout 240 python3 benchmarks/peer/hf_llama_step.py --tokens 65536 --steps 3 2>>"$log" | tail -n 1)
echo "$peer" | tee -a "$log"

python3 - "$jsonl" "$peer" "${gpu_name:-?}" >"$prefix.md" <<'PY'
import json, sys
import torch
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
for _ in range(3): a @ a
s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
s.record()
for _ in range(10): a @ a
e.record(); torch.cuda.synchronize()
gemm = 10 * 2 * 8192**3 / (s.elapsed_time(e) / 1e3) / 1e12
rows = {json.loads(l)["run"]: json.loads(l) for l in open(sys.argv[1]) if l.strip()}
try:
    peer = json.loads(sys.argv[2])
except Exception:
    peer = None
print(f"# Attention kernel end to end: 1x {sys.argv[3]}, llama-1b, bf16, recompute=linear, 64K tokens per step\n")
print(f"MFU is against the nominal 989 TFLOP/s bf16 peak and against the bf16 GEMM rate measured in the same run (8192^3: {gemm:.0f} TFLOP/s).\n")
print("| cell | kernel | fused ops | step ms | tokens/s | MFU (peak) | MFU (measured GEMM) | graphs built (in measured steps) | loss first -> last |")
print("|---|---|---|---|---|---|---|---|---|")
for name, r in rows.items():
    print(f"| {name} | {r.get('attention_kernel','?')} | {'no' if 'unfused' in name or name.endswith('_flash') else 'yes'} | {r['step_ms']:.0f} | {r['tokens_per_s']:.0f} | {100*r['mfu']:.1f}% | {100*r['mfu']*989/gemm:.1f}% | {r.get('kernel_graphs_built','?')} ({r.get('kernel_graphs_built_in_measured_steps','?')}) | {r['first_loss']:.3f} -> {r['last_loss']:.3f} |")
print()
for cell in ("onedoc64k", "prolong64k_fill"):
    f, u, a = rows.get(cell + "_flash"), rows.get(cell + "_auto_unfused"), rows.get(cell + "_auto")
    if f and u:
        print(f"- {cell}: the cuDNN kernel alone (auto, unfused) is {f['step_ms']/u['step_ms']:.2f}x faster per step than flash (unfused)")
    if u and a:
        print(f"- {cell}: the fused elementwise kernels make auto {u['step_ms']/a['step_ms']:.2f}x faster per step")
    if f and a:
        print(f"- {cell}: auto with fused kernels is {f['step_ms']/a['step_ms']:.2f}x faster per step than the baseline (flash, unfused)")
if peer:
    print(f"- peer {peer['peer']} (torch {peer['torch']}): {peer['step_ms']:.0f} ms per step, "
          f"peak {peer['peak_memory_gib']:.1f} GiB")
    a = rows.get("onedoc64k_auto")
    if a:
        print(f"- onedoc64k: Cadre (auto) is {peer['step_ms']/a['step_ms']:.2f}x faster per step than the peer")
PY
cat "$prefix.md"
[ -n "${OUT:-}" ] && cp "$jsonl" "$prefix.md" "$log" "$OUT"/ 2>/dev/null
true
