"""What the server writes after each round: the global adapter (PEFT), metrics.jsonl, fleet.png.

Flower's strategy calls `aggregate_metrics` with the round's replies and `after_round`
with the new global arrays; between the two ends of consecutive rounds lies the round's
wall time, which the records split into the clients' own training and the rest
(messages, aggregation, writing). Evaluation is timed apart.

    out/adapter/           the latest global adapter (PEFT; base_delta.safetensors under fedex)
    out/metrics.jsonl      one record per round (round 0: the bundle's initial adapter)
    out/summary.json       the run's totals, ε under differential privacy
    out/fleet.png          eval loss and exact match per round (the `plot` extra)
"""

import importlib.util
import json
import time
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from edgetune.common.atomic import write_atomic, write_json_atomic
from edgetune.common.names import ADAPTER_DIR, METRICS, SUMMARY
from edgetune.common.peft import DELTA_SUFFIX, save_adapter
from edgetune.fed.config import FleetConfig
from edgetune.fed.evaluation import exact_match, heldout_loss
from edgetune.fed.payload import from_record, record_bytes

PLOT = "fleet.png"


class RoundRecorder:
    """The server's per-round outputs for one fleet run."""

    def __init__(self, config: FleetConfig, manifest: dict, initial: dict[str, np.ndarray]):
        self.config, self.manifest, self.initial = config, manifest, initial
        self.strategy = None  # set once built: the DP wrapper reports ε
        self.replies: list[dict] = []
        self.records: list[dict] = []
        self.started = self.round_start = time.perf_counter()
        config.out.mkdir(parents=True, exist_ok=True)
        self.metrics_path = config.out / METRICS
        self.metrics_path.write_text("")

    def aggregate_metrics(self, records: list[RecordDict], weighted_by_key: str) -> MetricRecord:
        """Flower's weighted mean of the replies' metrics; keeps each reply's for this round's record."""
        self.replies = [dict(next(iter(r.metric_records.values()))) for r in records]
        return aggregate_metricrecords(records, weighted_by_key)

    def after_round(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Write the global adapter and the round's record; evaluate on the configured rounds."""
        round_s = time.perf_counter() - self.round_start
        started = time.perf_counter()
        global_arrays = {**self.initial, **from_record(arrays)}
        deltas = {k: v for k, v in global_arrays.items() if k.endswith(DELTA_SUFFIX)}
        adapter = {k: v for k, v in global_arrays.items() if k not in deltas}
        folder = self.config.out / ADAPTER_DIR
        sha = self.manifest["source"]["weights_sha256"]
        save_adapter(
            folder, adapter, self.manifest["adapter_config"], sha, deltas if self.config.strategy == "fedex" else None
        )
        record = {"round": server_round, **self._round_figures(server_round, arrays, round_s)}
        record["write_s"] = time.perf_counter() - started
        if self.config.eval_data and server_round % self.config.eval_every == 0:
            record |= self._evaluate(global_arrays, folder)
        self._log(record)
        self.round_start = time.perf_counter()
        return MetricRecord({k: v for k, v in record.items() if isinstance(v, (int, float))})

    def _round_figures(self, server_round: int, arrays: ArrayRecord, round_s: float) -> dict:
        """Replies, losses, bytes and times of the round just aggregated (round 0: nothing trained)."""
        if server_round == 0:
            return {"download_bytes": record_bytes(arrays)}
        replies, self.replies = self.replies, []
        weights = np.array([r["num-examples"] for r in replies], np.float64)
        train_s = [r["train-seconds"] for r in replies]
        figures = {
            "clients": len(replies),
            "train_loss": float(np.dot(weights, [r["train-loss"] for r in replies]) / weights.sum())
            if replies
            else None,
            "round_s": round_s,
            "clients_train_s": float(sum(train_s)),
            "max_client_train_s": float(max(train_s, default=0.0)),
            "upload_bytes_per_client": float(np.mean([r["upload-bytes"] for r in replies])) if replies else 0.0,
            "download_bytes": record_bytes(arrays),
        }
        spent = getattr(self.strategy, "privacy_spent", lambda: None)()
        if spent is not None:
            figures |= {"epsilon": spent.epsilon, "delta": spent.delta}
        return figures

    def _evaluate(self, global_arrays: dict, adapter: Path) -> dict:
        """Held-out loss and (with eval_limit > 0) exact match of the global adapter, timed."""
        c = self.config
        started = time.perf_counter()
        result = {"eval_loss": heldout_loss(c.bundle, global_arrays, c.eval_data, c.batch_size, c.seq_len)}
        if c.eval_limit:
            result["exact_match"] = exact_match(c.bundle, adapter, c.eval_data, c.eval_limit)
        return result | {"eval_s": time.perf_counter() - started}

    def _log(self, record: dict) -> None:
        """Append one round's record to metrics.jsonl and redraw the plot."""
        self.records.append(record)
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        plot_rounds(self.config.out, self.records)

    def finish(self) -> dict:
        """summary.json: the settings, the last round's figures, the wall time, ε if any."""
        last = self.records[-1] if self.records else {}
        evals = [r for r in self.records if "exact_match" in r]
        summary = {
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(self.config).items()},
            "rounds": len([r for r in self.records if r["round"] > 0]),
            "adapter": str(self.config.out / ADAPTER_DIR),
            "final": last,
            "best_exact_match": max((r["exact_match"] for r in evals), default=None),
            "wall_s": time.perf_counter() - self.started,
        }
        write_json_atomic(self.config.out / SUMMARY, summary)
        return summary


def plot_rounds(out: Path, records: list[dict]) -> Path | None:
    """Eval loss and exact match against round into fleet.png; None without matplotlib."""
    if importlib.util.find_spec("matplotlib") is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, loss_ax = plt.subplots(figsize=(7, 4), dpi=100)
    losses = [(r["round"], r["eval_loss"]) for r in records if "eval_loss" in r]
    train = [(r["round"], r["train_loss"]) for r in records if r.get("train_loss") is not None]
    if train:
        loss_ax.plot(*zip(*train), "s--", label="train loss (clients)", color="tab:gray")
    if losses:
        loss_ax.plot(*zip(*losses), "o-", label="held-out loss", color="tab:blue")
    loss_ax.set_xlabel("round")
    loss_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    loss_ax.set_ylabel("loss")
    matches = [(r["round"], 100 * r["exact_match"]) for r in records if "exact_match" in r]
    if matches:
        em_ax = loss_ax.twinx()
        em_ax.plot(*zip(*matches), "^-", color="tab:green", label="exact match (%)")
        em_ax.set_ylabel("held-out exact match (%)")
        em_ax.set_ylim(0, 100)
        em_ax.legend(loc="center right")
    loss_ax.grid(alpha=0.3)
    if train or losses:
        loss_ax.legend(loc="upper right")
    path = Path(out) / PLOT
    write_atomic(path, lambda f: fig.savefig(f, format="png", bbox_inches="tight"))
    plt.close(fig)
    return path
