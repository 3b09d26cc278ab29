#!/usr/bin/env bash
# TPLA as a drop-in for a trained MLA model (issue: latent attention), on the CPU in a few
# minutes: trains an MLA model (`mla-tiny` sizes widened to 4 layers, synthetic learnable
# documents, 2 ranks, CAD shipping the latent), then `cadre eval` runs its last checkpoint
# exactly and in TPLA form for T = 2 and 4, with and without the Hadamard transform, on held-out
# documents (another data seed). Writes benchmarks/results/tpla_eval.{json,md}.
#
#   scripts/tpla_eval.sh                    (BUILD_DIR defaults to build; CADRE_TPLA_STEPS=300)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${CADRE_BUILD_DIR:-build}
cadre="$build/bin/cadre"
[ -x "$cadre" ] || { echo "tpla_eval: no $cadre (scripts/build.sh first)"; exit 2; }
steps=${CADRE_TPLA_STEPS:-300}
work=out/tpla_eval
rm -rf "$work"
mkdir -p "$work" benchmarks/results
model=(--set model.preset=mla-tiny --set model.num_layers=4)
run_flags="--allow-run-as-root --oversubscribe --bind-to none --mca btl self,vader,tcp"
[ "$(id -u)" -eq 0 ] || run_flags="--oversubscribe --bind-to none --mca btl self,vader,tcp"
# shellcheck disable=SC2086
mpirun $run_flags -np 2 "$cadre" train --config configs/train_tiny.pbtxt "${model[@]}" \
  --set training.steps="$steps" --set training.checkpoint_dir="$work/checkpoints" \
  --set training.checkpoint_every="$steps" --set output.dir="$work/train" \
  --set output.quiet=true
checkpoint=$(ls "$work"/checkpoints/*.ckpt | tail -1)
"$cadre" eval --config configs/train_tiny.pbtxt "${model[@]}" --checkpoint "$checkpoint" \
  --batches 16 --tpla 2,4 --tpla-transform none,hadamard --out benchmarks/results/tpla_eval.json |
  tee "$work/eval.txt"
{
  echo "# TPLA form of a trained MLA checkpoint (cadre eval)"
  echo
  echo "Model: mla-tiny sizes with 4 layers (hidden 64, 4 heads, latent 32, rotary 8), trained"
  echo "$steps steps on 2 ranks (configs/train_tiny.pbtxt, synthetic uniform documents), CAD"
  echo "shipping the latent. Held-out: 16 batches of 256 tokens, data seed 8 (training used 7)."
  echo "Commit $(git rev-parse --short HEAD), $(date -u +%F), $(uname -m) CPU, fp32."
  echo
  cat "$work/eval.txt"
} > benchmarks/results/tpla_eval.md
echo "wrote benchmarks/results/tpla_eval.md"
