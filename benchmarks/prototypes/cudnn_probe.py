# Prototype (GPU machine, PyTorch): can cuDNN's varlen attention (aten::_cudnn_attention_forward /
# _backward) run the pieces of Cadre's split flash kernel (unmasked prefix chunks, square causal
# diagonal blocks, whole documents: none of them depends on how the causal mask is aligned) faster
# than FlashAttention-2? Also: FlashAttention-2 with sequences issued longest-first (queries
# permuted, keys addressed through seqused_k), and the chunked split without the GQA fold (MHA).
# Prints TF/s (causal FLOPs of the whole batch, backward 2.5x), first-call wall times (graph
# builds) and errors against FlashAttention-2.
import os, sys, time, torch
aten = torch.ops.aten
dev = "cuda"
torch.manual_seed(0)
D = 128
scale = D ** -0.5
print("torch", torch.__version__, "cudnn", torch.backends.cudnn.version(), flush=True)
for name in ("_cudnn_attention_forward", "_cudnn_attention_backward"):
    try:
        print(getattr(aten, name).default._schema, flush=True)
    except Exception as e:
        print(name, "missing:", e)


def cu(lengths):
    out = [0]
    for x in lengths: out.append(out[-1] + x)
    return torch.tensor(out, dtype=torch.int32, device=dev)


def ffwd(q, k, v, cq, ck, mq, mk, causal, seqused_k=None):
    r = aten._flash_attention_forward(q, k, v, cq, ck, mq, mk, 0.0, causal, False, scale=scale,
                                      seqused_k=seqused_k)
    return r[0], r[1]                     # out [T, H, D], lse [H, T]


def fbwd(do, q, k, v, o, lse, cq, ck, mq, mk, causal):
    z = torch.zeros(2, dtype=torch.long, device=dev)
    r = aten._flash_attention_backward(do, q, k, v, o, lse, cq, ck, mq, mk, 0.0, causal, z, z,
                                       scale=scale)
    return r[0], r[1], r[2]


def cfwd(q, k, v, cq, ck, mq, mk, causal):
    r = aten._cudnn_attention_forward(q, k, v, None, cq, ck, mq, mk, True, 0.0, causal, False,
                                      scale=scale)
    return r[0], r[1], r[6], r[7]         # out, lse [T, H, 1], philox seed, offset


def cbwd(do, q, k, v, o, lse, seed, off, cq, ck, mq, mk, causal):
    r = aten._cudnn_attention_backward(do, q, k, v, o, lse, seed, off, None, cq, ck, mq, mk, 0.0,
                                       causal, scale=scale)
    return r[0], r[1], r[2]


def timeit(fn, reps=5):
    for _ in range(2): fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True); b = torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); torch.cuda.synchronize(); ts.append(a.elapsed_time(b))
    ts.sort(); return ts[len(ts) // 2]


def wall(fn):
    torch.cuda.synchronize(); t = time.perf_counter(); fn(); torch.cuda.synchronize()
    return (time.perf_counter() - t) * 1e3


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def section(title, fn):
    print("==", title, flush=True)
    try:
        fn()
    except Exception as e:
        print("  FAILED:", type(e).__name__, str(e).splitlines()[0][:300], flush=True)


def layout(shard, max_kv=131072, work_pairs=1 << 30, cap=2 << 20):
    cand = max_kv // shard
    mean_kv = 0.5 * shard * (cand + 1); mean_pairs = shard * mean_kv - 0.5 * shard * (shard - 1)
    count = max(1, min(cand, int(work_pairs / mean_pairs), int(cap / mean_kv)))
    return [(shard, shard * (cand if count == 1 else 1 + round(i * (cand - 1) / (count - 1))))
            for i in range(count)]


def pairs_of(seqs):
    return sum(q * kv - q * (q - 1) // 2 for q, kv in seqs)


class Split:
    """Prefix chunks (group folded into rows, gathered K/V, no mask) + square diagonals, merged."""
    def __init__(self, seqs, H, HK, chunk):
        self.H, self.HK, self.G = H, HK, H // HK
        cq, ck = [0], [0]
        for q, kv in seqs: cq.append(cq[-1] + q); ck.append(ck[-1] + kv)
        a_rows, fold, qa, ka, d_rows = [], [], [], [], []
        for i, (q, kv) in enumerate(seqs):
            p = kv - q
            for c in range(0, p, chunk):
                e = min(p, c + chunk)
                a_rows += range(ck[i] + c, ck[i] + e); ka.append(e - c); qa.append(q * self.G)
                fold += range(cq[i], cq[i + 1])
            d_rows += range(ck[i] + p, ck[i + 1])
        t = lambda x: torch.tensor(x, device=dev, dtype=torch.long)
        self.a_rows, self.fold, self.d_rows = t(a_rows), t(fold), t(d_rows)
        self.cqa, self.cka, self.mqa, self.mka = cu(qa), cu(ka), max(qa), max(ka)
        qs = [q for q, _ in seqs]
        self.cqd, self.mqd = cu(qs), max(qs)

    def fold_q(self, x):
        x = x.index_select(0, self.fold); n = x.shape[0]
        return x.view(n, self.HK, self.G, D).transpose(1, 2).reshape(n * self.G, self.HK, D)

    def gather(self, k, v):
        return (k.index_select(0, self.a_rows), v.index_select(0, self.a_rows),
                k.index_select(0, self.d_rows), v.index_select(0, self.d_rows))

    def merge(self, oa, la, od, ld):   # la [HK, rows*G], ld [H, T]
        n = la.shape[1] // self.G
        la = la.view(self.HK, n, self.G).transpose(1, 2).reshape(self.H, n)
        oa = oa.view(n, self.G, self.HK, D).transpose(1, 2).reshape(n, self.H, D)
        m = ld.clone()
        m.index_reduce_(1, self.fold, la, "amax", include_self=True)
        s = torch.exp(ld - m)
        acc = od.float() * s.t().unsqueeze(-1)
        wa = torch.exp(la - m.index_select(1, self.fold))
        s = s.index_add(1, self.fold, wa)
        acc.index_add_(0, self.fold, oa.float() * wa.t().unsqueeze(-1))
        return (acc / s.t().unsqueeze(-1)).to(od.dtype), m + torch.log(s)


def tensors(seqs, H, HK):
    tq = sum(q for q, _ in seqs); tk = sum(kv for _, kv in seqs)
    q = torch.randn(tq, H, D, device=dev, dtype=torch.bfloat16)
    k = torch.randn(tk, HK, D, device=dev, dtype=torch.bfloat16)
    v = torch.randn(tk, HK, D, device=dev, dtype=torch.bfloat16)
    return q, k, v, torch.randn_like(q)


def whole():
    for n in (43392, 45568):
        q, k, v, do = tensors([(n, n)], 32, 8)
        c = cu([n]); flops = 4 * n * (n + 1) // 2 * D * 32
        o, l = ffwd(q, k, v, c, c, n, n, True)
        tf = timeit(lambda: ffwd(q, k, v, c, c, n, n, True))
        tb = timeit(lambda: fbwd(do, q, k, v, o, l, c, c, n, n, True))
        calls = [wall(lambda: cfwd(q, k, v, c, c, n, n, True)) for _ in range(4)]
        co, cl, seed, off = cfwd(q, k, v, c, c, n, n, True)
        print(f"  cudnn lse shape {tuple(cl.shape)}; fwd calls (wall ms) {[round(x, 1) for x in calls]}"
              f"; err out {rel(co, o):.1e} lse {rel(cl.view(n, 32).t(), l):.1e}", flush=True)
        tcf = timeit(lambda: cfwd(q, k, v, c, c, n, n, True))
        print(f"  whole {n}: FA2 fwd {flops/tf/1e9:.0f} bwd {2.5*flops/tb/1e9:.0f} | cuDNN fwd "
              f"{flops/tcf/1e9:.0f}", flush=True)
        if os.environ.get("CUDNN_BWD", "1") == "0": continue
        g = fbwd(do, q, k, v, o, l, c, c, n, n, True)
        firstb = wall(lambda: cbwd(do, q, k, v, co, cl, seed, off, c, c, n, n, True))
        cg = cbwd(do, q, k, v, co, cl, seed, off, c, c, n, n, True)
        tcb = timeit(lambda: cbwd(do, q, k, v, co, cl, seed, off, c, c, n, n, True))
        print(f"  whole {n}: FA2 fwd {flops/tf/1e9:.0f} bwd {2.5*flops/tb/1e9:.0f} | cuDNN fwd "
              f"{flops/tcf/1e9:.0f} bwd {2.5*flops/tcb/1e9:.0f} TF/s (first bwd call {firstb:.1f} ms) | "
              f"err out {rel(co, o):.1e} lse {rel(cl.view(n, 32).t(), l):.1e} dq {rel(cg[0], g[0]):.1e} "
              f"dk {rel(cg[1], g[1]):.1e} dv {rel(cg[2], g[2]):.1e}", flush=True)
    # a new shape every call (training changes the layout every step)
    for i in range(1, 4):
        n = 43392 - 128 * i
        q, k, v, do = tensors([(n // 2, n // 2), (n // 2, n // 2)], 32, 8)
        c = cu([n // 2, n // 2])
        print(f"  new layout {i}: cuDNN fwd first call {wall(lambda: cfwd(q, k, v, c, c, n//2, n//2, True)):.1f} ms,"
              f" second {wall(lambda: cfwd(q, k, v, c, c, n//2, n//2, True)):.1f} ms; FA2 "
              f"{wall(lambda: ffwd(q, k, v, c, c, n//2, n//2, True)):.1f} ms", flush=True)


def shards(shard, H=32, HK=8, chunk=32768, backward=True):
    def run():
        seqs = layout(shard)
        q, k, v, do = tensors(seqs, H, HK)
        flops = 4 * pairs_of(seqs) * D * H
        cq, ck = cu([a for a, _ in seqs]), cu([b for _, b in seqs])
        mq, mk = max(a for a, _ in seqs), max(b for _, b in seqs)
        o, l = ffwd(q, k, v, cq, ck, mq, mk, True)
        tf = timeit(lambda: ffwd(q, k, v, cq, ck, mq, mk, True))
        line = f"  {shard} x{len(seqs)} H{H}/{HK}: FA2 unsplit fwd {flops/tf/1e9:.0f}"
        # longest first: queries permuted, keys left in place and addressed by seqused_k
        order = sorted(range(len(seqs)), key=lambda i: -seqs[i][1])
        cqh = [0]
        for a, _ in seqs: cqh.append(cqh[-1] + a)
        perm = torch.cat([torch.arange(cqh[i], cqh[i + 1], device=dev) for i in order])
        cq_r = cu([seqs[i][0] for i in order])
        ck_start = torch.tensor([int(ck[i]) for i in order] + [int(ck[-1])], dtype=torch.int32, device=dev)
        used = torch.tensor([seqs[i][1] for i in order], dtype=torch.int32, device=dev)
        q_r = q.index_select(0, perm)
        o_r, l_r = ffwd(q_r, k, v, cq_r, ck_start, mq, mk, True, seqused_k=used)
        err_r = rel(o_r, o.index_select(0, perm))
        tr = timeit(lambda: ffwd(q_r, k, v, cq_r, ck_start, mq, mk, True, seqused_k=used))
        tr_full = timeit(lambda: ffwd(q.index_select(0, perm), k, v, cq_r, ck_start, mq, mk, True,
                                      seqused_k=used)[0].index_select(0, torch.argsort(perm)))
        line += f" | longest-first {flops/tr/1e9:.0f} (+permutes {flops/tr_full/1e9:.0f}, err {err_r:.1e})"
        sp = Split(seqs, H, HK, chunk)
        qa = sp.fold_q(q); ka, va, kd, vd = sp.gather(k, v)
        def f_split():
            oa, la = ffwd(qa, ka, va, sp.cqa, sp.cka, sp.mqa, sp.mka, False)
            od, ld = ffwd(q, kd, vd, sp.cqd, sp.cqd, sp.mqd, sp.mqd, True)
            return sp.merge(oa, la, od, ld)
        os_, ls_ = f_split()
        ta = timeit(lambda: ffwd(qa, ka, va, sp.cqa, sp.cka, sp.mqa, sp.mka, False))
        td = timeit(lambda: ffwd(q, kd, vd, sp.cqd, sp.cqd, sp.mqd, sp.mqd, True))
        ts = timeit(f_split)
        line += (f" | FA2 split (gathered, chunk {chunk}) {flops/ts/1e9:.0f} [prefix {ta:.2f} ms,"
                 f" diag {td:.2f} ms, all {ts:.2f} ms] err {rel(os_, o):.1e}")
        def c_split():
            oa, la, _, _ = cfwd(qa, ka, va, sp.cqa, sp.cka, sp.mqa, sp.mka, False)
            od, ld, _, _ = cfwd(q, kd, vd, sp.cqd, sp.cqd, sp.mqd, sp.mqd, True)
            return sp.merge(oa, la.view(-1, HK).t(), od, ld.view(-1, H).t())
        try:
            if os.environ.get("CUDNN", "1") == "0": raise RuntimeError("skipped")
            oc, lc = c_split()
            tca = timeit(lambda: cfwd(qa, ka, va, sp.cqa, sp.cka, sp.mqa, sp.mka, False))
            tcd = timeit(lambda: cfwd(q, kd, vd, sp.cqd, sp.cqd, sp.mqd, sp.mqd, True))
            tc = timeit(c_split)
            line += (f" | cuDNN split {flops/tc/1e9:.0f} [prefix {tca:.2f} ms, diag {tcd:.2f} ms] "
                     f"err {rel(oc, o):.1e} lse {rel(lc, l):.1e}")
        except Exception as e:
            line += f" | cuDNN split FAILED {type(e).__name__} {str(e).splitlines()[0][:200]}"
        print(line, flush=True)
        if not backward: return
        tb = timeit(lambda: fbwd(do, q, k, v, o, l, cq, ck, mq, mk, True))
        lfa = l.index_select(1, sp.fold); n = lfa.shape[1]
        lfa = lfa.view(HK, H // HK, n).transpose(1, 2).reshape(HK, n * (H // HK))
        oa_f, do_f = sp.fold_q(o), sp.fold_q(do)
        tba = timeit(lambda: fbwd(do_f, qa, ka, va, oa_f, lfa, sp.cqa, sp.cka, sp.mqa, sp.mka, False))
        tbd = timeit(lambda: fbwd(do, q, kd, vd, o, l, sp.cqd, sp.cqd, sp.mqd, sp.mqd, True))
        line = (f"  {shard} backward: FA2 unsplit {2.5*flops/tb/1e9:.0f} | FA2 parts prefix {tba:.2f} ms"
                f" + diag {tbd:.2f} ms = {2.5*flops/(tba+tbd)/1e9:.0f}")
        try:
            if os.environ.get("CUDNN", "1") == "0": raise RuntimeError("skipped")
            lfa_c = lfa.t().contiguous().view(-1, HK, 1)
            l_c = l.t().contiguous().view(-1, H, 1)
            z = torch.zeros(2, dtype=torch.long, device=dev)
            _, _, seed, off = cfwd(q, kd, vd, sp.cqd, sp.cqd, sp.mqd, sp.mqd, True)
            ga = cbwd(do_f, qa, ka, va, oa_f, lfa_c, seed, off, sp.cqa, sp.cka, sp.mqa, sp.mka, False)
            fa = fbwd(do_f, qa, ka, va, oa_f, lfa, sp.cqa, sp.cka, sp.mqa, sp.mka, False)
            tcba = timeit(lambda: cbwd(do_f, qa, ka, va, oa_f, lfa_c, seed, off, sp.cqa, sp.cka, sp.mqa, sp.mka, False))
            tcbd = timeit(lambda: cbwd(do, q, kd, vd, o, l_c, seed, off, sp.cqd, sp.cqd, sp.mqd, sp.mqd, True))
            line += (f" | cuDNN parts prefix {tcba:.2f} ms + diag {tcbd:.2f} ms = "
                     f"{2.5*flops/(tcba+tcbd)/1e9:.0f} (prefix err vs FA2 dq {rel(ga[0], fa[0]):.1e} "
                     f"dk {rel(ga[1], fa[1]):.1e})")
        except Exception as e:
            line += f" | cuDNN backward FAILED {type(e).__name__} {str(e).splitlines()[0][:200]}"
        print(line, flush=True)
        torch.cuda.empty_cache()
    return run


what = sys.argv[1] if len(sys.argv) > 1 else "all"
if what in ("all", "whole"):
    section("whole documents", whole)
if what in ("all", "shards"):
    for s in (128, 2048, 512):
        section(f"shards {s} GQA", shards(s))
    section("shards 128 MHA", shards(128, 32, 32, 32768, backward=False))
    section("shards 256 MHA", shards(256, 32, 32, 32768, backward=False))
    section("shards 2048 GQA chunk 16K", shards(2048, 32, 8, 16384, backward=False))
