"""Check a `crispr eval` run on BBQ against an independent PyTorch evaluator, choice by choice.

Reads RUN_DIR/predictions.jsonl and RUN_DIR/metrics.json written by
`crispr eval --model MODEL_DIR --task bbq:<Category> --instructions paper --out RUN_DIR`, renders
every prompt itself from the BBQ file and the paper's instructions (layout from
shared/docs/method.md), tokenizes with the checkpoint's tokenizer.json through the `tokenizers`
library (the behaviour crispr follows; transformers 5.x drops a lone "▁" before "</s>"), scores
every candidate with transformers' T5ForConditionalGeneration the way the authors' evaluator does
(the encoder re-run per option, teacher-forced log-probability of the option plus </s>), and
reports how many choices agree and the largest score difference.

    scripts/oracle-env.sh python scripts/check_eval_transformers.py RUN_DIR MODEL_DIR [--data DIR]
"""

import argparse
import json
import pathlib
import sys

import torch
from tokenizers import Tokenizer
from transformers import T5ForConditionalGeneration


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", type=pathlib.Path)
    ap.add_argument("model_dir", type=pathlib.Path)
    ap.add_argument("--data", type=pathlib.Path, default=None, help="shared data directory")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    data = args.data or next(
        p / "shared" / "data" for p in [pathlib.Path.cwd(), *pathlib.Path.cwd().parents] if (p / "shared" / "data").is_dir()
    )
    templates = json.loads((data / "instructions" / "templates.json").read_text())
    paper = templates["tasks"]["bbq"]["crispr_paper"]
    layout, instructions = paper["prompt_format"], paper["instructions"]

    metrics = json.loads((args.run_dir / "metrics.json").read_text())
    category = metrics["task"].split(":", 1)[1]
    rows = [json.loads(l) for l in (data / "bbq" / "data" / f"{category}.jsonl").read_text().splitlines() if l.strip()]
    preds = [json.loads(l) for l in (args.run_dir / "predictions.jsonl").read_text().splitlines()]

    tok = Tokenizer.from_file(str(args.model_dir / "tokenizer.json"))
    model = T5ForConditionalGeneration.from_pretrained(args.model_dir, torch_dtype=torch.float32).eval()

    def ids(text):
        return tok.encode(text).ids  # the post-processor appends </s>

    same, worst, mismatches = 0, 0.0, []
    with torch.no_grad():
        for p in preds:
            k = int(p["instruction"].split("/")[1])
            ex = rows[p["index"]]
            prompt = layout.format(instruction=instructions[k], **{f: ex[f] for f in ["context", "question", "ans0", "ans1", "ans2"]})
            cands = [ex["ans0"], ex["ans1"], ex["ans2"]]
            assert cands == p["candidates"], (p, cands)
            x = torch.tensor([ids(prompt)])
            scores = []
            for c in cands:
                y = torch.tensor([ids(c)])
                logits = model(input_ids=x, labels=y).logits.log_softmax(-1)
                scores.append(logits[0].gather(1, y[0][:, None]).sum().item())
            choice = max(range(3), key=lambda i: (scores[i], -i))
            worst = max(worst, max(abs(a - b) for a, b in zip(scores, p["scores"])))
            if choice == p["choice"]:
                same += 1
            else:
                margin = sorted(scores)[-1] - sorted(scores)[-2]
                mismatches.append((p["instruction"], p["index"], choice, p["choice"], margin))
    print(f"{same}/{len(preds)} choices identical; largest log-probability difference {worst:.2e}")
    for m in mismatches:
        print("differs:", m)
    sys.exit(0 if not mismatches else 1)


if __name__ == "__main__":
    main()
