"""`edgetune train`: fine-tune a bundle's LoRA adapter on CPU with ONNX Runtime Training.

The recipe, top to bottom (components live in data/batching/schedule/checkpoints/metrics):
    setup    check options, verify the bundle, read + tokenize the data, plan the steps,
             check the run folder (fresh, or resume from its last checkpoint), open ORT's
             Module and Optimizer
    train    each step: set the LR -> grad_accum forward/backward calls -> optimizer step
             -> log; eval every `eval_every`; checkpoint every `save_every`; when asked to
             stop (`should_stop`, or SIGINT/SIGTERM where the caller lets it catch them)
             finish the step, checkpoint, and raise TrainingCancelledError
    finish   last checkpoint, adapter in PEFT format, summary.json, loss.png

Gradient accumulation: the graph's loss is the mean over one micro-batch's loss tokens
and ORT sums gradients over the grad_accum calls before `Optimizer.step()` (the loss
cannot be scaled inside the graph). The sum is kept. AdamW divides by the gradient's
running RMS, so a sum of k gradients instead of their mean only changes the effective
eps (torch.optim.AdamW on averaged gradients with eps = 1e-8 / k); the LR is used as is.
SGD has no such normalisation, so its LR is divided by the number of micro-batches,
which is exactly their mean.
Every micro-batch weighs the same, whatever its token count.

Data order is a function of (seed, epoch): optimizer step i of an epoch uses the epoch's
micro-batches i*k .. i*k+k-1 (its last step may get fewer), so a resumed run rebuilds the
epoch's batches and skips the ones already done.
"""

import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

import edgetune
from edgetune.common.atomic import write_json_atomic
from edgetune.common.bundle import open_bundle
from edgetune.common.errors import (
    AdapterError,
    BundleError,
    CheckpointError,
    OutputError,
    TrainingCancelledError,
    TrainingError,
)
from edgetune.common.hashing import sha256_file
from edgetune.common.names import (
    ADAPTER_DIR,
    BASE_WEIGHTS,
    CHECKPOINT,
    EVAL_MODEL,
    OPTIMIZER_MODEL,
    SUMMARY,
    TRAINING_MODEL,
)
from edgetune.common.peft import (
    bundle_adapter_keys,
    config_scaling,
    load_adapter,
    load_base_delta,
    save_adapter,
    to_graph_layout,
    to_peft_layout,
)
from edgetune.common.trust import resolve_trust
from edgetune.options import TrainConfig
from edgetune.runtime import checkpoints
from edgetune.runtime.metrics import Metrics, peak_rss_bytes, plot_losses, process_age, truncate_metrics
from edgetune.runtime.ort_errors import ORT_ERRORS, gist
from edgetune.runtime.ort_training import load_state, open_module, open_optimizer, training_session_options
from edgetune.runtime.run_lock import RunLock
from edgetune.runtime.schedule import learning_rate, warmup_steps
from edgetune.runtime.tasks import task_for

ORDER_KEYS = ("seed", "batch_size", "grad_accum", "seq_len")  # fix the data order: a resume keeps them
CHANGEABLE_KEYS = ("lr", "warmup", "schedule", "total_steps")  # a resume may change these (logged)


@dataclass(frozen=True)
class SavedCheckpoint:
    """The run's last checkpoint: its folder, its size, and how long saving it took (None: an earlier run's)."""

    folder: Path
    size: int
    save_s: float | None


@dataclass(frozen=True)
class StartPoint:
    """Where a run starts: the ORT checkpoint to load, its step, and the resumed state (None: a fresh run)."""

    checkpoint: Path
    step: int
    resumed: dict | None
    saved: SavedCheckpoint | None


def train(
    config: TrainConfig,
    on_record: Callable[[dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    catch_signals: bool = False,
) -> dict:
    """Train the adapter of `config.bundle` on `config.data` into run folder `config.out`; return the summary.

    Writes out/checkpoints/, out/metrics.jsonl, out/adapter/ (PEFT), out/summary.json and
    out/loss.png. `on_record` gets every metrics record as it is logged; when `should_stop()`
    turns true (or, with `catch_signals` on the main thread, at SIGINT/SIGTERM) the run
    checkpoints after the step and raises TrainingCancelledError. Raises EdgetuneError with
    a one-line message.
    """
    with RunLock(config.out):  # a second process on the same run folder is refused here, at once
        recipe = _Recipe(config, on_record, should_stop, catch_signals)
        try:
            recipe.setup()
            recipe.train()
            return recipe.finish()
        finally:
            recipe.cleanup()


class _Recipe:
    """One training run: `setup()`, `train()`, `finish()`, and always `cleanup()`."""

    def __init__(self, config: TrainConfig, on_record=None, should_stop=None, catch_signals: bool = False):
        self.o = config
        self.on_record, self.should_stop, self.catch_signals = on_record, should_stop, catch_signals
        self.called_at = time.perf_counter()
        self.stop_signal: str | None = None  # set by SIGINT/SIGTERM or should_stop; the loop stops after the step
        self.old_handlers: dict = {}
        self.metrics: Metrics | None = None
        self.checkpoint: SavedCheckpoint | None = None
        self.saved_step = 0
        self.last_loss: float | None = None
        self.last_eval: dict | None = None
        self.first_step_done: tuple | None = None  # (perf_counter, process age) after the first step
        self.tokens, self.pad_tokens, self.step_time, self.train_s = 0, 0, 0.0, 0.0
        self.batches, self.batches_epoch = None, None  # the current epoch's micro-batches

    # ---- setup -------------------------------------------------------------------------
    def setup(self) -> None:
        """Check all that can be checked before the run folder is touched, then open ORT."""
        o = self.o
        self.trust = resolve_trust(o.trust)
        self.bundle = open_bundle(o.bundle, trust=self.trust)
        self.manifest = self.bundle.manifest
        self.task = task_for(o, self.manifest)  # the task's data: encoding, batches, eval metrics
        self.train_set, self.data_summary, self.skipped = self.task.encode(o.data, o.skip_bad_lines)
        self.eval_batches = None
        if o.eval_data:  # a fixed order: the batches of epoch 0
            self.eval_batches = self.task.batches(self.task.encode(o.eval_data, False)[0], 0, o.seed)
        self.task.release_tokenizer()  # ~30 MB, free for ORT's use: before the session opens below

        batches_per_epoch = math.ceil(len(self.train_set) / o.batch_size)
        self.steps_per_epoch = math.ceil(batches_per_epoch / o.grad_accum)
        self.total_steps = o.steps or math.ceil((o.epochs or 1) * self.steps_per_epoch)
        self.warmup_steps = warmup_steps(o.warmup, self.total_steps)
        self.hparams = {
            "seed": o.seed,
            "batch_size": o.batch_size,
            "grad_accum": o.grad_accum,
            "seq_len": o.seq_len,
            "lr": o.lr,
            "warmup": o.warmup,
            "schedule": o.schedule,
            "total_steps": self.total_steps,
        }
        self.identity = {
            "bundle": checkpoints.bundle_identity(o.bundle, self.manifest),
            "data": {"path": str(o.data), "sha256": sha256_file(o.data)},
        }
        start = self._resume_point() if o.resume else self._fresh_run()
        init_weights = self._init_adapter() if o.init_adapter else None
        self.start_step, self.checkpoint, self.saved_step = start.step, start.saved, start.step
        self.last_loss = start.resumed.get("train_loss") if start.resumed else None

        try:  # every check passed: now the run folder may change
            o.out.mkdir(parents=True, exist_ok=True)
            checkpoints.remove_partial(o.out)
            truncate_metrics(o.out, self.start_step)
            self.metrics = Metrics(o.out, self.total_steps, self.start_step, o.progress)
        except OSError as e:
            raise TrainingError(f"{e.filename or o.out}: cannot write the run folder ({e.strerror})") from None
        if start.resumed:
            before = start.resumed["hparams"]
            changed = {k: [before.get(k), self.hparams[k]] for k in CHANGEABLE_KEYS if before.get(k) != self.hparams[k]}
            self._log({"type": "resume", "step": self.start_step, "changed": changed})
            if changed:
                self.metrics.note(f"resuming at step {self.start_step} with changed settings {changed}")
        self._open_session(start.checkpoint, init_weights)

    def _fresh_run(self) -> StartPoint:
        """A new run: `out` must not hold one already. Starts from the bundle's checkpoint."""
        out = self.o.out
        if out.exists() and not out.is_dir():
            raise TrainingError(f"{out}: exists and is not a folder")
        if checkpoints.latest(out) or (out / ADAPTER_DIR).exists() or (out / SUMMARY).exists():
            raise TrainingError(f"{out}: already holds a run (continue it with --resume, or choose another output)")
        return StartPoint(self.bundle.path(CHECKPOINT), 0, None, None)

    def _resume_point(self) -> StartPoint:
        """The run's last checkpoint, if it belongs to this bundle, data and data order."""
        o = self.o
        folder = checkpoints.latest(o.out)
        if folder is None:
            raise CheckpointError(f"{o.out}: nothing to resume (no checkpoint in it)")
        state = checkpoints.read_state(folder)
        checkpoints.check_resumable(folder, state, self.identity, self.hparams, ORDER_KEYS)
        if state["step"] > self.total_steps:
            raise TrainingError(f"{folder}: already at step {state['step']}, past the {self.total_steps} steps asked")
        if state["step"] == self.total_steps and (o.out / SUMMARY).exists():
            raise TrainingError(
                f"{o.out}: already finished at step {state['step']} (ask for more --steps to train further)"
            )
        saved = SavedCheckpoint(folder, checkpoints.size(folder), None)
        return StartPoint(folder / CHECKPOINT, state["step"], state, saved)

    def _init_adapter(self) -> dict:
        """The starting adapter from a PEFT folder (PEFT layout), with its base deltas if it has any
        (bundles built with base_delta); its r and scale must be the bundle's."""
        weights, config = load_adapter(self.o.init_adapter, self.manifest, trust=self.trust)
        ours = self.manifest["adapter_config"]
        if (config["r"], config_scaling(config)) != (ours["r"], config_scaling(ours)):
            raise AdapterError(
                f"{self.o.init_adapter}: r={config['r']}, lora_alpha={config['lora_alpha']} "
                f"differ from the bundle's r={ours['r']}, lora_alpha={ours['lora_alpha']}"
            )
        deltas = load_base_delta(self.o.init_adapter, self.manifest, weights)
        if deltas and not self.manifest.get("base_delta"):
            raise AdapterError(
                f"{self.o.init_adapter}: carries base-weight deltas, which this bundle cannot train on "
                "(build it with base_delta, or merge the adapter first)"
            )
        return weights | deltas

    def _open_session(self, checkpoint: Path, init_weights: dict | None) -> None:
        """ORT Module + Optimizer on the checkpoint; `init_weights` (PEFT layout) replace the adapter."""
        o = self.o
        self.ort_seed = int(np.random.SeedSequence([o.seed, self.start_step]).generate_state(1)[0])
        ort.set_seed(self.ort_seed)  # LoRA dropout masks (not restorable: a resume draws new ones)
        options = training_session_options()
        self.state = load_state(checkpoint)
        eval_model = self.bundle.path(EVAL_MODEL) if o.eval_data else None  # a session costs ~25 MB
        self.module = open_module(self.bundle.path(TRAINING_MODEL), self.state, eval_model, options)
        for key, value in to_graph_layout(init_weights or {}).items():  # only once a Module owns the state
            expected = tuple(self.state.parameters[key].data.shape)
            if value.shape != expected:  # graph layout: (in, r), (r, out)
                raise AdapterError(
                    f"{o.init_adapter}: {key} has shape {value.shape[::-1]}, but this bundle's layer needs "
                    f"{expected[::-1]} (adapter for another base model?)"
                )
            self.state.parameters[key] = value
        self.optimizer = open_optimizer(self.bundle.path(OPTIMIZER_MODEL), self.module)
        self.sgd = self.manifest["optimizer"] == "sgd"
        self.train_inputs = self.module.input_names()  # names of Batch fields, in graph order
        self.eval_inputs = self.module.eval().input_names() if eval_model else []
        self.module.train()

    # ---- train -------------------------------------------------------------------------
    def train(self) -> None:
        """The loop: optimizer steps `start_step` .. `total_steps - 1`, then stop."""
        o = self.o
        if self.catch_signals:
            self.old_handlers = _catch_signals(self._on_signal)
        loop_start = time.perf_counter()
        for step in range(self.start_step, self.total_steps):
            record = self._train_step(step)
            self._log({**record, "elapsed_s": time.perf_counter() - loop_start})
            done = step + 1
            if self.eval_batches and o.eval_every and done % o.eval_every == 0:
                self._evaluate(done)
            if self.should_stop and self.should_stop():
                self.stop_signal = self.stop_signal or "a cancel request"
            if (o.save_every and done % o.save_every == 0) or self.stop_signal:
                self._save(done)
            if self.stop_signal:
                raise TrainingCancelledError(
                    f"stopped by {self.stop_signal} after step {done}; checkpoint saved in "
                    f"{self.checkpoint.folder} (continue with --resume)",
                    done,
                )
        self.train_s = time.perf_counter() - loop_start

    def _train_step(self, step: int) -> dict:
        """One optimizer step over its grad_accum micro-batches; returns its metrics record."""
        o, k = self.o, self.o.grad_accum
        epoch, index = divmod(step, self.steps_per_epoch)
        if epoch != self.batches_epoch:  # deterministic in (seed, epoch)
            self.batches = self.task.batches(self.train_set, epoch, o.seed)
            self.batches_epoch = epoch
        micro = self.batches[index * k : (index + 1) * k]
        lr = learning_rate(step, self.total_steps, o.lr, self.warmup_steps, o.schedule)
        self.optimizer.set_learning_rate(lr / len(micro) if self.sgd else lr)
        started = time.perf_counter()
        losses = [self._forward_backward(batch, step + 1) for batch in micro]
        self.optimizer.step()
        self.module.lazy_reset_grad()
        elapsed = time.perf_counter() - started
        self.first_step_done = self.first_step_done or (time.perf_counter(), process_age())
        tokens = sum(int(b.attention_mask.sum()) for b in micro)  # real tokens, padding excluded
        self.tokens, self.step_time = self.tokens + tokens, self.step_time + elapsed
        self.pad_tokens += sum(b.attention_mask.size for b in micro) - tokens
        self.last_loss = float(np.mean(losses))
        return {
            "type": "train",
            "step": step + 1,
            "epoch": epoch,
            "loss": self.last_loss,
            "lr": lr,
            "tokens": tokens,
            "tokens_per_s": tokens / elapsed,
        }

    def _forward_backward(self, batch, step: int) -> float:
        """One train call on a micro-batch (B, S): gradients add up in ORT until the optimizer step."""
        try:
            outputs = self.module(*(getattr(batch, name) for name in self.train_inputs))
        except ORT_ERRORS as e:  # a training graph that loads but cannot run (a damaged bundle)
            raise BundleError(f"{self.bundle.path(TRAINING_MODEL)}: ONNX Runtime failed ({gist(e)})") from None
        loss = float(_as_list(outputs)[0])  # an encoder's graph returns its logits after the loss
        if not math.isfinite(loss):
            last = f"the checkpoint of step {self.saved_step} is kept" if self.saved_step else "no checkpoint was saved"
            raise TrainingError(f"loss is {loss} at step {step}: training stopped; {last} (try a lower --lr)")
        return loss

    def _evaluate(self, step: int) -> None:
        """Eval loss over the whole eval set and the task's metrics (perplexity, accuracy, F1, ...)."""
        self.module.eval()
        run = lambda batch: _as_list(self.module(*(getattr(batch, name) for name in self.eval_inputs)))
        self.last_eval = {"step": step, **self.task.evaluate(run, self.eval_batches)}
        self.module.train()
        self._log({"type": "eval", **self.last_eval})

    def _log(self, record: dict) -> None:
        """Append a record to metrics.jsonl and hand it to the caller's callback."""
        self.metrics.log(record)
        if self.on_record:
            self.on_record({**record, "total_steps": self.total_steps})

    def _save(self, step: int) -> None:
        """Checkpoint the state after `step` optimizer steps, with the resume position."""
        epoch, index = divmod(step, self.steps_per_epoch)
        resume_state = {
            "step": step,
            "epoch": epoch,
            "batch_in_epoch": index * self.o.grad_accum,
            "seed": self.o.seed,
            "rng": {"data_order": [self.o.seed, epoch], "ort": self.ort_seed},
            **self.identity,
            "hparams": self.hparams,
            "train_loss": self.last_loss,
            "edgetune_version": edgetune.__version__,
        }
        started = time.perf_counter()
        folder, size = checkpoints.save(self.o.out, self.state, resume_state)
        self.checkpoint = SavedCheckpoint(folder, size, time.perf_counter() - started)
        self.saved_step = step

    def _on_signal(self, signum, frame) -> None:
        """SIGINT/SIGTERM: only note it; the loop finishes the step, saves, and stops."""
        self.stop_signal = signal.Signals(signum).name

    # ---- finish ------------------------------------------------------------------------
    def finish(self) -> dict:
        """Final eval and checkpoint, the PEFT adapter, summary.json and loss.png; returns the summary."""
        o, done = self.o, self.total_steps
        if self.eval_batches and (self.last_eval or {}).get("step") != done:
            self._evaluate(done)
        if self.checkpoint is None or self.saved_step != done:
            self._save(done)
        keys = bundle_adapter_keys(self.manifest)
        weights = to_peft_layout({key: self.state.parameters[key].data for key in keys})  # (r, in), (out, r)
        adapter_config, base_sha = self.manifest["adapter_config"], self.manifest["source"]["weights_sha256"]
        kept = f"the checkpoint of step {done} is kept in {self.checkpoint.folder}"
        try:
            save_adapter(o.out / ADAPTER_DIR, weights, adapter_config, base_sha, key=o.sign)
        except (OSError, OutputError) as e:
            raise TrainingError(f"{o.out / ADAPTER_DIR}: cannot save the adapter ({e.strerror}); {kept}") from None
        first = self.first_step_done
        total_tokens = self.tokens + self.pad_tokens
        summary = {
            "run": str(o.out),
            "bundle": str(o.bundle),
            "adapter": str(o.out / ADAPTER_DIR),
            "steps": done,
            "steps_this_run": done - self.start_step,
            "epochs": done / self.steps_per_epoch,
            "examples": self.data_summary.examples,
            "skipped_lines": self.skipped,
            "dropped": self.data_summary.dropped,
            "truncated": self.data_summary.truncated,
            "padding_fraction": self.pad_tokens / total_tokens if total_tokens else 0.0,
            "tokens": self.tokens,
            "tokens_per_s": self.tokens / self.step_time if self.step_time else None,
            "train_s": self.train_s,
            "startup_s": first[1] if first else None,
            "setup_s": first[0] - self.called_at if first else None,
            "final_train_loss": self.last_loss,
            "final_eval_loss": self.last_eval["eval_loss"] if self.last_eval else None,
            "final_perplexity": self.last_eval.get("perplexity") if self.last_eval else None,
            "final_eval": self.last_eval,
            "checkpoint": str(self.checkpoint.folder),
            "checkpoint_bytes": self.checkpoint.size,
            "checkpoint_save_s": self.checkpoint.save_s,
            "base_weights_bytes": self.manifest["files"].get(BASE_WEIGHTS, {}).get("size"),
            "peak_rss_bytes": peak_rss_bytes(),
            "options": _options_record(o),
        }
        try:
            write_json_atomic(o.out / SUMMARY, summary)
            plot_losses(o.out)
        except OSError as e:
            raise TrainingError(f"{e.filename or o.out}: cannot write ({e.strerror}); {kept}") from None
        return summary

    def cleanup(self) -> None:
        """Restore signal handlers and close the progress bar and metrics file."""
        for signum, handler in self.old_handlers.items():
            signal.signal(signum, handler)
        if self.metrics:
            self.metrics.close()


def _as_list(outputs) -> list:
    """A Module call's outputs as a list (one output comes back bare)."""
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


def _options_record(config: TrainConfig) -> dict:
    """The run's options as JSON values, for summary.json."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(config).items()}


def _catch_signals(handler) -> dict:
    """Route SIGINT and SIGTERM to `handler` (main thread only); returns the old handlers."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}
