"""Scaling (full run only): training tokens/s and peak RSS vs sequence length and model size.

Sequence length: SmolLM2-135M (real weights) at 256 / 512 / 1024, batch 2.
Model size: SmolLM2-135M, then Qwen2.5-0.5B and TinyLlama-1.1B configs random-initialised
(`build.py`), at seq-len 512, batch 2. A model whose bundle cannot be built is recorded
with its error and PyTorch runs alone. One round each (A B) to fit the time budget; the 512 point
of SmolLM2 is taken from the main training benchmark (A B A B).
"""

from pathlib import Path

import build_figures
import children
import train_speed
import workloads

SEQ_LENS = (256, 1024)
MODELS = ("qwen2.5-0.5b", "tinyllama-1.1b")


def measure(main_point: dict, steps: int = 2, warmup: int = 1) -> dict:
    """{"seq_len": {S: {contender: figures}}, "models": {name: {...}}}; main_point is SmolLM2 at 512."""
    result = {
        "seq_len": {512: main_point},
        "models": {"smollm2-135m": {"params": build_figures.count_params(workloads.SMOLLM2_HF), **main_point}},
    }
    for seq_len in SEQ_LENS:
        children.log(f"scaling: SmolLM2 seq-len {seq_len}")
        points = train_speed.contenders(
            workloads.SMOLLM2_BUNDLE, workloads.SMOLLM2_HF, 2, seq_len, steps, warmup, extras=False
        )
        result["seq_len"][seq_len] = train_speed.measure(points, rounds=1)
    for name in MODELS:
        children.log(f"scaling: {name} (random init, build + train)")
        built = build_figures.build_random(name)
        entry = {
            "params": build_figures.count_params(Path(built["model"])) if "model" in built else None,
            "build": built,
        }
        if "model" in built:  # without a bundle, PyTorch alone
            points = train_speed.contenders(
                Path(built.get("bundle", "")), Path(built["model"]), 2, 512, steps, warmup, extras=False
            )
            if "bundle" not in built:
                del points["edgetune"]
            entry.update(train_speed.measure(points, rounds=1, timeout=1500))
        result["models"][name] = entry
    return result


def plot(result: dict, path: Path) -> Path:  # re-plot a saved run: plot(json.load(f)["scaling"], path)
    """tokens/s and peak RSS vs seq-len (SmolLM2) and vs model size (seq-len 512), both contenders."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(9, 6.5))
    series = {"edgetune": "tab:blue", "torch_fp32": "tab:orange"}
    by_len = sorted((int(k), v) for k, v in result["seq_len"].items())
    by_size = sorted(((v["params"], k, v) for k, v in result["models"].items() if v.get("params")), key=lambda t: t[0])
    for name, color in series.items():
        pts = [(s, v[name]) for s, v in by_len if v.get(name, {}).get("tokens_per_s")]
        axes[0][0].plot([s for s, _ in pts], [p["tokens_per_s"] for _, p in pts], "o-", color=color, label=name)
        axes[1][0].plot([s for s, _ in pts], [p["peak_rss_bytes"] / 2**30 for _, p in pts], "o-", color=color)
        pts = [(n / 1e6, v[name]) for n, _, v in by_size if v.get(name, {}).get("tokens_per_s")]
        axes[0][1].plot([n for n, _ in pts], [p["tokens_per_s"] for _, p in pts], "o-", color=color, label=name)
        axes[1][1].plot([n for n, _ in pts], [p["peak_rss_bytes"] / 2**30 for _, p in pts], "o-", color=color)
    axes[0][0].set(title="SmolLM2-135M, batch 2", ylabel="training tokens/s")
    axes[1][0].set(xlabel="sequence length", ylabel="peak RSS (GiB)")
    axes[0][1].set(title="seq-len 512, batch 2", xscale="log")
    axes[1][1].set(xlabel="parameters (millions)", xscale="log")
    failed = [k for _, k, v in by_size if "error" in v.get("build", {})]
    if failed:
        axes[0][1].annotate(
            f"no edgetune bundle for {', '.join(failed)}:\nits build failed",
            xy=(0.1, 0.6),
            xycoords="axes fraction",
            fontsize=8,
        )
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes[0][0].legend()
    fig.suptitle("LoRA r=8 q/v training on 2 shared CPU cores: edgetune (ORT) vs PyTorch+PEFT fp32")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
