"""Fleet tuning on SmolLM2-135M-Instruct: federated (fedavg, ffa, fedex) against centralised training.

The dates skill in 4 non-IID client parts (each client sees 3 of the 9 written styles,
`edgetune data dates --clients 4`), a held-out set in every style. For each strategy:
build the bundle it needs, `edgetune fed simulate` 4 clients in turn for ROUNDS rounds of
LOCAL_STEPS steps, the server measuring held-out exact match after every round. The
centralised run trains one adapter on all four parts with the same total number of steps
(ROUNDS x 4 x LOCAL_STEPS) and learning rate. Then the cost of FedEx's updatable base:
the same 30 steps on the plain and the base-delta bundle, side by side.

    .venv/bin/python benchmarks/fleet.py [--rounds 6] [--local-steps 20] [--eval-limit 50]

Every stage runs `edgetune` as a child process, one at a time (the 2 cores are shared).
Writes benchmarks/FLEET.md (rewritten after each stage) and artifacts/fleet/results.json.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from edgetune.common.embedded import smollm2_gguf

ROOT = Path(__file__).resolve().parent.parent
EDGETUNE = Path(sys.executable).parent / "edgetune"
OUT = ROOT / "artifacts" / "fleet"
REPORT = ROOT / "benchmarks" / "FLEET.md"
CLIENTS = 4
ADAPTER = ["--targets", "q_proj,v_proj", "--rank", "8", "--alpha", "16"]
BUNDLES = {"lora": [], "ffa": ["--trainable", "lora_B"], "fedex": ["--base-delta"]}
STRATEGY_BUNDLE = {"fedavg": "lora", "ffa": "ffa", "fedex": "fedex"}
LR, BATCH, SEQ = 2e-3, 8, 64


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load() -> float:
    """The 1-minute load average."""
    return round(os.getloadavg()[0], 2)


def run(args: list) -> tuple[str, float]:
    """Run `edgetune ARGS`; return (stdout, seconds). Raises with the last line on failure."""
    started = time.perf_counter()
    proc = subprocess.run([str(EDGETUNE), *map(str, args)], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
        raise RuntimeError(f"edgetune {args[0]} rc={proc.returncode}: {lines[-1] if lines else '(no output)'}")
    return proc.stdout, time.perf_counter() - started


def exact_match(bundle: Path, data: Path, adapter: Path, limit: int) -> float:
    """Held-out exact match (0..1) through `edgetune eval`."""
    stdout, _ = run(["eval", bundle, "--data", data, "--adapter", adapter, "--limit", limit, "--show", "0"])
    return float([x for x in stdout.splitlines() if x.startswith("exact match:")][-1].split()[2].rstrip("%")) / 100


def build_bundles(results: dict) -> None:
    """The three bundles: plain LoRA, only lora_B trainable, base deltas."""
    for name, flags in BUNDLES.items():
        bundle = OUT / f"bundle-{name}"
        if not (bundle / "manifest.json").is_file():
            log(f"build {name}")
            _, seconds = run(["build", smollm2_gguf(), "-o", bundle, *ADAPTER, *flags, "--force"])
            results["builds"][name] = {"build_s": seconds}
        manifest = json.loads((bundle / "manifest.json").read_text())
        results["builds"].setdefault(name, {})["checkpoint_bytes"] = manifest["files"]["checkpoint"]["size"]


def federated(strategy: str, data: Path, args, results: dict) -> None:
    """One fleet run; its per-round records go into the results."""
    out = OUT / f"fleet-{strategy}"
    shutil.rmtree(out, ignore_errors=True)
    log(f"fleet {strategy}")
    start_load = load()
    run(
        ["fed", "simulate", OUT / f"bundle-{STRATEGY_BUNDLE[strategy]}", "--data-dir", data, "--clients", CLIENTS]
        + ["--rounds", args.rounds, "--local-steps", args.local_steps, "--strategy", strategy, "--lr", LR]
        + ["--batch-size", BATCH, "--seq-len", SEQ, "--eval-data", data / "heldout.jsonl"]
        + ["--eval-limit", args.eval_limit, "-o", out]
    )
    rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    results["fleet"][strategy] = {"rounds": rounds, "load": [start_load, load()]}


def centralised(data: Path, args, results: dict) -> None:
    """One adapter on all parts, the fleet's total number of steps."""
    everything = OUT / "all-parts.jsonl"
    everything.write_text("".join(p.read_text() for p in sorted(data.glob("client-*.jsonl"))))
    steps = args.rounds * CLIENTS * args.local_steps
    run_dir = OUT / "centralised"
    shutil.rmtree(run_dir, ignore_errors=True)
    log(f"centralised {steps} steps")
    start_load = load()
    _, wall = run(
        ["train", OUT / "bundle-lora", "--data", everything, "-o", run_dir, "--steps", steps, "--lr", LR]
        + ["--warmup", 0, "--schedule", "constant", "--batch-size", BATCH, "--seq-len", SEQ, "--no-progress"]
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    em = exact_match(OUT / "bundle-lora", data / "heldout.jsonl", run_dir / "adapter", args.eval_limit)
    results["centralised"] = {"steps": steps, "wall_s": wall, "train_s": summary["train_s"], "exact_match": em}
    results["centralised"]["load"] = [start_load, load()]


def fedex_cost(data: Path, results: dict) -> None:
    """The same 30 steps on the plain and the base-delta bundle, alternating, twice each."""
    runs = {"lora": [], "fedex": []}
    for _ in range(2):
        for name in runs:
            run_dir = OUT / f"cost-{name}"
            shutil.rmtree(run_dir, ignore_errors=True)
            run(
                ["train", OUT / f"bundle-{name}", "--data", data / "client-00.jsonl", "-o", run_dir, "--steps", 30]
                + ["--batch-size", BATCH, "--seq-len", SEQ, "--lr", LR, "--no-progress"]
            )
            summary = json.loads((run_dir / "summary.json").read_text())
            runs[name].append({k: summary[k] for k in ("tokens_per_s", "peak_rss_bytes", "checkpoint_bytes")})
    results["fedex_cost"] = runs


def rounds_to(records: list[dict], threshold: float) -> int | None:
    """The first round whose held-out exact match reaches `threshold`."""
    return next((r["round"] for r in records if r.get("exact_match", 0) >= threshold), None)


def report(results: dict, args) -> str:
    """FLEET.md: the tables and the command that made them."""
    lines = [
        "# Fleet tuning: federated LoRA on SmolLM2-135M-Instruct",
        "",
        f"Made by `.venv/bin/python benchmarks/fleet.py --rounds {args.rounds} --local-steps {args.local_steps} "
        f"--eval-limit {args.eval_limit}` ({results['started']}; load average 1-min at start {results['load_start']}).",
        f"{CLIENTS} simulated clients in turn, non-IID (3 of 9 date styles each, 250 examples each), "
        f"batch {BATCH}, lr {LR} constant, r=8 on q/v; exact match on the first {args.eval_limit} held-out examples.",
        "",
        "| run | final EM | rounds to 90% EM | upload / client / round | download / client / round "
        "| wall / round (mean) | clients' training / round | overhead beyond training | load (start/end) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    c = results.get("centralised")
    if c:
        lines.append(
            f"| centralised ({c['steps']} steps) | {100 * c['exact_match']:.0f}% | — | — | — "
            f"| — | — | — | {c['load'][0]}/{c['load'][1]} |"
        )
    for strategy, fleet in results["fleet"].items():
        trained = [r for r in fleet["rounds"] if r["round"] > 0]
        final = trained[-1]
        wall = sum(r["round_s"] for r in trained) / len(trained)
        train = sum(r["clients_train_s"] for r in trained) / len(trained)
        lines.append(
            f"| {strategy} | {100 * final.get('exact_match', 0):.0f}% | {rounds_to(fleet['rounds'], 0.9) or '—'} "
            f"| {final['upload_bytes_per_client'] / 1e6:.2f} MB | {final['download_bytes'] / 1e6:.2f} MB "
            f"| {wall:.1f} s | {train:.1f} s | {100 * (wall - train) / train:.1f}% "
            f"| {fleet['load'][0]}/{fleet['load'][1]} |"
        )
    lines += ["", "Exact match per round (round 0: the bundle's initial adapter):", ""]
    for strategy, fleet in results["fleet"].items():
        ems = " ".join(f"{100 * r['exact_match']:.0f}" for r in fleet["rounds"] if "exact_match" in r)
        lines.append(f"- {strategy}: {ems}")
    cost = results.get("fedex_cost")
    if cost:
        lora, fedex = cost["lora"], cost["fedex"]
        tps = [sum(r["tokens_per_s"] for r in x) / len(x) for x in (lora, fedex)]
        rss = [max(r["peak_rss_bytes"] for r in x) / 1e6 for x in (lora, fedex)]
        ckpt = [x[0]["checkpoint_bytes"] / 1e6 for x in (lora, fedex)]
        lines += [
            "",
            "FedEx's updatable base (W + Δ on the adapted layers), 30 steps alternating plain/base-delta, twice:",
            "",
            "| bundle | tokens/s | peak RSS | checkpoint |",
            "|---|---|---|---|",
            f"| lora | {tps[0]:.0f} | {rss[0]:.0f} MB | {ckpt[0]:.1f} MB |",
            f"| lora --base-delta | {tps[1]:.0f} ({tps[1] / tps[0]:.2f}x) | {rss[1]:.0f} MB (+{rss[1] - rss[0]:.0f}) "
            f"| {ckpt[1]:.1f} MB |",
        ]
    lines += ["", f"Load average 1-min at the end: {results.get('load_end', '—')}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--local-steps", type=int, default=20)
    parser.add_argument("--eval-limit", type=int, default=50)
    parser.add_argument("--strategies", default="fedavg,ffa,fedex")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    results = {"started": time.strftime("%Y-%m-%d %H:%M"), "load_start": load(), "builds": {}, "fleet": {}}
    data = OUT / "data"
    if not (data / "heldout.jsonl").is_file():
        run(["data", "dates", "-o", data, "--clients", CLIENTS, "--train", 250 * CLIENTS, "--heldout", 100])
    build_bundles(results)
    strategies = args.strategies.split(",")
    stages = [lambda s=s: federated(s, data, args, results) for s in strategies[:1]]
    stages += [lambda: centralised(data, args, results)]
    stages += [lambda s=s: federated(s, data, args, results) for s in strategies[1:]]
    stages += [lambda: fedex_cost(data, results)]
    for stage in stages:
        stage()
        results["load_end"] = load()
        (OUT / "results.json").write_text(json.dumps(results, indent=2))
        REPORT.write_text(report(results, args))
    print(REPORT.read_text())


if __name__ == "__main__":
    main()
