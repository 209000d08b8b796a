"""Typed configurations for building and training, validated once, in library terms.

Each config is a frozen dataclass that checks itself in `__post_init__` and names the
field it refuses (`ConfigError("rank", "must be ...")`). The CLI builds them from its
flags, takes its choices from the tuples below, and shows a refused field as its flag.
stdlib only: both sides import this module.
"""

import ipaddress
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

from edgetune.common.errors import ConfigError
from edgetune.common.peft import scaling

TASKS = ("causal-lm", "text-classification", "token-classification", "question-answering")
LABELLED_TASKS = ("text-classification", "token-classification")  # need --labels
CLASS_WEIGHTS = ("auto",)  # inverse label frequency in the training data
METHODS = ("lora", "dora", "qlora")
QUANT_TYPES = ("int8", "int4")
BLOCK_SIZES = (32, 64, 128)
COMPUTES = ("fp32", "int8")  # the frozen Linears' arithmetic in training
SERVE_QUANTS = ("int4", "int8", "none")  # the serving graph's base (docs/design.md, "Serving graph")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "linear", "constant")
TRAINABLE = ("all", "lora_B")  # which adapter tensors train: all, or only B (FFA-LoRA: A frozen from the seed)
EXPORT_FORMATS = ("gguf", "onnx-adapter", "genai", "peft")  # `edgetune export --format`
ALL_LINEAR = "all-linear"


def _whole(name: str, value, minimum: int = 1, optional: bool = False) -> None:
    """Refuse a value that is not an int >= minimum (None allowed when optional)."""
    if value is None and optional:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(name, f"must be a whole number >= {minimum}, got {value}")


def _positive(name: str, value) -> None:
    """Refuse a value that is not a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ConfigError(name, f"must be a finite number > 0, got {value}")


def _choice(name: str, value, choices: tuple, optional: bool = False) -> None:
    """Refuse a value outside `choices`."""
    if value is None and optional:
        return
    if value not in choices:
        raise ConfigError(name, f"must be one of {', '.join(map(str, choices))}, got {value!r}")


def _as_path(config, name: str) -> None:
    """Turn a str field of a frozen dataclass into a Path, in place."""
    value = getattr(config, name)
    if value is not None and not isinstance(value, Path):
        object.__setattr__(config, name, Path(value))


@dataclass(frozen=True)
class LoraSpec:
    """The adapter's hyper-parameters, as PEFT names them (r, lora_alpha, lora_dropout, use_rslora)."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    use_rslora: bool = False

    def __post_init__(self):
        _whole("rank", self.rank)
        _positive("alpha", self.alpha)
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ConfigError("dropout", f"must be in [0, 1), got {self.dropout}")

    @property
    def scaling(self) -> float:
        """PEFT's scale: alpha/r, or alpha/sqrt(r) with rsLoRA."""
        return scaling(self.rank, self.alpha, self.use_rslora)


@dataclass(frozen=True)
class BuildConfig:
    """What `edgetune build` makes: the source model, the adapter, its method and the training setup.

    targets: comma-separated module names, `all-linear`, or None (the architecture's default).
    method: lora | dora | qlora; quant (qlora only): int8 | int4; block_size (int4): 32 | 64 | 128.
    compute: fp32, or int8 (lora, or qlora with quant int8): the frozen Linears run as int8 GEMMs
    in training, forward x·W and backward dY·Wᵀ, on an int8 per-channel base.
    serve_quant: the serving graph's weights (int4 | int8 | none); a qlora bundle serves its own base.
    init_adapter: a PEFT adapter folder that sets r, alpha, dropout, rsLoRA, DoRA and targets
    (leave those at their defaults; causal-lm only). gradient_checkpointing: None takes the method's default.
    task: causal-lm, or an encoder task (text-classification, token-classification,
    question-answering) whose new head is trained with the adapter; labels: the head's label
    names in id order (the two classification tasks need two or more).
    trainable: all adapter tensors, or lora_B only (A stays at its initial value, in the
    checkpoint: FFA-LoRA). base_delta: each adapted layer's weight becomes W + Δ, with Δ a
    zero-initialised frozen tensor in the checkpoint that a device can update (FedEx-LoRA).
    sign: an Ed25519 private key file (`edgetune keygen`) to sign the bundle's manifest with.
    """

    model: str
    out: Path
    targets: str | None = None
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    use_rslora: bool = False
    method: str = "lora"
    quant: str | None = None
    block_size: int = 32
    optimizer: str = "adamw"
    task: str = "causal-lm"
    seed: int = 0
    force: bool = False
    init_adapter: Path | None = None
    gradient_checkpointing: bool | None = None
    serve_quant: str = "int8"  # the serving graph's float base: int4 | int8 | none (a qlora base stays as trained)
    labels: tuple[str, ...] | str | None = None  # classification tasks: names, or one comma-separated string
    trainable: str = "all"
    base_delta: bool = False
    sign: Path | None = None
    compute: str = "fp32"

    def __post_init__(self):
        _as_path(self, "out")
        _as_path(self, "init_adapter")
        _as_path(self, "sign")
        _choice("task", self.task, TASKS)
        self._check_labels()
        _choice("method", self.method, METHODS)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("quant", self.quant, QUANT_TYPES, optional=True)
        _choice("block_size", self.block_size, BLOCK_SIZES)
        _choice("serve_quant", self.serve_quant, SERVE_QUANTS)
        _whole("seed", self.seed, minimum=0)
        _choice("trainable", self.trainable, TRAINABLE)
        if self.trainable != "all" and self.method == "dora":
            raise ConfigError("trainable", f"{self.trainable} does not apply to dora (its magnitude trains too)")
        if self.base_delta and self.method != "lora":
            raise ConfigError("base_delta", f"needs method lora (method is {self.method})")
        if self.quant is not None and self.method != "qlora":
            raise ConfigError("quant", f"{self.quant} needs method qlora (method is {self.method})")
        if self.method == "qlora" and self.quant is None:
            raise ConfigError("quant", f"method qlora needs a quant type ({', '.join(QUANT_TYPES)})")
        _choice("compute", self.compute, COMPUTES)
        if self.compute == "int8" and not (self.method == "lora" or self.quant == "int8"):
            shown = self.method if self.quant is None else f"{self.method} with quant {self.quant}"
            raise ConfigError("compute", f"int8 needs method lora, or qlora with quant int8 (got {shown})")
        if self.compute == "int8" and self.base_delta:
            raise ConfigError("compute", "int8 is for LoRA and QLoRA-int8 bundles, not base_delta")
        spec = self.spec  # validates rank, alpha, dropout
        if self.init_adapter is not None and (self.targets is not None or spec != LoraSpec()):
            raise ConfigError(
                "init_adapter",
                "sets r, lora_alpha, lora_dropout, use_rslora and targets from its "
                "adapter_config.json: do not pass targets or LoRA settings as well",
            )

    def _check_labels(self) -> None:
        """Labels as a tuple of distinct names: two or more for a labelled task, none otherwise."""
        labels = self.labels
        if isinstance(labels, str):
            labels = tuple(name.strip() for name in labels.split(","))
        if labels is not None:
            labels = tuple(labels)
            object.__setattr__(self, "labels", labels)
        if self.task not in LABELLED_TASKS:
            if labels is not None:
                raise ConfigError("labels", f"task {self.task} takes no labels")
            return
        if not labels or len(labels) < 2 or not all(isinstance(n, str) and n for n in labels):
            raise ConfigError("labels", f"task {self.task} needs two or more label names, got {self.labels!r}")
        if len(set(labels)) != len(labels):
            raise ConfigError("labels", f"names a label twice: {','.join(labels)}")
        if self.init_adapter is not None:
            raise ConfigError("init_adapter", f"is not supported for task {self.task} (causal-lm only)")

    @property
    def spec(self) -> LoraSpec:
        """The LoRA hyper-parameters given (an init_adapter's config replaces them)."""
        return LoraSpec(self.rank, self.alpha, self.dropout, self.use_rslora)


@dataclass(frozen=True)
class TrainConfig:
    """One `edgetune train` run: the bundle, the data, the run folder and the schedule.

    steps or epochs (default: 1 epoch); warmup < 1 is a fraction of the steps, else a step count.
    trust: a trusted public keys file (else $EDGETUNE_TRUSTED_KEYS) the bundle, and an init
    adapter, must be signed by; sign: a private key file to sign the final adapter with.
    """

    bundle: Path
    data: Path
    out: Path
    eval_data: Path | None = None
    steps: int | None = None
    epochs: float | None = None
    lr: float = 2e-4
    warmup: float = 0.03
    schedule: str = "cosine"
    batch_size: int = 8
    grad_accum: int = 1
    seq_len: int = 512
    eval_every: int | None = None
    save_every: int | None = None
    seed: int = 0
    resume: bool = False
    skip_bad_lines: bool = False
    init_adapter: Path | None = None
    class_weights: str | None = None  # auto: classification losses weigh each label by its inverse frequency
    trust: Path | None = None
    sign: Path | None = None
    progress: bool = field(default=True, compare=False)

    def __post_init__(self):
        for name in ("bundle", "data", "out", "eval_data", "init_adapter", "trust", "sign"):
            _as_path(self, name)
        if self.steps is not None and self.epochs is not None:
            raise ConfigError("steps", "give steps or epochs, not both")
        for name in ("steps", "eval_every", "save_every"):
            _whole(name, getattr(self, name), optional=True)
        for name in ("batch_size", "grad_accum"):
            _whole(name, getattr(self, name))
        _whole("seq_len", self.seq_len, minimum=2)
        _whole("seed", self.seed, minimum=0)
        if self.epochs is not None:
            _positive("epochs", self.epochs)
        _positive("lr", self.lr)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("class_weights", self.class_weights, CLASS_WEIGHTS, optional=True)
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, (int, float)) or not self.warmup >= 0:
            raise ConfigError("warmup", f"must be >= 0, got {self.warmup}")
        if self.warmup >= 1 and self.warmup != int(self.warmup):
            raise ConfigError("warmup", f"of 1 or more is a number of steps and must be whole, got {self.warmup}")
        if self.eval_every and not self.eval_data:
            raise ConfigError("eval_every", "needs eval data")
        if self.resume and self.init_adapter:
            raise ConfigError("init_adapter", "excludes resume (the checkpoint holds the adapter)")


def field_names(cls) -> list[str]:
    """The field names of a config class (what the CLI maps its flags to)."""
    return [f.name for f in fields(cls)]


def is_loopback(host: str) -> bool:
    """True for addresses only this machine reaches (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServeConfig:
    """One `edgetune serve` process: the bundle, its adapters, the address and the limits.

    adapters: (name, folder) pairs loaded at start (the operator's folders: not confined).
    adapters_dir: the only folder requests may load adapters from, and where fine-tuned
    adapters are written (default: state_dir/adapters). state_dir: files, jobs and their
    runs (default: the user's state folder). job_nice: how much lower the CPU priority of
    fine-tuning jobs is than serving's (a nice increment). A host other than loopback needs api_key.
    trust: a trusted public keys file (else $EDGETUNE_TRUSTED_KEYS) the bundle and every adapter
    must be signed by; sign: a private key file that signs the adapters fine-tuning jobs write.
    spin: the decoding threads spin-wait between ops (a device that serves and does nothing else).
    lean: a second session on the serving graph without the adapter bank runs base-model decode
    steps (faster; it holds the serving weights once more). fold: the name of one of `adapters`
    folded into that session's weights (`Engine.fold_adapter`): its requests decode at the base
    model's speed, the base model's on the full graph; it is never evicted for another adapter.
    """

    bundle: Path
    adapters: tuple = ()
    adapters_dir: Path | None = None
    state_dir: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_batch: int = 8
    max_queue: int = 64
    max_tokens_limit: int = 1024
    max_adapters: int = 8
    model_name: str | None = None
    drain_timeout: float = 30.0
    job_nice: int = 10
    max_body_bytes: int = 1 << 20
    max_upload_bytes: int = 64 << 20
    trust: Path | None = None
    sign: Path | None = None
    spin: bool = False
    lean: bool = True
    fold: str | None = None

    def __post_init__(self):
        for name in ("bundle", "adapters_dir", "state_dir", "trust", "sign"):
            _as_path(self, name)
        for name in ("max_batch", "max_tokens_limit", "max_adapters", "max_body_bytes", "max_upload_bytes"):
            _whole(name, getattr(self, name))
        _whole("max_queue", self.max_queue, minimum=0)
        if self.fold is not None and self.fold not in {name for name, _ in self.adapters}:
            raise ConfigError("fold", f"{self.fold!r} is not one of the --adapter names")
        if self.fold is not None and not self.lean:
            raise ConfigError("fold", "folding needs the lean graph (drop --no-lean)")
        _whole("job_nice", self.job_nice, minimum=0)
        _whole("port", self.port, minimum=0)
        if self.port > 65535:
            raise ConfigError("port", f"must be at most 65535, got {self.port}")
        if (
            isinstance(self.drain_timeout, bool)
            or not isinstance(self.drain_timeout, (int, float))
            or not (math.isfinite(self.drain_timeout) and self.drain_timeout >= 0)
        ):
            raise ConfigError("drain_timeout", f"must be a number of seconds >= 0, got {self.drain_timeout}")
        if self.api_key is not None and not self.api_key.strip():
            raise ConfigError("api_key", "must not be empty")
        if not is_loopback(self.host) and not self.api_key:
            raise ConfigError(
                "host", f"{self.host} is reachable from other machines: set an API key (--api-key) to bind it"
            )
        names = [name for name, _ in self.adapters]
        if len(set(names)) != len(names):
            raise ConfigError("adapters", f"an adapter name is given twice: {names}")
