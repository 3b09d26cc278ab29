#!/usr/bin/env python3
"""Checks a Cadre-exported model against Hugging Face transformers.

Reads DIR (written by `cadre export`) with an independent safetensors reader (json + struct:
the header, names, shapes, dtypes and byte ranges against config.json), then, unless
--no-transformers, loads it with transformers' LlamaForCausalLM and computes the mean
next-token loss over the documents of TOKENS (a flat uint16 token file split at --eod, as
`cadre train` reads it), and compares it with the loss Cadre reported for the same tokens
(--cadre-loss, the first step of `cadre train --set training.init_from=DIR`).

Exit code 0 when everything matches; the result is printed as one JSON line.
"""
import argparse
import json
import math
import os
import struct
import sys


def read_header(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        f.seek(0, 2)
        data_bytes = f.tell() - 8 - n
    return header, data_bytes


def check_files(model_dir):
    """The exported files as the safetensors format and LlamaForCausalLM describe them."""
    config = json.load(open(os.path.join(model_dir, "config.json")))
    single = os.path.join(model_dir, "model.safetensors")
    if os.path.exists(single):
        files = {"model.safetensors": None}
    else:
        index = json.load(open(os.path.join(model_dir, "model.safetensors.index.json")))
        files = {name: None for name in index["weight_map"].values()}
    sizes = {"F32": 4, "BF16": 2, "F16": 2}
    tensors = {}
    for name in files:
        header, data_bytes = read_header(os.path.join(model_dir, name))
        covered = 0
        for key, entry in header.items():
            if key == "__metadata__":
                continue
            begin, end = entry["data_offsets"]
            count = math.prod(entry["shape"]) if entry["shape"] else 1
            assert end - begin == count * sizes[entry["dtype"]], key
            covered += end - begin
            tensors[key] = entry["shape"]
        assert covered == data_bytes, f"{name}: {covered} of {data_bytes} data bytes indexed"
    h, f = config["hidden_size"], config["intermediate_size"]
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    d, v = config["head_dim"], config["vocab_size"]
    expected = {"model.embed_tokens.weight": [v, h], "model.norm.weight": [h]}
    if not config["tie_word_embeddings"]:
        expected["lm_head.weight"] = [v, h]
    for layer in range(config["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        expected.update({
            p + "input_layernorm.weight": [h], p + "post_attention_layernorm.weight": [h],
            p + "self_attn.q_proj.weight": [heads * d, h], p + "self_attn.k_proj.weight": [kv * d, h],
            p + "self_attn.v_proj.weight": [kv * d, h], p + "self_attn.o_proj.weight": [h, heads * d],
            p + "mlp.gate_proj.weight": [f, h], p + "mlp.up_proj.weight": [f, h],
            p + "mlp.down_proj.weight": [h, f]})
    assert tensors == expected, f"tensors differ from LlamaForCausalLM's: {set(tensors) ^ set(expected)}"
    return config, len(tensors)


def documents(path, eod):
    with open(path, "rb") as f:
        raw = f.read()
    tokens = struct.unpack(f"<{len(raw) // 2}H", raw)
    docs, current = [], []
    for t in tokens:
        if t == eod:
            if current:
                docs.append(current)
            current = []
        else:
            current.append(t)
    if current:
        docs.append(current)
    return docs


def hf_loss(model_dir, docs, dtype_name, device):
    import torch
    from transformers import LlamaForCausalLM

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    try:
        model = LlamaForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="eager")
    except TypeError:  # transformers before 4.56 names it torch_dtype
        model = LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=dtype,
                                                 attn_implementation="eager")
    model = model.to(device).eval()
    total, targets = 0.0, 0
    with torch.no_grad():
        for doc in docs:
            ids = torch.tensor([doc], device=device)
            logits = model(input_ids=ids).logits[0].float()
            logp = torch.log_softmax(logits[:-1], dim=-1)
            total += -logp.gather(1, ids[0, 1:, None]).sum().item()
            targets += len(doc) - 1
    return total / targets, targets


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="directory written by cadre export")
    ap.add_argument("--tokens", help="uint16 token file the Cadre loss was computed on")
    ap.add_argument("--eod", type=int, default=0)
    ap.add_argument("--cadre-loss", type=float, help="Cadre's loss on those tokens")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--rtol", type=float, default=1e-4)
    ap.add_argument("--device", default="cpu", help="torch device for transformers (default cpu)")
    ap.add_argument("--no-transformers", action="store_true",
                    help="check the files only (for machines without transformers)")
    args = ap.parse_args()
    config, count = check_files(args.model)
    result = {"model": args.model, "tensors": count, "files_ok": True,
              "tie_word_embeddings": config["tie_word_embeddings"]}
    ok = True
    if not args.no_transformers:
        # The tiny models run on the CPU: no TF32 or other reduced-precision fp32 paths to
        # account for, and the same numbers on any machine.
        device = args.device
        loss, targets = hf_loss(args.model, documents(args.tokens, args.eod), args.dtype, device)
        rel = abs(loss - args.cadre_loss) / max(1.0, abs(args.cadre_loss))
        ok = rel <= args.rtol
        result.update({"hf_loss": loss, "cadre_loss": args.cadre_loss, "targets": targets,
                       "relative_difference": rel, "rtol": args.rtol, "dtype": args.dtype,
                       "device": device, "match": ok})
    print(json.dumps(result))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
