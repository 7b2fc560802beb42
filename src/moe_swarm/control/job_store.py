"""The durable job store: the job registry kept in one SQLite file (stdlib ``sqlite3``), the sidecar's default.

One row per job (its record as JSON, plus the columns a queue is ordered by), written in a transaction
per change with the write-ahead log, so a crash (SIGKILL) or a power cut never leaves a torn record and
a restarted sidecar finds every job, its state, its queue place and its log file (whose byte offsets stay
valid: logs are only ever appended). Records of an older sidecar (``jobs/*.json``) are read once and
carried over.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

from moe_swarm.control.registry import JobRecord, JobRegistry

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    created_unix REAL NOT NULL,
    record TEXT NOT NULL
)
"""


class SqliteJobRegistry(JobRegistry):
    """:class:`JobRegistry` whose records live in ``<path>`` (SQLite); ``legacy_dir`` holds JSON records
    of an older sidecar to import (kept as they are)."""

    def __init__(self, path: str | os.PathLike, legacy_dir: str | os.PathLike | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(SCHEMA)
        super().__init__(legacy_dir if legacy_dir is not None else self.path.parent / "jobs")

    def _save(self, rec: JobRecord, *, durable: bool = True) -> None:
        self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        self._db.execute(
            "INSERT OR REPLACE INTO jobs (job_id, kind, state, priority, created_unix, record) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (rec.job_id, rec.kind, rec.state.value, rec.priority, rec.created_unix,
             json.dumps(rec.to_dict(), sort_keys=True)),
        )  # fmt: skip

    def _load(self) -> list[JobRecord]:
        stored: dict[str, JobRecord] = {}
        for job_id, text in self._db.execute("SELECT job_id, record FROM jobs ORDER BY created_unix, job_id"):
            try:
                stored[job_id] = JobRecord.from_dict(json.loads(text))
            except (ValueError, TypeError) as exc:
                print(
                    f"moe-swarm-serve: skipping unreadable job record {job_id} in {self.path}: {exc}",
                    flush=True,
                )
        for rec in super()._load():  # an older sidecar's JSON files: carried over once
            if rec.job_id not in stored:
                stored[rec.job_id] = rec
                self._save(rec)
        return list(stored.values())

    def close(self) -> None:
        self._db.close()
