"""What a run reports: metrics.jsonl, a tqdm progress bar, loss.png, and process timings.

metrics.jsonl holds one JSON object per line: `{"type": "train", "step", ...}` after
every optimizer step, `{"type": "eval", "step", ...}` after every evaluation, and
`{"type": "resume", "step", ...}` when a run continues. loss.png is drawn from it at the
end when matplotlib is importable (it is an optional extra; the device may lack it).
"""

import importlib.util
import json
import os
import resource
import sys
from pathlib import Path

from tqdm import tqdm

from edgetune.common.atomic import write_atomic
from edgetune.common.names import LOSS_PLOT, METRICS


class Metrics:
    """Appends records to `run_dir/metrics.jsonl` and drives the progress bar."""

    def __init__(self, run_dir: Path, total_steps: int, start_step: int, progress: bool):
        self.path = Path(run_dir) / METRICS
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed by close())
        self._bar = tqdm(
            total=total_steps,
            initial=start_step,
            unit="step",
            disable=not progress,
            dynamic_ncols=True,
            file=sys.stderr,
        )

    def log(self, record: dict) -> None:
        """Append one record; a train record advances the bar, an eval record is printed above it."""
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if record["type"] == "train":
            self._bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}", refresh=False)
            self._bar.update(1)
        elif record["type"] == "eval" and not self._bar.disable:
            self._bar.write(f"step {record['step']}: {eval_line(record)}", file=sys.stderr)

    def note(self, message: str) -> None:
        """Print a line above the progress bar (to stderr even when the bar is off)."""
        self._bar.write(message, file=sys.stderr)

    def close(self) -> None:
        """Close the bar and the file."""
        self._bar.close()
        self._file.close()


def eval_line(record: dict) -> str:
    """An eval record's figures in words: eval loss 0.1234, perplexity 1.13 | accuracy 0.9700, macro_f1 ..."""
    parts = [f"eval loss {record['eval_loss']:.4f}"]
    if "perplexity" in record:
        parts.append(f"perplexity {record['perplexity']:.2f}")
    parts += [f"{k} {v:.4f}" for k, v in record.items() if k not in ("type", "step", "eval_loss", "perplexity")]
    return ", ".join(parts)


def read_metrics(run_dir: Path) -> list[dict]:
    """Every record of a run's metrics.jsonl (none if it does not exist)."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def truncate_metrics(run_dir: Path, last_step: int) -> None:
    """Keep only records up to `last_step`, atomically: a resumed run redoes the later steps.

    A record torn by a crash mid-write (the last line) is dropped too.
    """
    path = Path(run_dir) / METRICS
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record["step"] <= last_step:
            kept.append(line + "\n")
    write_atomic(path, "".join(kept))


def plot_losses(run_dir: Path) -> Path | None:
    """Draw train and eval loss against step into loss.png; None if matplotlib is missing."""
    if importlib.util.find_spec("matplotlib") is None:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display on a device
    from matplotlib import pyplot as plt

    records = read_metrics(run_dir)
    train = [(r["step"], r["loss"]) for r in records if r["type"] == "train"]
    evals = [(r["step"], r["eval_loss"]) for r in records if r["type"] == "eval"]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1)
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    path = Path(run_dir) / LOSS_PLOT
    write_atomic(path, lambda f: fig.savefig(f, format="png", bbox_inches="tight"))
    plt.close(fig)
    return path


def process_age() -> float | None:
    """Seconds since this process started (Linux /proc; None elsewhere), 10 ms resolution."""
    try:
        with open("/proc/self/stat") as f:
            started_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, uptime - started_ticks / os.sysconf("SC_CLK_TCK"))


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (getrusage reports KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024
