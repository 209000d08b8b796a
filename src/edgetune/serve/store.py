"""The server's embedded database (sqlite3, standard library): uploaded files, fine-tuning jobs, their events.

One file, `STATE_DIR/edgetune.sqlite3`, in WAL mode with full fsync, so a record written
before a SIGKILL is there after it. Uploaded files live beside it in `files/` (written
atomically before their row is inserted), job runs in `jobs/ID/`. Rows hold OpenAI's
fields; JSON-valued fields are stored as text.
"""

import json
import sqlite3
import threading
import time
import uuid
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY, filename TEXT NOT NULL, bytes INTEGER NOT NULL, created_at INTEGER NOT NULL,
    purpose TEXT NOT NULL, examples INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, created_at INTEGER NOT NULL, finished_at INTEGER, status TEXT NOT NULL,
    model TEXT NOT NULL, base_sha256 TEXT NOT NULL, training_file TEXT NOT NULL, validation_file TEXT,
    hyperparameters TEXT NOT NULL, suffix TEXT, seed INTEGER NOT NULL, fine_tuned_model TEXT,
    error TEXT, trained_tokens INTEGER
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, job_id TEXT NOT NULL, created_at INTEGER NOT NULL,
    level TEXT NOT NULL, message TEXT NOT NULL, data TEXT, type TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_job ON events (job_id, seq);
"""
JSON_FIELDS = ("hyperparameters", "error", "data")


class Store:
    """Thread-safe access to the database (one connection, one lock)."""

    def __init__(self, state_dir: Path):
        self.dir = Path(state_dir)
        for sub in ("files", "jobs"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.dir / "edgetune.sqlite3", check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    def file_path(self, file_id: str) -> Path:
        """Where an uploaded file's bytes are."""
        return self.dir / "files" / f"{file_id}.jsonl"

    def run_dir(self, job_id: str) -> Path:
        """A job's run folder (checkpoints, metrics, adapter)."""
        return self.dir / "jobs" / job_id

    # ---- rows --------------------------------------------------------------------------------
    def insert(self, table: str, row: dict) -> None:
        """Insert one row (JSON fields encoded)."""
        row = _encode(row)
        columns = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with self._lock:
            self._db.execute(f"INSERT INTO {table} ({columns}) VALUES ({marks})", tuple(row.values()))

    def update(self, table: str, key: str, **fields) -> None:
        """Set fields of the row with id `key`."""
        fields = _encode(fields)
        assignments = ", ".join(f"{k} = ?" for k in fields)
        with self._lock:
            self._db.execute(f"UPDATE {table} SET {assignments} WHERE id = ?", (*fields.values(), key))

    def get(self, table: str, key: str) -> dict | None:
        """The row with id `key`, or None."""
        with self._lock:
            row = self._db.execute(f"SELECT * FROM {table} WHERE id = ?", (key,)).fetchone()
        return _decode(row) if row else None

    def select(
        self, table: str, where: str = "1", args: tuple = (), order: str = "created_at DESC", limit: int = 10_000
    ) -> list[dict]:
        """Rows matching `where`."""
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM {table} WHERE {where} ORDER BY {order} LIMIT ?", (*args, limit))
            return [_decode(r) for r in rows.fetchall()]

    def delete(self, table: str, key: str) -> None:
        """Delete the row with id `key`."""
        with self._lock:
            self._db.execute(f"DELETE FROM {table} WHERE id = ?", (key,))

    def add_event(self, job_id: str, message: str, data: dict | None = None, level: str = "info") -> None:
        """Append an event to a job's log ("metrics" events carry data)."""
        self.insert(
            "events",
            {
                "id": f"ftevent-{uuid.uuid4().hex[:24]}",
                "job_id": job_id,
                "created_at": int(time.time()),
                "level": level,
                "message": message,
                "data": data,
                "type": "metrics" if data else "message",
            },
        )

    def events(self, job_id: str, after: str | None, limit: int) -> list[dict]:
        """A job's events, newest first (OpenAI's order), those older than event `after` when given."""
        where, args = "job_id = ?", (job_id,)
        if after:
            where, args = "job_id = ? AND seq < (SELECT seq FROM events WHERE id = ?)", (job_id, after)
        return self.select("events", where, args, order="seq DESC", limit=limit)

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()


def _encode(row: dict) -> dict:
    return {k: json.dumps(v) if k in JSON_FIELDS and v is not None else v for k, v in row.items()}


def _decode(row: sqlite3.Row) -> dict:
    return {k: json.loads(row[k]) if k in JSON_FIELDS and row[k] is not None else row[k] for k in row.keys()}  # noqa: SIM118
