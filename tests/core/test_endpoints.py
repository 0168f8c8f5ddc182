"""mapo.core.endpoints: the JSON endpoint registry (no server needed)."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mapo.core import endpoints
from mapo.core.config import ConfigError, ModelConfig
from mapo.core.endpoints import Endpoint, EndpointNotFound, RegistryCorrupt
from mapo.llm.client import LLMClient


def _ep(
    name: str = "smollm2-135m",
    port: int = 8000,
    pid: int | None = None,
    host: str | None = None,
    key_file: str | None = None,
) -> Endpoint:
    return Endpoint(
        name=name,
        base_url=f"http://127.0.0.1:{port}/v1",
        served_name=name,
        api_key_file=key_file,
        host=host or socket.gethostname(),
        port=port,
        pid=pid,
        job_id=None,
        started_at=time.time(),
    )


def test_path_resolution(tmp_path, monkeypatch):
    assert endpoints.registry_path(tmp_path / "x.json") == tmp_path / "x.json"
    monkeypatch.setenv("MAPO_ENDPOINTS", str(tmp_path / "env.json"))
    assert endpoints.registry_path() == tmp_path / "env.json"
    monkeypatch.delenv("MAPO_ENDPOINTS")
    monkeypatch.setenv("MAPO_CACHE", str(tmp_path / "cache"))
    assert endpoints.registry_path() == tmp_path / "cache" / "endpoints.json"


def test_register_roundtrip_and_mode_0600(tmp_path):
    reg = tmp_path / "sub" / "endpoints.json"
    key = tmp_path / "k.key"
    key.write_text("s3cret\n")
    endpoints.register(_ep(port=1, key_file=str(key)), reg)
    endpoints.register(_ep(port=2), reg)
    assert stat.S_IMODE(reg.stat().st_mode) == 0o600
    got = endpoints.lookup("smollm2-135m", reg)
    assert [e.port for e in got] == [1, 2]
    assert got[0].api_key() == "s3cret" and got[1].api_key() is None
    assert "s3cret" not in reg.read_text()  # keys live in their own files only


def test_register_replaces_same_base_url(tmp_path):
    reg = tmp_path / "endpoints.json"
    endpoints.register(_ep(port=1, pid=10), reg)
    endpoints.register(_ep(port=1, pid=11), reg)
    assert [e.pid for e in endpoints.read_all(reg)] == [11]


def test_unregister(tmp_path):
    reg = tmp_path / "endpoints.json"
    endpoints.register(_ep(port=1), reg)
    endpoints.register(_ep("gemma3-270m", port=2), reg)
    endpoints.unregister("http://127.0.0.1:1/v1", reg)
    endpoints.unregister("http://127.0.0.1:999/v1", reg)  # unknown: no error
    assert [e.name for e in endpoints.read_all(reg)] == ["gemma3-270m"]


def test_lookup_error_names_model_and_file(tmp_path):
    reg = tmp_path / "endpoints.json"
    with pytest.raises(EndpointNotFound) as err:
        endpoints.lookup("llama31-8b", reg)
    assert "llama31-8b" in str(err.value) and str(reg) in str(err.value) and "serve up" in str(err.value)
    endpoints.register(_ep("gemma3-270m"), reg)
    with pytest.raises(EndpointNotFound, match="registered: gemma3-270m"):
        endpoints.lookup("llama31-8b", reg)


def test_corrupt_registry_fails_clearly(tmp_path):
    reg = tmp_path / "endpoints.json"
    reg.write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        endpoints.read_all(reg)


def test_prune_drops_dead_pids_of_this_host_only(tmp_path):
    reg = tmp_path / "endpoints.json"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    endpoints.register(_ep(port=1, pid=os.getpid()), reg)  # alive
    endpoints.register(_ep(port=2, pid=dead.pid), reg)  # dead, here
    endpoints.register(_ep(port=3, pid=dead.pid, host="some-other-node"), reg)  # cannot check
    endpoints.register(_ep(port=4, pid=None), reg)  # not managed
    assert endpoints.prune(reg) == 1
    assert sorted(e.port for e in endpoints.read_all(reg)) == [1, 3, 4]
    assert endpoints.prune(reg) == 0


def _register_many(reg: str, worker: int, count: int) -> None:
    for i in range(count):
        endpoints.register(_ep(f"m{worker}", port=10_000 + worker * 100 + i), reg)


def test_concurrent_register_from_processes_loses_nothing(tmp_path):
    reg = str(tmp_path / "endpoints.json")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_register_many, args=(reg, w, 15)) for w in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    entries = endpoints.read_all(reg)
    assert len(entries) == 6 * 15
    assert len({e.base_url for e in entries}) == 6 * 15
    json.loads(Path(reg).read_text())  # still one valid document
    assert not [p for p in Path(reg).parent.iterdir() if p.name.startswith(".endpoints.json.")]  # no temp left


# ---- start failures are one clear line (issue 13 item 7) and key files are private (item 8) ------


def test_a_corrupt_registry_is_a_config_error_naming_the_file(tmp_path):
    reg = tmp_path / "endpoints.json"
    for text in ("{not json", '{"endpoints": [{"name": "x"}]}', '{"other": []}', "[1, 2]"):
        reg.write_text(text)
        with pytest.raises(ConfigError) as err:
            endpoints.lookup("smollm2-135m", reg)
        message = str(err.value)
        assert isinstance(err.value, RegistryCorrupt) and "\n" not in message
        assert message.startswith(f"endpoint registry {reg} is corrupt (") and "fix or delete it" in message


def _client_for(reg: Path) -> LLMClient:
    model = ModelConfig(served_name="smollm2-135m", endpoint="smollm2-135m", timeout_s=2)
    return LLMClient({"smollm2-135m": model}, registry=reg)


async def test_the_client_reports_registry_problems_as_config_errors(tmp_path):
    reg = tmp_path / "endpoints.json"
    # nothing registered: the model, the file and the command that starts one
    async with _client_for(reg) as client:
        with pytest.raises(ConfigError, match=r"no endpoint registered for model 'smollm2-135m' in .*serve up"):
            await client.check(["smollm2-135m"])
    # a registered key file that is gone
    endpoints.register(_ep(port=1, key_file=str(tmp_path / "gone.key")), reg)
    async with _client_for(reg) as client:
        with pytest.raises(ConfigError) as err:
            await client.check(["smollm2-135m"])
    assert str(err.value).startswith(
        f"models.smollm2-135m: endpoint 'smollm2-135m' (http://127.0.0.1:1/v1) names the API key file "
        f"{tmp_path / 'gone.key'}, which cannot be read (No such file or directory)"
    )
    # a damaged registry
    reg.write_text("{not json")
    async with _client_for(reg) as client:
        with pytest.raises(ConfigError, match=rf"endpoint registry {reg} is corrupt"):
            await client.check(["smollm2-135m"])


def test_a_key_file_readable_by_others_is_used_with_one_warning(tmp_path, caplog):
    key = tmp_path / "open.key"
    key.write_text("s3cret\n")
    key.chmod(0o644)
    ep = _ep(key_file=str(key))
    assert ep.api_key() == "s3cret" and ep.api_key() == "s3cret"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        f"API key file {key} of endpoint smollm2-135m is readable by other users (mode 0644); chmod 600 it"
    ]
    private = tmp_path / "private.key"
    private.write_text("s3cret\n")
    private.chmod(0o600)
    caplog.clear()
    assert _ep(key_file=str(private)).api_key() == "s3cret" and not caplog.records


@pytest.mark.parametrize("problem", ["corrupt", "missing_key", "unregistered"])
def test_cli_start_failures_are_one_line_without_traceback(tmp_path, problem):
    reg = tmp_path / "endpoints.json"
    if problem == "corrupt":
        reg.write_text("{not json")
    elif problem == "missing_key":
        endpoints.register(_ep(port=9, key_file=str(tmp_path / "gone.key")), reg)
        endpoints.register(_ep("gemma3-270m", port=10, key_file=str(tmp_path / "gone.key")), reg)
    env = {**os.environ, "MAPO_CACHE": str(tmp_path / "mc"), "MAPO_ENDPOINTS": str(reg), "HF_DATASETS_OFFLINE": "1"}
    args = [sys.executable, "-m", "mapo", "build", "client.progress=off", "prompts.limit=1"]
    p = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    out = p.stdout + p.stderr
    assert p.returncode != 0 and "Traceback" not in out, out[-3000:]
    expected = {
        "corrupt": f"endpoint registry {reg} is corrupt",
        "missing_key": f"names the API key file {tmp_path / 'gone.key'}, which cannot be read",
        "unregistered": "no endpoint registered for model 'smollm2-135m'",
    }[problem]
    assert expected in out, out[-3000:]
