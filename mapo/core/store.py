"""Append-only JSONL record stores with resume, a run lock and atomic file writes.

Every record carries a ``key``; a rerun skips keys already present. In a store opened with
``retry_failed=True`` a record whose ``failure`` is set does not make its key done: a rerun does
the item again and its new record supersedes the failure (the failure line stays, as history;
readers take the last record of a key: :func:`latest_records`). A record marked ``incomplete``
(a verdict made without some of its members, e.g. a jury one of whose jurors failed) is not done
either: it counts as a result, not a failure, until a rerun redoes it. The rule is the same for every
command (build's selections, evaluate's and winrate's judgements). A crash during a write
leaves at most one partial last line: it is detected on open and cut off (reported), never
read as data. Damage anywhere else is an error naming the file and line. A write that fails
(a full disk) is undone before the error is raised, and the error names the file: the store
and the folder stay resumable, and no temporary file is left behind. Derived records that a redo
replaces (build's DPO/KTO rows of a selection done again) are dropped with :meth:`RecordStore.discard`,
which replaces the file at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, NamedTuple

from mapo.core.secrets import scrub

log = logging.getLogger(__name__)


class StoreError(RuntimeError):
    """A record file that cannot be used as it is (damaged mid-way, not a mapo record file)."""


class RunLocked(RuntimeError):
    """Another run holds the folder's lock."""


class WriteFailed(OSError):
    """Writing a run file failed (e.g. ``ENOSPC``, disk full); ``filename`` names the file and
    nothing partial of this write is left in it."""

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}"


class LockFailed(WriteFailed):
    """The run lock file could not be created or written (a folder in its place, a full disk)."""

    def __str__(self) -> str:
        return (
            f"cannot create the run lock {self.filename}: {self.strerror}; "
            "the run folder (output_dir, hydra.run.dir) must be a writable folder with free space"
        )


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class RecordStore:
    """One JSONL file of records keyed by ``record["key"]``.

    ``stamp`` (e.g. ``{"config_fingerprint": ...}``) is added to every record appended, so a
    record names what produced it.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        fsync: bool = False,
        stamp: dict[str, Any] | None = None,
        retry_failed: bool = False,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self.stamp = dict(stamp or {})
        self.retry_failed = retry_failed
        self.repaired_bytes = 0
        self._failed: WriteFailed | None = None
        self._load()

    def _load(self) -> None:
        """Read the file's keys (cutting a torn last line) and open it for appending."""
        self._keys: set[str] = set()
        self.failed: dict[str, str] = {}
        """Keys whose last record is a failure (``retry_failed``) -> that failure: not done, a rerun retries them."""
        self.incomplete: dict[str, str] = {}
        """Keys whose last record is ``incomplete`` (``retry_failed``) -> why: a result, but not done."""
        self.superseded = 0
        """Failure records followed by a later record of their key (retried failures, kept as history)."""
        self._end = 0
        self._scan()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)

    def _scan(self) -> None:
        if not self.path.exists():
            return
        good_end = 0
        try:  # the one reader; a blank line counts as damage here (a store never writes one)
            for line in read_lines_at(self.path, on_damaged="error", blank="damaged"):
                if not isinstance(line.record, dict) or not isinstance(line.record.get("key"), str):
                    raise StoreError(f"{self.path}:{line.lineno}: record has no 'key' (not a mapo record file?)")
                self._note(line.record)
                good_end = line.end
        except DamagedLine as e:
            with open(self.path, "rb") as fh:
                fh.seek(e.end)
                if fh.read().strip():
                    raise StoreError(f"{e}; the file is damaged mid-way") from None
            # else the last line is garbage: a torn write, cut below
        self._end = good_end
        size = self.path.stat().st_size
        if size > good_end:
            self.repaired_bytes = size - good_end
            log.warning(
                "%s: cut %d bytes of a partial last record (crash during write)", self.path, self.repaired_bytes
            )
            with open(self.path, "r+b") as fh:
                fh.truncate(good_end)

    def _note(self, record: dict[str, Any]) -> None:
        key = record["key"]
        if key in self.failed:
            del self.failed[key]
            self.superseded += 1
        self.incomplete.pop(key, None)
        if self.retry_failed and record.get("failure"):
            self.failed[key] = str(record["failure"])
        elif self.retry_failed and record.get("incomplete"):
            self.incomplete[key] = str(record["incomplete"])
        self._keys.add(key)

    def __contains__(self, key: str) -> bool:
        """Whether ``key`` is done (a failure or an incomplete record of a ``retry_failed`` store is not)."""
        return key in self._keys and key not in self.failed and key not in self.incomplete

    def __len__(self) -> int:
        """Keys with a record (done or failed)."""
        return len(self._keys)

    def append(self, record: dict[str, Any]) -> None:
        """Write ``record`` as one line (once per key: a resumed record already saved is skipped).

        A failed write (disk full) is cut back off the file, so it never leaves a partial line
        mid-file; the store then refuses further writes with the same :class:`WriteFailed`.
        """
        key = record["key"]
        if key in self:
            return  # resumed work that was already saved: never a duplicate
        if self._failed is not None:
            raise self._failed
        # API keys never reach a record file, whatever text a server or an exception put in it
        data = (scrub(json.dumps({**record, **self.stamp}, ensure_ascii=False), bearer=False) + "\n").encode("utf-8")
        try:
            _write_all(self._fd, data)
            if self.fsync:
                os.fsync(self._fd)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._end)  # freeing the partial line needs no space
            self._failed = WriteFailed(e.errno, e.strerror, str(self.path))
            raise self._failed from e
        self._end += len(data)
        self._note(record)

    def discard(self, where: Callable[[dict[str, Any]], bool]) -> int:
        """Drop the records ``where`` picks: the file is rewritten without them and replaced at once (a crash
        leaves the old file or the new one, never a mix), then read again. For derived records that a redo
        replaces (build's DPO/KTO rows of a selection done again); returns how many were dropped."""
        if self._failed is not None:
            raise self._failed
        tmp = self.path.with_name(f".{self.path.name}.discard-{os.getpid()}")
        dropped = 0
        try:
            with open(self.path, "rb") as src, open(tmp, "wb") as dst:
                # the one reader, as the open scan read it (that scan cut a torn last line); kept lines are copied
                for line in read_lines_at(self.path, on_damaged="error", blank="damaged"):
                    if where(line.record):
                        dropped += 1
                    else:
                        src.seek(line.start)
                        dst.write(src.read(line.end - line.start))
                if dropped and self.fsync:
                    dst.flush()
                    os.fsync(dst.fileno())
            if dropped:
                os.replace(tmp, self.path)
        except OSError as e:
            raise WriteFailed(e.errno, e.strerror, str(self.path)) from e
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
        if dropped:
            self.close()  # its descriptor writes to the replaced file
            self._load()
        return dropped

    def close(self) -> None:
        """Close the file (safe to call twice)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter_records(self.path)


class DamagedLine(StoreError):
    """A line of a record file that a reader asked to refuse (``on_damaged="error"``, ``torn="error"``):
    ``partial`` (a last line without its newline) or not JSON; ``str()`` names the file and line, ``start`` and
    ``end`` are its byte offsets, ``detail`` the JSON decoder's message."""

    def __init__(
        self,
        path: str | Path,
        lineno: int,
        why: str,
        *,
        partial: bool = False,
        start: int = 0,
        end: int = 0,
        detail: str = "",
    ) -> None:
        super().__init__(f"{path}:{lineno}: {why}")
        self.path, self.lineno, self.partial = Path(path), lineno, partial
        self.start, self.end, self.detail = start, end, detail


class Line(NamedTuple):
    """One record line of a JSONL file: its number, its bytes ``[start, end)`` in the file, its record."""

    lineno: int
    start: int
    end: int
    record: Any


def read_lines_at(
    path: str | Path,
    *,
    on_damaged: str = "raise",
    damaged: list[int] | None = None,
    quiet: bool = False,
    keyed: bool = True,
    torn: str = "skip",
    blank: str = "skip",
) -> Iterator[Line]:
    """The one JSONL reader: a :class:`Line` (line number, byte offsets, record) for each line, streamed (memory
    flat in the number of records; :func:`read_lines` without the offsets is what most readers want, ``mapo view``
    indexes a file by them and :func:`read_at` reads them back). Blank lines are passed over (``blank="damaged"``:
    a blank line is an unreadable one, as a record store sees it: it never writes one). A partial last line (a crash
    mid-write) is left out (``torn="skip"``) or refused (``"error"``: :class:`DamagedLine`, e.g. ``mapo merge`` of a
    shard still being written). A line that is not JSON raises its decode error (``on_damaged="raise"``), raises
    :class:`DamagedLine` (``"error"``), or is skipped with a warning naming the file and line (``"skip"``, for
    readers that should show what they can, such as ``mapo reparse`` and ``mapo report``; skipped line numbers are
    appended to ``damaged``; ``quiet``: without the warning). With ``"skip"``, a line that is not a JSON object is
    skipped too, and so is one without a string ``key`` unless ``keyed=False`` (dataset rows, metrics)."""
    with open(path, "rb") as fh:
        end = 0
        for lineno, raw in enumerate(fh, 1):
            start, end = end, end + len(raw)
            if not raw.endswith(b"\n"):
                if torn == "error" and raw.strip():
                    raise DamagedLine(path, lineno, "partial last record", partial=True, start=start, end=end)
                continue
            if not raw.strip() and blank == "skip":
                continue
            try:
                record = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                if on_damaged == "error":
                    detail = str(getattr(e, "msg", e))
                    why = f"unreadable record ({detail})"
                    raise DamagedLine(path, lineno, why, start=start, end=end, detail=detail) from None
                if on_damaged != "skip":
                    raise
                if not quiet:
                    log.warning("%s:%d: unreadable record (%s); skipped", path, lineno, e)
                if damaged is not None:
                    damaged.append(lineno)
                continue
            if on_damaged == "skip" and not (
                isinstance(record, dict) and (not keyed or isinstance(record.get("key"), str))
            ):
                if not quiet:
                    log.warning(
                        "%s:%d: not a mapo record (%s); skipped", path, lineno, "no key" if keyed else "not an object"
                    )
                if damaged is not None:
                    damaged.append(lineno)
                continue
            yield Line(lineno, start, end, record)


def read_lines(path: str | Path, **kwargs: Any) -> Iterator[tuple[int, Any]]:
    """``(line number, record)`` of each line: :func:`read_lines_at` without the offsets (same options); stores,
    datasets, ``mapo merge``, ``mapo report`` and reparse read through it."""
    for line in read_lines_at(path, **kwargs):
        yield line.lineno, line.record


def read_at(path: str | Path, starts: Iterable[int]) -> list[Any]:
    """The records that start at the byte offsets ``starts`` (:attr:`Line.start` from :func:`read_lines_at`),
    in that order: one item's records read again without reading the file."""
    out = []
    with open(path, "rb") as fh:
        for start in starts:
            fh.seek(start)
            out.append(json.loads(fh.readline()))
    return out


def iter_records(path: str | Path, **kwargs: Any) -> Iterator[dict[str, Any]]:
    """The records of a JSONL file, streamed: :func:`read_lines` without the line numbers (same options)."""
    for _, record in read_lines(path, **kwargs):
        yield record


def latest_records(path: str | Path, **kwargs: Any) -> Iterator[dict[str, Any]]:
    """The records of a JSONL file, only the last record of each key (a retried failure is superseded
    by the record that redid it), in file order; ``kwargs`` go to :func:`iter_records`. Two passes
    over the file, so memory holds the keys, not the records. Every reader of a record file that
    counts or tabulates uses this."""
    last: dict[Any, int] = {}
    for n, record in enumerate(iter_records(path, **kwargs)):
        last[_record_key(record, n)] = n
    again = {**kwargs, "damaged": None, "quiet": True}  # the first pass has warned and listed damage
    for n, record in enumerate(iter_records(path, **again)):
        if last.get(_record_key(record, n)) == n:
            yield record


def _record_key(record: Any, n: int) -> Any:
    key = record.get("key") if isinstance(record, dict) else None
    return key if isinstance(key, str) else (n,)  # a line without a key is kept as it is


class RunLock:
    """An exclusive lock on a run folder: two runs writing one folder are refused, not interleaved."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / ".lock"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[str] | None = None

    def __enter__(self) -> RunLock:
        try:
            fh = open(self.path, "a+")
        except OSError as e:  # a folder in its place, a full disk: the run cannot start, and says where
            raise LockFailed(e.errno, e.strerror, str(self.path)) from None
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise RunLocked(
                f"another mapo run (pid {holder}) is writing to {self.path.parent}; wait for it or use another output_dir"
            ) from None
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(str(os.getpid()))
            fh.flush()
        except OSError as e:
            with contextlib.suppress(OSError):
                fcntl.flock(fh, fcntl.LOCK_UN)
                fh.close()
            raise LockFailed(e.errno, e.strerror, str(self.path)) from None
        self._fh = fh
        return self

    def __exit__(self, *exc) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()


def atomic_write_text(path: str | Path, text: str) -> None:
    """Replace ``path`` with ``text`` all at once: readers see the old file or the new one. On any
    error the temporary file is removed; an OS error is a :class:`WriteFailed` naming ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    data = scrub(text, bearer=False).encode(
        "utf-8"
    )  # before the file exists: text that cannot be encoded leaves nothing
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(e, OSError) and not isinstance(e, WriteFailed):
            raise WriteFailed(e.errno, e.strerror, str(path)) from e
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """:func:`atomic_write_text` of ``obj`` as indented JSON."""
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")
