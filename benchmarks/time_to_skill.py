"""Time to skill: wall time until held-out exact match on the dates task reaches the goal (90%).

Both sides: the same train/held-out files, batch 8, lr 1e-3 with 10 linear warm-up steps
then constant, AdamW, LoRA r=8/alpha 16 on q/v, an exact-match evaluation (greedy, stop
at a newline, at most 16 new tokens) every `every` steps, stop at the goal or `max_steps`.
The clock starts when the first process is launched and includes start-up, evaluation
and (edgetune) checkpointing.

edgetune, end to end with the CLI: `edgetune train --steps k*every [--resume]
--save-every every` then `edgetune eval --adapter run/adapter`, for k = 1, 2, ...
PyTorch, the tutorial way, in one process: transformers + PEFT, examples in random
order, padded to the longest of each batch (`tokenizer.pad`), labels -100 on the prompt
and the padding, `model.generate(stop_strings=["\n"])` for the evaluation.
"""

import json
import re
import shutil
import sys
import time
from pathlib import Path

import children
import workloads

HPARAMS = {"batch_size": 8, "lr": 1e-3, "warmup": 10, "seq_len": 64}


def run_edgetune(bundle: Path, data: Path, work: Path, every: int, max_steps: int, goal: float) -> dict:
    """The CLI round by round; returns wall time, steps, accuracy history and peak RSS (max of the children)."""
    cli = Path(children.PYTHON).parent / "edgetune"
    run = work / "edgetune-run"
    shutil.rmtree(run, ignore_errors=True)
    started, history, peak, steps = time.perf_counter(), [], 0, 0
    while steps < max_steps:
        steps = min(steps + every, max_steps)
        cmd = [
            cli,
            "train",
            bundle,
            "--data",
            data / "train.jsonl",
            "-o",
            run,
            "--steps",
            steps,
            "--lr",
            HPARAMS["lr"],
            "--warmup",
            HPARAMS["warmup"],
            "--schedule",
            "constant",
            "--batch-size",
            HPARAMS["batch_size"],
            "--seq-len",
            HPARAMS["seq_len"],
            "--save-every",
            every,
            "--no-progress",
        ] + (["--resume"] if steps > every else [])
        train = children.run_child(cmd, timeout=1800)
        if train["rc"] != 0:
            return {"error": f"train: {train['error']}", "history": history}
        evaluation = children.run_child(
            [cli, "eval", bundle, "--adapter", run / "adapter", "--data", data / "heldout.jsonl", "--show", "0"],
            timeout=1800,
        )
        found = re.search(r"exact match: ([\d.]+)%", " ".join(evaluation["stdout"]))
        if not found:
            return {"error": f"eval: {evaluation['error']}", "history": history}
        peak = max(peak, train["peak_rss_bytes"], evaluation["peak_rss_bytes"])
        accuracy = float(found.group(1)) / 100
        history.append({"step": steps, "accuracy": accuracy, "elapsed_s": time.perf_counter() - started})
        children.log(f"  edgetune step {steps}: exact match {accuracy:.0%}")
        if accuracy >= goal:
            break
    return {
        "wall_s": time.perf_counter() - started,
        "reached": history[-1]["accuracy"] >= goal,
        "steps": steps,
        "history": history,
        "peak_rss_bytes": peak,
    }


def run_torch(o: dict) -> dict:
    """Child: the PyTorch + PEFT tutorial loop with padded batches; stops at the goal."""
    import random

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgetune.runtime.evaluate import exact_match

    started = time.perf_counter()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    # The bundle's tokenizer files (EOS <|im_end|>, no BOS added): transformers' GGUF loader
    # makes EOS <|im_start|> (= BOS) for SmolLM2, which would teach the wrong end marker.
    tokenizer = AutoTokenizer.from_pretrained(o["tokenizer"])
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    tokenizer.padding_side = "right"  # this tokenizer pads on the left by default; labels are right-padded
    model = AutoModelForCausalLM.from_pretrained(o["model"], dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(lora_dropout=0.0, **workloads.LORA))
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=HPARAMS["lr"], weight_decay=0.0
    )
    warm = HPARAMS["warmup"]
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warm))
    read = lambda name: [json.loads(line) for line in (Path(o["data"]) / name).read_text().splitlines()]
    train, heldout = read("train.jsonl"), read("heldout.jsonl")

    def encode(e):
        prompt = tokenizer(e["prompt"])["input_ids"]
        answer = tokenizer(e["completion"] + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        ids = (prompt + answer)[: HPARAMS["seq_len"]]
        return {"input_ids": ids, "labels": ([-100] * len(prompt) + answer)[: HPARAMS["seq_len"]]}

    def collate(rows):
        batch = tokenizer.pad([{"input_ids": r["input_ids"]} for r in rows], return_tensors="pt")
        width = batch["input_ids"].shape[1]
        batch["labels"] = torch.tensor([r["labels"] + [-100] * (width - len(r["labels"])) for r in rows])
        return batch

    def evaluate():
        model.eval()
        hits = 0
        with torch.inference_mode():
            for e in heldout:
                ids = tokenizer(e["prompt"], return_tensors="pt")
                out = model.generate(
                    **ids,
                    max_new_tokens=16,
                    do_sample=False,
                    stop_strings=["\n"],
                    tokenizer=tokenizer,
                    pad_token_id=tokenizer.pad_token_id,
                )
                hits += exact_match(
                    tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True), e["completion"]
                )
        model.train()
        return hits / len(heldout)

    encoded = [encode(e) for e in train]
    rng, order, history, step = random.Random(0), [], [], 0
    model.train()
    while step < o["max_steps"]:
        if len(order) < HPARAMS["batch_size"]:
            order += rng.sample(range(len(encoded)), len(encoded))  # a new epoch, reshuffled
        rows = [encoded[i] for i in order[: HPARAMS["batch_size"]]]
        del order[: HPARAMS["batch_size"]]
        loss = model(**collate(rows)).loss
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if step % o["every"] == 0 or step == o["max_steps"]:
            accuracy = evaluate()
            history.append({"step": step, "accuracy": accuracy, "elapsed_s": time.perf_counter() - started})
            children.log(f"  torch step {step}: exact match {accuracy:.0%}")
            if accuracy >= o["goal"]:
                break
    return {"reached": history[-1]["accuracy"] >= o["goal"], "steps": step, "history": history}


def measure(
    bundle: Path, model_dir: Path, every: int = 50, max_steps: int = 150, goal: float = 0.9, heldout: int = 50
) -> dict:
    """edgetune first, then PyTorch (one round each: a round takes minutes)."""
    work = children.BENCH / "time_to_skill"
    data = work / "data"
    from edgetune.tasks.dates import write_splits

    write_splits(data, 2000, heldout, seed=0)
    result = {"goal": goal, "every": every, "max_steps": max_steps, "heldout": heldout, **HPARAMS}
    children.log("time to skill: edgetune (CLI train + eval)")
    result["edgetune"] = run_edgetune(bundle, data, work, every, max_steps, goal)
    children.log("time to skill: PyTorch + PEFT, padded batches")
    options = {
        "impl": "torch",
        "model": str(model_dir),
        "tokenizer": str(bundle),
        "data": str(data),
        "every": every,
        "max_steps": max_steps,
        "goal": goal,
    }
    run = children.run_child(children.child_cmd("time_to_skill.py", options), timeout=3600, env=children.NO_SPIN)
    result["torch"] = (
        {**run["result"], "wall_s": run["wall_s"], "peak_rss_bytes": run["peak_rss_bytes"]}
        if run["result"]
        else {"error": run["error"]}
    )
    return result


if __name__ == "__main__" and sys.argv[1:2] == ["child"]:
    children.child_main({"torch": run_torch})
