#!/usr/bin/env bash
# Bootstrap .venv and the peer runtimes (.venvs/*, chromium), then run the whole test suite
# (slow tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/peers.sh llama llama-src ort genai chromium node
exec .venv/bin/python -m pytest -q "$@"
