"""On-disk response cache: a rerun or a resume re-sends nothing already answered.

The key hashes what determines the answer (logical model, served name, messages, sampling
parameters, constraint, sample index) and leaves transport out (base_url, timeouts,
retries): a server restarted on a new port, or a second replica, still hits the cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
import weakref
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _disk_full(e: sqlite3.Error) -> bool:
    """SQLite's "database or disk is full" (SQLITE_FULL), or an I/O error under a full disk."""
    return getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(e)


def cache_key(**parts: Any) -> str:
    """SHA-256 of the parts as canonical JSON."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


_OPEN: dict[str, weakref.WeakSet[ResponseCache]] = {}
"""The caches of this process by file: a read commits the other instances' pending writes to the same file first."""


class ResponseCache:
    """sqlite (WAL) so several processes of a sweep can share one cache file safely.

    Writes made inside a running event loop are committed together at the loop's next turn (one
    transaction for every answer that arrived in the same turn, instead of one commit per answer:
    bench/clientbound.py); :meth:`get` sees them at once, as does another cache on the same file in
    this process (its read commits them first; another process sees them after that turn),
    :meth:`flush` and :meth:`close` commit what is pending, and a write outside an event loop is
    committed before :meth:`put` returns. A failed
    commit (e.g. the disk is full) is raised by the next :meth:`put`, :meth:`flush` or :meth:`close`.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._pending: dict[str, tuple[str, str, str, float]] = {}
        """Rows written but not yet committed (key -> row), committed by :meth:`flush`."""
        self._scheduled = False
        self._error: BaseException | None = None
        self._db = self._open()
        self._peers = _OPEN.setdefault(str(self.path.resolve()), weakref.WeakSet())
        self._peers.add(self)

    def _open(self, fresh: bool = False) -> sqlite3.Connection:
        db: sqlite3.Connection | None = None
        try:
            db = sqlite3.connect(self.path, timeout=60, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, model TEXT, "
                "response TEXT NOT NULL, created REAL)"
            )
            # Batch API requests in flight: which request went out in which file and batch (mapo.llm.batch)
            db.execute(
                "CREATE TABLE IF NOT EXISTS batch_requests (key TEXT PRIMARY KEY, model TEXT, "
                "file_id TEXT NOT NULL, batch_id TEXT, created REAL)"
            )
            if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("quick_check failed")
            return db
        except sqlite3.DatabaseError as e:
            if db is not None:
                with contextlib.suppress(sqlite3.Error):
                    db.close()
            if _disk_full(e):  # not damage: a cache that cannot be written (the caller names the setting)
                raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} ({e})", str(self.path)) from None
            if fresh:  # a new, empty file fails too: not damage either
                raise OSError(errno.EIO, f"cannot open a new response cache ({e})", str(self.path)) from None
            # A cache is only a cache: set the damaged file aside (never silently read it) and start anew.
            broken = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            self.path.rename(broken)
            for suffix in ("-wal", "-shm"):
                Path(str(self.path) + suffix).unlink(missing_ok=True)
            log.warning("response cache %s is damaged (%s); moved to %s and starting empty", self.path, e, broken)
            return self._open(fresh=True)

    def get(self, key: str) -> dict | None:
        """The stored response for ``key``, or None (absent or unreadable)."""
        for other in list(self._peers):
            if other is not self and other._pending:
                other._flush_quietly()
        with self._lock:
            pending = self._pending.get(key)
            row = (
                (pending[2],)
                if pending
                else self._db.execute("SELECT response FROM responses WHERE key=?", (key,)).fetchone()
            )
        if row is None:
            return None
        try:
            return json.loads(row[0])
        except json.JSONDecodeError:
            log.warning("cache entry %s is unreadable; it will be recomputed", key[:12])
            return None

    def put(self, key: str, model: str, response: dict) -> None:
        """Store (or replace) the response for ``key``: committed at the event loop's next turn (with
        the other answers of this turn), at once outside an event loop."""
        blob = json.dumps(response, ensure_ascii=False)
        with self._lock:
            self._raise_failed_commit()
            self._pending[key] = (key, model, blob, time.time())
            if self._scheduled:
                return
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self._commit()
                return
            self._scheduled = True
        loop.call_soon(self._deferred_flush)

    def flush(self) -> None:
        """Commit every pending write now."""
        with self._lock:
            self._raise_failed_commit()
            self._commit()

    def _deferred_flush(self) -> None:
        with self._lock:
            self._scheduled = False
        self._flush_quietly()

    def _flush_quietly(self) -> None:
        with self._lock:
            try:
                self._commit()
            except sqlite3.ProgrammingError:  # closed meanwhile
                pass
            except Exception as e:  # nobody to raise it to here: the next put, flush or close raises it
                log.error("response cache %s: could not store answers: %s", self.path, e)
                self._error = e

    def _commit(self) -> None:
        """Write the pending rows in one transaction (call with the lock held); kept pending on failure."""
        if not self._pending:
            return
        rows = list(self._pending.values())
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(
                "INSERT OR REPLACE INTO responses (key, model, response, created) VALUES (?,?,?,?)", rows
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._pending.clear()

    def _raise_failed_commit(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    # ---- pending Batch API requests ----------------------------------------------------------
    def record_batch(self, model: str, file_id: str, keys: list[str]) -> None:
        """``keys`` went out in the uploaded file ``file_id`` (its batch id follows: :meth:`set_batch_id`)."""
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT OR REPLACE INTO batch_requests (key, model, file_id, batch_id, created) VALUES (?,?,?,?,?)",
                    [(k, model, file_id, None, now) for k in keys],
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def set_batch_id(self, file_id: str, batch_id: str) -> None:
        """The batch created from ``file_id``."""
        with self._lock:
            self._db.execute("UPDATE batch_requests SET batch_id=? WHERE file_id=?", (batch_id, file_id))

    def pending_batch(self, key: str) -> tuple[str, str | None] | None:
        """(file id, batch id or None) of the pending batch that carries ``key``, or None."""
        with self._lock:
            row = self._db.execute("SELECT file_id, batch_id FROM batch_requests WHERE key=?", (key,)).fetchone()
        return None if row is None else (row[0], row[1])

    def batch_keys(self, file_id: str) -> list[str]:
        """The request keys that went out in ``file_id``."""
        with self._lock:
            rows = self._db.execute("SELECT key FROM batch_requests WHERE file_id=? ORDER BY rowid", (file_id,))
            return [r[0] for r in rows.fetchall()]

    def forget_batch(self, file_id: str) -> None:
        """The batch of ``file_id`` is collected: its requests are no longer pending."""
        with self._lock:
            self._db.execute("DELETE FROM batch_requests WHERE file_id=?", (file_id,))

    def __len__(self) -> int:
        with self._lock:
            self._commit()
            return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        """Commit what is pending and close the database; safe to call twice."""
        with self._lock:
            try:
                self._raise_failed_commit()
                self._commit()
            except sqlite3.ProgrammingError:  # closed already
                pass
            finally:
                self._db.close()
