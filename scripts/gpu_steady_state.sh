#!/usr/bin/env bash
# How long training meets new attention shape classes, and what a new class costs: llama-1b,
# 64K tokens per step, fill packing, `cadre train` with output.profile=true for
# CADRE_STEADY_STEPS (24) steps on WLB-like and ProLong-like documents (WLB-like also with octave
# shape classes, CADRE_CUDNN_BUCKET=octave). Prints, per run, every step's time and
# its cuDNN graph builds and kernel-choice timings, and writes them to
# benchmarks/results/<gpu>x1_steady_state.{jsonl,md}.
#   scripts/gpu_steady_state.sh [BUILD_DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-gpu-check}
cadre="$build/bin/cadre"
steps=${CADRE_STEADY_STEPS:-24}
source scripts/gpu_names.sh
gpu=${gpu_slug}x1
prefix="benchmarks/results/${gpu}_steady_state"
: >"$prefix.jsonl"
log="$prefix.log"
: >"$log"
run() {  # name, distribution, environment (VAR=value or -)
  local name=$1 dist=$2 setting=$3 dir="out/steady/$1" label=$3
  [ "$setting" = - ] && setting=CADRE_NOTHING= label="default (quarter-octave classes)"
  rm -rf "$dir"
  echo "== $name ($dist, $label) $(date -u +%T)" | tee -a "$log"
  if env "$setting" timeout 150 mpirun --allow-run-as-root --oversubscribe --bind-to none -np 1 \
      "$cadre" train --config configs/train_1b.pbtxt --set cluster.num_gpus=1 \
      --set cluster.gpus_per_node=1 --set data.distribution="$dist" \
      --set data.context_length=65536 --set data.packing=fill --set training.steps="$steps" \
      --set training.warmup_steps=2 --set training.checkpoint_every=0 \
      --set training.recompute=linear --set output.profile=true --set output.dir="$dir" \
      >>"$log" 2>&1; then
    python3 - "$dir/profile.json" "$name" "$label" >>"$prefix.jsonl" <<'PY'
import json, sys
p = json.load(open(sys.argv[1]))
rows = []
for st in p["steps"]:
    r = st["ranks"][0]
    rows.append({"step": int(st["step"]), "step_ms": float(st["step_ms"]),
                 "graphs_built": int(r.get("kernel_graphs_built", 0)),
                 "choices_measured": int(r.get("kernel_choices_measured", 0))})
print(json.dumps({"run": sys.argv[2], "setting": sys.argv[3], "steps": rows}))
PY
    tail -n 1 "$prefix.jsonl" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("  ", " ".join("%d:%.0f/%d/%d" % (s["step"], s["step_ms"], s["graphs_built"], s["choices_measured"]) for s in r["steps"]))' | tee -a "$log"
  else
    echo "   FAILED"; tail -n 15 "$log"
  fi
}
run wlb64k wlb -
run wlb64k_octave wlb CADRE_CUDNN_BUCKET=octave
run prolong64k prolong -
python3 - "$prefix.jsonl" "$steps" >"$prefix.md" <<'PY'
import json, sys
print("# Steady state: llama-1b, 64K tokens per step, fill packing, %s steps (step: ms / graphs built / kernel choices timed)\n" % sys.argv[2])
print("| run | setting | steps with a build or timing | last such step | mean ms of those | mean ms of the others |")
print("|---|---|---|---|---|---|")
for line in open(sys.argv[1]):
    r = json.loads(line)
    stall = [s for s in r["steps"] if s["graphs_built"] or s["choices_measured"]]
    steady = [s for s in r["steps"] if not (s["graphs_built"] or s["choices_measured"])]
    mean = lambda xs: sum(s["step_ms"] for s in xs) / len(xs) if xs else float("nan")
    print("| %s | %s | %d of %d | %s | %.0f | %.0f |" % (r["run"], r["setting"], len(stall), len(r["steps"]),
          stall[-1]["step"] if stall else "-", mean(stall), mean(steady)))
print()
for line in open(sys.argv[1]):
    r = json.loads(line)
    print("%s: %s\n" % (r["run"], " ".join("%d:%.0f/%d/%d" % (s["step"], s["step_ms"], s["graphs_built"], s["choices_measured"]) for s in r["steps"])))
PY
cat "$prefix.md"
