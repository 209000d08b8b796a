"""Fine-tuning jobs beside serving: one at a time, in a child process at lower CPU priority.

The runner thread takes the oldest queued job of this base model, trains it with `Tuner`
(child_process=True) into STATE_DIR/jobs/ID/, records every step as an event, and on
success copies the adapter into --adapters-dir/ID and registers its `fine_tuned_model`
name, so the next request can use it. Checkpoints are saved every few steps: a server killed
mid-job finds the job `running` at start, waits for its orphaned trainer (which checkpoints
and stops once its parent is gone), records the steps that trainer logged after the server
died (from the run's metrics.jsonl, up to its checkpoint) and queues the job again to resume
from that checkpoint.
"""

import contextlib
import logging
import math
import os
import shutil
import threading
import time
from pathlib import Path

from edgetune.common.atomic import atomic_folder
from edgetune.common.errors import EdgetuneError, TrainingCancelledError
from edgetune.common.names import ADAPTER_DIR
from edgetune.runtime import checkpoints
from edgetune.runtime.metrics import read_metrics, truncate_metrics
from edgetune.runtime.tuner import Tuner, TuningJob
from edgetune.serve.adapters import AdapterRegistry
from edgetune.serve.store import Store

log = logging.getLogger("edgetune.serve")
BASE_LR = 1e-3  # learning_rate_multiplier 1
AUTO = {"n_epochs": None, "batch_size": 8, "learning_rate_multiplier": 2.0}  # n_epochs auto: >= 125 steps, <= 10 epochs
SAVE_EVERY = 10
PID_FILE = "trainer.pid"
FINISHED = ("succeeded", "failed", "cancelled")


class FineTuning:
    """The job queue of one server: its store, its runner thread, the registry it adds models to."""

    def __init__(
        self,
        store: Store,
        bundle: Path,
        base_sha: str,
        registry: AdapterRegistry,
        seq_len: int = 512,
        priority: int = 10,
        trust: Path | None = None,
        sign: Path | None = None,
    ):
        self.store, self.bundle, self.base_sha, self.registry = store, Path(bundle), base_sha, registry
        self.seq_len, self.priority = seq_len, priority
        self.trust, self.sign = trust, sign  # the bundle's trusted keys; the key that signs the adapters jobs write
        self.current: tuple[str, TuningJob] | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgetune-fine-tuning", daemon=True)

    def start(self) -> None:
        """Register the fine-tuned models of earlier jobs, requeue interrupted ones, start the runner."""
        for job in self.store.select("jobs", "status = 'succeeded' AND base_sha256 = ?", (self.base_sha,)):
            folder = self.registry.adapters_dir / job["id"]
            if folder.is_dir() and job["fine_tuned_model"] not in self.registry.names():
                self.registry.add(job["fine_tuned_model"], folder)
        for job in self.store.select("jobs", "status = 'running' AND base_sha256 = ?", (self.base_sha,)):
            run = self.store.run_dir(job["id"])
            _wait_for_orphan(run)
            step = _last_step(run)
            self._recover_events(job["id"], run, step)
            self.store.update("jobs", job["id"], status="queued")
            self.store.add_event(job["id"], f"The server restarted; the job resumes from step {step}")
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Cancel the running job (it checkpoints) and stop the runner; the job resumes at the next start."""
        self._stop.set()
        self._wake.set()
        if self.current:
            self.current[1].cancel()
        self._thread.join(timeout)

    def wake(self) -> None:
        """A job was queued."""
        self._wake.set()

    def cancel(self, job_id: str) -> None:
        """Mark a job cancelled; a running one stops after its step (its checkpoint stays)."""
        self.store.update("jobs", job_id, status="cancelled", finished_at=int(time.time()))
        self.store.add_event(job_id, "The job was cancelled")
        current = self.current
        if current and current[0] == job_id:
            current[1].cancel()

    # ---- the runner thread -----------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            queued = self.store.select(
                "jobs", "status = 'queued' AND base_sha256 = ?", (self.base_sha,), order="created_at ASC", limit=1
            )
            if not queued:
                self._wake.wait(5.0)
                self._wake.clear()
                continue
            try:
                self._train(queued[0])
            except Exception as e:  # a bug: the job fails, the server goes on
                log.exception("fine-tuning job %s", queued[0]["id"])
                self._fail(queued[0]["id"], f"internal error: {e}")

    def _train(self, job: dict) -> None:
        job_id, run = job["id"], self.store.run_dir(job["id"])
        train_file = self.store.get("files", job["training_file"])
        hp = job["hyperparameters"]
        steps = math.ceil(hp["n_epochs"] * math.ceil(train_file["examples"] / hp["batch_size"]))
        resume = checkpoints.latest(run) is not None
        if not resume and run.exists():
            shutil.rmtree(run)  # a start that never reached its first checkpoint: begin again
        options = dict(
            steps=steps,
            batch_size=hp["batch_size"],
            lr=BASE_LR * hp["learning_rate_multiplier"],
            seed=job["seed"],
            save_every=SAVE_EVERY,
            seq_len=self.seq_len,
            resume=resume,
            warmup=0.03,
            trust=self.trust,
            sign=self.sign,
        )
        validation = self.store.file_path(job["validation_file"]) if job["validation_file"] else None
        if validation:
            options["eval_every"] = max(1, steps // 5)
        self.store.update("jobs", job_id, status="running")
        self.store.add_event(
            job_id, f"Fine-tuning job started ({steps} steps)" if not resume else "Fine-tuning resumed"
        )
        tuner = Tuner(self.bundle, run, child_process=True, priority=self.priority)
        handle = tuner.start(
            self.store.file_path(train_file["id"]), validation, on_step=self._recorder(job_id), **options
        )
        (run / PID_FILE).write_text(str(handle.pid))
        self.current = (job_id, handle)
        try:
            summary = handle.wait()
        except TrainingCancelledError:
            return  # cancelled by a request (already marked) or by the server's shutdown (resumes at start)
        except EdgetuneError as e:
            self._fail(job_id, str(e))
            return
        finally:
            self.current = None
            (run / PID_FILE).unlink(missing_ok=True)
        if self.store.get("jobs", job_id)["status"] != "running":
            return
        self._publish(job, run, summary)

    def _recorder(self, job_id: str):
        def record(r: dict) -> None:
            if r["type"] == "train":
                self.store.add_event(
                    job_id,
                    f"Step {r['step']}/{r['total_steps']}: training loss={r['loss']:.4f}",
                    {"step": r["step"], "train_loss": r["loss"], "total_steps": r["total_steps"]},
                )
            elif r["type"] == "eval":
                self.store.add_event(
                    job_id,
                    f"Step {r['step']}: validation loss={r['eval_loss']:.4f}",
                    {"step": r["step"], "valid_loss": r["eval_loss"]},
                )

        return record

    def _recover_events(self, job_id: str, run: Path, step: int) -> None:
        """Record the steps up to the checkpoint that the orphaned trainer logged after the server died."""
        events = self.store.select("events", "job_id = ? AND type = 'metrics'", (job_id,))
        seen = {("valid_loss" in e["data"], e["data"]["step"]) for e in events}
        total = max((e["data"].get("total_steps", 0) for e in events), default=0)
        truncate_metrics(run, step)  # the resumed run redoes the later steps (and drops a torn last line)
        record = self._recorder(job_id)
        for r in read_metrics(run):
            if r["type"] in ("train", "eval") and (r["type"] == "eval", r["step"]) not in seen:
                record({**r, "total_steps": total})

    def _publish(self, job: dict, run: Path, summary: dict) -> None:
        """Copy the adapter into the adapters folder, serve it under its name, mark the job succeeded."""
        folder = self.registry.adapters_dir / job["id"]
        with atomic_folder(folder, "publishing") as tmp:
            for file in (run / ADAPTER_DIR).iterdir():
                shutil.copyfile(file, tmp / file.name)
        name = fine_tuned_name(self.registry.base_name, job["suffix"], job["id"])
        self.registry.add(name, folder)
        self.store.update(
            "jobs",
            job["id"],
            status="succeeded",
            fine_tuned_model=name,
            finished_at=int(time.time()),
            trained_tokens=summary["tokens"],
        )
        self.store.add_event(job["id"], f"The job has successfully completed: {name}")

    def _fail(self, job_id: str, message: str) -> None:
        error = {"code": "training_failed", "message": message, "param": None}
        self.store.update("jobs", job_id, status="failed", error=error, finished_at=int(time.time()))
        self.store.add_event(job_id, f"The job failed: {message}", level="error")


def fine_tuned_name(base: str, suffix: str | None, job_id: str) -> str:
    """OpenAI's style: ft:BASE:SUFFIX:ID (ft:BASE:ID without a suffix)."""
    short = job_id.removeprefix("ftjob-")[:8]
    return f"ft:{base}:{suffix}:{short}" if suffix else f"ft:{base}:{short}"


def _last_step(run: Path) -> int:
    folder = checkpoints.latest(run)
    return checkpoints.read_state(folder)["step"] if folder else 0


def _wait_for_orphan(run: Path, timeout: float = 120.0) -> None:
    """Wait until the trainer a killed server left behind has checkpointed and exited."""
    pid_file = run / PID_FILE
    if not pid_file.is_file():
        return
    with contextlib.suppress(ValueError, OSError):
        pid = int(pid_file.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and cmdline.exists() and b"edgetune.runtime.tuner" in cmdline.read_bytes():
            time.sleep(0.2)
    pid_file.unlink(missing_ok=True)


def default_state_dir() -> Path:
    """The per-user state folder: $XDG_STATE_HOME/edgetune, else ~/.local/state/edgetune."""
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "edgetune"
