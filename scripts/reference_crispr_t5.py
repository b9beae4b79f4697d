#!/usr/bin/env python3
"""The T5 half of the attribution parity fixtures (see reference_crispr.py): the method computed in
PyTorch with hooks on every linear layer of the tiny original-T5 model of make_t5_fixtures.py
(deterministic weights, so nothing large is committed), for the paper's default settings and for the
re-release's computation (`--compat biasneuron`).

    scripts/oracle-env.sh python scripts/reference_crispr_t5.py

Writes tests/fixtures/attribution/t5.json (token ids, gold) and t5_<mode>.safetensors (f64 scores per
module of the linear universe).
"""
import json

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer

import make_fixtures as mf
import make_t5_fixtures as t5

OUT = mf.FIX / "attribution"


def main():
    torch.set_num_threads(2)
    cfg = t5.CONFIGS["tiny_relu"]
    model, _ = t5.build_model(cfg)
    tok = Tokenizer.from_file(str(mf.DATA / "tokenizers" / "t5" / "tokenizer.json"))
    rows = sorted(mf.bbq_rows(60), key=lambda r: len(r["context"]))[:5]
    instructions = []
    for ins in mf.paper_instructions()[:2]:
        items = []
        for r in rows:
            cands = [r["ans0"], r["ans1"], r["ans2"]]
            items.append({"prompt_ids": tok.encode(mf.bbq_prompt(r, ins)).ids,
                          "candidate_ids": [tok.encode(c).ids for c in cands], "gold": r["label"]})
        instructions.append(items)
    (OUT / "t5.json").write_text(json.dumps({"config": "tiny_relu", "seed": t5.SEED, "instructions": instructions}) + "\n")
    linear = [n for n, _s, k in t5.site_names(cfg) if k != "act"]
    for mode in ["default", "compat"]:
        per_instruction = []
        for items in instructions:
            total = {n: 0 for n in linear}
            batch_b, batch_g, in_batch = None, None, 0
            for it in items:
                lps = t5.logprobs(model, it["prompt_ids"], it["candidate_ids"])
                gold = it["gold"]
                b = max((c for c in range(len(lps)) if c != gold), key=lambda c: (lps[c], -c))
                alpha, p_gold = float(torch.tensor(lps[b]).exp()), float(torch.tensor(lps[gold]).exp())
                _, rb = t5.attribution(model, cfg, it["prompt_ids"], it["candidate_ids"][b])
                _, rg = t5.attribution(model, cfg, it["prompt_ids"], it["candidate_ids"][gold])
                mx = lambda r, n: (r[n][2] * r[n][3]).max(0).values
                if mode == "default":
                    for n in linear:
                        total[n] = total[n] + alpha * (alpha * mx(rb, n) - (p_gold * mx(rg, n)).clamp(min=0))
                else:
                    bb = {n: alpha * mx(rb, n) for n in linear}
                    gg = {n: alpha * mx(rg, n) for n in linear}
                    batch_b = bb if batch_b is None else {n: batch_b[n] + bb[n] for n in linear}
                    batch_g = gg if batch_g is None else {n: batch_g[n] + gg[n] for n in linear}
                    in_batch += 1
                    if in_batch == 4:
                        for n in linear:
                            total[n] = total[n] + batch_b[n] - batch_g[n].clamp(min=0)
                        batch_b, batch_g, in_batch = None, None, 0
            if mode == "compat" and in_batch:
                for n in linear:
                    total[n] = total[n] + batch_b[n] - batch_g[n].clamp(min=0)
            per_instruction.append({n: v / len(items) for n, v in total.items()})
        scores = {n: sum(p[n] for p in per_instruction) / len(per_instruction) for n in linear}
        save_file({n: v.double().contiguous() for n, v in scores.items()}, OUT / f"t5_{mode}_linear.safetensors")
        flat = torch.cat(list(scores.values()))
        print(f"t5 {mode}: {flat.numel()} neurons, max {flat.max():.3e}, min {flat.min():.3e}")


if __name__ == "__main__":
    main()
