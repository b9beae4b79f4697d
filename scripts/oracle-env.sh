#!/usr/bin/env bash
# Run a command inside the oracle toolchain (PyTorch + transformers + gguf-py), creating it on
# first use. It is large (several GB of wheels) and lives outside the repository; only the
# fixtures it produces are committed. Override the location with CRISPR_ORACLE_VENV.
set -euo pipefail
venv="${CRISPR_ORACLE_VENV:-$HOME/.cache/crispr/oracle-venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  # PyPI's Linux torch wheels are CUDA builds: importing torch loads the CUDA runtime libraries
  # even on a CPU-only machine, so those wheels are needed; triton (the GPU kernel compiler) and
  # cuda-bindings are not, and are left out (installing torch with --no-deps, then naming the rest).
  "$venv/bin/pip" install --quiet --no-deps torch==2.15.0
  "$venv/bin/pip" install --quiet "setuptools>=77.0.3" filelock "typing-extensions>=4.13.0" "sympy>=1.13.3" \
    "networkx>=2.5.1" jinja2 "fsspec>=0.8.5" \
    "cuda-toolkit[cublas,cudart,cufft,cufile,cupti,cusolver,cusparse,nvjitlink,nvrtc,nvtx]==13.2.2" \
    nvidia-cudnn-cu13==9.26.0.51 nvidia-cusparselt-cu13==0.8.1 nvidia-nccl-cu13==2.30.7 \
    nvidia-nvshmem-cu13==3.7.2 \
    transformers==5.24.0 gguf==0.19.0 safetensors numpy
  "$venv/bin/python" -c 'import torch, transformers' || { echo "oracle toolchain: import failed" >&2; exit 1; }
fi
cd "$(dirname "$0")"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
cd ..
if [ "${1:-}" = python ]; then shift; exec "$venv/bin/python" "$@"; fi
exec "$@"
