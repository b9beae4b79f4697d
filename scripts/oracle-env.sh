#!/usr/bin/env bash
# Run a command inside the oracle toolchain (PyTorch + transformers + gguf-py), creating it on
# first use. It is large (several GB of wheels) and lives outside the repository; only the
# fixtures it produces are committed. Override the location with CRISPR_ORACLE_VENV.
set -euo pipefail
venv="${CRISPR_ORACLE_VENV:-$HOME/.cache/crispr/oracle-venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet torch==2.15.0 transformers==5.24.0 gguf==0.19.0 safetensors numpy
fi
cd "$(dirname "$0")"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
cd ..
if [ "${1:-}" = python ]; then shift; exec "$venv/bin/python" "$@"; fi
exec "$@"
