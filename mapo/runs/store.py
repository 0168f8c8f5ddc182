"""Append-only JSONL record stores with resume, and a run lock.

Every record carries a ``key``; a rerun skips keys already present. A crash during a write
leaves at most one partial last line: it is detected on open and cut off (reported), never
read as data. Damage anywhere else is an error naming the file and line.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class StoreError(RuntimeError):
    pass


class RunLocked(RuntimeError):
    pass


class RecordStore:
    """One JSONL file of records keyed by ``record["key"]``."""

    def __init__(self, path: str | Path, *, fsync: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self.repaired_bytes = 0
        self._keys: set[str] = set()
        self._scan()
        self._fh = open(self.path, "a", encoding="utf-8")

    def _scan(self) -> None:
        if not self.path.exists():
            return
        good_end = 0
        with open(self.path, "rb") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.endswith(b"\n"):
                    break  # partial last line from a crash mid-write
                try:
                    record = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    rest = fh.read()
                    if rest.strip():
                        raise StoreError(
                            f"{self.path}:{lineno}: unreadable record ({e}); the file is damaged mid-way"
                        ) from None
                    break  # the last line is garbage: a torn write
                if not isinstance(record, dict) or not isinstance(record.get("key"), str):
                    raise StoreError(f"{self.path}:{lineno}: record has no 'key' (not a mapo record file?)")
                self._keys.add(record["key"])
                good_end += len(line)
        size = self.path.stat().st_size
        if size > good_end:
            self.repaired_bytes = size - good_end
            log.warning(
                "%s: cut %d bytes of a partial last record (crash during write)", self.path, self.repaired_bytes
            )
            with open(self.path, "r+b") as fh:
                fh.truncate(good_end)

    def __contains__(self, key: str) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def append(self, record: dict[str, Any]) -> None:
        key = record["key"]
        if key in self._keys:
            return  # resumed work that was already saved: never a duplicate
        self._fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._fh.flush()
        if self.fsync:
            os.fsync(self._fh.fileno())
        self._keys.add(key)

    def close(self) -> None:
        self._fh.close()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter_records(self.path)


def iter_records(path: str | Path) -> Iterator[dict[str, Any]]:
    """Stream records from a JSONL file (memory flat in the number of records)."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.endswith("\n"):
                yield json.loads(line)


class RunLock:
    """An exclusive lock on a run folder: two runs writing one folder are refused, not interleaved."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / ".lock"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = None

    def __enter__(self) -> RunLock:
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise RunLocked(
                f"another mapo run (pid {holder}) is writing to {self.path.parent}; wait for it or use another output_dir"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh
        return self

    def __exit__(self, *exc) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")
