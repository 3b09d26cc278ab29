#!/usr/bin/env python3
"""Peer baseline for `cadre train` (GPU machine): the same Llama-3.2-1B-like model trained on the
same single document with Hugging Face transformers' LlamaForCausalLM in PyTorch eager mode
(SDPA attention, autocast bf16 over fp32 master weights, activation checkpointing of every layer,
fused AdamW). Prints one JSON line with the median step time over the steps after warm-up.

  python3 benchmarks/peer/hf_llama_step.py --tokens 65536 --steps 5

Only the one-document cell is comparable: packing several documents into one sequence without
cross-document attention needs HF's flash-attention-2 varlen path, which the GPU machine lacks.
"""
import argparse
import json
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=65536)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()
    # configs/train_1b.pbtxt's llama-1b preset (launch/config.cc).
    cfg = LlamaConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                      num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                      head_dim=64, max_position_embeddings=args.tokens, rope_theta=500000.0,
                      tie_word_embeddings=True, rms_norm_eps=1e-5, attn_implementation="sdpa")
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).cuda()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1,
                            fused=True)
    tokens = torch.randint(0, cfg.vocab_size, (1, args.tokens), device="cuda")
    times = []
    for step in range(args.warmup + args.steps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    times.sort()
    params = sum(p.numel() for p in model.parameters())
    print(json.dumps({"peer": "hf-transformers LlamaForCausalLM (sdpa, autocast bf16, "
                              "activation checkpointing, fused AdamW)",
                      "torch": torch.__version__, "tokens": args.tokens, "parameters": params,
                      "step_ms": 1e3 * times[len(times) // 2],
                      "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30}))


if __name__ == "__main__":
    main()
