#!/usr/bin/env python3
"""transformers side of the engine benchmark (crates/crispr/benches/engine.rs): SmolLM2-135M-Instruct
GGUF dequantised to f32, 128 tokens, 2 threads, weights frozen.

    scripts/oracle-env.sh python scripts/bench_transformers.py --gguf ~/.cache/crispr/models/SmolLM2-135M-Instruct.Q4_1.gguf
"""
import argparse
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM


def timeit(fn, reps):
    fn()  # warm-up
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts), min(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--attn", default="sdpa", help="eager or sdpa")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model = AutoModelForCausalLM.from_pretrained(a.gguf.parent, gguf_file=a.gguf.name, dtype=torch.float32,
                                                 attn_implementation=a.attn).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    ids = torch.tensor([[(i * 7919 + 13) % 49152 for i in range(128)]])

    def forward():
        with torch.no_grad():
            model(ids, logits_to_keep=1)

    linears = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]

    def forward_backward():
        outs = []

        def keep(_m, _i, o):
            o.retain_grad()
            outs.append(o)  # returning None keeps the module's output unchanged

        hooks = [m.register_forward_hook(keep) for m in linears]
        emb = model.get_input_embeddings()(ids).detach().requires_grad_(True)
        logits = model(inputs_embeds=emb).logits[0, 123:127]
        lp = torch.log_softmax(logits, -1)
        lp[torch.arange(4), ids[0, 124:128]].sum().backward()
        grads = [o.grad for o in outs]
        for h in hooks:
            h.remove()
        return grads

    for name, fn in [("forward_with_last_logits", forward), ("forward_backward_all_linear_outputs", forward_backward)]:
        med, best = timeit(fn, a.reps)
        print(f"transformers {torch.__version__} {a.attn} threads={a.threads} {name}: median {med*1e3:.1f} ms, best {best*1e3:.1f} ms")


if __name__ == "__main__":
    main()
