"""The embedded record store: one SQLite file, for local runs and tests."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from channel import telemetry
from channel.budget import time_left
from channel.errors import StoreUnavailable
from channel.ledger.store import (
    AlreadyExists,
    Record,
    StaleRecord,
    Versioned,
    Write,
    check_grouped,
    encode_record,
)

BUSY_TIMEOUT_SECONDS = 10.0
"""Longest wait for another writer's lock; a call's budget cuts it to what it has left."""

RETRY_AFTER_SECONDS = 2
"""What a caller is told to wait when the file stayed locked: a local writer, soon done."""

# WITHOUT ROWID: the rows live in the key's own b-tree, so a write changes one b-tree,
# not a table and its key index (a report's two transactions cost about a fifth less).
# A file created by an earlier version keeps its rowid table and works the same.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    key TEXT PRIMARY KEY,
    data TEXT NOT NULL,
    version INTEGER NOT NULL
) WITHOUT ROWID
"""

# A page of one kind: "kind:" <= key < "kind;" (';' follows ':'), one index range read.
_PAGE_FROM_START = (
    "SELECT key, data, version FROM records WHERE key >= ? AND key < ? ORDER BY key LIMIT ?"
)
_PAGE_AFTER = (
    "SELECT key, data, version FROM records WHERE key > ? AND key < ? ORDER BY key LIMIT ?"
)
_REPLACE_AT = (
    "UPDATE records SET data = ?, version = version + 1 WHERE key = ? AND (? = -1 OR version = ?)"
)
_DELETE_AT = "DELETE FROM records WHERE key = ? AND (? = -1 OR version = ?)"
_UPSERT = (
    "INSERT INTO records (key, data, version) VALUES (?, ?, 1) ON CONFLICT (key) "
    "DO UPDATE SET data = excluded.data, version = version + 1"
)
_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)
"""Whether this SQLite has RETURNING (3.35, 2021); older ones read the version after."""


class EmbeddedStore:
    """Records in a SQLite file, so a restarted local app remembers what it sent.

    SQLite serialises writers itself, so two local processes sharing the file stay
    correct; within a process one connection and a lock keep it simple.
    """

    kind = "embedded"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: every statement commits on its own, which is all the
        # atomicity the conditional writes below need.
        self._db = sqlite3.connect(
            str(path), isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_SECONDS
        )
        self._lock = threading.Lock()
        self._busy_ms = int(BUSY_TIMEOUT_SECONDS * 1000)
        try:
            with self._lock:
                self._db.execute("PRAGMA journal_mode=WAL")
                # WAL with synchronous=NORMAL survives a crash of the app (what a local
                # run meets) and skips an fsync per write; only an OS crash may lose the
                # last writes, which is why Azure uses Table Storage instead.
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.execute(_SCHEMA)
        except sqlite3.Error:
            self._db.close()  # e.g. not a database: nobody else would ever close it
            raise

    @property
    def busy_timeout_ms(self) -> int:
        """How long the last statement would wait for another writer's lock, in ms."""
        return self._busy_ms

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """The connection, for one statement that waits no longer than the call's budget.

        A file locked by another process (or a writer of this one) that outlasts the
        budget is StoreUnavailable, a 503 with Retry-After, never a wait past the budget.
        """
        wait = time_left(BUSY_TIMEOUT_SECONDS)
        if wait <= 0 or not self._lock.acquire(timeout=wait):
            raise StoreUnavailable(
                "message ledger unavailable (busy within this process); retry later",
                retry_after=RETRY_AFTER_SECONDS,
            )
        telemetry.round_trip()
        try:
            busy_ms = int(time_left(BUSY_TIMEOUT_SECONDS) * 1000)
            # Rounded down to 100 ms, so that calls close together set it once.
            busy_ms = busy_ms - busy_ms % 100 if busy_ms >= 100 else max(1, busy_ms)
            if busy_ms != self._busy_ms:
                # SQLite's own wait for a lock held by another connection; no I/O.
                self._db.execute(f"PRAGMA busy_timeout = {busy_ms}")
                self._busy_ms = busy_ms
            yield self._db
        except sqlite3.OperationalError as exc:
            # Locked past the wait, or the file cannot be used at all (disk, permissions).
            name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
            raise StoreUnavailable(
                f"message ledger unavailable ({name}); retry later",
                retry_after=RETRY_AFTER_SECONDS,
            ) from exc
        finally:
            self._lock.release()

    def get(self, key: str) -> Versioned | None:
        """The record under ``key``, or None."""
        with self._connection() as db:
            row = db.execute("SELECT data, version FROM records WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        return Versioned(json.loads(row[0]), str(row[1]))

    def insert(self, key: str, data: Record) -> str:
        """Create the record; raise AlreadyExists if another writer was first."""
        text = encode_record(key, data)
        try:
            with self._connection() as db:
                db.execute("INSERT INTO records (key, data, version) VALUES (?, ?, 1)", (key, text))
        except sqlite3.IntegrityError:
            raise AlreadyExists(key) from None
        return "1"

    def replace(self, key: str, data: Record, etag: str) -> str:
        """Overwrite the record if nobody changed it since ``etag`` was read."""
        version = int(etag)
        text = encode_record(key, data)
        with self._connection() as db:
            cursor = db.execute(
                "UPDATE records SET data = ?, version = version + 1 WHERE key = ? AND version = ?",
                (text, key, version),
            )
        if cursor.rowcount != 1:
            raise StaleRecord(key)
        return str(version + 1)

    def delete(self, key: str, etag: str) -> None:
        """Remove the record if nobody changed it since ``etag`` was read."""
        with self._connection() as db:
            cursor = db.execute(
                "DELETE FROM records WHERE key = ? AND version = ?", (key, int(etag))
            )
            gone = (
                cursor.rowcount == 1
                or db.execute("SELECT 1 FROM records WHERE key = ?", (key,)).fetchone() is None
            )
        if not gone:
            raise StaleRecord(key)

    def transact(self, writes: Sequence[Write]) -> list[str]:
        """Apply every write or none (one SQLite transaction); the new etags ('' for a delete)."""
        check_grouped(writes)
        texts = [encode_record(w.key, w.data or {}) for w in writes]
        with self._connection() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                etags = [_apply(db, write, text) for write, text in zip(writes, texts, strict=True)]
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        return etags

    def scan(self, kind: str) -> Iterator[tuple[str, Versioned]]:
        """Every record of one kind (key prefix ``kind:``)."""
        prefix = f"{kind}:"
        with self._connection() as db:
            rows = db.execute(
                "SELECT key, data, version FROM records WHERE substr(key, 1, ?) = ?",
                (len(prefix), prefix),
            ).fetchall()
        for key, data, version in rows:
            yield key, Versioned(json.loads(data), str(version))

    def scan_after(self, kind: str, after: str | None, limit: int) -> list[tuple[str, Versioned]]:
        """Up to ``limit`` records of one kind in key order, after the key ``after``."""
        query = _PAGE_FROM_START if after is None else _PAGE_AFTER
        with self._lock:
            rows = self._db.execute(query, (after or f"{kind}:", f"{kind};", limit)).fetchall()
        return [(key, Versioned(json.loads(data), str(version))) for key, data, version in rows]

    def close(self) -> None:
        """Release the file."""
        with self._lock:
            self._db.close()


def _apply(db: sqlite3.Connection, write: Write, text: str) -> str:
    """One write of a transaction; its new version ('' for a delete)."""
    key = write.key
    if write.action == "insert":
        try:
            db.execute("INSERT INTO records (key, data, version) VALUES (?, ?, 1)", (key, text))
        except sqlite3.IntegrityError:
            raise AlreadyExists(key) from None
        return "1"
    if write.action == "upsert":
        if _RETURNING:
            # The new version in the same statement: one call into SQLite, not two.
            (version,) = db.execute(_UPSERT + " RETURNING version", (key, text)).fetchone()
            return str(version)
        db.execute(_UPSERT, (key, text))
    else:
        # replace and delete: the record must exist (at ``etag``, if one is named; a
        # version of -1 matches any).
        version = -1 if write.etag is None else int(write.etag)
        if write.action == "replace":
            cursor = db.execute(_REPLACE_AT, (text, key, version, version))
        else:
            cursor = db.execute(_DELETE_AT, (key, version, version))
        if cursor.rowcount != 1:
            raise StaleRecord(key)
        if write.action == "delete":
            return ""
    row = db.execute("SELECT version FROM records WHERE key = ?", (key,)).fetchone()
    return str(row[0])
