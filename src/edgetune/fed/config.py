"""One fleet run's settings, typed and validated once, and their form in Flower's run config.

The same `FleetConfig` drives `edgetune fed simulate` and the ServerApp on Flower's
Deployment Engine (where it arrives as the app's run config: flat keys with dashes,
`[tool.flwr.app.config]` in the app's pyproject.toml, or `flwr run --run-config`).
stdlib only.
"""

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from edgetune.common.errors import ConfigError
from edgetune.fed.aggregation import STRATEGIES


@dataclass(frozen=True)
class FleetConfig:
    """A federated run: the bundle, the rounds, each node's local training, the server's outputs.

    bundle: the server's bundle (every node must hold one with the same base model).
    out: the server's run folder (global adapter per round, metrics.jsonl, fleet.png).
    clients: the fleet's size; the first round waits for all of them.
    min_clients: replies a round needs to update the global adapter (the others may fail or time out).
    round_timeout: seconds the server waits for a round's replies.
    eval_data: held-out prompt/completion JSONL, evaluated by the server every `eval_every` rounds
    (eval loss, and exact match on the first `eval_limit` examples; 0 skips exact match).
    dp_noise > 0 or dp_clip > 0: client-side clipping at dp_clip with Gaussian noise (Flower's
    DifferentialPrivacyClientSideFixedClipping); dp_delta is the δ at which ε is reported.
    secagg: the rounds run Flower's SecAgg+ (fedavg and ffa only; `fed.secagg_server`): each node
    splits its keys among every node of the round, `secagg_threshold` of those shares unmask a
    node; each node's uploaded values must lie in ±`secagg_clip_range` and its example count be at
    most `secagg_max_examples` (Flower's clipping_range and max_weight, which set the quantization
    error, docs/design.md).
    """

    bundle: Path
    out: Path
    clients: int = 2
    strategy: str = "fedavg"
    rounds: int = 5
    local_steps: int = 10
    lr: float = 2e-3
    batch_size: int = 8
    seq_len: int = 128
    seed: int = 0
    min_clients: int = 1
    round_timeout: float = 3600.0
    eval_data: Path | None = None
    eval_every: int = 1
    eval_limit: int = 100
    dp_clip: float = 0.0
    dp_noise: float = 0.0
    dp_delta: float = 1e-5
    secagg: bool = False
    secagg_threshold: float = 0.5
    secagg_clip_range: float = 1.0
    secagg_max_examples: int = 1000

    def __post_init__(self):
        for name in ("bundle", "out", "eval_data"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        if self.strategy not in STRATEGIES:
            raise ConfigError("strategy", f"must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        for name in ("clients", "rounds", "local_steps", "batch_size", "min_clients", "eval_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(name, f"must be a whole number >= 1, got {value}")
        if not isinstance(self.seq_len, int) or self.seq_len < 2:
            raise ConfigError("seq_len", f"must be a whole number >= 2, got {self.seq_len}")
        if not isinstance(self.eval_limit, int) or self.eval_limit < 0:
            raise ConfigError("eval_limit", f"must be a whole number >= 0, got {self.eval_limit}")
        for name in ("lr", "round_timeout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
                raise ConfigError(name, f"must be a finite number > 0, got {value}")
        if self.min_clients > self.clients:
            raise ConfigError("min_clients", f"{self.min_clients} is more than the {self.clients} clients")
        if self.dp_clip < 0 or self.dp_noise < 0:
            raise ConfigError("dp_clip", "and dp_noise must be >= 0")
        if (self.dp_noise > 0) != (self.dp_clip > 0):
            raise ConfigError("dp_clip", "differential privacy needs both a clipping norm and a noise multiplier > 0")
        if self.dp and self.strategy == "fedex":
            raise ConfigError(
                "strategy", "fedex cannot run with differential privacy: its residual needs each client's exact A and B"
            )
        if not 0 < self.dp_delta < 1:
            raise ConfigError("dp_delta", f"must be in (0, 1), got {self.dp_delta}")
        if self.secagg:
            self._check_secagg()

    def _check_secagg(self) -> None:
        """Refuse what SecAgg+ cannot run with, one line each."""
        if self.strategy == "fedex":
            raise ConfigError(
                "secagg",
                "fedex cannot run with SecAgg+: its residual needs each node's exact A and B, SecAgg+ gives their sum",
            )
        if self.dp:
            raise ConfigError(
                "secagg",
                "cannot run with differential privacy: SecAgg+ runs on Flower's legacy strategies, "
                "whose DP wrapper has no accountant to report ε",
            )
        if self.clients < 3:
            raise ConfigError(
                "secagg", f"needs at least 3 clients (with 2, each could subtract its own update), got {self.clients}"
            )
        if not 0 < self.secagg_threshold <= 1:
            raise ConfigError("secagg_threshold", f"must be a fraction in (0, 1], got {self.secagg_threshold}")
        if not (math.isfinite(self.secagg_clip_range) and self.secagg_clip_range > 0):
            raise ConfigError("secagg_clip_range", f"must be a finite number > 0, got {self.secagg_clip_range}")
        if not isinstance(self.secagg_max_examples, int) or self.secagg_max_examples < 1:
            raise ConfigError("secagg_max_examples", f"must be a whole number >= 1, got {self.secagg_max_examples}")

    @property
    def dp(self) -> bool:
        """Whether updates are clipped and noised."""
        return self.dp_clip > 0

    def to_run_config(self) -> dict:
        """Flower's run config: flat keys with dashes, str/int/float values (None and paths as str)."""
        values = {}
        for key, value in asdict(self).items():
            values[key.replace("_", "-")] = "" if value is None else str(value) if isinstance(value, Path) else value
        return values

    @classmethod
    def from_run_config(cls, run_config: dict) -> "FleetConfig":
        """The config a ServerApp receives; unknown keys are refused by name."""
        known = {f.name for f in fields(cls)}
        values = {}
        for key, value in run_config.items():
            name = key.replace("-", "_")
            if name not in known:
                raise ConfigError(key, f"is not a fleet setting (known: {', '.join(sorted(known))})")
            values[name] = None if value == "" and name == "eval_data" else value
        return cls(**values)
