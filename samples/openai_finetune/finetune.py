"""Fine-tune a model on your own device through OpenAI's API, with nothing but the `openai` SDK.

Start a server first (see README.md), then:

    python samples/openai_finetune/finetune.py --base-url http://127.0.0.1:8000/v1 --data samples/data/dates

It measures held-out exact match of the base model, uploads the training file, creates a
fine-tuning job, follows its events, measures again with the fine-tuned model, chats with
it once, and prints a JSON summary as its last line.
"""

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from openai import OpenAI


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def exact_match(client: OpenAI, model: str, rows: list[dict]) -> float:
    """The share of held-out prompts whose first answer line is the expected completion (8 requests at a time)."""

    def correct(row: dict) -> bool:
        answer = client.completions.create(model=model, prompt=row["prompt"], max_tokens=16, temperature=0, stop=["\n"])
        return answer.choices[0].text.strip() == row["completion"].strip()

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(correct, rows))
    return sum(results) / len(results)


def follow(client: OpenAI, job_id: str, every: int = 25) -> object:
    """Print the job's events as they come (every `every`-th step) until it ends; return the job."""
    seen: set[str] = set()
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        events = client.fine_tuning.jobs.list_events(job_id, limit=100).data
        for event in reversed(events):  # the API lists the newest first
            if event.id in seen:
                continue
            seen.add(event.id)
            step = (event.data or {}).get("step")
            if step is None or step % every == 0 or "valid_loss" in (event.data or {}):
                print(f"  {event.message}", flush=True)
        if job.status in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(1.0)


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--api-key", default="none")
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1] / "data" / "dates")
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()

    client = OpenAI(base_url=args.base_url, api_key=args.api_key, timeout=600)
    base = next(m.id for m in client.models.list() if not getattr(m, "parent", None))
    heldout = read_jsonl(args.data / "heldout.jsonl")
    print(f"base model {base}: held-out exact match ...", flush=True)
    before = exact_match(client, base, heldout)
    print(f"  {before:.0%} of {len(heldout)}", flush=True)

    started = time.perf_counter()
    with open(args.data / "train.jsonl", "rb") as f:
        upload = client.files.create(file=f, purpose="fine-tune")
    print(f"uploaded {upload.filename}: {upload.bytes} bytes as {upload.id}", flush=True)
    job = client.fine_tuning.jobs.create(
        model=base,
        training_file=upload.id,
        suffix="dates",
        hyperparameters={"n_epochs": args.epochs, "batch_size": 8, "learning_rate_multiplier": 2.0},
    )
    print(f"job {job.id} {job.status}", flush=True)
    job = follow(client, job.id)
    if job.status != "succeeded":
        raise SystemExit(f"the job {job.status}: {job.error}")
    trained_s = time.perf_counter() - started
    print(f"fine-tuned model {job.fine_tuned_model} after {trained_s:.0f} s; held-out exact match ...", flush=True)
    after = exact_match(client, job.fine_tuned_model, heldout)
    passed_s = time.perf_counter() - started
    print(f"  {after:.0%} of {len(heldout)}", flush=True)

    chat = client.chat.completions.create(
        model=job.fine_tuned_model,
        messages=[{"role": "user", "content": heldout[0]["prompt"]}],
        max_tokens=16,
        temperature=0,
    )
    print(f"chat: {heldout[0]['prompt']!r} -> {chat.choices[0].message.content!r}", flush=True)
    summary = {
        "model": job.fine_tuned_model,
        "exact_match_before": before,
        "exact_match_after": after,
        "upload_to_model_s": trained_s,
        "upload_to_passing_s": passed_s,
        "trained_tokens": job.trained_tokens,
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
