#!/usr/bin/env bash
# Bytes that CAD dispatch moves per query token and per K/V token (issue: latent attention),
# read from the dispatch counters of real `cadre train` runs on the CPU (summary.json:
# cad_bytes_per_query_token, cad_bytes_per_kv_token; one layer, forward + backward), beside what
# the planner's cost model assumes (cost_model_bf16_bytes_per_*). Model widths are real
# (DeepSeek-V2-Lite-like MLA: 16 heads, latent 512, rotary 64, head 128, value 128; llama-1b as
# the GQA model of similar size: 32 query heads, 8 K/V heads, head 64); the hidden size, FFN,
# vocabulary, layers and context are cut so that every run takes seconds on a shared CPU (bytes
# per token depend only on the attention widths). CPU training is fp32: the table also gives the
# bf16 figure (values x 2 B) that a GPU run moves and the cost model prices.
# Writes benchmarks/results/mla_dispatch_bytes.{json,md}.
#
#   scripts/mla_dispatch_bytes.sh          (CADRE_BUILD_DIR defaults to build)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${CADRE_BUILD_DIR:-build}
cadre="$build/bin/cadre"
[ -x "$cadre" ] || { echo "mla_dispatch_bytes: no $cadre (scripts/build.sh first)"; exit 2; }
work=out/mla_dispatch_bytes
rm -rf "$work"
mkdir -p "$work" benchmarks/results
run_flags=(--oversubscribe --bind-to none --mca btl self,vader,tcp)
[ "$(id -u)" -ne 0 ] || run_flags+=(--allow-run-as-root)
# Short runs: one layer, hidden 256, FFN 512, vocabulary 1024, documents of 32-512 tokens on
# 512-token ranks; the attention widths are the presets' (head_dim given explicitly, since a
# changed hidden size would otherwise change it).
common=(--config configs/train_tiny.pbtxt --set model.num_layers=1 --set model.hidden_size=256
        --set model.ffn_hidden_size=512 --set model.vocab_size=1024
        --set data.uniform_min_tokens=32 --set data.uniform_max_tokens=512
        --set data.context_length=512 --set scheduler.min_shard_tokens=32
        --set training.steps=3 --set training.attention=cad --set output.quiet=true)
mla=(--set model.preset=deepseek-v2-lite-like --set model.head_dim=128)
gqa=(--set model.preset=llama-1b --set model.head_dim=64)

# name, ranks, flags...
cell() {
  local name=$1 ranks=$2
  shift 2
  echo "== $name ($ranks ranks)"
  mpirun "${run_flags[@]}" -x OMP_NUM_THREADS=1 -np "$ranks" "$cadre" train "${common[@]}" "$@" \
    --set cluster.num_gpus="$ranks" --set cluster.gpus_per_node="$ranks" \
    --set output.dir="$work/$name" > "$work/$name.log" 2>&1 ||
    { cat "$work/$name.log"; exit 1; }
}
cell mla_latent 2 "${mla[@]}" --set scheduler.mla_shipping=latent
cell mla_expanded 2 "${mla[@]}" --set scheduler.mla_shipping=expanded
cell mla_dedicated 3 "${mla[@]}" --set scheduler.server_mode=dedicated \
  --set scheduler.num_dedicated_servers=1
cell mla_latent_tp2 4 "${mla[@]}" --set cluster.tensor_parallel=2
cell tpla_latent_tp2 4 "${mla[@]}" --set cluster.tensor_parallel=2 --set model.tpla=true
cell gqa_llama_1b 2 "${gqa[@]}"

python3 - "$work" "$(git rev-parse --short HEAD)" <<'PY'
import datetime, json, platform, sys
work, commit = sys.argv[1], sys.argv[2]
cells = [
    ("mla_latent", "MLA, `latent` shipping", "576 values: c 512 + rotary key 64"),
    ("mla_expanded", "MLA, `expanded` shipping", "16 x (192 + 128) values"),
    ("mla_dedicated", "MLA, dedicated server (always expanded)", "16 x (192 + 128) values"),
    ("mla_latent_tp2", "MLA, `latent`, T = 2 (per head group)", "576 values to each head group"),
    ("tpla_latent_tp2", "TPLA T = 2, `latent` (per latent slice)", "256 + 64 values per slice"),
    ("gqa_llama_1b", "GQA llama-1b (32 q / 8 kv heads, d 64)", "8 x (64 + 64) values"),
]
value_bytes = {"fp32": 4, "bf16": 2}
rows = []
for name, what, kv_note in cells:
    s = json.load(open(f"{work}/{name}/summary.json"))
    vb = value_bytes[s["dtype"]]
    q_values = s["cad_bytes_per_query_token"] / vb
    kv_values = s["cad_bytes_per_kv_token"] / vb
    rows.append({
        "cell": name, "what": what, "kv_row": kv_note, "description": s["description"],
        "dtype": s["dtype"], "query_rows_per_step": s["cad_query_rows"],
        "kv_rows_per_step": s["cad_kv_rows"],
        "measured_bytes_per_query_token": s["cad_bytes_per_query_token"],
        "measured_bytes_per_kv_token": s["cad_bytes_per_kv_token"],
        "measured_bf16_bytes_per_query_token": q_values * 2,
        "measured_bf16_bytes_per_kv_token": kv_values * 2,
        "cost_model_bf16_bytes_per_query_token": s["cost_model_bf16_bytes_per_query_token"],
        "cost_model_bf16_bytes_per_kv_token": s["cost_model_bf16_bytes_per_kv_token"],
    })
result = {"commit": commit, "date": datetime.date.today().isoformat(),
          "machine": platform.machine() + " CPU", "layers_measured": 1,
          "direction": "forward + backward, one layer, bytes sent summed over all ranks / rows "
                       "shipped to another rank's server",
          "rows": rows}
with open("benchmarks/results/mla_dispatch_bytes.json", "w") as f:
    json.dump(result, f, indent=2)
    f.write("\n")
def ratio(a, b):
    return f"{a / b:.2f}" if b else "-"
lines = [
    "# Bytes per token moved by CAD dispatch: latent vs expanded MLA vs GQA",
    "",
    "Measured with `scripts/mla_dispatch_bytes.sh`: `cadre train` on the CPU (MPI, fp32), the",
    "dispatch counters of one layer, forward + backward, summed over all ranks and divided by the",
    "rows shipped to another rank's server (a query row once per task, a K/V row once per server",
    "that needs it; a rank's own rows are not counted). Per query token: Q and dQ, O and dO; per",
    "K/V token: K and V (or the latent) and their gradients. Real attention widths",
    "(`deepseek-v2-lite-like`: 16 heads, latent 512, rotary 64, head 128, value 128; `llama-1b`:",
    "32 query heads, 8 K/V heads, head 64), one layer, hidden 256, 512-token ranks (bytes per",
    "token depend only on the attention widths). bf16 columns: measured values x 2 B (what a GPU",
    "run moves). The cost model columns are what the planner prices (`CostModel::q_bytes_per_token`",
    "x 4: Q out and O back at the query width, backward mirrors it; `kv_bytes_per_token` x 2).",
    f"Commit {commit}, {result['date']}, {result['machine']}.",
    "",
    "| run | K/V row | B/query token (bf16) | cost model | ratio | B/K/V token (bf16) | cost model | ratio |",
    "|---|---|---|---|---|---|---|---|",
]
for r in rows:
    mq, mk = r["measured_bf16_bytes_per_query_token"], r["measured_bf16_bytes_per_kv_token"]
    cq, ck = r["cost_model_bf16_bytes_per_query_token"], r["cost_model_bf16_bytes_per_kv_token"]
    lines.append(f"| {r['what']} | {r['kv_row']} | {mq:.0f} | {cq} | {ratio(mq, cq)} | "
                 f"{mk:.0f} | {ck} | {ratio(mk, ck)} |")
lines += ["", "Ratio: measured / cost model. Raw fp32 counters and row counts are in "
          "`mla_dispatch_bytes.json`.", ""]
open("benchmarks/results/mla_dispatch_bytes.md", "w").write("\n".join(lines))
print("\n".join(lines))
PY
echo "wrote benchmarks/results/mla_dispatch_bytes.{json,md}"
