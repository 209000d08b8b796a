"""The third-party runtimes that tests compare against, each bootstrapped by scripts/peers.sh.

A test that needs one calls `peer_python("llama")`, `peer_run(...)` or `chromium_path()`.
If the bootstrap fails (no network, a broken build), the test fails with its output: CI
must say so rather than skip.
"""

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_ready: set[str] = set()


def ensure_peer(name: str) -> None:
    """Run `scripts/peers.sh NAME` once per test session (the script locks against parallel runs)."""
    if name in _ready:
        return
    proc = subprocess.run([str(ROOT / "scripts/peers.sh"), name], capture_output=True, text=True, cwd=ROOT, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
        pytest.fail(f"scripts/peers.sh {name} failed with exit {proc.returncode}:\n{tail}", pytrace=False)
    _ready.add(name)


def peer_python(name: str) -> Path:
    """The python of `.venvs/NAME`, bootstrapped if missing or stale."""
    ensure_peer(name)
    return ROOT / ".venvs" / name / "bin" / "python"


def peer_run(name: str, args: list, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """Run `python ARGS` in peer NAME's venv (without our PYTHONPATH); fail the test on a non-zero exit."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [str(peer_python(name)), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
        **kwargs,
    )
    if proc.returncode != 0:
        pytest.fail(f"{name} peer: {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr}", pytrace=False)
    return proc


def chromium_path() -> Path:
    """Debian's chromium, installed by scripts/peers.sh if missing."""
    ensure_peer("chromium")
    return Path("/usr/bin/chromium")


def llama_src() -> Path:
    """llama.cpp's converters (convert_hf_to_gguf.py, convert_lora_to_gguf.py, conversion/, gguf-py/)."""
    ensure_peer("llama-src")
    return ROOT / ".venvs" / "llama-src"
