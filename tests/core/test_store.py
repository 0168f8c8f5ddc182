"""RecordStore: keyed append-only JSONL with resume; a crash mid-write is cut and reported,
damage anywhere else is an error naming file:line, never silently read."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest

from mapo.core.store import (
    DamagedLine,
    RecordStore,
    StoreError,
    atomic_write_json,
    iter_records,
    read_at,
    read_lines,
    read_lines_at,
)


def records(n: int, start: int = 0) -> list[dict]:
    return [{"key": f"k{i}", "value": "é" * i, "n": i} for i in range(start, start + n)]


def filled(path, n: int = 5) -> RecordStore:
    s = RecordStore(path)
    for r in records(n):
        s.append(r)
    return s


def test_append_is_keyed_and_survives_reopen(tmp_path):
    path = tmp_path / "r.jsonl"
    s = filled(path)
    s.append({"key": "k1", "value": "a second write of k1"})  # ignored: never a duplicate
    s.close()
    again = RecordStore(path)
    assert len(again) == 5 and "k4" in again and "k5" not in again
    again.append({"key": "k5", "n": 5})
    again.close()
    assert [r["key"] for r in iter_records(path)] == [f"k{i}" for i in range(6)]
    assert next(iter(iter_records(path)))["value"] == ""  # unicode round-trips


@pytest.mark.parametrize("cut", [1, 7, -2])
def test_torn_last_line_is_cut_and_reported(tmp_path, caplog, cut):
    path = tmp_path / "r.jsonl"
    filled(path).close()
    data = path.read_bytes()
    last_start = data.rstrip(b"\n").rfind(b"\n") + 1
    torn = data[: last_start + cut] if cut > 0 else data[:cut]  # a prefix of the last record, no newline
    path.write_bytes(torn)
    caplog.set_level(logging.WARNING)
    s = RecordStore(path)
    assert len(s) == 4 and "k4" not in s
    assert s.repaired_bytes == len(torn) - last_start
    assert f"{path}: cut {s.repaired_bytes} bytes" in caplog.text
    assert path.read_bytes() == data[:last_start]
    s.append(records(1, 4)[0])  # the redone record lands on a clean line
    s.close()
    assert [r["key"] for r in iter_records(path)] == [f"k{i}" for i in range(5)]


def test_garbage_last_line_with_newline_is_cut(tmp_path):
    path = tmp_path / "r.jsonl"
    filled(path).close()
    with open(path, "ab") as fh:
        fh.write(b"\x00\x00\x00\n")  # zeroed block after a power loss
    s = RecordStore(path)
    assert len(s) == 5 and s.repaired_bytes == 4
    s.close()


@pytest.mark.parametrize(
    "damage,reason",
    [
        (b'{"key": "k2", "n": ', "unreadable record"),
        (b"\xff\xfe not utf-8", "unreadable record"),
        (b"", "unreadable record"),  # a blank line mid-file
        (b'{"no_key": 1}', "record has no 'key'"),
        (b'["k2"]', "record has no 'key'"),
    ],
)
def test_damaged_middle_line_is_an_error_naming_file_and_line(tmp_path, damage, reason):
    path = tmp_path / "r.jsonl"
    filled(path).close()
    lines = path.read_bytes().splitlines(keepends=True)
    lines[2] = damage + b"\n"
    path.write_bytes(b"".join(lines))
    before = path.read_bytes()
    with pytest.raises(StoreError, match=rf"{path.name}:3: {reason}"):
        RecordStore(path)
    assert path.read_bytes() == before, "a damaged file must be left as it is for inspection"


def test_iter_records_skips_a_partial_last_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"key": "a"}\n{"key": "b"}\n{"key": "c", "n"')
    assert [r["key"] for r in iter_records(path)] == ["a", "b"]


def test_one_reader_for_every_jsonl_consumer(tmp_path, caplog):
    """read_lines serves the stores' readers (iter_records), mapo merge (refuses damage, with line numbers) and
    mapo report (skips damage, keeps keyless rows): one loop, one rule for torn and damaged lines."""
    path = tmp_path / "r.jsonl"
    path.write_text('{"key": "a"}\n\n{"row": 1}\n{not json\n{"key": "b"}\n{"key": "c"')
    assert [n for n, _ in read_lines(path, on_damaged="skip", keyed=False)] == [1, 3, 5]  # blank passed over, torn left
    with caplog.at_level(logging.WARNING):
        assert [r["key"] for r in iter_records(path, on_damaged="skip")] == ["a", "b"]  # keyless skipped too
    assert "r.jsonl:4: unreadable record" in caplog.text and "r.jsonl:3: not a mapo record (no key)" in caplog.text
    with pytest.raises(DamagedLine, match=r"r\.jsonl:4: unreadable record \(Expecting property name") as e:
        list(read_lines(path, on_damaged="error"))
    assert e.value.lineno == 4 and not e.value.partial
    path.write_text('{"key": "a"}\n{"key": "c"')
    with pytest.raises(DamagedLine, match=r"r\.jsonl:2: partial last record") as e:
        list(read_lines(path, on_damaged="error", torn="error"))
    assert e.value.partial
    path.write_text('{"key": "a"}\nnope\n')
    with pytest.raises(json.JSONDecodeError):  # the default: a store's reader raises the decode error itself
        list(iter_records(path))


def test_the_reader_with_offsets_serves_the_store_scan_and_the_view_index(tmp_path):
    """read_lines_at is read_lines with each line's bytes: read_at reads a line back by its start (mapo view),
    and blank="damaged" makes a blank line an unreadable one (the store's scan: a store never writes one)."""
    path = tmp_path / "r.jsonl"
    path.write_bytes('{"key": "a"}\n\n{"key": "é"}\n{"key": "c"'.encode())
    lines = list(read_lines_at(path))
    assert [(n, r["key"]) for n, _, _, r in lines] == [(1, "a"), (3, "é")]
    assert [(line.start, line.end) for line in lines] == [(0, 13), (14, 28)]
    assert [n for n, _ in read_lines(path)] == [line.lineno for line in lines]
    assert read_at(path, [lines[1].start, lines[0].start]) == [{"key": "é"}, {"key": "a"}]
    with pytest.raises(DamagedLine, match=r"r\.jsonl:2: unreadable record") as e:
        list(read_lines_at(path, on_damaged="error", blank="damaged"))
    assert (e.value.start, e.value.end) == (13, 14)


def test_empty_and_missing_files(tmp_path):
    s = RecordStore(tmp_path / "sub" / "new.jsonl")
    assert len(s) == 0
    s.close()
    (tmp_path / "empty.jsonl").write_bytes(b"")
    assert len(RecordStore(tmp_path / "empty.jsonl")) == 0


def test_atomic_write_json_leaves_no_partial_file(tmp_path):
    path = tmp_path / "manifest.json"
    atomic_write_json(path, {"a": 1})
    atomic_write_json(path, {"a": 2, "when": time})  # default=str: never a half-written file
    assert json.loads(path.read_text())["a"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


WRITER = """
import sys
from mapo.core.store import RecordStore
s = RecordStore(sys.argv[1])
i = len(s)
while True:
    s.append({"key": f"k{i}", "pad": "x" * 5000})
    i += 1
"""


@pytest.mark.timeout(300)
def test_sigkill_during_appends_loses_at_most_the_record_in_flight(tmp_path):
    """A writer killed at a random moment leaves whole records plus at most one partial line."""
    path = tmp_path / "r.jsonl"
    for _ in range(3):
        before = len(list(iter_records(path))) if path.exists() else 0
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)])
        deadline = time.monotonic() + 120  # generous: a loaded machine starts Python slowly
        while not path.exists() or path.stat().st_size < (before + 50) * 5000:
            assert time.monotonic() < deadline and proc.poll() is None, "the writer made no progress"
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        s = RecordStore(path)
        keys = [r["key"] for r in iter_records(path)]
        assert keys == [f"k{i}" for i in range(len(keys))], "records lost or duplicated mid-file"
        assert len(s) == len(keys) > before
        assert s.repaired_bytes < 5100
        s.close()
        assert os.path.getsize(path) == sum(len(json.dumps({"key": k, "pad": "x" * 5000})) + 1 for k in keys)


def test_latest_records_keeps_the_last_record_of_each_key_and_a_retried_failure_is_not_done(tmp_path):
    """The one rule of every command's retried store: a failure is not done, the record that redoes
    it supersedes it (the failure line stays as history), and readers take the last record per key."""
    from mapo.core.store import latest_records

    path = tmp_path / "judgements.jsonl"
    store = RecordStore(path, retry_failed=True)
    store.append({"key": "a", "label": None, "failure": "request rejected (HTTP 400): no system role"})
    store.append({"key": "b", "label": "tie", "failure": None})
    assert "a" not in store and "b" in store and store.failed == {"a": "request rejected (HTTP 400): no system role"}
    store.close()
    again = RecordStore(path, retry_failed=True)
    assert "a" not in again and again.failed["a"].startswith("request rejected")
    again.append({"key": "a", "label": "model_a", "failure": None})
    assert "a" in again and not again.failed and again.superseded == 1
    again.close()
    assert [r["key"] for r in iter_records(path)] == ["a", "b", "a"]  # history kept
    assert [(r["key"], r["label"]) for r in latest_records(path)] == [("b", "tie"), ("a", "model_a")]
    assert RecordStore(path, retry_failed=True).superseded == 1


def test_an_incomplete_record_is_a_result_but_not_done(tmp_path):
    """A verdict made without some of its members (a jury one of whose jurors failed) is not done in a
    retried store: a rerun redoes it (the new record supersedes it); it is not a failure."""
    path = tmp_path / "judgements.jsonl"
    store = RecordStore(path, retry_failed=True)
    store.append({"key": "u", "label": "model_a", "failure": None, "incomplete": "1 of 3 jurors failed"})
    assert "u" not in store and store.incomplete == {"u": "1 of 3 jurors failed"} and not store.failed
    store.close()
    again = RecordStore(path, retry_failed=True)
    assert "u" not in again and again.incomplete == {"u": "1 of 3 jurors failed"}
    again.append({"key": "u", "label": "model_b", "failure": None})
    assert "u" in again and not again.incomplete
    again.close()
    assert "u" in RecordStore(path, retry_failed=True)
    assert "u" in RecordStore(path)  # a store that does not retry: any record is done


def test_discard_drops_records_at_once_and_their_keys_can_be_written_again(tmp_path):
    """Derived records a redo replaces (build's rows of a selection done again): the file is replaced without
    them, the store reads it again (keys, stamp), appends go on to the new file and leave no temporary file."""
    path = tmp_path / "rows.jsonl"
    s = RecordStore(path, stamp={"by": "test"})
    for r in records(5):
        s.append(r)
    assert s.discard(lambda r: r["n"] % 2 == 1) == 2
    assert "k1" not in s and "k2" in s and len(s) == 3
    assert s.discard(lambda r: False) == 0
    s.append({"key": "k1", "n": 10})  # a dropped key is written again, once
    s.append({"key": "k2", "n": 20})  # a kept one is still done
    s.close()
    assert [(r["key"], r["n"], r["by"]) for r in iter_records(path)] == [
        ("k0", 0, "test"),
        ("k2", 2, "test"),
        ("k4", 4, "test"),
        ("k1", 10, "test"),
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl"]
