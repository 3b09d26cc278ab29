#!/usr/bin/env python3
"""Simulated vs measured: every measured GPU training cell, priced by `cadre simulate
--training-step` (the runtime's own documents, nano-batches, plans and stream order) with a
calibration, against the committed measurements. Writes a Markdown table, JSON and an SVG plot,
and exits non-zero when a gated cell's error exceeds its target (10% on one GPU, 15% on two).

  scripts/validate_simulator.py [--cadre build/bin/cadre] [--calibration FILE]
                                [--results FILE:PACKING:GATE[:OPS] ...] [--out PREFIX]

Each --results entry is a `scripts/gpu_train_bench.sh` JSONL (or a profile bench JSONL with peak
memory), the data.packing its runs used when the rows do not say, whether its cells are gated
("gate": step time and peak memory; "memory": peak memory only, step time reported; "report":
measured on a runtime that has changed since), and how its runs computed RMSNorm, RoPE, SwiGLU and
the loss (simulate.elementwise_ops; the memory estimate differs): "fused" (the GPU kernels,
983d90d on), "composite" (LibTorch's compositions: runs before 983d90d, CADRE_FUSED_OPS=0; the
default), or "e2e" (scripts/gpu_kernel_e2e.sh's names: *_flash and *_unfused ran with
CADRE_FUSED_OPS=0). A row's own "elementwise_ops" (summaries from 983d90d's successors) wins.
"""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_RESULTS = [
    # 1 GPU at 68cb25a: packing "whole" (fill did not exist yet); before the fused kernels and the
    # cuDNN kernel: an earlier runtime than the calibration prices (step time reported).
    "benchmarks/results/h200x1_train_bench.jsonl:whole:earlier:composite",
    "benchmarks/results/h200x1_train_bench_fill_quick.jsonl:fill:earlier:composite",
    # 2 GPUs at 1442622: before bucketed, overlapped gradient reduction and the fixes that made
    # CAD's dispatch cost ~1% on one GPU; reported, not gated (docs/simulation.md).
    "benchmarks/results/h200x2_train_bench.jsonl:whole:report:composite",
    # Profile runs (peak memory measured). 1 GPU at 9e69eb0: the current runtime (fused kernels,
    # auto attention with dense classes), 6 steps (2 warm-up), gated on their steady steps.
    "benchmarks/results/profiles/h200x1_profile_bench.jsonl:fill:gate:fused",
    "benchmarks/results/profiles/h200x2_profile_bench.jsonl:fill:gate:composite",
    # Model-parallel bench on one GPU (peak memory measured; llama-3b and the sharded optimizer;
    # the dry-run cells are the 2- and 8-GPU cells run at T=1, D=1 on one GPU), at 2ae4f1c:
    # before the fused kernels, an earlier runtime.
    "benchmarks/results/h200x1_parallel_bench.jsonl:fill:earlier:composite",
    # The kernel A/B on one GPU at 9e69eb0 (llama-1b, 64K tokens, one document and ProLong fill;
    # flash or auto attention, fused kernels on or off): peak memory gated. Step time reported
    # only: the calibration prices one attention kernel and one set of elementwise kernels (those
    # its profiles ran), and these cells vary both on purpose.
    "benchmarks/results/h200x1_kernel_e2e.jsonl:whole:memory:e2e",
]


def e2e_row(row):
    """Summaries do not name data.fixed_tokens: the benchmarks' "fixed" cells are one document of
    data.context_length tokens (packing whole)."""
    if row.get("distribution") == "fixed" and "fixed_tokens" not in row:
        row = dict(row, fixed_tokens=int(row["context_length"]))
    return row


def elementwise_ops(row, ops):
    if row.get("elementwise_ops") in ("fused", "composite"):
        return row["elementwise_ops"]
    if ops == "e2e":
        name = row["run"]
        return "composite" if "unfused" in name or name.endswith("_flash") else "fused"
    return ops

# The simulator prices the steady state. A cuDNN graph build or an auto kernel-choice timing is a
# one-time stall of the step that meets a new shape class. A cell whose measured steps hold some is
# compared on its steady steps (below) when it names them, else its step time is reported and left
# out of the gate, with the reason printed. Its peak memory is gated either way (a build changes no
# tensor the step keeps).
def graph_builds(row):
    return (int(row.get("kernel_graphs_built_in_measured_steps", 0) or 0) +
            int(row.get("kernel_choices_measured_in_measured_steps", 0) or 0))


# A cell's steady steps (measured steps without a graph build or kernel-choice timing) and their
# mean measured time: from the summary (`steady_step_numbers`, `cadre train` since it records
# them) or from the profile committed beside the results (`<prefix>_<run>.profile.json`, per-step
# counts). None when the measured steps had no stall (all steps count) or nothing says which.
def steady_steps(row, results_path):
    if graph_builds(row) == 0:
        return None
    if row.get("steady_step_numbers"):
        return [int(n) for n in row["steady_step_numbers"]], float(row["steady_step_ms"])
    suffix = "_profile_bench.jsonl"
    profile = "%s_%s.profile.json" % (results_path[:-len(suffix)], row.get("run", ""))
    if not results_path.endswith(suffix) or not os.path.exists(profile):
        return None
    p = json.load(open(profile))
    warmup = int(p.get("warmup_steps", 2) or 0)
    steady = {}
    for i, st in enumerate(p.get("steps", [])):
        stalls = sum(int(r.get("kernel_graphs_built", 0) or 0) +
                     int(r.get("kernel_choices_measured", 0) or 0) for r in st.get("ranks", []))
        if i >= warmup and stalls == 0:
            steady[int(st.get("step", i + 1))] = float(st["step_ms"])
    if not steady:
        return None
    return sorted(steady), sum(steady.values()) / len(steady)


# (measured ms, simulated ms, steady steps or None): the means over the steady steps, the same
# steps on both sides (the simulator prices each step's own documents, as the data loader draws
# them), when the measured steps built graphs; else the summaries' means.
def step_pair(row, sim, results_path):
    steady = steady_steps(row, results_path)
    if steady and len(sim.get("steps_ms", [])) >= max(steady[0]):
        numbers, measured = steady
        simulated = sum(sim["steps_ms"][n - 1] for n in numbers) / len(numbers)
        return measured, simulated, len(numbers)
    return float(row["step_ms"]), float(sim["step_ms"]), None


def measured_peak_gib(row):
    if row.get("peak_allocated_gib"):
        return float(row["peak_allocated_gib"])
    if row.get("peak_memory_kind") == "allocator" and row.get("peak_memory_bytes"):
        return int(row["peak_memory_bytes"]) / 2**30
    return None


def overrides(row, packing, ops):
    gpus = int(row.get("gpus", 1))
    s = ["cluster.num_gpus=%d" % gpus, "cluster.gpus_per_node=%d" % gpus,
         "data.distribution=%s" % row["distribution"],
         "data.context_length=%d" % int(row["context_length"]),
         "training.attention=%s" % row["attention"],
         "training.ping_pong=%s" % ("true" if row.get("ping_pong", True) else "false"),
         "training.recompute=%s" % row.get("recompute", "linear"),
         "training.steps=%d" % int(row.get("steps", 6)),
         "data.packing=%s" % row.get("packing", packing),
         "training.overlap_grad_reduce=%s" % ("true" if row.get("overlap_grad_reduce", True) else "false"),
         "scheduler.server_mode=%s" % row.get("server_mode", "in_place"),
         "simulate.elementwise_ops=%s" % ops]
    if row.get("server_mode") == "dedicated":
        s.append("scheduler.num_dedicated_servers=1")
    if row.get("model"):
        s.append("model.preset=%s" % row["model"])
    if row.get("fixed_tokens"):
        s.append("data.fixed_tokens=%d" % int(row["fixed_tokens"]))
    if "tensor_parallel" in row:
        s.append("cluster.tensor_parallel=%d" % int(row["tensor_parallel"]))
    if "shard_optimizer" in row:
        s.append("training.shard_optimizer=%s" % ("true" if row["shard_optimizer"] else "false"))
    return s


def simulate(cadre, row, packing, ops, calibration):
    cmd = [cadre, "simulate", "--training-step", "--config", os.path.join(ROOT, "configs/train_1b.pbtxt")]
    for o in overrides(row, packing, ops) + (["cluster.calibration=" + calibration] if calibration else []):
        cmd += ["--set", o]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit("validate_simulator: %s failed: %s" % (" ".join(cmd), out.stderr.strip()))
    return json.loads(out.stdout)


def svg(rows, path, measured="measured_ms", simulated="simulated_ms", gated="step_gated",
        title="step time, ms", tick=500):
    rows = [r for r in rows if r.get(measured)]
    if not rows:  # nothing measured for this plot (e.g. no peak memory): no plot
        if os.path.exists(path):
            os.remove(path)
        return
    w, h, m = 560, 560, 60
    values = [r[measured] for r in rows] + [r[simulated] for r in rows]
    lo, hi = 0.0, max(values) * 1.1
    sx = lambda v: m + (v - lo) / (hi - lo) * (w - 2 * m)
    sy = lambda v: h - m - (v - lo) / (hi - lo) * (h - 2 * m)
    p = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="11">' % (w, h),
         '<rect width="100%" height="100%" fill="white"/>',
         '<text x="%d" y="20" font-size="14">cadre simulate --training-step vs cadre train (%s)</text>' % (m, title)]
    for f, style in ((1.0, 'stroke="#444"'), (1.1, 'stroke="#aaa" stroke-dasharray="4,3"'), (0.9, 'stroke="#aaa" stroke-dasharray="4,3"')):
        p.append('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" %s/>' % (sx(lo), sy(lo * f), sx(hi / max(f, 1)), sy(hi / max(f, 1) * f), style))
    for t in range(0, int(hi) + 1, max(1, int(hi / 5 / tick) * tick or tick)):
        p.append('<text x="%.1f" y="%d" text-anchor="middle">%d</text>' % (sx(t), h - m + 16, t))
        p.append('<text x="%d" y="%.1f" text-anchor="end">%d</text>' % (m - 6, sy(t) + 4, t))
    p.append('<text x="%d" y="%d" text-anchor="middle">measured (%s)</text>' % (w / 2, h - 18, title))
    p.append('<text x="16" y="%d" transform="rotate(-90 16 %d)" text-anchor="middle">simulated (%s)</text>' % (h / 2, h / 2, title))
    colors = {1: "#1f77b4", 2: "#d62728"}
    for r in rows:
        fill = colors.get(r["gpus"], "#2ca02c") if r[gated] else "none"
        stroke = colors.get(r["gpus"], "#2ca02c")
        p.append('<circle cx="%.1f" cy="%.1f" r="4" fill="%s" stroke="%s"><title>%s: measured %.0f, simulated %.0f</title></circle>'
                 % (sx(r[measured]), sy(r[simulated]), fill, stroke, r["cell"], r[measured], r[simulated]))
    p.append('<text x="%d" y="44"><tspan fill="#1f77b4">&#9679; 1 GPU</tspan> <tspan fill="#d62728">&#9679; 2 GPUs</tspan> (filled: gated, 10%% / 15%%)</text>' % (m + 10))
    p.append('<text x="%d" y="60" fill="#666">&#9675; hollow: reported only (older runtime, or graph builds in the measured steps)</text>' % (m + 10))
    p.append('<text x="%d" y="76" fill="#888">dashed: &#177;10%%</text>' % (m + 10))
    p.append("</svg>")
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(p) + "\n")
    os.replace(path + ".tmp", path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cadre", default=os.path.join(ROOT, "build/bin/cadre"))
    ap.add_argument("--calibration", default="", help="cluster.calibration (default: built-in)")
    ap.add_argument("--results", nargs="*", default=None)
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks/results/simulator_validation"))
    a = ap.parse_args()
    rows, failures = [], []
    for spec in a.results if a.results is not None else DEFAULT_RESULTS:
        parts = spec.split(":")
        path, packing, gate = parts[:3]
        spec_ops = parts[3] if len(parts) > 3 else "composite"
        if (gate not in ("gate", "memory", "earlier", "report") or
                spec_ops not in ("fused", "composite", "e2e")):
            raise SystemExit("validate_simulator: bad --results entry '%s'; accepted: "
                             "FILE:PACKING:{gate,memory,earlier,report}[:{fused,composite,e2e}]"
                             % spec)
        full = path if os.path.isabs(path) else os.path.join(ROOT, path)
        if not os.path.exists(full):
            continue
        for line in open(full):
            if not line.strip():
                continue
            row = json.loads(line)
            row = e2e_row(row)
            ops = elementwise_ops(row, spec_ops)
            sim = simulate(a.cadre, row, packing, ops, a.calibration)
            gpus = int(row.get("gpus", 1))
            target = 0.10 if gpus == 1 else 0.15
            measured_ms, simulated_ms, steady = step_pair(row, sim, full)
            err = simulated_ms / measured_ms - 1
            mem = measured_peak_gib(row)
            mem_err = sim["memory"]["peak_gib"] / mem - 1 if mem else None
            builds = graph_builds(row) if steady is None else 0
            r = dict(cell=row["run"], source=os.path.relpath(full, ROOT), gpus=gpus,
                     packing=row.get("packing", packing), elementwise_ops=ops,
                     measured_ms=measured_ms, steady_steps=steady, simulated_ms=simulated_ms,
                     error=err,
                     target=target, gated=gate in ("gate", "memory", "earlier"),
                     step_gated=gate == "gate" and builds == 0, graph_builds=builds,
                     measured_peak_gib=mem, simulated_peak_gib=sim["memory"]["peak_gib"],
                     memory_error=mem_err, memory_phase=sim["memory"].get("phase", ""),
                     simulated=sim)
            if gate == "gate" and builds > 0:
                r["step_excluded"] = ("%d cuDNN graph builds in its measured steps (one-time "
                                      "warm-up; the simulator prices the steady state)" % builds)
            if gate == "memory":
                r["step_excluded"] = ("kernel A/B cell (attention kernel %s, elementwise ops %s): "
                                      "peak memory gated, step time reported"
                                      % (row.get("attention_kernel", "?"), ops))
            if gate == "earlier":
                r["step_excluded"] = ("measured with an earlier runtime (attention kernel %s, "
                                      "elementwise ops %s) than the calibration prices: peak "
                                      "memory gated, step time reported"
                                      % (row.get("attention_kernel", "flash"), ops))
            rows.append(r)
            over_step = r["step_gated"] and abs(err) > target
            over_mem = r["gated"] and mem_err is not None and abs(mem_err) > 0.10
            if over_step or over_mem:
                failures.append(r)
    if not rows:
        raise SystemExit("validate_simulator: no measured results found")
    md = ["| cell | source | GPUs | packing | elementwise ops | measured ms | simulated ms | error | target | step gated | measured peak GiB | simulated peak GiB | memory error | peak phase | gated |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append("| %s | %s | %d | %s | %s | %.0f | %.0f | %+.1f%% | %d%% | %s | %s | %.1f | %s | %s | %s |" % (
            r["cell"], os.path.basename(r["source"]), r["gpus"], r["packing"], r["elementwise_ops"], r["measured_ms"],
            r["simulated_ms"], 100 * r["error"], round(100 * r["target"]),
            ("yes (%d steady steps)" % r["steady_steps"] if r["steady_steps"] else "yes") if r["step_gated"] else ("no: %d graph builds" % r["graph_builds"] if r["graph_builds"] and r["gated"]
                                           else ("no: earlier runtime" if "earlier runtime" in r.get("step_excluded", "")
                                                 else ("no: kernel A/B" if r["gated"] else "report"))),
            "%.1f" % r["measured_peak_gib"] if r["measured_peak_gib"] else "not measured",
            r["simulated_peak_gib"],
            "%+.1f%%" % (100 * r["memory_error"]) if r["memory_error"] is not None else "-",
            r["memory_phase"], "yes" if r["gated"] else "report"))
    text = "\n".join(md) + "\n"
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out + ".md.tmp", "w") as f:
        f.write(text)
    os.replace(a.out + ".md.tmp", a.out + ".md")
    with open(a.out + ".json.tmp", "w") as f:
        json.dump(dict(calibration=a.calibration or "(built-in)", rows=rows), f, indent=1)
    os.replace(a.out + ".json.tmp", a.out + ".json")
    svg(rows, a.out + ".svg")
    svg(rows, a.out + "_memory.svg", "measured_peak_gib", "simulated_peak_gib", "gated",
        "peak memory, GiB", 10)
    print(text)
    step_gated = [r for r in rows if r["step_gated"]]
    worst = max((abs(r["error"]) for r in step_gated), default=0)
    mem_gated = [r for r in rows if r["gated"] and r["memory_error"] is not None]
    worst_mem = max((abs(r["memory_error"]) for r in mem_gated), default=0)
    print("step time: %d gated cells, worst error %.1f%%" % (len(step_gated), 100 * worst))
    print("peak memory: %d gated cells, worst error %.1f%%" % (len(mem_gated), 100 * worst_mem))
    for r in rows:
        if r.get("step_excluded"):
            print("  step time not gated: %s (%s): %s; error %+.1f%%" % (
                r["cell"], os.path.basename(r["source"]), r["step_excluded"], 100 * r["error"]))
    print("%d over target" % len(failures))
    for r in failures:
        print("  FAIL %s (%s): step %+.1f%% (target %d%%%s)%s" % (
            r["cell"], os.path.basename(r["source"]), 100 * r["error"], round(100 * r["target"]),
            "" if r["step_gated"] else ", not gated",
            "" if r["memory_error"] is None else ", memory %+.1f%% (target 10%%)" % (100 * r["memory_error"])))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
