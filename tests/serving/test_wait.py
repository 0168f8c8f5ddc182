"""`mapo wait` (mapo/serving/wait.py): a job waits for the servers named in the endpoint registry.

Against the fake OpenAI-compatible server: an entry counts only when its server answers
``GET /models`` with the served name; a stale entry (its server gone) does not.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from mapo.cli.app import main as mapo_main
from mapo.core import endpoints
from mapo.serving import wait


def _entry(name: str, base_url: str, served: str = "fake") -> endpoints.Endpoint:
    port = int(base_url.rsplit(":", 1)[1].split("/")[0])
    return endpoints.Endpoint(name, base_url, served, None, socket.gethostname(), port, None, None, time.time())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_mapo_wait_returns_once_the_named_server_answers(fake_server, tmp_path):
    registry = tmp_path / "endpoints.json"
    endpoints.register(_entry("m1", fake_server.base_url), registry)
    with pytest.raises(SystemExit) as done:
        mapo_main(["wait", "--model", "m1", "--registry", str(registry), "--timeout", "10"])
    assert done.value.code == 0


def test_a_stale_or_missing_entry_times_out_naming_the_model(fake_server, tmp_path, caplog):
    registry = tmp_path / "endpoints.json"
    endpoints.register(_entry("dead", f"http://127.0.0.1:{_free_port()}/v1"), registry)  # nothing listens there
    endpoints.register(_entry("other", fake_server.base_url, served="another-name"), registry)  # answers, not it
    t0 = time.monotonic()
    assert wait.main(["--model", "dead,other,absent", "--registry", str(registry), "--timeout", "1"]) == 1
    assert time.monotonic() - t0 < 10
    assert "no answering endpoint for dead, other, absent" in caplog.text


def test_wait_gives_up_when_the_awaited_process_has_ended(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    t0 = time.monotonic()
    missing = wait.wait_for(["m1"], timeout=60, registry=str(tmp_path / "none.json"), poll_s=0.1, pid=gone.pid)
    assert missing == ["m1"] and time.monotonic() - t0 < 10


def test_the_old_spelling_still_runs(tmp_path):
    """slurm scripts of older checkouts call `python -m mapo.serving.wait`."""
    done = subprocess.run(
        [sys.executable, "-m", "mapo.serving.wait", "--model", "m1", "--timeout", "0"],
        env={**os.environ, "MAPO_ENDPOINTS": str(tmp_path / "none.json")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and "no answering endpoint for m1" in done.stderr
