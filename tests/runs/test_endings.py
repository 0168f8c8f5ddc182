"""One vocabulary for how a run ends (mapo.core.types.RunStatus): complete / stopped / interrupted /
failed, for every command: the item commands through ``execute``, ``mapo train`` through
``execute_local`` (tests/training/test_train.py sends a real training SIGINT), ``mapo merge``."""

from __future__ import annotations

import ast
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from mapo.cli.app import COMMANDS
from mapo.core.config import ConfigError
from mapo.core.types import RUNNING, RunStatus
from mapo.runs.runner import (
    LocalCommand,
    Manifest,
    RunFailed,
    RunInterrupted,
    RunStopped,
    execute_local,
)
from tests.conftest import REPO


class Toy(LocalCommand):
    """A blocking command whose work does ``action`` after it has started its manifest."""

    name = "toy"

    def __init__(self, run_dir: Path, action: Any) -> None:
        super().__init__(run_dir)
        self.action = action

    def work(self, manifest: Manifest) -> dict[str, Any]:
        manifest.write(command=self.name, status=RUNNING, output_dir=str(self.run_dir))
        assert json.loads((self.run_dir / "manifest.json").read_text())["status"] == "running"
        self.action()
        return {"answer": 42}


def _raise(e: BaseException):
    def action() -> None:
        raise e

    return action


def _signal(sig: signal.Signals):
    def action() -> None:
        os.kill(os.getpid(), sig)
        time.sleep(30)  # a blocking step: the signal must end it at once, not after

    return action


@pytest.mark.parametrize(
    "action,status,raised,detail",
    [
        (lambda: None, "complete", None, None),
        (_signal(signal.SIGINT), "interrupted", RunInterrupted, "interrupted by SIGINT"),
        (_signal(signal.SIGTERM), "interrupted", RunInterrupted, "interrupted by SIGTERM"),
        (_raise(RunStopped("disk on fire")), "stopped", RunStopped, "disk on fire"),
        (_raise(ConfigError("trl: no such key")), "stopped", ConfigError, "config error: trl: no such key"),
        (_raise(RuntimeError("a bug")), "failed", RunFailed, "a bug"),
    ],
    ids=["complete", "SIGINT", "SIGTERM", "stopped", "config-error", "failed"],
)
def test_a_local_command_ends_with_one_of_the_four_words(tmp_path, action, status, raised, detail):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    t0 = time.monotonic()
    if raised is None:
        manifest = execute_local(Toy(tmp_path / "run", action))
        assert manifest is not None and manifest["answer"] == 42
    else:
        with pytest.raises(raised) as e:
            execute_local(Toy(tmp_path / "run", action))
        if raised is RunInterrupted:
            assert "rerun the same command to resume" in str(e.value)
    assert time.monotonic() - t0 < 10  # a signal does not wait for the blocking step
    m = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert m["status"] == status and m["status"] in set(RunStatus)
    assert "wall" in m["timings_s"]
    if status == "failed":
        assert m["error"]["type"] == "RuntimeError" and m["error"]["message"] == detail
    elif detail is not None:
        assert m["reason"] == detail
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    assert not (tmp_path / "run" / ".lock").exists() or _unlocked(tmp_path / "run")


def _unlocked(run_dir: Path) -> bool:
    from mapo.core.store import RunLock

    with RunLock(run_dir):
        return True


def test_an_error_before_the_run_started_leaves_the_last_manifest_alone(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text('{"status": "complete"}')

    class Refused(LocalCommand):
        name = "toy"

        def work(self, manifest: Manifest) -> dict[str, Any]:
            raise ConfigError("holds checkpoints of another training")

    with pytest.raises(ConfigError, match="another training"):
        execute_local(Refused(run))
    assert json.loads((run / "manifest.json").read_text()) == {"status": "complete"}


def _status_literals(path: Path) -> list[tuple[int, str]]:
    """String constants a module gives a ``status`` (keyword ``status=`` or key ``"status"``)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.keyword) and node.arg == "status" and isinstance(node.value, ast.Constant):
            out.append((node.value.lineno, node.value.value))
        if isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values, strict=True):
                if isinstance(k, ast.Constant) and k.value == "status" and isinstance(v, ast.Constant):
                    out.append((v.lineno, v.value))
    return out


def test_every_command_writes_only_the_run_status_words():
    """No command module spells an ending of its own (mapo train once wrote "stopped" on Ctrl-C)."""
    modules = {c.target.split(":")[0] for c in COMMANDS.values()} | {"mapo.runs.runner"}
    words = {str(s) for s in RunStatus} | {RUNNING}
    found = {}
    for module in sorted(modules):
        path = REPO / (module.replace(".", "/") + ".py")
        found[module] = _status_literals(path)
        bad = [(line, value) for line, value in found[module] if value not in words]
        assert not bad, f"{path}: status values outside RunStatus: {bad}"
    assert found["mapo.runs.shard"], "the scan reads the status literals (mapo merge writes one)"
    assert {"train", "merge", "summary", "wait"} <= set(COMMANDS)


def test_a_local_command_refuses_a_folder_holding_another_commands_run(tmp_path):
    """`mapo train hydra.run.dir=<a build folder>`: before, training started there and wrote its config.yaml and
    manifest.json over the build's (the dataset's provenance lost). Now refused before anything is written."""
    run = tmp_path / "run"
    run.mkdir()
    build_manifest = '{"command": "build", "status": "complete"}'
    (run / "manifest.json").write_text(build_manifest)
    (run / "config.yaml").write_text("build: config\n")
    worked = []

    class Train(LocalCommand):
        name = "train"

        def work(self, manifest: Manifest) -> dict[str, Any]:
            worked.append(1)
            return {}

    with pytest.raises(ConfigError, match=rf"{run} holds a `mapo build` run.*another run_name or hydra.run.dir"):
        execute_local(Train(run))
    assert not worked and (run / "manifest.json").read_text() == build_manifest
    assert (run / "config.yaml").read_text() == "build: config\n" and not (run / ".lock").exists()


async def test_a_run_command_refuses_a_folder_holding_a_training(tmp_path):
    """`mapo build hydra.run.dir=<a train folder>` (which has no fingerprint.json to compare): refused naming the
    command, before any request or file (before: the build wrote its records, config and manifest there)."""
    from mapo.runs.build import build
    from tests.fake_openai import FakeServer
    from tests.runs.test_faults import run_config

    run = tmp_path / "run"
    run.mkdir()
    train_manifest = '{"command": "train", "status": "complete"}'
    (run / "manifest.json").write_text(train_manifest)
    with FakeServer() as server:
        with pytest.raises(ConfigError, match=rf"{run} holds a `mapo train` run"):
            await build(run_config(tmp_path, server))
        assert server.n == 0
    assert (run / "manifest.json").read_text() == train_manifest
    assert sorted(p.name for p in run.iterdir()) == ["manifest.json"]
