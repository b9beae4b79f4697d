#!/usr/bin/env python3
"""Write a checkpoint directory in the exact shape of meta-llama/Llama-3.1-8B-Instruct with random
bf16 weights (about 16 GB in 4 shards), to measure crispr on an 8B model without downloading one.

Standard library only (no numpy, no torch). Weights: random sign, exponent 2^-7 or 2^-6 and
random mantissa, so |w| lies in [0.0078, 0.031) — the scale of a trained Llama's projections;
norm weights are 1. The tokenizer is copied from --tokenizer-from (default: the repository's tiny
Llama fixture; the real Llama 3 tokenizer cannot be fetched offline), which only has to fit in the
128,256-row embedding. Never commit the output.

    python3 scripts/make_llama31_8b_random.py OUT_DIR [--tokenizer-from DIR] [--layers N]

--layers writes fewer blocks (same widths) for a quick try; the default is the real 32.
--sparse writes the headers and leaves the weights as holes (zeros, no disk, seconds): enough
for `crispr info` and the memory check, not for scoring.
"""

import argparse
import json
import os
import shutil
import struct
import sys

HIDDEN = 4096
INTERMEDIATE = 14336
HEADS = 32
KV_HEADS = 8
HEAD_DIM = HIDDEN // HEADS
VOCAB = 128256
SHARDS = 4

# High byte of a little-endian bf16: keep the random sign bit, exponent bits 7..1 = 60 (the
# lowest exponent bit comes from the random low byte): exponent 120 or 121.
HIGH = bytes((b & 0x80) | 60 for b in range(256))
CHUNK = 1 << 26  # bytes per write


def config(layers):
    return {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 128000,
        "eos_token_id": [128001, 128008, 128009],
        "head_dim": HEAD_DIM,
        "hidden_act": "silu",
        "hidden_size": HIDDEN,
        "initializer_range": 0.02,
        "intermediate_size": INTERMEDIATE,
        "max_position_embeddings": 131072,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": HEADS,
        "num_hidden_layers": layers,
        "num_key_value_heads": KV_HEADS,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": {
            "factor": 8.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        "rope_theta": 500000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "vocab_size": VOCAB,
    }


def tensors(layers):
    """(name, shape) in the transformers naming, embedding first, head last."""
    out = [("model.embed_tokens.weight", [VOCAB, HIDDEN])]
    for l in range(layers):
        p = f"model.layers.{l}"
        out += [
            (f"{p}.input_layernorm.weight", [HIDDEN]),
            (f"{p}.self_attn.q_proj.weight", [HEADS * HEAD_DIM, HIDDEN]),
            (f"{p}.self_attn.k_proj.weight", [KV_HEADS * HEAD_DIM, HIDDEN]),
            (f"{p}.self_attn.v_proj.weight", [KV_HEADS * HEAD_DIM, HIDDEN]),
            (f"{p}.self_attn.o_proj.weight", [HIDDEN, HEADS * HEAD_DIM]),
            (f"{p}.post_attention_layernorm.weight", [HIDDEN]),
            (f"{p}.mlp.gate_proj.weight", [INTERMEDIATE, HIDDEN]),
            (f"{p}.mlp.up_proj.weight", [INTERMEDIATE, HIDDEN]),
            (f"{p}.mlp.down_proj.weight", [HIDDEN, INTERMEDIATE]),
        ]
    out += [("model.norm.weight", [HIDDEN]), ("lm_head.weight", [VOCAB, HIDDEN])]
    return out


def numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def write_tensor(f, shape):
    left = 2 * numel(shape)
    if len(shape) == 1:
        f.write(b"\x80\x3f" * (left // 2))  # bf16 1.0
        return
    while left:
        buf = bytearray(os.urandom(min(CHUNK, left)))
        buf[1::2] = buf[1::2].translate(HIGH)
        f.write(buf)
        left -= len(buf)


def write_shard(path, items, sparse):
    header, offset = {}, 0
    for name, shape in items:
        n = 2 * numel(shape)
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    header["__metadata__"] = {"format": "pt"}
    text = json.dumps(header, separators=(",", ":"))
    text += " " * (-len(text) % 8)
    tmp = path + ".partial"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text.encode())
        if sparse:
            f.truncate(8 + len(text) + offset)
        else:
            for _, shape in items:
                write_tensor(f, shape)
    os.replace(tmp, path)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--tokenizer-from", default=os.path.join(here, "..", "crates", "crispr", "tests", "fixtures", "tiny", "llama"))
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--sparse", action="store_true")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for name in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]:
        src = os.path.join(args.tokenizer_from, name)
        if os.path.exists(src):
            shutil.copy(src, os.path.join(args.out, name))
    if not os.path.exists(os.path.join(args.out, "tokenizer.json")):
        sys.exit(f"{args.tokenizer_from}: no tokenizer.json to copy")
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(config(args.layers), f, indent=2)
    items = tensors(args.layers)
    total = sum(2 * numel(s) for _, s in items)
    # Split into SHARDS files of about equal size, tensors whole and in order.
    shards, cur, size = [], [], 0
    for it in items:
        cur.append(it)
        size += 2 * numel(it[1])
        if size >= total * (len(shards) + 1) / SHARDS and len(shards) < SHARDS - 1:
            shards.append(cur)
            cur = []
    shards.append(cur)
    weight_map = {}
    for i, part in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        print(f"writing {fname} ({sum(2 * numel(s) for _, s in part) / 1e9:.2f} GB)", file=sys.stderr)
        write_shard(os.path.join(args.out, fname), part, args.sparse)
        weight_map.update({name: fname for name, _ in part})
    with open(os.path.join(args.out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    print(f"{args.out}: {total / 1e9:.2f} GB of bf16 weights", file=sys.stderr)


if __name__ == "__main__":
    main()
