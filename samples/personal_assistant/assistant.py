"""A personal assistant that learns from its users' corrections, on the device (a terminal app).

    python samples/personal_assistant/assistant.py BUNDLE [--state DIR] [--user NAME]

Type a question to chat. Commands:
    /correct ANSWER   the right answer to the last question: recorded, then learned in the background
    /user NAME        switch to another user (each has their own corrections and adapter)
    /wait             wait until background learning is done
    /quit

Each user's corrections go to STATE/users/NAME/corrections.jsonl. After a correction the
app fine-tunes that user's adapter on all their corrections with edgetune's library API
(`Tuner.start`, a child process at low priority) while the chat goes on, and switches to the
new adapter when the job ends. Nothing leaves the device.
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

from edgetune.runtime import Tuner
from edgetune.runtime.generate import Generator

MAX_NEW_TOKENS = 48
STEPS, LR = 60, 1e-3  # a few corrections: many passes over them


class Assistant:
    """Chat with per-user adapters; corrections become a background fine-tuning job."""

    def __init__(self, bundle: Path, state: Path, user: str):
        self.bundle, self.state = bundle, state
        self.generator = Generator(bundle)
        self.job = None  # (user, TuningJob, run folder)
        self.last_question: str | None = None
        self.switch(user)

    def user_dir(self, user: str) -> Path:
        return self.state / "users" / user

    def switch(self, user: str) -> str:
        """Use `user`'s adapter (none yet: the base model)."""
        self.user = user
        adapter = self.user_dir(user) / "adapter"
        if (adapter / "adapter_config.json").is_file():
            self.generator.set_adapter(adapter)
            return f"[{user}: using your adapter]"
        self.generator.set_adapter(None)
        return f"[{user}: no corrections learned yet]"

    def ask(self, question: str) -> str:
        self.poll()
        self.last_question = question
        messages = [{"role": "user", "content": question}]
        return self.generator.chat(messages, max_new_tokens=MAX_NEW_TOKENS, temperature=0).strip()

    def correct(self, answer: str) -> str:
        """Record the right answer to the last question and learn all of this user's corrections in the background."""
        if self.last_question is None:
            return "[ask something first]"
        folder = self.user_dir(self.user)
        folder.mkdir(parents=True, exist_ok=True)
        record = {
            "messages": [{"role": "user", "content": self.last_question}, {"role": "assistant", "content": answer}]
        }
        with open(folder / "corrections.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        corrections = [json.loads(line) for line in (folder / "corrections.jsonl").read_text().splitlines()]
        if self.job and not self.job[1].done:  # an older job learns fewer corrections: replace it
            self.job[1].cancel()
        run = folder / f"run-{len(corrections)}"
        shutil.rmtree(run, ignore_errors=True)
        job = Tuner(self.bundle, run, child_process=True).start(
            corrections, steps=STEPS, lr=LR, batch_size=min(8, len(corrections)), warmup=0, seq_len=256
        )
        self.job = (self.user, job, run)
        return f"[learning {len(corrections)} correction(s) in the background]"

    def poll(self, wait: bool = False) -> str | None:
        """Take the finished job's adapter into use (waiting for it if asked)."""
        if self.job is None or (not wait and not self.job[1].done):
            return None
        user, job, run = self.job
        self.job = None
        try:
            job.wait()
        except Exception as e:  # a failed or cancelled job: the previous adapter stays
            return f"[learning stopped: {e}]"
        adapter = self.user_dir(user) / "adapter"
        shutil.rmtree(adapter, ignore_errors=True)
        shutil.copytree(run / "adapter", adapter)
        if user == self.user:
            self.generator.set_adapter(adapter)
        return f"[{user}: learned; using the new adapter]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--state", type=Path, default=Path("artifacts/assistant"))
    parser.add_argument("--user", default="me")
    args = parser.parse_args()
    app = Assistant(args.bundle, args.state, args.user)
    print(f"[{args.user}] ask me something (/correct ANSWER, /user NAME, /wait, /quit)", flush=True)
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        if line == "/quit":
            break
        if line.startswith("/correct "):
            print(app.correct(line[len("/correct ") :].strip()), flush=True)
        elif line.startswith("/user "):
            print(app.switch(line[len("/user ") :].strip()), flush=True)
        elif line == "/wait":
            print(app.poll(wait=True) or "[nothing to wait for]", flush=True)
        else:
            note = app.poll()
            if note:
                print(note, flush=True)
            print(app.ask(line), flush=True)


if __name__ == "__main__":
    main()
