# Prototype (GPU machine, PyTorch): does splitting each query shard's attention into an unmasked
# prefix part (GQA heads folded into query rows, no causal mask, optionally split into key chunks)
# and a causal diagonal part, merged by log-sum-exp, speed up FlashAttention-2 on short shards?
# Exactness: with the global out and lse, each part's backward gives exact partial gradients.
import sys, torch
aten = torch.ops.aten
dev = "cuda"
torch.manual_seed(0)
import os
H, HK, D = int(os.environ.get("H", 32)), int(os.environ.get("HK", 8)), 128
G = H // HK
scale = D ** -0.5

def fwd(q, k, v, cq, ck, mq, mk, causal, seqused_k=None):
    r = aten._flash_attention_forward(q, k, v, cq, ck, mq, mk, 0.0, causal, False, scale=scale,
                                      seqused_k=seqused_k)
    return r[0], r[1]

def bwd(do, q, k, v, o, lse, cq, ck, mq, mk, causal):
    z = torch.zeros(2, dtype=torch.long, device=dev)
    r = aten._flash_attention_backward(do, q, k, v, o, lse, cq, ck, mq, mk, 0.0, causal, z, z, scale=scale)
    return r[0], r[1], r[2]

def cu(lengths):
    return torch.tensor([0] + list(torch.tensor(lengths).cumsum(0).tolist()), dtype=torch.int32, device=dev)

def timeit(fn, reps=10):
    for _ in range(3): fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True); b = torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); torch.cuda.synchronize(); ts.append(a.elapsed_time(b))
    ts.sort(); return ts[len(ts)//2]

def layout(shard, max_kv=131072, pair_cap=2**30, row_cap=2**21):
    n = 1
    while True:
        m = n + 1
        kvs = [int(shard + (max_kv - shard) * i / max(m - 1, 1)) for i in range(m)]
        pairs = sum(shard * kv - shard * (shard - 1) // 2 for kv in kvs)
        if pairs > pair_cap or sum(kvs) > row_cap: break
        n = m
        if n > 4096: break
    kvs = [int(shard + (max_kv - shard) * i / max(n - 1, 1)) for i in range(n)]
    return [shard] * n, kvs

class Decomposed:
    def __init__(self, qs, kvs, chunk):
        self.qs, self.kvs = qs, kvs
        ck = [0]
        for kv in kvs: ck.append(ck[-1] + kv)
        cq = [0]
        for q in qs: cq.append(cq[-1] + q)
        a_rows, b_rows = [], []
        fold_q = []           # rows of the folded query tensor: (token, member) per A sequence
        a_seq_q, a_seq_k = [], []
        self.a_owner = []     # for each A sequence chunk: its folded q row range source
        for i, (q, kv) in enumerate(zip(qs, kvs)):
            s = kv - q
            b_rows += list(range(ck[i] + s, ck[i + 1]))
            if s > 0:
                c0 = 0
                while c0 < s:
                    c1 = min(s, c0 + chunk) if chunk else s
                    a_rows += list(range(ck[i] + c0, ck[i] + c1))
                    a_seq_k.append(c1 - c0)
                    a_seq_q.append(q * G)
                    fold_q += list(range(cq[i], cq[i + 1]))
                    c0 = c1
        self.a_rows = torch.tensor(a_rows, device=dev)
        self.b_rows = torch.tensor(b_rows, device=dev)
        self.fold_q = torch.tensor(fold_q, device=dev)    # token rows, each appears once per chunk
        self.cqA, self.ckA = cu(a_seq_q), cu(a_seq_k)
        self.mqA, self.mkA = max(a_seq_q), max(a_seq_k)
        self.cqB, self.ckB = cu(qs), cu(qs)
        self.mqB = max(qs)
        self.total_q = cq[-1]

    def fold(self, t):   # [tokens, H, D] -> [chunks*tokens*G, HK, D]
        t = t.index_select(0, self.fold_q)
        n = t.shape[0]
        return t.view(n, HK, G, -1).transpose(1, 2).reshape(n * G, HK, -1)

    def fold_lse(self, l):   # [H, tokens] -> [HK, chunks*tokens*G]
        l = l.index_select(1, self.fold_q)
        n = l.shape[1]
        return l.view(HK, G, n).transpose(1, 2).reshape(HK, n * G)

    def unfold_sum(self, t):   # [rows*G, HK, D] -> [tokens, H, D] summing chunks
        n = t.shape[0] // G
        t = t.view(n, G, HK, -1).transpose(1, 2).reshape(n, H, -1)
        out = torch.zeros(self.total_q, H, t.shape[-1], device=dev, dtype=torch.float32)
        out.index_add_(0, self.fold_q, t.float())
        return out

    def unfold_lse_chunks(self, l):   # [HK, rows*G] -> [H, chunk rows]
        n = l.shape[1] // G
        return l.view(HK, n, G).transpose(1, 2).reshape(H, n)

    def forward(self, q, k, v):
        kA, vA = k.index_select(0, self.a_rows), v.index_select(0, self.a_rows)
        kB, vB = k.index_select(0, self.b_rows), v.index_select(0, self.b_rows)
        oA, lA = fwd(self.fold(q), kA, vA, self.cqA, self.ckA, self.mqA * 1, self.mkA, False)
        oB, lB = fwd(q, kB, vB, self.cqB, self.ckB, self.mqB, self.mqB, True)
        # merge: chunks of A and B by log-sum-exp
        lAc = self.unfold_lse_chunks(lA)                      # [H, n]
        n = lAc.shape[1]
        oAc = oA.view(n, G, HK, D).transpose(1, 2).reshape(n, H, D).float()
        lse = lB.clone()
        lse.index_reduce_(1, self.fold_q, lAc, "amax", include_self=True)
        m = lse
        s = torch.exp(lB - m)
        acc = oB.float() * s.t().unsqueeze(-1)
        wA = torch.exp(lAc - m.index_select(1, self.fold_q))
        s = s.index_add(1, self.fold_q, wA)
        acc.index_add_(0, self.fold_q, oAc * wA.t().unsqueeze(-1))
        out = (acc / s.t().unsqueeze(-1)).to(q.dtype)
        return out, m + torch.log(s)

    def backward(self, do, q, k, v, o, lse):
        kA, vA = k.index_select(0, self.a_rows), v.index_select(0, self.a_rows)
        kB, vB = k.index_select(0, self.b_rows), v.index_select(0, self.b_rows)
        dqA, dkA, dvA = bwd(self.fold(do), self.fold(q), kA, vA, self.fold(o), self.fold_lse(lse),
                            self.cqA, self.ckA, self.mqA, self.mkA, False)
        dqB, dkB, dvB = bwd(do, q, kB, vB, o, lse, self.cqB, self.ckB, self.mqB, self.mqB, True)
        dq = (self.unfold_sum(dqA) + dqB.float()).to(q.dtype)
        dk = torch.empty_like(k); dv = torch.empty_like(v)
        dk.index_copy_(0, self.a_rows, dkA); dk.index_copy_(0, self.b_rows, dkB)
        dv.index_copy_(0, self.a_rows, dvA); dv.index_copy_(0, self.b_rows, dvB)
        return dq, dk, dv

class NoCopy:
    """The same split without copying K/V: the prefix part reads k, v in place, its sequences
    separated by zero-query sequences over each shard's diagonal keys (their dK/dV come back 0);
    the diagonal part gathers only q rows of K/V per shard. Optional key chunks (forward)."""
    def __init__(self, qs, kvs, chunk):
        ck = [0]
        for kv in kvs: ck.append(ck[-1] + kv)
        cq = [0]
        for q in qs: cq.append(cq[-1] + q)
        seq_q, bounds, fold_q, b_rows = [], [0], [], []
        for i, (q, kv) in enumerate(zip(qs, kvs)):
            s = kv - q
            c0 = 0
            while c0 < s:
                c1 = min(s, c0 + chunk) if chunk else s
                seq_q.append(q * G); bounds.append(ck[i] + c1)
                fold_q += list(range(cq[i], cq[i + 1]))
                c0 = c1
            seq_q.append(0); bounds.append(ck[i + 1])     # diagonal keys: no queries here
            b_rows += list(range(ck[i] + s, ck[i + 1]))
        self.cqA = cu(seq_q); self.ckA = torch.tensor(bounds, dtype=torch.int32, device=dev)
        self.mqA = max(seq_q); self.mkA = max(b - a for a, b in zip(bounds, bounds[1:]))
        self.fold_q = torch.tensor(fold_q, device=dev)
        self.b_rows = torch.tensor(b_rows, device=dev)
        self.cqB = cu(qs); self.mqB = max(qs)
        self.total_q = cq[-1]
        self.identity = chunk == 0 and len(fold_q) == self.total_q
    fold = Decomposed.fold
    fold_lse = Decomposed.fold_lse
    unfold_sum = Decomposed.unfold_sum
    unfold_lse_chunks = Decomposed.unfold_lse_chunks
    def forward(self, q, k, v):
        oA, lA = fwd(self.fold(q), k, v, self.cqA, self.ckA, self.mqA, self.mkA, False)
        kB, vB = k.index_select(0, self.b_rows), v.index_select(0, self.b_rows)
        oB, lB = fwd(q, kB, vB, self.cqB, self.cqB, self.mqB, self.mqB, True)
        lAc = self.unfold_lse_chunks(lA)
        n = lAc.shape[1]
        oAc = oA.view(n, G, HK, D).transpose(1, 2).reshape(n, H, D)
        if self.identity:
            lse = torch.logaddexp(lAc, lB)
            out = oAc * torch.exp(lAc - lse).t().unsqueeze(-1) + oB * torch.exp(lB - lse).t().unsqueeze(-1)
            return out.to(q.dtype), lse
        m = lB.clone()
        m.index_reduce_(1, self.fold_q, lAc, "amax", include_self=True)
        s = torch.exp(lB - m)
        acc = oB.float() * s.t().unsqueeze(-1)
        wA = torch.exp(lAc - m.index_select(1, self.fold_q))
        s = s.index_add(1, self.fold_q, wA)
        acc.index_add_(0, self.fold_q, oAc.float() * wA.t().unsqueeze(-1))
        return (acc / s.t().unsqueeze(-1)).to(q.dtype), m + torch.log(s)
    def backward(self, do, q, k, v, o, lse):
        dqA, dk, dv = bwd(self.fold(do), self.fold(q), k, v, self.fold(o), self.fold_lse(lse),
                          self.cqA, self.ckA, self.mqA, self.mkA, False)
        kB, vB = k.index_select(0, self.b_rows), v.index_select(0, self.b_rows)
        dqB, dkB, dvB = bwd(do, q, kB, vB, o, lse, self.cqB, self.cqB, self.mqB, self.mqB, True)
        dk.index_add_(0, self.b_rows, dkB); dv.index_add_(0, self.b_rows, dvB)
        dq = (self.unfold_sum(dqA) + dqB.float()).to(q.dtype)
        return dq, dk, dv

def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()

print("shard shards | base fwd bwd TF/s | dec fwd bwd TF/s (chunk) | errors out lse dq dk dv")
for shard in [int(x) for x in (sys.argv[1:] or ["128", "256", "512", "1024", "2048"])]:
    qs, kvs = layout(shard)
    pairs = sum(q * kv - q * (q - 1) // 2 for q, kv in zip(qs, kvs))
    flops = 4 * pairs * D * H
    tq, tk = sum(qs), sum(kvs)
    q = torch.randn(tq, H, D, device=dev, dtype=torch.bfloat16)
    k = torch.randn(tk, HK, D, device=dev, dtype=torch.bfloat16)
    v = torch.randn(tk, HK, D, device=dev, dtype=torch.bfloat16)
    do = torch.randn(tq, H, D, device=dev, dtype=torch.bfloat16)
    cq, ck = cu(qs), cu(kvs)
    mq, mk = max(qs), max(kvs)
    o, lse = fwd(q, k, v, cq, ck, mq, mk, True)
    tf = timeit(lambda: fwd(q, k, v, cq, ck, mq, mk, True))
    tb = timeit(lambda: bwd(do, q, k, v, o, lse, cq, ck, mq, mk, True))
    ref = bwd(do, q, k, v, o, lse, cq, ck, mq, mk, True)
    variants = [(NoCopy, int(c)) for c in os.environ.get("CHUNKS", "0,16384").split(",")]
    for cls, chunk in variants:
        dec = cls(qs, kvs, chunk)
        o2, l2 = dec.forward(q, k, v)
        g2 = dec.backward(do, q, k, v, o, lse)
        tf2 = timeit(lambda: dec.forward(q, k, v))
        tb2 = timeit(lambda: dec.backward(do, q, k, v, o, lse))
        print(f"{shard:5d} {len(qs):5d} | {flops/tf/1e9:6.1f} {2.5*flops/tb/1e9:6.1f} | "
              f"{flops/tf2/1e9:6.1f} {2.5*flops/tb2/1e9:6.1f} ({cls.__name__} {chunk}) | "
              f"{rel(o2, o):.1e} {rel(l2, lse):.1e} {rel(g2[0], ref[0]):.1e} {rel(g2[1], ref[1]):.1e} {rel(g2[2], ref[2]):.1e}",
              flush=True)
# whole documents of equal work, for the ratio
for n in (22784, 45568):
    q = torch.randn(n, H, D, device=dev, dtype=torch.bfloat16)
    k = torch.randn(n, HK, D, device=dev, dtype=torch.bfloat16); v = torch.randn_like(k)
    do = torch.randn_like(q); c = cu([n])
    o, lse = fwd(q, k, v, c, c, n, n, True)
    pairs = n * (n + 1) // 2; flops = 4 * pairs * D * H
    tf = timeit(lambda: fwd(q, k, v, c, c, n, n, True)); tb = timeit(lambda: bwd(do, q, k, v, o, lse, c, c, n, n, True))
    print(f"whole {n}: fwd {flops/tf/1e9:.1f} bwd {2.5*flops/tb/1e9:.1f} TF/s")
