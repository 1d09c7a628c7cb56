"""The durable job store: SQLite in WAL mode, the one place a job's life is written.

Why SQLite: an accepted job must survive kill -9, and SQLite commits are atomic and durable with no server to
run. Every state change is one transaction:

    queued --claim--> running --complete--> done          (completions += 1, only from running, same attempt)
       |                 |----fail--------> failed
       +----cancel-------+----------------> cancelled
    running --recover (at start)--> queued                (a worker died mid-render: render again)

A job killed mid-render is rendered again after a restart (its `attempts` grows) but completes once: `complete`
only moves a job that is still `running` under the attempt that claimed it, and counts `completions`, so a
crash test can count that every accepted job finished exactly once. Result files are written (atomically)
before the completing transaction, so a `done` job always has its images.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    status TEXT NOT NULL,
    params TEXT NOT NULL,
    images INTEGER NOT NULL,
    batch_key TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    completions INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    result TEXT
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, created);
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, created);
"""
ACTIVE = ("queued", "running")
FINAL = ("done", "failed", "cancelled")


class QueueFull(Exception):
    """The bounded queue is full; `depth` jobs are waiting or running."""

    def __init__(self, depth: int) -> None:
        super().__init__(f"the queue is full ({depth} jobs)")
        self.depth = depth


@dataclass
class Job:
    id: str
    owner: str
    status: str
    params: dict
    images: int
    batch_key: str
    created: float
    started: float | None
    finished: float | None
    attempts: int
    completions: int
    error: str | None
    result: dict | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "Job":
        data = dict(row)
        data["params"] = json.loads(data["params"])
        data["result"] = json.loads(data["result"]) if data["result"] else None
        return cls(**data)


def new_job_id() -> str:
    """144 random bits, URL-safe: a result id nobody can guess."""
    return secrets.token_urlsafe(18)


class JobStore:
    """Thread-safe: one connection per thread; writers serialise on SQLite's own lock (BEGIN IMMEDIATE)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._connection().executescript(SCHEMA)  # idempotent; executescript manages its own transaction

    def _connection(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, isolation_level=None, timeout=30.0, check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # an accepted job survives power loss too, not only kill -9
            db.execute("PRAGMA busy_timeout=30000")
            self._local.db = db
        return db

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def journal_mode(self) -> str:
        return self._connection().execute("PRAGMA journal_mode").fetchone()[0]

    def submit(self, owner: str, params: dict, images: int, batch_key: str, max_active: int) -> Job:
        """Accept a job durably, or raise QueueFull when `max_active` jobs are already queued or running."""
        job_id = new_job_id()
        with self._transaction() as db:
            depth = db.execute("SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running')").fetchone()[0]
            if depth >= max_active:
                raise QueueFull(depth)
            db.execute("INSERT INTO jobs (id, owner, status, params, images, batch_key, created) "
                       "VALUES (?, ?, 'queued', ?, ?, ?, ?)",
                       (job_id, owner, json.dumps(params, sort_keys=True), images, batch_key, time.time()))
        return self.get(job_id)

    def claim(self, max_images: int) -> list[Job]:
        """Take the oldest queued job and the next queued jobs of the same batch key, up to `max_images` images
        (the first job is always taken, however many images it asks for). Marks them running; attempts += 1."""
        with self._transaction() as db:
            first = db.execute("SELECT * FROM jobs WHERE status = 'queued' ORDER BY created, rowid LIMIT 1").fetchone()
            if first is None:
                return []
            rows, total = [first], first["images"]
            if total < max_images:
                for row in db.execute("SELECT * FROM jobs WHERE status = 'queued' AND batch_key = ? AND id != ? "
                                      "ORDER BY created, rowid LIMIT ?",
                                      (first["batch_key"], first["id"], max_images)):
                    if total + row["images"] > max_images:
                        continue
                    rows.append(row)
                    total += row["images"]
            now = time.time()
            db.executemany("UPDATE jobs SET status = 'running', attempts = attempts + 1, started = ? WHERE id = ?",
                           [(now, row["id"]) for row in rows])
            ids = [row["id"] for row in rows]
        return [self.get(i) for i in ids]

    def complete(self, job: Job, result: dict) -> bool:
        """Finish a job claimed as `job`; False (and nothing changes) when it was cancelled or reclaimed since."""
        with self._transaction() as db:
            cur = db.execute("UPDATE jobs SET status = 'done', completions = completions + 1, result = ?, "
                             "finished = ? WHERE id = ? AND status = 'running' AND attempts = ?",
                             (json.dumps(result, sort_keys=True), time.time(), job.id, job.attempts))
            return cur.rowcount == 1

    def fail(self, job: Job, error: str) -> bool:
        with self._transaction() as db:
            cur = db.execute("UPDATE jobs SET status = 'failed', error = ?, finished = ? "
                             "WHERE id = ? AND status = 'running' AND attempts = ?",
                             (error, time.time(), job.id, job.attempts))
            return cur.rowcount == 1

    def cancel(self, job_id: str, owner: str) -> Job | None:
        """Cancel a queued or running job of `owner`; a finished job is left as it is. None: no such job of theirs."""
        with self._transaction() as db:
            db.execute("UPDATE jobs SET status = 'cancelled', finished = ? "
                       "WHERE id = ? AND owner = ? AND status IN ('queued', 'running')", (time.time(), job_id, owner))
        return self.get(job_id, owner)

    def recover(self) -> int:
        """At start: jobs left running by a dead process go back to the queue. Returns how many."""
        with self._transaction() as db:
            return db.execute("UPDATE jobs SET status = 'queued' WHERE status = 'running'").rowcount

    def get(self, job_id: str, owner: str | None = None) -> Job | None:
        """A job by id; with `owner`, only when it is theirs (another key's job looks exactly like a missing one)."""
        row = self._connection().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None or (owner is not None and row["owner"] != owner):
            return None
        return Job.from_row(row)

    def status_of(self, job_id: str) -> str | None:
        row = self._connection().execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return row[0] if row else None

    def list(self, owner: str, limit: int = 50) -> list[Job]:
        rows = self._connection().execute("SELECT * FROM jobs WHERE owner = ? ORDER BY created DESC, rowid DESC "
                                          "LIMIT ?", (owner, limit)).fetchall()
        return [Job.from_row(r) for r in rows]

    def depth(self) -> int:
        return self._connection().execute(
            "SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running')").fetchone()[0]

    def counts(self) -> dict[str, int]:
        rows = self._connection().execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        return {status: n for status, n in rows}

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None
