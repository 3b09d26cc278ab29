import torch, torch.nn.functional as F, time
from torch.nn.attention import sdpa_kernel, SDPBackend
def t(fn, n=5):
    for _ in range(2): fn()
    torch.cuda.synchronize(); s=torch.cuda.Event(enable_timing=True); e=torch.cuda.Event(enable_timing=True)
    ts=[]
    for _ in range(n):
        s.record(); fn(); e.record(); torch.cuda.synchronize(); ts.append(s.elapsed_time(e))
    return sorted(ts)[n//2]
for h,kv,d,L in [(16,4,128,65536),(32,8,64,65536)]:
    q=torch.randn(1,h,L,d,device='cuda',dtype=torch.bfloat16,requires_grad=True)
    k=torch.randn(1,kv,L,d,device='cuda',dtype=torch.bfloat16,requires_grad=True)
    v=torch.randn(1,kv,L,d,device='cuda',dtype=torch.bfloat16,requires_grad=True)
    flops=4*L*(L+1)/2*d*h
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        o=F.scaled_dot_product_attention(q,k,v,is_causal=True,enable_gqa=True)
        g=torch.randn_like(o)
        fw=t(lambda: F.scaled_dot_product_attention(q,k,v,is_causal=True,enable_gqa=True))
        bw=t(lambda: torch.autograd.grad(o,(q,k,v),g,retain_graph=True))
    print(f"torch SDPA cudnn h{h}/{kv} d{d} L{L}: fwd {flops/fw/1e9:.0f} bwd {2.5*flops/bw/1e9:.0f} TFLOP/s")
