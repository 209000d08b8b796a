"""The model-size scaling table from `full_size.py`'s results: build and train figures per size and method.

    python benchmarks/scaling_table.py [artifacts/bench/full-size-*.json ...]

One row per model and method (smallest model first): build peak RSS, training tokens/s and peak
RSS at batch 1 x 512, and the ratios to PyTorch + PEFT LoRA fp32 (and bf16 autocast, where the
run had it) measured in the same run; in brackets the ratio of CPU seconds per step, steadier than
wall time on a shared machine. Prints Markdown.
"""

import json
import sys
from pathlib import Path

import children

GIB = 2**30


def _torch(runs: dict, name: str) -> dict | None:
    """PyTorch's figures from whichever method's run measured them (full_size runs PyTorch once)."""
    found = [r["train"][name] for r in runs.values() if name in r.get("train", {})]
    return found[0] if found and found[0].get("tokens_per_s") else None


def rows(result: dict) -> list[str]:
    """Markdown rows for one model's results file."""
    runs, params = result["runs"], result.get("params", 0)
    fp32, bf16 = _torch(runs, "torch_fp32"), _torch(runs, "torch_bf16")
    out = []
    for method in ("lora", "qlora-int4"):
        run = runs.get(method)
        ours = run and run.get("train", {}).get("edgetune")
        if not ours or not ours.get("tokens_per_s"):
            continue
        speed, rss = ours["tokens_per_s"], ours["peak_rss_bytes"]
        versus = [f"{speed / t['tokens_per_s']:.2f}×" if t else "–" for t in (fp32, bf16)]
        cpu = f"{fp32['cpu_s_per_step'] / ours['cpu_s_per_step']:.2f}×" if fp32 else "–"
        rss_ratio = f"{rss / fp32['peak_rss_bytes']:.2f}×" if fp32 else "–"
        build = run["build"].get("peak_rss_bytes")
        out.append(
            f"| {result['model']} ({params / 1e9:.2f} B) | {method} | "
            + (f"{build / GIB:.2f} GiB" if build else "(reused)")
            + f" | {speed:.1f} | {rss / GIB:.2f} GiB | "
            + (f"{fp32['tokens_per_s']:.1f} / {fp32['peak_rss_bytes'] / GIB:.2f} GiB" if fp32 else "–")
            + f" | {versus[0]} ({cpu}) | {rss_ratio} | "
            + (f"{bf16['tokens_per_s']:.1f}" if bf16 else "–")
            + f" | {versus[1]} | {ours.get('loadavg_1min', 0):.1f} |"
        )
    return out


def main() -> None:
    files = [Path(f) for f in sys.argv[1:]] or sorted(children.BENCH.glob("full-size-*.json"))
    results = sorted((json.loads(f.read_text()) for f in files), key=lambda r: r.get("params", 0))
    print(
        "| model (params) | method | build peak RSS | tokens/s | train peak RSS | PyTorch fp32 tokens/s / RSS "
        "| speed vs fp32 (per CPU s) | RSS vs fp32 | PyTorch bf16 tokens/s | speed vs bf16 | load |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for result in results:
        print("\n".join(rows(result)))


if __name__ == "__main__":
    main()
