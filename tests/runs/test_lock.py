"""RunLock: two runs writing one output folder are refused with a clear message, never
interleaved; a crashed holder's lock is freed by the kernel, so a rerun is never blocked."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from mapo.core.store import RunLock, RunLocked

HOLDER = """
import sys, time
from mapo.core.store import RunLock
with RunLock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_second_lock_on_a_folder_is_refused_naming_pid_and_folder(tmp_path):
    with RunLock(tmp_path / "run"):
        with (
            pytest.raises(
                RunLocked,
                match=rf"another mapo run \(pid {os.getpid()}\) is writing to {tmp_path / 'run'}; "
                r"wait for it or use another output_dir",
            ),
            RunLock(tmp_path / "run"),
        ):
            pass
        with RunLock(tmp_path / "other"):  # another folder is independent
            pass
    with RunLock(tmp_path / "run"):  # released on exit
        pass


def test_lock_is_released_when_the_body_raises(tmp_path):
    with pytest.raises(ZeroDivisionError), RunLock(tmp_path):
        _ = 1 / 0
    with RunLock(tmp_path):
        pass


def _hold_in_subprocess(folder):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_lock_held_by_another_process_then_freed_by_its_sigkill(tmp_path):
    proc = _hold_in_subprocess(tmp_path)
    try:
        with pytest.raises(RunLocked, match=rf"pid {proc.pid}\)"), RunLock(tmp_path):
            pass
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    t0 = time.monotonic()
    with RunLock(tmp_path):  # a dead holder never blocks the rerun (no stale-lock cleanup needed)
        assert (tmp_path / ".lock").read_text() == str(os.getpid())
    assert time.monotonic() - t0 < 1


def test_many_processes_racing_for_one_folder_exactly_one_wins(tmp_path):
    racer = """
import os, sys, time
from mapo.core.store import RunLock, RunLocked
print("ready", flush=True)
while not os.path.exists(sys.argv[2]):  # all start at once
    time.sleep(0.001)
try:
    with RunLock(sys.argv[1]):
        time.sleep(3.0)
    print("won")
except RunLocked as e:
    print("refused", e)
"""
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", racer, str(tmp_path / "run"), str(go)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    go.touch()
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert sum(o.startswith("won") for o in outs) == 1, outs
    assert all(o.startswith("refused another mapo run") for o in outs if not o.startswith("won"))


def test_a_lock_that_cannot_be_created_names_its_path(tmp_path):
    """A folder where the lock file goes (or a full disk): a WriteFailed naming the lock (the CLI's exit 2,
    one line), not an internal error."""
    from mapo.core.store import LockFailed, WriteFailed

    (tmp_path / "run" / ".lock").mkdir(parents=True)
    expected = rf"cannot create the run lock {tmp_path / 'run' / '.lock'}: Is a directory"
    with pytest.raises(LockFailed, match=expected) as e, RunLock(tmp_path / "run"):
        pass
    assert isinstance(e.value, WriteFailed)
