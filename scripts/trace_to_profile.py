#!/usr/bin/env python3
"""Converts a Chrome trace of `cadre train` (output.trace) into a training profile
(scheduler/profile.proto) that `cadre calibrate` accepts, for runs made before profiles existed.

A trace lacks what a profile adds, so this fills it as follows (each choice is recorded in the
profile's description, and docs/simulation.md lists them):
  * tokens per nano-batch: --nano-tokens, the exact counts of the traced step from
    `cadre simulate --training-step` with the run's config (its "nano_tokens"), or
    --tokens-per-nano, one assumed count;
  * recomputation: traces before the recompute spans existed fold it into "... bwd"; it is split
    off as the same layer's forward time (a recomputation re-runs that forward);
  * the optimizer step was not a span: --optimizer-us (an estimate, default from HBM traffic);
  * attention calls have no shapes (calibration then keeps the kernel table unscaled);
  * gradient buckets and exchanges are left out (no byte counts in the trace).

  scripts/trace_to_profile.py TRACE --model llama-1b --nano-tokens 32263,32154;30934,31302 \
      --step-ms 1866 --recompute linear --out PROFILE
"""
import argparse
import json
import re
import sys

PRESETS = {  # layers, hidden, heads, kv heads, ffn, vocab, tied
    "llama-1b": (16, 2048, 32, 8, 8192, 128256, True),
    "llama-3b": (28, 3072, 24, 8, 8192, 128256, True),
    "llama-8b": (32, 4096, 32, 8, 14336, 128256, False),
}


def parameters(layers, h, heads, kv, ffn, vocab, tied):
    d = h // heads
    layer = h * (heads * d + 2 * kv * d) + heads * d * h + 3 * h * ffn + 2 * h
    return layers * layer + h + vocab * h * (1 if tied else 2)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trace")
    ap.add_argument("--model", default="llama-1b", choices=sorted(PRESETS))
    ap.add_argument("--tokens-per-nano", type=int, default=None,
                    help="one count for every nano-batch of every rank (an assumption)")
    ap.add_argument("--nano-tokens", default=None,
                    help="exact counts per rank and nano-batch, 'A,B;A,B' in rank order (from "
                         "`cadre simulate --training-step` with the run's config: nano_tokens)")
    ap.add_argument("--step-ms", type=float, required=True, help="the run's measured step time")
    ap.add_argument("--recompute", default="linear", choices=["linear", "none"])
    ap.add_argument("--optimizer-us", type=float, default=None,
                    help="default: AdamW's HBM traffic (28 bytes per parameter) at 3.5 TB/s")
    ap.add_argument("--attention", default="cad")
    ap.add_argument("--ping-pong", default="true")
    ap.add_argument("--distribution", default="prolong")
    ap.add_argument("--context", type=int, default=65536)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    if (a.tokens_per_nano is None) == (a.nano_tokens is None):
        ap.error("give exactly one of --tokens-per-nano and --nano-tokens")
    exact = [[int(x) for x in r.split(",")] for r in a.nano_tokens.split(";")] if a.nano_tokens else None
    layers, h, heads, kv, ffn, vocab, tied = PRESETS[a.model]
    params = parameters(layers, h, heads, kv, ffn, vocab, tied)
    optimizer_us = a.optimizer_us if a.optimizer_us is not None else params * 28 / 3.5e12 * 1e6
    trace = json.load(open(a.trace))
    events = [e for e in trace["traceEvents"] if e.get("ph") == "X"]
    pids = sorted({e["pid"] for e in events})
    nanos = 2 if any(e["name"].endswith(" B") for e in events) else 1
    layer_re = re.compile(r"^L(\d+) (qkv|out\+mlp)( bwd)?( A| B)?$")
    ranks = []
    for pid in pids:
        tokens_of = (lambda n, pid=pid: exact[pid][n]) if exact else (lambda n: a.tokens_per_nano)
        spans = sorted((e for e in events if e["pid"] == pid), key=lambda e: e["ts"])
        t0 = min(e["ts"] for e in spans)
        forward = {}
        for e in spans:
            m = layer_re.match(e["name"])
            if m and not m.group(3):
                forward[(int(m.group(1)), m.group(2), m.group(4) or " A")] = e["dur"]
        segments, attention = [], []
        counts = {"forward": 0, "backward": 0}
        compute = []
        for e in spans:
            name, start, dur = e["name"], e["ts"] - t0, e["dur"]
            if e["tid"] == 1:
                compute.append((start, start + dur))
            m = layer_re.match(name)
            nano = 1 if name.endswith(" B") else 0
            if m:
                layer, kind = int(m.group(1)), "qkv" if m.group(2) == "qkv" else "out_mlp"
                if not m.group(3):
                    segments.append(dict(name=name, kind=kind, direction="forward", layer=layer,
                                         nano=nano, tokens=tokens_of(nano), start_us=start, us=dur))
                    continue
                rec = forward.get((layer, m.group(2), m.group(4) or " A"), 0) if a.recompute == "linear" else 0
                rec = min(rec, dur)
                if a.recompute == "linear":
                    segments.append(dict(name=name + " (recompute part)", kind=kind, direction="recompute",
                                         layer=layer, nano=nano, tokens=tokens_of(nano),
                                         start_us=start, us=rec))
                segments.append(dict(name=name, kind=kind, direction="backward", layer=layer, nano=nano,
                                     tokens=tokens_of(nano), start_us=start + rec, us=dur - rec))
            elif name.startswith("embed"):
                segments.append(dict(name=name, kind="embedding",
                                     direction="backward" if " bwd" in name else "forward", layer=-1,
                                     nano=nano, tokens=tokens_of(nano), start_us=start, us=dur))
            elif name.startswith("head+loss"):
                segments.append(dict(name=name, kind="head_loss", direction="step", layer=-1, nano=nano,
                                     tokens=tokens_of(nano), start_us=start, us=dur))
            elif name.startswith("attention "):
                d = "forward" if "fwd" in name else "backward"
                k = counts[d]
                counts[d] += 1
                layer = k // nanos if d == "forward" else layers - 1 - k // nanos
                attention.append(dict(direction=d, where="server" if "server" in name else "local",
                                      layer=layer, nano=k % nanos, shapes=[], start_us=start, us=dur))
        end = max(e["ts"] + e["dur"] for e in spans) - t0
        segments.append(dict(name="optimizer step (estimated)", kind="optimizer", direction="step",
                             layer=-1, nano=-1, tokens=0, start_us=end, us=optimizer_us))
        compute.append((end, end + optimizer_us))
        compute.sort()
        busy, cur = 0.0, None
        for s, e in compute:
            if cur is None or s > cur[1]:
                if cur:
                    busy += cur[1] - cur[0]
                cur = [s, e]
            else:
                cur[1] = max(cur[1], e)
        busy += cur[1] - cur[0]
        # Communication outside compute: the step's timeline extent minus compute busy time.
        exposed = max(0.0, end + optimizer_us - busy)
        ranks.append(dict(rank=pid, worker=True,
                          nano_batches=[dict(micro_batch=0, nano=j, tokens=tokens_of(j),
                                             doc_lengths=[]) for j in range(nanos)],
                          segments=segments, attention=attention, exchanges=[], gradient_buckets=[],
                          compute_busy_us=busy, exposed_communication_us=exposed,
                          wall_ms=a.step_ms, peak_allocated_bytes=0, peak_reserved_bytes=0))
    profile = dict(
        schema="cadre.profile/1",
        description=("converted by scripts/trace_to_profile.py from %s (%s): tokens per nano-batch "
                     "%s; recomputation split off as the forward's time; optimizer step "
                     "%.0f us estimated, not measured; no attention shapes, buckets or exchanges"
                     % (a.trace, trace.get("otherData", {}).get("title", ""),
                        ("from the data loader: " + a.nano_tokens) if exact else
                        ("%d assumed" % a.tokens_per_nano), optimizer_us)),
        model=dict(preset=a.model, num_layers=layers, hidden_size=h, num_heads=heads, num_kv_heads=kv,
                   head_dim=h // heads, ffn_hidden_size=ffn, vocab_size=vocab, tie_embeddings=tied,
                   parameters=params),
        ranks=len(pids), workers=len(pids), tensor_parallel=1, attention=a.attention,
        ping_pong=a.ping_pong == "true", recompute=a.recompute, dtype="bf16", loss_chunk_tokens=8192,
        grad_bucket_mib=64, overlap_grad_reduce=True, micro_batches=1, context_length=a.context,
        distribution=a.distribution, packing="fill", server_mode="in_place", warmup_steps=0,
        steps=[dict(step=1, step_ms=a.step_ms, ranks=ranks)])
    with open(a.out, "w") as f:
        json.dump(profile, f, indent=0)
        f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
