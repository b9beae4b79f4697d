#!/usr/bin/env python3
"""An independent PyTorch implementation of CRISPR's bias attribution, written from
shared/docs/method.md with forward hooks on every linear layer, used to make the parity fixtures
of crates/crispr/tests/attribution_parity.rs.

    scripts/oracle-env.sh python scripts/reference_crispr.py

For the tiny random Llama fixture (tests/fixtures/tiny/llama) and a few BBQ instances under two of
the paper's instructions, it writes tests/fixtures/attribution/llama.json (inputs) and
llama_<mode>.safetensors (scores per module) for three settings:
  default  objective=prob, token max, per-instance disentanglement, α-weighted
  variant  objective=logprob, token mean, per-token disentanglement, no α
  compat   the authors' re-release (batches of 4, log P gradients scaled by α(ŷ), batch clamp)

With --family NAME (qwen3, gemma2, gemma3, phi3, …) it scores the tiny fixture of that family on
the same instances (tests/fixtures/attribution/llama.json: the tokenizer is shared) and writes
NAME_default_linear, NAME_variant_linear (log-probability objective: scores far from underflow on
random weights) and NAME_default_ffn.safetensors.
"""

import argparse

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import make_fixtures as mf

OUT = mf.FIX / "attribution"


def sites(model):
    """(name, module, is_input_site) for the linear universe and the ffn universe."""
    linear, ffn = [], []
    for i, layer in enumerate(model.model.layers):
        for k in mf.linear_names(model):
            linear.append((f"model.layers.{i}.{k}", layer.get_submodule(k)))
        ffn.append((f"model.layers.{i}.mlp.act_fn", layer.mlp.down_proj))
    return linear, ffn


def grads_of(model, universe, prompt, cand):
    """log P(cand | prompt) and {site: (act, grad of log P)} at every position."""
    linear, ffn = sites(model)
    acts = {}
    handles = []
    if universe == "linear":
        for name, mod in linear:
            def hook(_m, _i, out, name=name):
                out.retain_grad()
                acts[name] = out
            handles.append(mod.register_forward_hook(hook))
    else:
        for name, mod in ffn:
            def pre(_m, args, name=name):
                args[0].retain_grad()
                acts[name] = args[0]
            handles.append(mod.register_forward_pre_hook(pre))
    ids = torch.tensor([prompt + cand])
    emb = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    logits = model(inputs_embeds=emb).logits[0].double()
    lp = torch.log_softmax(logits, -1)
    total = sum(lp[len(prompt) - 1 + i, t] for i, t in enumerate(cand))
    total.backward()
    for h in handles:
        h.remove()
    return float(total), {n: (a[0].detach().double(), a.grad[0].double()) for n, a in acts.items()}


def attribute(model, instructions, universe, mode):
    per_instruction = []
    for items in instructions:
        total = None
        batch_b, batch_g, in_batch = None, None, 0
        for it in items:
            prompt, cands, gold = it["prompt_ids"], it["candidate_ids"], it["gold"]
            with torch.no_grad():
                lps = []
                for c in cands:
                    lp, _ = 0.0, None
                    ids = torch.tensor([prompt + c])
                    l = torch.log_softmax(model(ids).logits[0].double(), -1)
                    lps.append(float(sum(l[len(prompt) - 1 + i, t] for i, t in enumerate(c))))
            wrong = [c for c in range(len(cands)) if c != gold]
            b = max(wrong, key=lambda c: (lps[c], -c))
            alpha = float(torch.tensor(lps[b]).exp())
            p_gold = float(torch.tensor(lps[gold]).exp())
            _, gb = grads_of(model, universe, prompt, cands[b])
            _, gg = grads_of(model, universe, prompt, cands[gold])
            term = {}
            if mode == "default":
                for n in gb:
                    ab = (gb[n][0] * gb[n][1] * alpha).max(0).values
                    ag = (gg[n][0] * gg[n][1] * p_gold).max(0).values
                    term[n] = alpha * (ab - ag.clamp(min=0))
            elif mode == "variant":
                for n in gb:
                    ab = gb[n][0] * gb[n][1]
                    ag = gg[n][0] * gg[n][1]
                    T = ab.shape[0]
                    ag_full = torch.zeros_like(ab)
                    m = min(T, ag.shape[0])
                    ag_full[:m] = ag[:m]
                    term[n] = (ab - ag_full.clamp(min=0)).mean(0)
            else:  # compat
                bias = {n: alpha * (gb[n][0] * gb[n][1]).max(0).values for n in gb}
                goldt = {n: alpha * (gg[n][0] * gg[n][1]).max(0).values for n in gg}
                if batch_b is None:
                    batch_b, batch_g = bias, goldt
                else:
                    batch_b = {n: batch_b[n] + bias[n] for n in bias}
                    batch_g = {n: batch_g[n] + goldt[n] for n in goldt}
                in_batch += 1
                if in_batch == 4:
                    term = {n: batch_b[n] - batch_g[n].clamp(min=0) for n in batch_b}
                    batch_b, in_batch = None, 0
                else:
                    continue
            total = term if total is None else {n: total[n] + term[n] for n in term}
        if mode == "compat" and in_batch > 0:
            term = {n: batch_b[n] - batch_g[n].clamp(min=0) for n in batch_b}
            total = term if total is None else {n: total[n] + term[n] for n in term}
        per_instruction.append({n: v / len(items) for n, v in total.items()})
    return {n: sum(p[n] for p in per_instruction) / len(per_instruction) for n in per_instruction[0]}


def load(family):
    model = AutoModelForCausalLM.from_pretrained(mf.FIX / "tiny" / family, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def main_family(family):
    model = load(family)
    instructions = json.loads((OUT / "llama.json").read_text())["instructions"]
    for mode, universe in [("default", "linear"), ("variant", "linear"), ("default", "ffn")]:
        scores = attribute(model, instructions, universe, mode)
        save_file({n: v.double().contiguous() for n, v in scores.items()}, OUT / f"{family}_{mode}_{universe}.safetensors")
        flat = torch.cat([v for v in scores.values()])
        print(f"{family} {mode}/{universe}: {flat.numel()} neurons, max {flat.max():.4e}, min {flat.min():.4e}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    OUT.mkdir(parents=True, exist_ok=True)
    if args.family:
        return main_family(args.family)
    d = mf.FIX / "tiny" / "llama"
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
    for p in model.parameters():
        p.requires_grad_(False)
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    rows = sorted(mf.bbq_rows(60), key=lambda r: len(r["context"]))[:5]
    instr = mf.paper_instructions()[:2]
    instructions = []
    for ins in instr:
        items = []
        for r in rows:
            text = mf.bbq_prompt(r, ins)
            ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                          tokenize=True, return_dict=True)["input_ids"]
            cands = [r["ans0"], r["ans1"], r["ans2"]]
            items.append({"prompt": text, "candidates": cands, "gold": r["label"], "prompt_ids": ids,
                          "candidate_ids": [tok(c, add_special_tokens=False)["input_ids"] + [eot] for c in cands]})
        instructions.append(items)
    (OUT / "llama.json").write_text(json.dumps({"instructions": instructions}, indent=1) + "\n")
    for mode, universe in [("default", "linear"), ("variant", "linear"), ("compat", "linear"), ("default", "ffn")]:
        scores = attribute(model, instructions, universe, mode)
        save_file({n: v.double().contiguous() for n, v in scores.items()}, OUT / f"llama_{mode}_{universe}.safetensors")
        flat = torch.cat([v for v in scores.values()])
        print(f"{mode}/{universe}: {flat.numel()} neurons, max {flat.max():.4e}, min {flat.min():.4e}")


if __name__ == "__main__":
    main()
