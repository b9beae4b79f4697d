#!/usr/bin/env bash
# The evaluation table of the closing notes: the default model on BBQ-Age test and the NLU tasks,
# 10 instructions each, scoring and generation mode, with CC and DC calibration, on a seeded
# subset of LIMIT test instances per task (2 cores cannot do the full splits in minutes).
#   scripts/eval_table.sh [LIMIT] [OUT]
set -euo pipefail
limit="${1:-12}"
out="${2:-eval-table}"
bin="${CRISPR_BIN:-target/release/crispr}"
mkdir -p "$out"
for task in bbq:Age mrpc rte qnli sst2 boolq; do
  name="${task//:/_}"
  "$bin" eval --task "$task" --limit "$limit" --out "$out/$name-scoring"
  "$bin" eval --task "$task" --limit "$limit" --mode generation --out "$out/$name-generation"
  "$bin" eval --task "$task" --limit "$limit" --calibrate cc --out "$out/$name-cc"
  "$bin" eval --task "$task" --limit "$limit" --calibrate dc --out "$out/$name-dc"
done
python3 - "$out" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
print("| task | scoring | generation (unmatched) | CC | DC |")
print("|---|---|---|---|---|")
for task in ["bbq_Age", "mrpc", "rte", "qnli", "sst2", "boolq"]:
    cells = []
    for mode in ["scoring", "generation", "cc", "dc"]:
        m = json.load(open(out / f"{task}-{mode}" / "metrics.json"))
        cell = f"{m['mean']['acc']:.1f} ± {m['std']['acc']:.1f}"
        if mode == "generation":
            cell += f" ({m['mean'].get('unmatched', 0):.0f} %)"
        if task == "bbq_Age":
            cell += f"; bias amb {m['mean']['bias_score_ambig']:.1f}, dis {m['mean']['bias_score_disambig']:.1f}"
        cells.append(cell)
    print(f"| {task} | " + " | ".join(cells) + " |")
PY
