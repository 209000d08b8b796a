"""samples/openai_finetune on SmolLM2: upload -> job -> a fine-tuned model better on held-out exact match.

The issue's target (>= 90% within 10 minutes of the upload, on the sample's 1,200 examples)
is a benchmark figure (BENCHMARKS.md, "Fine-tuning through the server"); the test runs the
same sample on a smaller set so the suite stays within its budget.
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serve.live import LiveServer

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
TRAIN, HELDOUT = 480, 40  # 60 steps of 8 (the sample: 1,200 and 100)


def prepare_data(out: Path) -> Path:
    """The sample's data (samples/data/prepare.py), cut to its first TRAIN and HELDOUT examples."""
    spec = importlib.util.spec_from_file_location("prepare", SAMPLES / "data" / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    files = module.prepare(out)
    for name, keep in (("train", TRAIN), ("heldout", HELDOUT)):
        lines = files[name].read_text(encoding="utf-8").splitlines(keepends=True)
        files[name].write_text("".join(lines[:keep]), encoding="utf-8")
    return files["train"].parent


@pytest.mark.slow
def test_the_sample_fine_tunes_smollm2_through_the_openai_sdk(smollm2_bundle, tmp_path):
    data = prepare_data(tmp_path / "data")
    with LiveServer(smollm2_bundle, log_dir=tmp_path) as server:
        proc = subprocess.run(
            [
                sys.executable,
                str(SAMPLES / "openai_finetune" / "finetune.py"),
                "--base-url",
                server.v1,
                "--data",
                str(data),
            ],
            capture_output=True,
            text=True,
            timeout=1200,
        )
    print(proc.stdout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["exact_match_before"] < 0.5
    assert summary["exact_match_after"] >= 0.7
