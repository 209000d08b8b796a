"""LoRA vs DoRA vs QLoRA-int8 vs QLoRA-int4 on SmolLM2-135M-Instruct, with the demo's settings.

Each method runs with its defaults: QLoRA checkpoints layers (recomputes each in the
backward pass), LoRA and DoRA do not. "LoRA + checkpointing" is LoRA with the same
recomputation, so that both ratios can be read: against the LoRA run, and at equal settings.

For each method, one after another (the machine is shared, so nothing runs in parallel):
build the bundle, measure held-out exact match, train through the CLI in a subprocess,
measure again. Every stage runs `edgetune` as a child process and notes the load average.
A failing stage records its one-line error in the table instead of stopping the run.

    .venv/bin/python benchmarks/methods.py

Writes the table to stdout and to benchmarks/METHODS.md (rewritten after every method,
so a run cut short still leaves its finished rows). Scratch: artifacts/methods/ (git-ignored).
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from edgetune.common.embedded import smollm2_gguf

ROOT = Path(__file__).resolve().parent.parent
EDGETUNE = Path(sys.executable).parent / "edgetune"  # the CLI next to the Python running this
OUT = ROOT / "artifacts" / "methods"
REPORT = ROOT / "benchmarks" / "METHODS.md"
COMMAND = ".venv/bin/python benchmarks/methods.py"

# The demo's adapter, data and training hyperparameters (scripts/demo.sh).
ADAPTER = ["--targets", "q_proj,v_proj", "--rank", "8", "--alpha", "16"]
TRAIN = ["--steps", "150", "--lr", "2e-3", "--warmup", "10", "--batch-size", "8", "--seq-len", "64", "--no-progress"]
METHODS = {
    "LoRA": ["--method", "lora"],
    "LoRA + checkpointing": ["--method", "lora", "--gradient-checkpointing"],
    "DoRA": ["--method", "dora"],
    "QLoRA-int8": ["--method", "qlora", "--quant", "int8"],
    "QLoRA-int4": ["--method", "qlora", "--quant", "int4", "--block-size", "32"],
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load() -> float:
    """The 1-minute load average (the 2 cores are shared with other jobs)."""
    return round(os.getloadavg()[0], 2)


def run(args: list) -> tuple[str, float, float]:
    """Run `edgetune ARGS`; return (stdout, seconds, load average at start). Raises on failure."""
    start_load, started = load(), time.perf_counter()
    proc = subprocess.run([str(EDGETUNE), *map(str, args)], cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        lines = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
        raise RuntimeError(f"edgetune {args[0]} rc={proc.returncode}: {lines[-1] if lines else '(no output)'}")
    return proc.stdout, seconds, start_load


def exact_match(bundle: Path, data: Path, adapter: Path | None = None) -> tuple[float, float]:
    """Held-out exact match (0..1) and the load average when it started."""
    extra = ["--adapter", adapter] if adapter else []
    stdout, _, start_load = run(["eval", bundle, "--data", data, "--show", "0", *extra])
    line = [line for line in stdout.splitlines() if line.startswith("exact match:")][-1]
    return float(line.split()[2].rstrip("%")) / 100, start_load


def du(path: Path) -> int:
    """Bytes on disk of every file under `path`."""
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


def bench(name: str, flags: list, data: Path) -> dict:
    """Build, eval, train, eval one method; stops at the first failing stage and records its error."""
    row = {"method": name, "loads": {}}
    bundle, run_dir = OUT / name, OUT / f"{name}-run"
    try:
        log(f"{name}: build")
        _, row["build_s"], row["loads"]["build"] = run(
            ["build", smollm2_gguf(), "-o", bundle, *flags, *ADAPTER, "--force"]
        )
        row["bundle_bytes"] = du(bundle)
        log(f"{name}: eval before")
        row["em_before"], row["loads"]["eval0"] = exact_match(bundle, data / "heldout.jsonl")
        log(f"{name}: train")
        shutil.rmtree(run_dir, ignore_errors=True)
        _, row["train_wall_s"], row["loads"]["train"] = run(
            ["train", bundle, "--data", data / "train.jsonl", "-o", run_dir, *TRAIN]
        )
        summary = json.loads((run_dir / "summary.json").read_text())
        row["tokens_per_s"] = summary["tokens_per_s"]
        row["step_s"] = summary["tokens"] / summary["tokens_per_s"] / summary["steps_this_run"]
        row["train_s"] = summary["train_s"]
        row["peak_rss_bytes"] = summary["peak_rss_bytes"]  # the training process's own ru_maxrss
        row["final_train_loss"] = summary["final_train_loss"]
        log(f"{name}: eval after")
        row["em_after"], row["loads"]["eval1"] = exact_match(bundle, data / "heldout.jsonl", run_dir / "adapter")
    except Exception as e:
        row["error"] = " ".join(str(e).split())[:300]
        log(f"{name}: FAILED {row['error']}")
    row["loads"]["end"] = load()
    return row


def fmt(row: dict, key: str, scale: float = 1, spec: str = ".1f", unit: str = "") -> str:
    return f"{row[key] * scale:{spec}}{unit}" if row.get(key) is not None else "—"


def table(rows: list) -> str:
    """The results as a markdown table."""
    lines = [
        "| method | bundle on disk | build | EM before | EM after | tokens/s | step time | "
        "peak RSS (train) | train loss | load 1-min (build/eval/train/eval/end) | error |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        loads = "/".join(str(r["loads"].get(k, "—")) for k in ("build", "eval0", "train", "eval1", "end"))
        lines.append(
            " | ".join(
                [
                    f"| {r['method']}",
                    fmt(r, "bundle_bytes", 1e-6, ".0f", " MB"),
                    fmt(r, "build_s", 1, ".0f", " s"),
                    fmt(r, "em_before", 100, ".0f", "%"),
                    fmt(r, "em_after", 100, ".0f", "%"),
                    fmt(r, "tokens_per_s", 1, ".0f"),
                    fmt(r, "step_s", 1, ".2f", " s"),
                    fmt(r, "peak_rss_bytes", 1e-6, ".0f", " MB"),
                    fmt(r, "final_train_loss", 1, ".4f"),
                    loads,
                    r.get("error", "").replace("|", "/") + " |",
                ]
            )
        )
    return "\n".join(lines)


def targets(rows: list) -> list[str]:
    """Each target marked met, not met, or not measured (a run missing)."""
    by = {r["method"]: r for r in rows}

    def ratio(a: str, b: str, key: str):
        x, y = by.get(a, {}).get(key), by.get(b, {}).get(key)
        return x / y if x is not None and y else None

    def mark(ok, text):
        return f"- **{'met' if ok else 'not met'}** — {text}" if ok is not None else f"- **not measured** — {text}"

    out = []
    for quant, limit in (("int8", 0.55), ("int4", 0.4)):
        r = ratio(f"QLoRA-{quant}", "LoRA", "peak_rss_bytes")
        same = ratio(f"QLoRA-{quant}", "LoRA + checkpointing", "peak_rss_bytes")
        out.append(
            mark(
                None if r is None else r <= limit,
                f"QLoRA-{quant} training peak RSS ≤ {limit}× fp32 LoRA's: "
                + (f"{r:.2f}×" if r is not None else "missing")
                + (f" (against LoRA with the same checkpointing: {same:.2f}×)" if same is not None else ""),
            )
        )
    a, b = by.get("QLoRA-int8", {}).get("em_after"), by.get("LoRA", {}).get("em_after")
    gap = None if a is None or b is None else (b - a) * 100
    out.append(
        mark(
            None if gap is None else abs(gap) <= 5,
            "QLoRA-int8 held-out exact match within 5 points of fp32 LoRA: "
            + (f"{a:.0%} vs {b:.0%} ({gap:.0f} points behind)" if gap is not None else "missing"),
        )
    )
    r = ratio("DoRA", "LoRA", "step_s")
    out.append(
        mark(
            None if r is None else r <= 1.3,
            "DoRA step time ≤ 1.3× LoRA's: " + (f"{r:.2f}×" if r is not None else "missing"),
        )
    )
    return out


def write_report(rows: list, started: str, finished: bool) -> str:
    """The markdown of METHODS.md; also printed."""
    status = "" if finished else "\n**Run in progress or cut short: only the rows above finished.**\n"
    text = f"""# Methods: LoRA, DoRA, QLoRA-int8, QLoRA-int4 on SmolLM2-135M-Instruct

Command: `{COMMAND}` — started {started} UTC, one run (no repeats), on the shared 2-core machine.

Same for every method (the demo's settings): the embedded `SmolLM2-135M-Instruct.Q4_1.gguf`,
adapter `{" ".join(ADAPTER)}`, data `edgetune data dates --train 2000 --heldout 100 --seed 0`,
training `{" ".join(TRAIN)}` (the demo's `--eval-data/--eval-every/--save-every` are left out so
that step times hold training only). Each method has its build defaults: QLoRA bundles
recompute each layer in the backward pass (`--gradient-checkpointing`, PEFT's QLoRA recipe),
LoRA and DoRA do not; "LoRA + checkpointing" is LoRA built with it. Exact match is greedy on the 100 held-out examples.
Bundle size is bytes on disk under the bundle folder; build time is the wall time of `edgetune build`.
Tokens/s and step time exclude start-up; peak RSS is the training process's own `ru_maxrss`
(from `summary.json`). The load column is `os.getloadavg()[0]` when each stage started (and at
the end): other jobs shared the 2 cores, so times are noisy and only roughly comparable.

{table(rows)}
{status}
## Targets

{chr(10).join(targets(rows))}
"""
    REPORT.write_text(text)
    return text


def main() -> int:
    started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    data = OUT / "data"
    OUT.mkdir(parents=True, exist_ok=True)
    run(["data", "dates", "-o", data, "--train", "2000", "--heldout", "100", "--seed", "0"])
    rows = []
    for name, flags in METHODS.items():
        rows.append(bench(name, flags, data))
        write_report(rows, started, finished=False)
    print(write_report(rows, started, finished=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
