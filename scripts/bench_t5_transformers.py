#!/usr/bin/env python3
"""transformers side of the T5 benchmark (crates/crispr/benches/t5.rs): the flan-t5-base shape (random
weights: values do not change the timing), a 150-token prompt and three 4-token candidates, float32,
eager attention, 2 threads, weights frozen.

    scripts/oracle-env.sh python scripts/bench_t5_transformers.py

  score_3_candidates           encoder once under torch.no_grad, then the three candidates as one batch of
                               3 through the decoder (encoder output repeated), log-softmax and gather
  forward_backward_all_sites   one candidate: forward with every linear output and every FFN activation
                               retaining its gradient, backward of log P (no weight gradients: weights
                               are frozen, the input embeddings require grad)
  score_3_and_differentiate_2  what one attribution step needs: score_3_candidates, then two
                               forward_backward passes
"""
import argparse
import statistics
import time

import torch
from transformers import T5Config, T5ForConditionalGeneration

CONFIG = dict(vocab_size=32128, d_model=768, d_ff=2048, d_kv=64, num_heads=12, num_layers=12, num_decoder_layers=12,
              feed_forward_proj="gated-gelu", tie_word_embeddings=False, relative_attention_num_buckets=32,
              relative_attention_max_distance=128, layer_norm_epsilon=1e-6, decoder_start_token_id=0,
              eos_token_id=1, pad_token_id=0)


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
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--attn", default="eager", help="eager or sdpa")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = T5Config(**CONFIG)
    cfg._attn_implementation = a.attn
    model = T5ForConditionalGeneration(cfg).eval()
    model.lm_head.weight = torch.nn.Parameter(torch.randn(cfg.vocab_size, cfg.d_model) * cfg.d_model ** -0.5)
    for p in model.parameters():
        p.requires_grad_(False)
    # The same ids as benches/t5.rs.
    prompt = torch.tensor([[(i * 7919 + 13) % 32000 + 3 for i in range(149)] + [1]])
    cands = torch.tensor([[37, 23214, 49, 1], [933, 631, 2845, 1], [37, 3, 29702, 1]])
    dec_in = torch.cat([torch.zeros(3, 1, dtype=torch.long), cands[:, :-1]], 1)

    def score():
        with torch.no_grad():
            enc = model.encoder(input_ids=prompt).last_hidden_state
            logits = model(encoder_outputs=(enc.expand(3, -1, -1).contiguous(),), decoder_input_ids=dec_in, use_cache=False).logits
            return torch.log_softmax(logits, -1).gather(-1, cands[..., None]).sum((1, 2))

    sites = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
    wos = [m for n, m in model.named_modules() if n.endswith("DenseReluDense.wo")]

    def forward_backward(c=0):
        outs = []

        # Hooks must return None (a returned value would replace the module's output).
        def keep_out(_m, _i, o):
            o.retain_grad()
            outs.append(o)

        def keep_in(_m, i):
            i[0].retain_grad()
            outs.append(i[0])

        hooks = [m.register_forward_hook(keep_out) for m in sites]
        hooks += [m.register_forward_pre_hook(keep_in) for m in wos]
        emb = model.get_input_embeddings()
        enc_emb = emb(prompt).detach().requires_grad_(True)
        dec_emb = emb(dec_in[c:c + 1]).detach().requires_grad_(True)
        logits = model(inputs_embeds=enc_emb, decoder_inputs_embeds=dec_emb, use_cache=False).logits[0]
        torch.log_softmax(logits, -1).gather(-1, cands[c][:, None]).sum().backward()
        grads = [o.grad for o in outs]
        for h in hooks:
            h.remove()
        return grads

    def score_and_differentiate():
        score()
        forward_backward(1)
        forward_backward(0)

    print(f"sites with gradients: {len(sites) + len(wos)}")
    for name, fn in [("score_3_candidates", score), ("forward_backward_all_sites", forward_backward),
                     ("score_3_and_differentiate_2", score_and_differentiate)]:
        med, best = timeit(fn, a.reps)
        print(f"transformers {torch.__version__} {a.attn} threads={a.threads} {name}: "
              f"median {med * 1e3:.1f} ms, best {best * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
