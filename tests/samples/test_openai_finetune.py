"""samples/openai_finetune on SmolLM2: upload -> job -> a fine-tuned model passing held-out exact match."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serve.live import LiveServer

SAMPLES = Path(__file__).resolve().parents[2] / "samples"


def prepare_data(out: Path) -> Path:
    spec = importlib.util.spec_from_file_location("prepare", SAMPLES / "data" / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.prepare(out)["train"].parent


@pytest.mark.slow
def test_the_sample_fine_tunes_smollm2_to_90_percent_within_10_minutes(smollm2_bundle, tmp_path):
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
    assert summary["exact_match_after"] >= 0.9
    assert summary["upload_to_passing_s"] <= 600
