"""Tuning from inside an app: `Tuner(...).start(...)` trains in the background and returns a job.

    from edgetune.runtime import Tuner                       # no torch
    job = Tuner("bundle/", out="runs/alice").start(examples, steps=200, lr=1e-3, on_step=print)
    job.progress()      # {"status": "running", "step": 12, "total_steps": 200, "loss": ..., ...}
    job.cancel()        # stops after the current step, leaving a resumable checkpoint
    summary = job.wait()  # the run's summary (adapter path, losses, tokens/s); raises if it failed

A job runs on a thread of the caller's process, or (`child_process=True`, what servers use)
in a child Python process, so ORT's memory and any crash stay out of the app: the app's
RSS is back where it was once the job ends. Either way training runs at a lower CPU
priority where the OS allows (`priority`, a nice increment), installs no signal handlers,
and reports every metrics record to `on_step` (called on a thread of the job's).
`Tuner.run(...)` trains on the calling thread instead; `edgetune train` uses it with
`catch_signals=True` on its main thread. The config is `TrainConfig`'s fields.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path

from edgetune.common.atomic import write_jsonl_atomic
from edgetune.common.errors import EdgetuneError, TrainingCancelledError, TrainingError
from edgetune.options import TrainConfig

TRAIN_DATA, EVAL_DATA = "train.jsonl", "eval.jsonl"  # where examples given as lists are written, in `out`
CHILD_LOG = "train.log"  # a child process's stderr, in `out`
CHILD = "import sys; from edgetune.runtime.tuner import child_main; sys.exit(child_main(sys.argv[1]))"
RUNNING, SUCCEEDED, FAILED, CANCELLED = "running", "succeeded", "failed", "cancelled"


class Tuner:
    """Trains adapters of one bundle into one run folder; see the module docstring."""

    def __init__(
        self, bundle: str | os.PathLike, out: str | os.PathLike, child_process: bool = False, priority: int = 10
    ):
        self.bundle, self.out = Path(bundle), Path(out)
        self.child_process, self.priority = child_process, priority

    def config(self, examples, eval_examples=None, **options) -> TrainConfig:
        """The TrainConfig of a run; examples given as lists of dicts are written into the run folder first."""
        options.setdefault("progress", False)
        unknown = set(options) - {f.name for f in fields(TrainConfig)}
        if unknown:
            raise TrainingError(f"unknown training option {sorted(unknown)[0]!r}")
        data = self._data_file(examples, TRAIN_DATA)
        eval_data = self._data_file(eval_examples, EVAL_DATA) if eval_examples is not None else None
        return TrainConfig(self.bundle, data, self.out, eval_data=eval_data, **options)

    def _data_file(self, examples, name: str) -> Path:
        if isinstance(examples, (str, os.PathLike)):
            return Path(examples)
        if not isinstance(examples, list) or not all(isinstance(e, dict) for e in examples):
            raise TrainingError(f"examples must be a path or a list of dicts, got {type(examples).__name__}")
        path = self.out / name
        rows = [{k: v for k, v in e.items() if k != "source"} for e in examples]
        if not (path.is_file() and path.read_text(encoding="utf-8") == _jsonl(rows)):  # a resume keeps its data
            self.out.mkdir(parents=True, exist_ok=True)
            write_jsonl_atomic(path, rows)
        return path

    def run(
        self,
        examples,
        eval_examples=None,
        on_step: Callable[[dict], None] | None = None,
        catch_signals: bool = False,
        **options,
    ) -> dict:
        """Train on the calling thread and return the summary (the CLI's way)."""
        from edgetune.runtime.train import train

        return train(self.config(examples, eval_examples, **options), on_step, None, catch_signals)

    def start(
        self, examples, eval_examples=None, on_step: Callable[[dict], None] | None = None, **options
    ) -> "TuningJob":
        """Start training in the background (a thread, or a child process); returns the job at once."""
        config = self.config(examples, eval_examples, **options)
        job = TuningJob(config, on_step)
        if self.child_process:
            job._start_child(self.priority)
        else:
            job._start_thread(self.priority)
        return job


class TuningJob:
    """One background run: progress(), cancel(), wait()."""

    def __init__(self, config: TrainConfig, on_step: Callable[[dict], None] | None):
        self.config, self.on_step = config, on_step
        self.status = RUNNING
        self.summary: dict | None = None
        self.error: EdgetuneError | None = None
        self.records: list[dict] = []
        self.pid: int | None = None  # the child's, in child_process mode
        self._progress: dict = {"status": RUNNING, "step": 0, "total_steps": None, "loss": None}
        self._cancel = threading.Event()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self.started = time.time()

    # ---- what the app calls --------------------------------------------------------------
    def progress(self) -> dict:
        """Status, step, total_steps, last loss, eval loss and tokens/s so far."""
        with self._lock:
            return {**self._progress, "status": self.status}

    def cancel(self) -> None:
        """Stop after the current step; the run keeps a checkpoint to resume from (start again with resume=True)."""
        self._cancel.set()
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signal.SIGTERM)

    @property
    def done(self) -> bool:
        """True once the job succeeded, failed or was cancelled."""
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> dict:
        """Block until the job ends; its summary, or the error it failed with (TrainingCancelledError if cancelled)."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"the tuning job is still running after {timeout} s")
        if self.error is not None:
            raise self.error
        return self.summary

    # ---- both modes ----------------------------------------------------------------------
    def _record(self, record: dict) -> None:
        with self._lock:
            self.records.append(record)
            if record.get("type") == "train":
                self._progress.update(
                    step=record["step"],
                    total_steps=record["total_steps"],
                    loss=record["loss"],
                    tokens_per_s=record.get("tokens_per_s"),
                )
            elif record.get("type") == "eval":
                self._progress.update(eval_loss=record["eval_loss"])
            elif record.get("type") == "resume":
                self._progress.update(step=record["step"], total_steps=record["total_steps"])
        if self.on_step:
            self.on_step(record)

    def _end(self, summary: dict | None, error: EdgetuneError | None) -> None:
        self.summary, self.error = summary, error
        self.status = SUCCEEDED if error is None else CANCELLED if isinstance(error, TrainingCancelledError) else FAILED
        self._done.set()

    # ---- a thread of this process ----------------------------------------------------------
    def _start_thread(self, priority: int) -> None:
        def work():
            from edgetune.runtime.train import train

            lower_priority(priority, threading.get_native_id())  # before ORT makes its threads: they inherit it
            try:
                summary = train(self.config, self._record, self._cancel.is_set)
            except EdgetuneError as e:
                self._end(None, e)
            except BaseException as e:  # a bug: keep its traceback for wait()
                self._end(None, e)
            else:
                self._end(summary, None)

        threading.Thread(target=work, name="edgetune-tuner", daemon=True).start()

    # ---- a child process ---------------------------------------------------------------------
    def _start_child(self, priority: int) -> None:
        config = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self.config).items()}
        self.config.out.mkdir(parents=True, exist_ok=True)
        with open(self.config.out / CHILD_LOG, "a") as log:  # the child's stderr (a pipe could fill and block it)
            self._proc = subprocess.Popen(
                [sys.executable, "-c", CHILD, json.dumps({"config": config, "priority": priority})],
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                text=True,
            )
        self.pid = self._proc.pid
        threading.Thread(target=self._follow_child, name="edgetune-tuner", daemon=True).start()

    def _follow_child(self) -> None:
        summary, error = None, None
        for line in self._proc.stdout:
            message = json.loads(line)
            if "record" in message:
                self._record(message["record"])
            elif "summary" in message:
                summary = message["summary"]
            elif "error" in message:
                step = message.get("cancelled_at")
                error = (
                    TrainingCancelledError(message["error"], step)
                    if step is not None
                    else TrainingError(message["error"])
                )
        code = self._proc.wait()
        if summary is None and error is None:
            lines = (self.config.out / CHILD_LOG).read_text(errors="replace").strip().splitlines()
            tail = lines[-1:] or [f"exit code {code}"]
            error = TrainingError(f"the training process ended without a result ({tail[0]})")
        self._end(summary, error)


def lower_priority(increment: int, thread_id: int | None = None) -> None:
    """Raise the nice value of a thread (Linux: per thread) or this process by `increment`, where allowed."""
    if increment <= 0 or not hasattr(os, "setpriority"):
        return
    with contextlib.suppress(OSError):
        who = thread_id if thread_id is not None and sys.platform.startswith("linux") else 0
        os.setpriority(os.PRIO_PROCESS, who, min(19, os.getpriority(os.PRIO_PROCESS, who) + increment))


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def child_main(argument: str) -> int:
    """The child process: train, sending each record, then the summary or the error, as JSON lines on stdout."""
    request = json.loads(argument)
    lower_priority(request["priority"])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    parent = os.getppid()

    def watch_parent():  # an orphan stops (with a checkpoint) rather than train on alone
        while not stop.wait(1.0):
            if os.getppid() != parent:
                stop.set()

    threading.Thread(target=watch_parent, daemon=True).start()
    out = sys.stdout

    def send(message: dict) -> None:
        out.write(json.dumps(message) + "\n")
        out.flush()

    from edgetune.runtime.train import train

    try:
        summary = train(TrainConfig(**request["config"]), lambda r: send({"record": r}), stop.is_set)
    except TrainingCancelledError as e:
        send({"error": str(e), "cancelled_at": e.step})
        return 1
    except EdgetuneError as e:
        send({"error": str(e)})
        return 1
    send({"summary": summary})
    return 0
