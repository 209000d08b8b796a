"""Real learning on the embedded SmolLM2-135M-Instruct: a skill the base model lacks, learnt on CPU.

How long it takes is a benchmark figure (the demo and benchmarks/time_to_skill.py), not an
assertion: the test machine is shared, and wall time says more about the neighbours.
"""

import time

import pytest

from edgetune.options import TrainConfig
from edgetune.runtime.engine import Engine
from edgetune.runtime.evaluate import evaluate_exact_match
from edgetune.runtime.train import train
from edgetune.tasks.dates import write_splits


@pytest.mark.slow
def test_smollm2_learns_iso_dates(smollm2_bundle, tmp_path):
    data = write_splits(tmp_path / "data", n_train=2000, n_eval=100, seed=0)
    before = evaluate_exact_match(Engine(smollm2_bundle), data["heldout"])  # batched, as the demo's eval
    start = time.perf_counter()
    summary = train(
        TrainConfig(
            smollm2_bundle,
            data["train"],
            tmp_path / "run",
            steps=150,
            lr=2e-3,
            warmup=10,
            batch_size=8,
            seq_len=64,
            progress=False,
        )
    )
    seconds = time.perf_counter() - start
    engine = Engine(smollm2_bundle)
    engine.load_adapter("dates", tmp_path / "run" / "adapter")
    after = evaluate_exact_match(engine, data["heldout"], adapter="dates")
    print(
        f"held-out exact match {before.accuracy:.0%} -> {after.accuracy:.0%}; "
        f"training {seconds:.0f} s ({summary['tokens_per_s']:.0f} tokens/s)"
    )
    assert before.accuracy < 0.5
    assert after.accuracy >= 0.9
    assert summary["steps"] == 150
