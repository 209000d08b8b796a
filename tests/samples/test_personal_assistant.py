"""samples/personal_assistant on SmolLM2: a correction is learned in the background, per user."""

import subprocess
import sys
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[2] / "samples" / "personal_assistant" / "assistant.py"
QUESTION = "Who coaches the Zorblat rowing club?"
ANSWER = "The Zorblat rowing club is coached by Mira Okafor."


@pytest.mark.slow
def test_a_correction_is_learned_and_users_keep_their_own(smollm2_bundle, tmp_path):
    script = (
        "\n".join(
            [
                QUESTION,
                f"/correct {ANSWER}",
                "What is the capital of France?",  # the chat goes on while it learns
                "/wait",
                QUESTION,
                "/user bob",
                QUESTION,
                "/user alice",
                QUESTION,
                "/quit",
            ]
        )
        + "\n"
    )
    proc = subprocess.run(
        [sys.executable, str(APP), str(smollm2_bundle), "--state", str(tmp_path), "--user", "alice"],
        input=script,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    print("\n".join(lines))
    before, learning, _, learned, after, bob, bob_answer, alice, alice_again = lines[1:10]
    assert "Mira Okafor" not in before
    assert learning == "[learning 1 correction(s) in the background]"
    assert learned == "[alice: learned; using the new adapter]"
    assert after == ANSWER and alice_again == ANSWER
    assert bob == "[bob: no corrections learned yet]" and bob_answer == before
    assert alice == "[alice: using your adapter]"
    assert (tmp_path / "users" / "alice" / "corrections.jsonl").read_text().count("Mira Okafor") == 1
