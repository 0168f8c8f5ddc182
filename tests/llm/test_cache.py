"""The response cache's writes: one transaction per turn of the event loop, never lost, errors never swallowed."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from mapo.llm.cache import ResponseCache


def _committed(path) -> int:
    """Rows another process would see (a separate connection)."""
    with sqlite3.connect(path) as db:
        return db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]


async def test_answers_of_one_turn_are_committed_together_at_the_next(tmp_path):
    path = tmp_path / "c.sqlite"
    cache = ResponseCache(path)
    statements: list[str] = []
    cache._db.set_trace_callback(statements.append)
    for i in range(50):
        cache.put(f"k{i}", "m", {"text": f"answer {i}"})
    assert cache.get("k7") == {"text": "answer 7"}  # pending writes are read at once
    assert _committed(path) == 0
    await asyncio.sleep(0)  # the loop turns: one transaction for all 50
    assert _committed(path) == 50
    assert sum(s.startswith("COMMIT") for s in statements) == 1
    cache.close()


async def test_close_commits_what_is_pending_and_another_cache_in_this_process_sees_it_at_once(tmp_path):
    path = tmp_path / "c.sqlite"
    first = ResponseCache(path)
    first.put("k", "m", {"text": "a"})
    second = ResponseCache(path)  # e.g. a resumed run in the same process
    assert second.get("k") == {"text": "a"}
    first.put("k2", "m", {"text": "b"})
    first.close()
    assert _committed(path) == 2
    second.close()


def test_outside_an_event_loop_a_write_is_committed_before_put_returns(tmp_path):
    cache = ResponseCache(tmp_path / "c.sqlite")
    cache.put("k", "m", {"text": "a"})
    assert _committed(tmp_path / "c.sqlite") == 1
    cache.close()


async def test_a_failed_commit_is_raised_by_the_next_put(tmp_path):
    cache = ResponseCache(tmp_path / "c.sqlite")
    cache._db.execute(
        "CREATE TRIGGER full BEFORE INSERT ON responses BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
    )
    cache.put("k", "m", {"text": "a"})
    await asyncio.sleep(0)
    with pytest.raises(sqlite3.IntegrityError, match="disk is full"):
        cache.put("k2", "m", {"text": "b"})
    assert cache.get("k") == {"text": "a"}  # kept pending, still served
    cache._db.execute("DROP TRIGGER full")
    cache.flush()  # the pending answer is written; the put that raised stored nothing (as a failed commit)
    assert _committed(tmp_path / "c.sqlite") == 1 and cache.get("k2") is None
    cache.close()


def _failing_connect(error: sqlite3.Error):
    real = sqlite3.connect

    class Failing:
        def __init__(self, db):
            self.db = db

        def execute(self, sql, *args):
            raise error

        def close(self):
            self.db.close()

    return lambda *a, **k: Failing(real(*a, **k))


def test_a_full_disk_is_not_a_damaged_cache(tmp_path, monkeypatch):
    """SQLite's "database or disk is full" at open: an OSError (ENOSPC) naming the file, which the run
    reports naming client.cache_path; the file is not set aside as damaged. Before: set aside, a new one
    failed the same way, again and again until a RecursionError (an internal error, `.corrupt-*` left)."""
    import errno

    path = tmp_path / "c.sqlite"
    ResponseCache(path).close()
    monkeypatch.setattr(sqlite3, "connect", _failing_connect(sqlite3.OperationalError("database or disk is full")))
    with pytest.raises(OSError, match="No space left on device") as info:
        ResponseCache(path)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    assert path.exists() and not list(tmp_path.glob("*.corrupt-*"))


def test_a_cache_that_stays_unreadable_after_being_set_aside_is_an_error_not_a_loop(tmp_path, monkeypatch):
    path = tmp_path / "c.sqlite"
    path.write_bytes(b"not a database")
    monkeypatch.setattr(sqlite3, "connect", _failing_connect(sqlite3.DatabaseError("file is not a database")))
    with pytest.raises(OSError, match="cannot open a new response cache"):
        ResponseCache(path)
    assert len(list(tmp_path.glob("*.corrupt-*"))) == 1  # the damaged one, set aside once
