"""A 1B-class build stays within its memory budget, so a regression in build memory fails here.

Llama-3.2-1B's published config (1.24 B parameters) with random bf16 weights in the hub's
layout (`benchmarks/hub_models.py`), built with `--method qlora --quant int4` in a child
process whose address space is capped (RLIMIT_AS): an allocation past the cap fails the
build. Measured on the 2-core Intel Xeon of 1 Dec 2026: peak RSS 4.55 GiB and peak address
space (VmPeak) 5.96-6.18 GiB in 4 min 41 s to 6 min (two runs, the machine shared); the
cap leaves about 0.8 GiB over that, and glibc's malloc arenas (address space reserved per
thread, not memory) are limited to 2 so they do not eat it. With the cap at 4.5 GiB the build
fails. BENCHMARKS.md, "Full-size models", has the figures.
"""

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny_models import make_tokenizer

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
import hub_models  # the benchmarks' hub-layout models

ADDRESS_SPACE_CAP = 7 * 2**30
BUILD = """
import sys
from pathlib import Path
from edgetune.builder.pipeline import build_bundle
from edgetune.options import BuildConfig
build_bundle(BuildConfig(sys.argv[1], Path(sys.argv[2]), method="qlora", quant="int4"))
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(status["VmHWM"].strip(), status["VmPeak"].strip())
"""


def _cap_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_CAP, ADDRESS_SPACE_CAP))


@pytest.mark.slow
def test_a_1b_model_builds_with_qlora_int4_under_its_memory_cap(tmp_path):
    folder = hub_models.make_folder("llama-3.2-1b", tmp_path / "llama-3.2-1b", tokenizer=make_tokenizer())
    out = tmp_path / "bundle"
    build = subprocess.run(
        [sys.executable, "-c", BUILD, str(folder), str(out)],
        preexec_fn=_cap_address_space,
        env={**os.environ, "MALLOC_ARENA_MAX": "2"},  # glibc's per-thread arenas reserve address space, not memory
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert build.returncode == 0, f"the build failed under a {ADDRESS_SPACE_CAP >> 30} GiB cap:\n{build.stderr[-3000:]}"
    print("peak RSS, peak address space:", build.stdout.strip().splitlines()[-1])
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["method"], manifest["quantization"]["type"]) == ("qlora", "int4")
    weights = (out / "base_weights.bin").stat().st_size
    assert weights < 0.25 * 4 * 1.24e9  # 4-bit blocks and int8 embeddings: under a quarter of the fp32 weights
