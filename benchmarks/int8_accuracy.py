"""int8 compute's accuracy on the demo task: losses and held-out exact match against fp32 compute.

    .venv/bin/python benchmarks/int8_accuracy.py [--steps 150] [--task dates|emails] [--reuse] [--report]

Four bundles of the embedded SmolLM2-135M-Instruct with the demo's adapter (r=8 on q/v):
LoRA and QLoRA-int8, each with `--compute fp32` and `--compute int8`. Each is trained
through the CLI with the demo's settings (methods.py's TRAIN: 150 steps, lr 2e-3, batch 8,
seq-len 64; the same data in the same order, so step k sees the same batch in every run)
and evaluated on the 100 held-out examples. Each bundle is built again unless `--reuse` is
given: a bundle built by earlier code trains and serves as that code did. Prints, for each
int8 run against its fp32 twin, the relative difference of the training losses step by
step (first 10 and first 50 steps: largest and mean), and the exact match. Results:
artifacts/int8_accuracy/results.json.

`--task emails` trains the same bundles on plain text instead (every token a target): the
SpamAssassin messages of `scripts/spam_data.py`'s train split, shuffled with seed 0, at
seq-len 128, the demo's other settings; and compares the loss on 100 messages of its test
split after the last step instead of exact match. On the demo's task the loss falls under
0.1 by step ~11; on plain text it stays near the model's loss on new text, where a relative
difference of 2% is a difference in what the model predicts. Results:
artifacts/int8_accuracy/results-emails.json.
"""

import argparse
import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

from edgetune.common.embedded import smollm2_gguf
from methods import ADAPTER, TRAIN, du, exact_match, load, log, run

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "artifacts" / "int8_accuracy"
EMAILS_SEQ_LEN = 128  # --task emails: long enough for a message's opening lines
RUNS = {  # name -> build flags; each int8 run is compared with the fp32 run before it
    "LoRA": ["--method", "lora"],
    "LoRA, int8 compute": ["--method", "lora", "--compute", "int8"],
    "QLoRA-int8": ["--method", "qlora", "--quant", "int8"],
    "QLoRA-int8, int8 compute": ["--method", "qlora", "--quant", "int8", "--compute", "int8"],
}


def slug(name: str) -> str:
    """A run's name as a folder name."""
    return name.replace(", ", "-").replace(" ", "-")


def dates_data() -> Path:
    """The demo's data: 2,000 training and 100 held-out examples of the dates task."""
    data = OUT / "data"
    run(["data", "dates", "-o", data, "--train", "2000", "--heldout", "100", "--seed", "0"])
    return data


def emails_data() -> Path:
    """Plain text: the SpamAssassin train split's messages shuffled (seed 0), and 100 of its test split."""
    data, splits = OUT / "emails", OUT / "emails" / "splits"
    subprocess.run([sys.executable, ROOT / "scripts" / "spam_data.py", splits], check=True)
    texts = [json.loads(line)["text"] for line in (splits / "train.jsonl").read_text().splitlines()]
    random.Random(0).shuffle(texts)
    heldout = [json.loads(line)["text"] for line in (splits / "test.jsonl").read_text().splitlines()[:100]]
    for name, rows in (("train", texts), ("heldout", heldout)):
        (data / f"{name}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))
    return data


def train_flags(steps: int, task: str) -> list[str]:
    """The demo's training flags (methods.py's TRAIN) with `steps`, at the task's seq-len."""
    flags = [*TRAIN]
    flags[flags.index("--steps") + 1] = str(steps)
    if task == "emails":
        flags[flags.index("--seq-len") + 1] = str(EMAILS_SEQ_LEN)
    return flags


def train_and_eval(name: str, flags: list, data: Path, steps: int, reuse: bool, task: str = "dates") -> dict:
    """Build (unless reused), train and evaluate one bundle; its losses step by step and its held-out
    exact match (dates) or loss after the last step (emails)."""
    bundle, run_dir = OUT / slug(name), OUT / f"{slug(name)}-{'' if task == 'dates' else task + '-'}run"
    build_s = build_load = None
    if not (reuse and (bundle / "manifest.json").is_file()):
        log(f"{name}: build")
        _, build_s, build_load = run(["build", smollm2_gguf(), "-o", bundle, *flags, *ADAPTER, "--force"])
    shutil.rmtree(run_dir, ignore_errors=True)
    log(f"{name}: train")
    train = train_flags(steps, task)
    if task == "emails":
        train += ["--eval-data", data / "heldout.jsonl", "--eval-every", str(steps)]
    _, train_s, train_load = run(["train", bundle, "--data", data / "train.jsonl", "-o", run_dir, *train])
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics if m.get("type") == "train"]
    summary = json.loads((run_dir / "summary.json").read_text())
    em = eval_load = heldout_loss = None
    if task == "dates":
        log(f"{name}: eval")
        em, eval_load = exact_match(bundle, data / "heldout.jsonl", run_dir / "adapter")
    else:
        heldout_loss = [m["eval_loss"] for m in metrics if m.get("type") == "eval"][-1]
    return {
        "flags": flags,
        "bundle_bytes": du(bundle),
        "build_s": build_s,
        "train_s": train_s,
        "tokens_per_s": summary["tokens_per_s"],
        "peak_rss_bytes": summary["peak_rss_bytes"],
        "losses": losses,
        "exact_match": em,
        "heldout_loss": heldout_loss,
        "loads": [build_load, train_load, eval_load, load()],
    }


def compare(int8: dict, fp32: dict) -> dict:
    """The loss statistics of `loss_stats` and the exact-match gap in points (or the held-out loss's, relative)."""
    if int8["exact_match"] is None:
        return {
            **loss_stats(int8["losses"], fp32["losses"]),
            "heldout_loss": int8["heldout_loss"] / fp32["heldout_loss"] - 1,
        }
    return {
        **loss_stats(int8["losses"], fp32["losses"]),
        "em_points": (int8["exact_match"] - fp32["exact_match"]) * 100,
    }


def loss_stats(losses: list, reference: list) -> dict:
    """Relative loss differences step by step (losses / reference − 1): first 10 and 50 steps."""
    diffs = [a / b - 1 for a, b in zip(losses, reference)]
    return {
        "first10_max": max(map(abs, diffs[:10])),
        "first10_mean": sum(diffs[:10]) / len(diffs[:10]),
        "first50_max": max(map(abs, diffs[:50])),
        "first50_mean": sum(diffs[:50]) / len(diffs[:50]),
        "first50_mean_abs": sum(map(abs, diffs[:50])) / len(diffs[:50]),
        "within_2pct": sum(1 for d in diffs[:50] if abs(d) <= 0.02),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--task", choices=["dates", "emails"], default="dates", help="the demo's task, or plain text")
    parser.add_argument("--report", action="store_true", help="only print the tables of the last results")
    parser.add_argument("--reuse", action="store_true", help="train the bundles already built, if any")
    args = parser.parse_args()
    results_file = OUT / ("results.json" if args.task == "dates" else f"results-{args.task}.json")
    if args.report:
        print(report(json.loads(results_file.read_text())))
        return 0
    OUT.mkdir(parents=True, exist_ok=True)
    data = dates_data() if args.task == "dates" else emails_data()
    results = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "runs": {}, "comparisons": {}}
    names = list(RUNS)
    for name in names:
        results["runs"][name] = train_and_eval(name, RUNS[name], data, args.steps, args.reuse, args.task)
        results_file.write_text(json.dumps(results, indent=1))
    for fp32, int8 in zip(names[::2], names[1::2]):
        results["comparisons"][int8] = compare(results["runs"][int8], results["runs"][fp32])
    results_file.write_text(json.dumps(results, indent=1))
    print(report(results))
    return 0


def report(results: dict) -> str:
    """The runs and comparisons as markdown."""
    dates = all(r["exact_match"] is not None for r in results["runs"].values())
    held = "exact match" if dates else "held-out loss"
    lines = [
        f"| run | {held} | tokens/s | peak RSS | loss at steps 1, 10, 50, last | load (build/train/eval/end) |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results["runs"].items():
        losses = r["losses"]
        shown = ", ".join(f"{losses[i]:.4f}" for i in (0, 9, min(49, len(losses) - 1), len(losses) - 1))
        loads = "/".join("-" if x is None else f"{x:.1f}" for x in r["loads"])
        score = f"{r['exact_match']:.0%}" if dates else f"{r['heldout_loss']:.4f}"
        lines.append(
            f"| {name} | {score} | {r['tokens_per_s']:.0f} | {r['peak_rss_bytes'] / 1e6:.0f} MB | {shown} | {loads} |"
        )
    lines += [
        "",
        "| int8 run against its fp32 twin | loss Δ first 10 steps: max, mean | first 50: max, mean, mean abs "
        f"| steps within 2% (of 50) | {held} Δ |",
        "|---|---|---|---|---|",
    ]
    for name, c in results["comparisons"].items():
        gap = f"{c['em_points']:+.0f} points" if dates else f"{c['heldout_loss']:+.2%}"
        lines.append(
            f"| {name} | {c['first10_max']:.1%}, {c['first10_mean']:+.1%} | {c['first50_max']:.1%}, "
            f"{c['first50_mean']:+.1%}, {c['first50_mean_abs']:.1%} | {c['within_2pct']} | {gap} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
