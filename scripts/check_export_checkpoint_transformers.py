#!/usr/bin/env python3
"""Check a pruned checkpoint directory written by `crispr prune` with transformers, for any family
transformers reads (Llama, Qwen2/3, Mistral, Gemma 2/3, Phi-3): it loads; the top-N neurons of the
attribution are exactly zero rows of the modules they name (an FFN activation unit: `up_proj`, or
the gate half of Phi-3's fused `gate_up_proj`) and every other row and tensor equals the input's;
and transformers' candidate log-probabilities on the pruned model match `crispr score`.

    crispr attribute --model IN --task bbq:Age --samples 3 --out SCORES
    crispr prune --model IN --scores SCORES --top 30 --out PRUNED
    scripts/oracle-env.sh python scripts/check_export_checkpoint_transformers.py IN SCORES PRUNED 30
"""
import json
import subprocess
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

original, scores, pruned, top = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
crispr = Path(__file__).resolve().parent.parent / "target" / "debug" / "crispr"
load = lambda p: AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32, attn_implementation="eager").eval()
mo, mp = load(original), load(pruned)
fused = mo.config.model_type == "phi3"
zeroed = {}
for n in json.loads((scores / "neurons.json").read_text())["neurons"][:top]:
    module = n["module"].replace(".mlp.act_fn", ".mlp.gate_up_proj" if fused else ".mlp.up_proj")
    zeroed.setdefault(module, set()).add(n["row"])
so, sp = mo.state_dict(), mp.state_dict()
for module, rows in zeroed.items():
    w, w0 = sp[module + ".weight"], so[module + ".weight"]
    for r in range(w.shape[0]):
        if r in rows:
            assert torch.all(w[r] == 0), f"{module} row {r} not zero"
        else:
            assert torch.equal(w[r], w0[r]), f"{module} row {r} changed"
others = [k for k in sp if k.rsplit(".", 1)[0] not in zeroed]
assert all(torch.equal(sp[k], so[k]) for k in others), "a tensor outside the pruned modules changed"

tok = AutoTokenizer.from_pretrained(pruned)
prompt, cands = "Question: Who was not comfortable using the phone?", ["The grandfather", "The grandson"]
ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True,
                              return_dict=True)["input_ids"]
eot = tok.convert_tokens_to_ids("<|im_end|>")
theirs = []
with torch.no_grad():
    for c in cands:
        cid = tok(c, add_special_tokens=False)["input_ids"] + [eot]
        lp = torch.log_softmax(mp(torch.tensor([ids + cid])).logits[0].double(), -1)
        theirs.append(float(sum(lp[len(ids) - 1 + i, t] for i, t in enumerate(cid))))
line = json.dumps({"prompt": prompt, "candidates": cands}) + "\n"
out = subprocess.run([str(crispr), "score", "--model", str(pruned), "--input", "/dev/stdin"], input=line,
                     capture_output=True, text=True, check=True)
ours = json.loads(out.stdout.splitlines()[0])["logprobs"]
assert all(abs(a - b) <= 1e-4 * max(1.0, abs(b)) for a, b in zip(ours, theirs)), (ours, theirs)
print(f"{sum(len(r) for r in zeroed.values())} rows zero in {len(zeroed)} modules; {len(others)} other tensors "
      f"identical; log-probabilities crispr {ours} vs transformers {theirs}")
