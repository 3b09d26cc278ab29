#!/usr/bin/env python3
"""Writes benchmarks/results/simulate_paper.md from simulate_paper.json (`cadre simulate --config
configs/simulate_paper.pbtxt`, priced with the built-in calibration): CAD's speedup over each
baseline (min / median / max, per distribution) and the per-cell table."""
import json
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
cells = json.load(open(os.path.join(ROOT, "benchmarks/results/simulate_paper.json")))
by = {(c["model"], c["distribution"], c["context"], c["gpus"], c["strategy"]): c for c in cells}
out = []
w = out.append
w("# `cadre simulate` in the DistCA paper's setting, calibrated\n")
w("Command: `build/bin/cadre simulate --config configs/simulate_paper.pbtxt` (CPU, one process, a few seconds);")
w("summary by `scripts/simulate_paper_summary.py`. Setting: Llama-3-8B-like and CodeLlama-34B-like, 64-512 GPUs,")
w("8 per node, TP 8, PP 1, 128K/256K/512K tokens per micro-batch, 4 micro-batches per DP rank, WLB-like and")
w("ProLong-like documents, recomputation of the linear layers. Every cost comes from the built-in calibration")
w("(`scheduler/data/h200_calibration.json`, docs/simulation.md \"Calibration\"), fitted by `scripts/refit_simulator.sh`")
w("to the runtime as it runs today on one H200 (fused elementwise kernels, the auto attention kernel): linear")
w("segments, recomputation, LM head and loss, optimizer and host overhead from 14 one-GPU profiles; attention from")
w("the auto kernel's measured tables at head dims 64 and 128 with a fitted scale and per-call and per-sequence")
w("costs; the intra-node link from `bench comm`; the inter-node link (50 GB/s) is not measured. The model reproduces")
w("every one-GPU cell of that runtime within 6.1% (simulator_validation.md).\n")
w("CAD's speedup (baseline step time / CAD step time) over all 48 cells:\n")
w("| baseline | all cells: min / median / max | WLB-like docs | ProLong-like docs | paper (DistCA, measured) |")
w("|---|---|---|---|---|")
names = {"fixed": ("fixed packing (Megatron-style DP)", "about 1.9x"),
         "wlb": ("WLB-LLM-like (outlier delay, var-length packing, per-document CP)", "up to 1.35x"),
         "cp": ("per-document CP (head-tail, Megatron-style)", "-")}
def stats(v):
    return "%.2fx / %.2fx / %.2fx" % (min(v), statistics.median(v), max(v))
for s, (label, paper) in names.items():
    allv = [c["cad_speedup"] for c in cells if c["strategy"] == s]
    per = [[c["cad_speedup"] for c in cells if c["strategy"] == s and c["distribution"] == d] for d in ("wlb", "prolong")]
    w("| %s | %s | %s | %s | %s |" % (label, stats(allv), stats(per[0]), stats(per[1]), paper))
w("")
w("The CP group size of the CP and WLB-LLM-like baselines defaults to min(DP, 8) (`cluster.context_parallel`")
w("unset); at TP 8 that is a group of 64 GPUs, inside which every rank shares every micro-batch, so the")
w("baselines' imbalance is left to the packing. With smaller groups (`--set cluster.context_parallel=N`,")
w("results in `simulate_paper_cpN.json`):\n")
w("| CP group | CAD vs WLB-LLM-like: all / WLB-like / ProLong-like (min / median / max) | CAD vs per-document CP: all |")
w("|---|---|---|")
for name, label in (("simulate_paper_cp2.json", "2"), ("simulate_paper_cp4.json", "4"), ("simulate_paper.json", "min(DP, 8) (default)")):
    path = os.path.join(ROOT, "benchmarks/results", name)
    if not os.path.exists(path):
        continue
    cc = json.load(open(path))
    v = lambda s, d=None: [c["cad_speedup"] for c in cc if c["strategy"] == s and (d is None or c["distribution"] == d)]
    w("| %s | %s; %s; %s | %s |" % (label, stats(v("wlb")), stats(v("wlb", "wlb")), stats(v("wlb", "prolong")), stats(v("cp"))))
w("")
w("Why these differ from the paper: the baselines here are priced by the same calibrated cost model as CAD and")
w("pack and shard with perfect knowledge of it (an oracle the real WLB-LLM estimates); their CP communication is")
w("hidden behind attention where long enough and no runtime overheads are added, while CAD's dispatch is priced")
w("exchange by exchange under the step executor's overlap rules (its exposed part shows as straggler time at")
w("256-512 GPUs with ProLong-like documents). The inter-node link (50 GB/s) is not calibrated, and TP")
w("collectives are priced unoverlapped for every strategy alike, which shrinks every ratio.")
w("")
w("Per cell:\n")
w("| model | docs | context | GPUs | CAD step ms | CAD tok/s/GPU | vs fixed | vs WLB-LLM-like | vs CP | CAD / ideal | CAD exposed comm ms | CAD straggler ms |")
w("|---|---|---|---|---|---|---|---|---|---|---|---|")
for k in sorted({k[:4] for k in by}):
    cad = by[k + ("cad",)]
    w("| %s | %s | %dK | %d | %.0f | %.0f | %.2fx | %.2fx | %.2fx | %.2f | %.0f | %.0f |" % (
        k[0], k[1], k[2] // 1024, k[3], cad["step_ms"], cad["tokens_per_s_per_gpu"],
        by[k + ("fixed",)]["cad_speedup"], by[k + ("wlb",)]["cad_speedup"], by[k + ("cp",)]["cad_speedup"],
        cad["step_ms"] / by[k + ("ideal",)]["step_ms"], cad["exposed_comm_ms"], cad["dp_straggler_ms"]))
sys.stdout.write("\n".join(out) + "\n")
