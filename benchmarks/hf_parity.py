#!/usr/bin/env python3
"""Checks a Cadre-exported model against Hugging Face transformers (or, where transformers is
not installed, against a plain-Python Llama or DeepSeek written here from their definitions).

Reads DIR (written by `cadre export`) with an independent safetensors reader (json + struct:
the header, names, shapes, dtypes and byte ranges against config.json), then, unless
--no-transformers, loads it with transformers' LlamaForCausalLM or DeepseekV3ForCausalLM (the
class config.json names; every tensor must be used and none missing) and computes the mean
next-token loss over the documents of TOKENS (a flat uint16 token file split at --eod, as
`cadre train` reads it), and compares it with the loss Cadre reported for the same tokens
(--cadre-loss, the first step of `cadre train --set training.init_from=DIR`). Without
transformers installed (and without --no-transformers) it says so and skips.

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
    expected = expected_tensors(config)
    name = config["architectures"][0]
    assert tensors == expected, f"tensors differ from {name}'s: {set(tensors) ^ set(expected)}"
    return config, len(tensors)


def expected_tensors(config):
    """Names and shapes of the Hugging Face model config.json describes."""
    if config["model_type"] == "deepseek_v3":
        return expected_deepseek_tensors(config)
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
    return expected


def expected_deepseek_tensors(config):
    """DeepseekV3ForCausalLM with every layer dense (first_k_dense_replace = layers)."""
    layers = config["num_hidden_layers"]
    assert config["first_k_dense_replace"] >= layers, "an exported DeepSeek model has no experts"
    h, f, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    heads, dc, dq = config["num_attention_heads"], config["kv_lora_rank"], config["q_lora_rank"]
    dn, dr, dv = config["qk_nope_head_dim"], config["qk_rope_head_dim"], config["v_head_dim"]
    expected = {"model.embed_tokens.weight": [v, h], "model.norm.weight": [h]}
    if not config["tie_word_embeddings"]:
        expected["lm_head.weight"] = [v, h]
    for layer in range(layers):
        p = f"model.layers.{layer}."
        if dq is None:
            expected[p + "self_attn.q_proj.weight"] = [heads * (dn + dr), h]
        else:
            expected.update({p + "self_attn.q_a_proj.weight": [dq, h],
                             p + "self_attn.q_a_layernorm.weight": [dq],
                             p + "self_attn.q_b_proj.weight": [heads * (dn + dr), dq]})
        expected.update({
            p + "input_layernorm.weight": [h], p + "post_attention_layernorm.weight": [h],
            p + "self_attn.kv_a_proj_with_mqa.weight": [dc + dr, h],
            p + "self_attn.kv_a_layernorm.weight": [dc],
            p + "self_attn.kv_b_proj.weight": [heads * (dn + dv), dc],
            p + "self_attn.o_proj.weight": [h, heads * dv],
            p + "mlp.gate_proj.weight": [f, h], p + "mlp.up_proj.weight": [f, h],
            p + "mlp.down_proj.weight": [h, f]})
    return expected


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


def read_tensors(model_dir):
    """Every tensor of DIR as (shape, flat list of floats); F32 and BF16."""
    single = os.path.join(model_dir, "model.safetensors")
    if os.path.exists(single):
        files = ["model.safetensors"]
    else:
        index = json.load(open(os.path.join(model_dir, "model.safetensors.index.json")))
        files = sorted(set(index["weight_map"].values()))
    out = {}
    for name in files:
        with open(os.path.join(model_dir, name), "rb") as f:
            raw = f.read()
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8:8 + n])
        data = raw[8 + n:]
        for key, e in header.items():
            if key == "__metadata__":
                continue
            begin, end = e["data_offsets"]
            if e["dtype"] == "F32":
                values = list(struct.unpack(f"<{(end - begin) // 4}f", data[begin:end]))
            else:  # BF16: the upper half of an fp32
                halves = struct.unpack(f"<{(end - begin) // 2}H", data[begin:end])
                values = list(struct.unpack(f"<{len(halves)}f",
                                            struct.pack(f"<{len(halves)}I", *[h << 16 for h in halves])))
            out[key] = (e["shape"], values)
    return out


def python_loss_deepseek(model_dir, docs):
    """Mean next-token loss of a dense DeepseekV3ForCausalLM directory in plain Python (double
    precision), written from DeepSeek-V2's multi-head latent attention (paper, section 2.1):
    queries directly or through the normalised query latent; the normalised K/V latent expanded
    per head into keys and values; a rotary key shared by the heads; RoPE on interleaved pairs
    (2i, 2i + 1) as DeepSeek rotates them (rope_interleave true; rotate-half otherwise); scores
    scaled by 1/sqrt(qk_nope_head_dim + qk_rope_head_dim); a SwiGLU MLP in every layer. The
    latents' norms use eps 1e-6 whatever rms_norm_eps says, as transformers' DeepSeek (and
    DeepSeek's own code) build them; the other norms use rms_norm_eps."""
    config = json.load(open(os.path.join(model_dir, "config.json")))
    raw = read_tensors(model_dir)
    eps, theta = config["rms_norm_eps"], config.get("rope_theta", 10000.0)
    latent_eps = 1e-6
    heads, dc, dq = config["num_attention_heads"], config["kv_lora_rank"], config["q_lora_rank"]
    dn, dr, dv = config["qk_nope_head_dim"], config["qk_rope_head_dim"], config["v_head_dim"]
    interleaved = config.get("rope_interleave", True)

    def matrix(name):
        (rows, cols), values = raw[name]
        return [values[r * cols:(r + 1) * cols] for r in range(rows)]

    def vector(name):
        return raw[name][1]

    def matvec(m, v):
        return [sum(a * b for a, b in zip(row, v)) for row in m]

    def rms_norm(x, w, epsilon=None):
        epsilon = eps if epsilon is None else epsilon
        scale = 1.0 / math.sqrt(sum(a * a for a in x) / len(x) + epsilon)
        return [a * scale * b for a, b in zip(x, w)]

    def rope(vec, pos):
        out = list(vec)
        for i in range(dr // 2):
            angle = pos * theta ** (-2.0 * i / dr)
            a, b = (2 * i, 2 * i + 1) if interleaved else (i, i + dr // 2)
            c, s = math.cos(angle), math.sin(angle)
            out[a] = vec[a] * c - vec[b] * s
            out[b] = vec[a] * s + vec[b] * c
        return out

    embed = matrix("model.embed_tokens.weight")
    head = embed if config["tie_word_embeddings"] else matrix("lm_head.weight")
    layers = []
    for l in range(config["num_hidden_layers"]):
        p = f"model.layers.{l}."
        L = {"in_norm": vector(p + "input_layernorm.weight"),
             "post_norm": vector(p + "post_attention_layernorm.weight"),
             "kv_a": matrix(p + "self_attn.kv_a_proj_with_mqa.weight"),
             "kv_norm": vector(p + "self_attn.kv_a_layernorm.weight"),
             "kv_b": matrix(p + "self_attn.kv_b_proj.weight"),
             "o": matrix(p + "self_attn.o_proj.weight"),
             "gate": matrix(p + "mlp.gate_proj.weight"), "up": matrix(p + "mlp.up_proj.weight"),
             "down": matrix(p + "mlp.down_proj.weight")}
        if dq is None:
            L["q"] = matrix(p + "self_attn.q_proj.weight")
        else:
            L["q_a"] = matrix(p + "self_attn.q_a_proj.weight")
            L["q_norm"] = vector(p + "self_attn.q_a_layernorm.weight")
            L["q_b"] = matrix(p + "self_attn.q_b_proj.weight")
        layers.append(L)
    norm = vector("model.norm.weight")
    w = dn + dr
    total, targets = 0.0, 0
    for doc in docs:
        xs = [list(embed[t]) for t in doc]
        for L in layers:
            q_nope, q_rope, k_nope, k_rope, values = [], [], [], [], []
            for pos, x in enumerate(xs):
                h = rms_norm(x, L["in_norm"])
                q = (matvec(L["q"], h) if dq is None
                     else matvec(L["q_b"], rms_norm(matvec(L["q_a"], h), L["q_norm"], latent_eps)))
                q_nope.append([q[j * w:j * w + dn] for j in range(heads)])
                q_rope.append([rope(q[j * w + dn:(j + 1) * w], pos) for j in range(heads)])
                ckv = matvec(L["kv_a"], h)
                kv = matvec(L["kv_b"], rms_norm(ckv[:dc], L["kv_norm"], latent_eps))
                k_rope.append(rope(ckv[dc:], pos))
                k_nope.append([kv[j * (dn + dv):j * (dn + dv) + dn] for j in range(heads)])
                values.append([kv[j * (dn + dv) + dn:(j + 1) * (dn + dv)] for j in range(heads)])
            new = []
            for t, x in enumerate(xs):
                o = []
                for j in range(heads):
                    scores = [(sum(a * b for a, b in zip(q_nope[t][j], k_nope[u][j])) +
                               sum(a * b for a, b in zip(q_rope[t][j], k_rope[u]))) / math.sqrt(w)
                              for u in range(t + 1)]
                    m = max(scores)
                    e = [math.exp(s - m) for s in scores]
                    z = sum(e)
                    o += [sum(e[u] * values[u][j][i] for u in range(t + 1)) / z for i in range(dv)]
                y = [a + b for a, b in zip(x, matvec(L["o"], o))]
                h = rms_norm(y, L["post_norm"])
                gate, up = matvec(L["gate"], h), matvec(L["up"], h)
                act = [g / (1 + math.exp(-g)) * u for g, u in zip(gate, up)]
                new.append([a + b for a, b in zip(y, matvec(L["down"], act))])
            xs = new
        for t in range(len(doc) - 1):
            logits = matvec(head, rms_norm(xs[t], norm))
            m = max(logits)
            lse = m + math.log(sum(math.exp(a - m) for a in logits))
            total += lse - logits[doc[t + 1]]
            targets += 1
    return total / targets, targets


def python_loss(model_dir, docs):
    """Mean next-token loss of a LlamaForCausalLM directory in plain Python (double precision),
    written from the Hugging Face Llama definition: RMSNorm, rotate-half RoPE (Llama 3 scaling
    when config.json has it), grouped-query causal attention, SwiGLU, tied or untied head.
    DeepSeek directories go to python_loss_deepseek."""
    config = json.load(open(os.path.join(model_dir, "config.json")))
    if config["model_type"] == "deepseek_v3":
        return python_loss_deepseek(model_dir, docs)
    raw = read_tensors(model_dir)

    def matrix(name):
        (rows, cols), values = raw[name]
        return [values[r * cols:(r + 1) * cols] for r in range(rows)]

    def matvec(m, v):
        return [sum(a * b for a, b in zip(row, v)) for row in m]

    eps = config["rms_norm_eps"]

    def rms_norm(x, w):
        scale = 1.0 / math.sqrt(sum(a * a for a in x) / len(x) + eps)
        return [a * scale * b for a, b in zip(x, w)]

    heads, kv, d = config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]
    half = d // 2
    theta = config.get("rope_theta", 10000.0)
    inv = [theta ** (-2.0 * i / d) for i in range(half)]
    scaling = config.get("rope_scaling") or {}
    if scaling.get("rope_type", scaling.get("type")) == "llama3":
        factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        old = scaling["original_max_position_embeddings"]
        scaled = []
        for f in inv:
            wavelen = 2 * math.pi / f
            if wavelen < old / high:
                scaled.append(f)
            elif wavelen > old / low:
                scaled.append(f / factor)
            else:
                smooth = (old / wavelen - low) / (high - low)
                scaled.append((1 - smooth) * f / factor + smooth * f)
        inv = scaled

    def rope(vec, pos):
        out = list(vec)
        for i in range(half):
            c, s = math.cos(pos * inv[i]), math.sin(pos * inv[i])
            out[i] = vec[i] * c - vec[i + half] * s
            out[i + half] = vec[i + half] * c + vec[i] * s
        return out

    embed = matrix("model.embed_tokens.weight")
    head = embed if config["tie_word_embeddings"] else matrix("lm_head.weight")
    layers = []
    for l in range(config["num_hidden_layers"]):
        p = f"model.layers.{l}."
        layers.append({k: matrix(p + k + ".weight") if len(raw[p + k + ".weight"][0]) == 2
                       else raw[p + k + ".weight"][1]
                       for k in ["input_layernorm", "post_attention_layernorm", "self_attn.q_proj",
                                 "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                 "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]})
    norm = raw["model.norm.weight"][1]
    total, targets = 0.0, 0
    for doc in docs:
        xs = [list(embed[t]) for t in doc]
        for L in layers:
            qs, ks, vs = [], [], []
            for pos, x in enumerate(xs):
                h = rms_norm(x, L["input_layernorm"])
                q, k, v = (matvec(L["self_attn." + n + "_proj"], h) for n in "qkv")
                qs.append([rope(q[j * d:(j + 1) * d], pos) for j in range(heads)])
                ks.append([rope(k[j * d:(j + 1) * d], pos) for j in range(kv)])
                vs.append([v[j * d:(j + 1) * d] for j in range(kv)])
            new = []
            for t, x in enumerate(xs):
                o = []
                for j in range(heads):
                    g = j // (heads // kv)
                    scores = [sum(a * b for a, b in zip(qs[t][j], ks[u][g])) / math.sqrt(d)
                              for u in range(t + 1)]
                    m = max(scores)
                    w = [math.exp(s - m) for s in scores]
                    z = sum(w)
                    o += [sum(w[u] * vs[u][g][i] for u in range(t + 1)) / z for i in range(d)]
                y = [a + b for a, b in zip(x, matvec(L["self_attn.o_proj"], o))]
                h = rms_norm(y, L["post_attention_layernorm"])
                gate, up = matvec(L["mlp.gate_proj"], h), matvec(L["mlp.up_proj"], h)
                act = [g / (1 + math.exp(-g)) * u for g, u in zip(gate, up)]
                new.append([a + b for a, b in zip(y, matvec(L["mlp.down_proj"], act))])
            xs = new
        for t in range(len(doc) - 1):
            logits = matvec(head, rms_norm(xs[t], norm))
            m = max(logits)
            lse = m + math.log(sum(math.exp(a - m) for a in logits))
            total += lse - logits[doc[t + 1]]
            targets += 1
    return total / targets, targets


def hf_loss(model_dir, docs, dtype_name, device):
    import torch
    import transformers

    config = json.load(open(os.path.join(model_dir, "config.json")))
    # The class config.json names: LlamaForCausalLM or DeepseekV3ForCausalLM.
    model_class = getattr(transformers, config["architectures"][0])
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    try:
        model, info = model_class.from_pretrained(model_dir, dtype=dtype, attn_implementation="eager",
                                                  output_loading_info=True)
    except TypeError:  # transformers before 4.56 names it torch_dtype
        model, info = model_class.from_pretrained(model_dir, torch_dtype=dtype,
                                                  attn_implementation="eager",
                                                  output_loading_info=True)
    # Every exported tensor used and none left at its random initialisation (a tied head is the
    # embedding, not a missing tensor).
    missing = [k for k in info.get("missing_keys", [])
               if not (k == "lm_head.weight" and config["tie_word_embeddings"])]
    unexpected = list(info.get("unexpected_keys", []))
    mismatched = list(info.get("mismatched_keys", []))
    assert not missing and not unexpected and not mismatched, \
        f"loading {model_dir}: missing {missing}, unexpected {unexpected}, mismatched {mismatched}"
    if config["model_type"] == "deepseek_v3":
        # Dense layers only, rotary rows read as interleaved pairs (as exported), no YaRN mscale.
        experts = [n for n, _ in model.named_modules() if "experts" in n or n.endswith("mlp.gate")]
        assert not experts, f"transformers built mixture-of-experts modules: {experts[:4]}"
        assert getattr(model.config, "rope_interleave", None) is True, \
            "rope_interleave was not read as true"
        scaling = getattr(model.model.layers[0].self_attn, "scaling", None)
        want = (config["qk_nope_head_dim"] + config["qk_rope_head_dim"]) ** -0.5
        assert scaling is None or abs(scaling - want) < 1e-12, f"softmax scale {scaling} != {want}"
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
                    help="no transformers (machines without it): check the files, and with "
                         "--tokens compute the loss with the plain-Python reference instead")
    args = ap.parse_args()
    config, count = check_files(args.model)
    result = {"model": args.model, "architecture": config["architectures"][0], "tensors": count,
              "files_ok": True, "tie_word_embeddings": config["tie_word_embeddings"]}
    ok = True
    if args.no_transformers and args.tokens:
        loss, targets = python_loss(args.model, documents(args.tokens, args.eod))
        rel = abs(loss - args.cadre_loss) / max(1.0, abs(args.cadre_loss))
        ok = rel <= args.rtol
        result.update({"reference": "plain Python (double)", "reference_loss": loss,
                       "cadre_loss": args.cadre_loss, "targets": targets,
                       "relative_difference": rel, "rtol": args.rtol, "match": ok})
    elif not args.no_transformers:
        try:
            import torch  # noqa: F401
            import transformers  # noqa: F401
        except ImportError as e:
            result.update({"skipped": f"transformers is not installed here ({e}); "
                                      "--no-transformers compares with the plain-Python reference"})
            print(json.dumps(result))
            return 0
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
