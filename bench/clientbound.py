"""Client-bound regime: how many chat requests a second each client gets through when the server answers at once.

On a GPU node the server answers short judge requests faster than a Python client can send them; this
bench removes the server from the picture. An instant OpenAI-compatible server (--server-procs processes
sharing one port with SO_REUSEPORT, a bare asyncio HTTP/1.1 loop, one pre-serialised answer: its CPU is
measured and shown) answers --requests distinct judge requests (the judge stage of bench/peers.py, same
prompts, every request different), --concurrency in flight, and each client runs in its own process:

  ceiling-aiohttp  aiohttp, requests JSON-encoded before the clock starts, answers read as bytes and not
                   parsed: what a Python client can do here at all (the regime's ceiling)
  ceiling-httpx    the same with httpx (connection pool = concurrency)
  raw-openai       openai.AsyncOpenAI (httpx pool = concurrency + 8, no retries), every request gathered
                   under a semaphore: what a user gets from the SDK by hand
  mapo             LLMClient + mapo.runs.runner.run_pool (as the commands run), response cache off
  mapo-cache       the same with its response cache on (a fresh sqlite file: every answer written)
  distilabel       bench/peers.py's judge worker (Pipeline + ChatGeneration on OpenAILLM), its own venv
  curator          bench/peers.py's judge worker (curator.LLM, openai backend), its own venv

Figures per run: requests/s over the client's own work (wall), client CPU per request (process CPU during
the work: time.process_time, threads included) and the whole client process tree's CPU per request
(getrusage of the finished child: start-up, imports and child processes included; distilabel runs its
steps in subprocesses), and the server's CPU over the same phase. Repetitions are interleaved (the order
alternates), and the CPU model and flags (lscpu) are recorded: on a shared machine the CPU-per-request
figures are the steadier ones.

    .venv/bin/python bench/clientbound.py --requests 4000 --reps 2      # the benchmark (bench/results)
    .venv/bin/python bench/clientbound.py --requests 400 --reps 1 --clients mapo raw-openai --out /tmp/cb
    .venv/bin/python bench/clientbound.py --profile mapo-cache --requests 4000   # cProfile of one client

Writes bench/results/clientbound.json and clientbound.md (--out).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import resource
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers  # noqa: E402  (bench/peers.py: the judge requests, the peers' workers and venvs, host_info)

CLIENTS = ("ceiling-aiohttp", "ceiling-httpx", "raw-openai", "mapo", "mapo-cache", "distilabel", "curator")
JUDGE_TEXT = (
    "### Evaluation Evidence:\nBoth answers address the question; A is more concrete.\n\n"
    "### Score Assistant A:\n8/10\n\n### Score Assistant B:\n6/10"
)

# ---------------------------------------------------------------------------------------------
# The instant server: one pre-serialised answer, keep-alive HTTP/1.1, several processes on one port.


def _answer() -> bytes:
    body = json.dumps(
        {
            "id": "chatcmpl-clientbound",
            "object": "chat.completion",
            "created": 1767225600,
            "model": "fake",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "logprobs": None,
                    "message": {"role": "assistant", "content": JUDGE_TEXT},
                }
            ],
            "usage": {"prompt_tokens": 600, "completion_tokens": 30, "total_tokens": 630},
        }
    ).encode()
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def _models() -> bytes:
    body = json.dumps({"object": "list", "data": [{"id": "fake", "object": "model", "owned_by": "bench"}]}).encode()
    return f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


def _serve(port: int, index: int, counts: Any) -> None:
    try:
        import uvloop  # a faster event loop for the server only (bench-side; the clients use asyncio's)

        uvloop.install()
    except ImportError:
        pass
    chat, models = _answer(), _models()

    class Http(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.t = transport
            self.buf = b""

        def data_received(self, data: bytes) -> None:
            buf = self.buf + data
            while True:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    break
                head = buf[:end]
                length = 0
                at = head.lower().find(b"content-length:")
                if at >= 0:
                    stop = head.find(b"\r\n", at)
                    length = int(head[at + 15 : stop if stop >= 0 else len(head)])
                if len(buf) < end + 4 + length:
                    break
                buf = buf[end + 4 + length :]
                if head.startswith(b"GET"):
                    self.t.write(models)
                else:
                    self.t.write(chat)
                    counts[index] += 1
            self.buf = buf

    async def main() -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", port))
        server = await asyncio.get_running_loop().create_server(Http, sock=sock, backlog=1024)
        await server.serve_forever()

    asyncio.run(main())


class InstantServer:
    def __init__(self, procs: int) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        ctx = multiprocessing.get_context("spawn")
        self.counts = ctx.RawArray("q", procs)
        self.procs = [ctx.Process(target=_serve, args=(self.port, i, self.counts), daemon=True) for i in range(procs)]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> InstantServer:
        for p in self.procs:
            p.start()
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise SystemExit("the instant server did not start")

    def cpu_s(self) -> float:
        """User + system CPU seconds of the server processes so far."""
        tick = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for p in self.procs:
            fields = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        return total

    def answered(self) -> int:
        return sum(self.counts)

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.join(5)


# ---------------------------------------------------------------------------------------------
# Clients (each `clientbound.py --worker NAME` in its own process). Each returns the seconds and the
# process CPU seconds of its work and the number of answers it got.


def _timed(coro_fn: Any) -> dict:
    async def go() -> dict:
        ready = await coro_fn()  # sets up, returns the timed work
        c0, t0 = time.process_time(), time.perf_counter()
        n = await ready()
        return {"work_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "answers": n}

    return asyncio.run(go())


def work_ceiling_aiohttp(spec: dict) -> dict:
    import aiohttp

    url = spec["base_url"] + "/chat/completions"
    bodies = [_encode(spec, m) for m in spec["judge"]]
    headers = {"Authorization": f"Bearer {spec['api_key']}", "Content-Type": "application/json"}

    async def setup() -> Any:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=spec["concurrency"]))
        sem = asyncio.Semaphore(spec["concurrency"])

        async def one(body: bytes) -> int:
            async with sem, session.post(url, data=body, headers=headers) as r:
                await r.read()
                return int(r.status == 200)

        async def work() -> int:
            try:
                return sum(await asyncio.gather(*(one(b) for b in bodies)))
            finally:
                await session.close()

        return work

    return _timed(setup)


def work_ceiling_httpx(spec: dict) -> dict:
    import httpx

    url = spec["base_url"] + "/chat/completions"
    bodies = [_encode(spec, m) for m in spec["judge"]]
    headers = {"Authorization": f"Bearer {spec['api_key']}", "Content-Type": "application/json"}

    async def setup() -> Any:
        limits = httpx.Limits(max_connections=spec["concurrency"], max_keepalive_connections=spec["concurrency"])
        client = httpx.AsyncClient(limits=limits, timeout=spec["timeout_s"])
        sem = asyncio.Semaphore(spec["concurrency"])

        async def one(body: bytes) -> int:
            async with sem:
                r = await client.post(url, content=body, headers=headers)
                return int(r.status_code == 200)

        async def work() -> int:
            try:
                return sum(await asyncio.gather(*(one(b) for b in bodies)))
            finally:
                await client.aclose()

        return work

    return _timed(setup)


def _encode(spec: dict, messages: list) -> bytes:
    return json.dumps(
        {"model": spec["model"], "messages": messages, "temperature": 0.0, "max_tokens": spec["max_tokens"]}
    ).encode()


def work_raw_openai(spec: dict) -> dict:
    async def setup() -> Any:
        client, call = peers._bare_calls({**spec, "max_retries": 0})

        async def one(messages: list) -> int:
            return int(bool(await call(messages)))

        async def work() -> int:
            try:
                return sum(await asyncio.gather(*(one(m) for m in spec["judge"])))
            finally:
                await client.close()

        return work

    return _timed(setup)


def _work_mapo(spec: dict, cached: bool) -> dict:
    from mapo.core.config import GenerationConfig, ModelConfig
    from mapo.llm.cache import ResponseCache
    from mapo.llm.client import LLMClient
    from mapo.runs.runner import run_pool

    os.environ["CLIENTBOUND_API_KEY"] = spec["api_key"]
    model = ModelConfig(
        served_name=spec["model"],
        base_url=spec["base_url"],
        api_key_env="CLIENTBOUND_API_KEY",
        max_concurrency=spec["concurrency"],
        timeout_s=spec["timeout_s"],
        generation=GenerationConfig(temperature=0.0, max_tokens=spec["max_tokens"], seed=None),
    )
    judge = spec["judge"]
    scratch = Path(tempfile.mkdtemp(prefix="clientbound-cache-"))

    async def setup() -> Any:
        cache = ResponseCache(scratch / "responses.sqlite") if cached else None
        client = LLMClient({"m": model}, cache=cache)
        answers = [0]

        async def one(i: int) -> None:
            text = (await client.chat("m", judge[i], role="judge")).text
            answers[0] += bool(text)

        async def work() -> int:
            async with client:
                await run_pool(range(len(judge)), one, spec["concurrency"])
            return answers[0]

        return work

    return _timed(setup)


def work_mapo(spec: dict) -> dict:
    return _work_mapo(spec, cached=False)


def work_mapo_cache(spec: dict) -> dict:
    return _work_mapo(spec, cached=True)


WORKERS = {
    "ceiling-aiohttp": work_ceiling_aiohttp,
    "ceiling-httpx": work_ceiling_httpx,
    "raw-openai": work_raw_openai,
    "mapo": work_mapo,
    "mapo-cache": work_mapo_cache,
}

# ---------------------------------------------------------------------------------------------
# Orchestrator


def run_client(
    args: argparse.Namespace, name: str, spec: dict, server: InstantServer, work: Path, pythons: dict
) -> dict:
    spec_path, result_path = work / f"{name}.spec.json", work / f"{name}.result.json"
    spec_path.write_text(json.dumps(spec))
    result_path.unlink(missing_ok=True)
    if name in peers.VENV_PEERS:
        cmd = [str(pythons[name]), str(ROOT / "bench" / "peers.py"), "--worker", name, "--stage", "judge"]
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name]
    cmd += ["--spec", str(spec_path), "--result", str(result_path)]
    env = {
        **os.environ,
        "CURATOR_CACHE_DIR": str(work / f"{name}.curator"),
        "CURATOR_DISABLE_CACHE": "1",
        "CURATOR_DISABLE_RICH_DISPLAY": "1",
        "TELEMETRY_ENABLED": "false",
        "DISTILABEL_CACHE_DIR": str(work / f"{name}.distilabel"),
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    s_cpu, s_n, load = server.cpu_s(), server.answered(), os.getloadavg()[0]
    t0 = time.perf_counter()
    log = work / f"{name}.log"
    with open(log, "w") as out:
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    process_s = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    tree_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    answered, server_cpu = server.answered() - s_n, server.cpu_s() - s_cpu
    if rc != 0 or not result_path.exists():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        print(f"[clientbound] {name} failed ({rc}); {log}:\n{tail}", file=sys.stderr, flush=True)
        return {"client": name, "error": f"exit {rc}, log {log}"}
    result = json.loads(result_path.read_text())
    n = len(spec["judge"])
    wall = result["work_s"]
    row = {
        "client": name,
        "requests": n,
        "server_answered": answered,
        "wall_s": round(wall, 3),
        "req_per_s": round(n / wall, 1),
        "cpu_ms_per_req": round(1000 * result["cpu_s"] / n, 3) if result.get("cpu_s") is not None else None,
        "tree_cpu_ms_per_req": round(1000 * tree_cpu / n, 3),
        "process_s": round(process_s, 2),
        "server_cpu_s": round(server_cpu, 2),
        "server_cpu_share": round(server_cpu / wall, 2) if wall else None,
        "loadavg_1m_before": round(load, 2),
    }
    if name in peers.VENV_PEERS:  # their work_s includes building the pipeline; cpu_s the whole run call
        row["note"] = "work_s = the tool's run call (pipeline set-up included); cpu = that call's process CPU"
    return row


def summarize(rows: list[dict]) -> dict:
    out: dict[str, dict] = {}
    ok = [r for r in rows if "error" not in r]
    for name in dict.fromkeys(r["client"] for r in ok):
        mine = [r for r in ok if r["client"] == name]
        rates = [r["req_per_s"] for r in mine]
        cpu = [r["cpu_ms_per_req"] for r in mine if r["cpu_ms_per_req"] is not None]
        out[name] = {
            "req_per_s": rates,
            "req_per_s_mean": round(statistics.mean(rates), 1),
            "cpu_ms_per_req": cpu,
            "cpu_ms_per_req_mean": round(statistics.mean(cpu), 3) if cpu else None,
            "tree_cpu_ms_per_req_mean": round(statistics.mean(r["tree_cpu_ms_per_req"] for r in mine), 3),
            "server_cpu_share_max": max(r["server_cpu_share"] or 0 for r in mine),
        }
    # ratios inside one repetition (same machine state), then their spread over the repetitions
    for name, s in out.items():
        for ref in ("raw-openai", "ceiling-aiohttp"):
            ratios = []
            for rep in {r["rep"] for r in ok}:
                a = next((r for r in ok if r["rep"] == rep and r["client"] == name), None)
                b = next((r for r in ok if r["rep"] == rep and r["client"] == ref), None)
                if a and b:
                    ratios.append(round(a["req_per_s"] / b["req_per_s"], 3))
            s[f"over_{ref}"] = ratios
    return out


def _spread(values: list[float], digits: int = 1) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def markdown(res: dict) -> str:
    host = res["host"]
    lines = [
        "# Client-bound benchmark (bench/clientbound.py)",
        "",
        f"`{res['command']}`",
        "",
        f"CPU: {host.get('cpu_model')} ({host.get('cpus')} cores; flags: "
        f"{' '.join(f for f in host.get('flags', []) if f.startswith(('avx', 'amx', 'sse4')))}); "
        f"{res['settings']['requests']} distinct judge requests, {res['settings']['concurrency']} in flight, "
        f"{res['settings']['reps']} repetitions interleaved; instant server: {res['settings']['server_procs']} "
        "processes, one pre-serialised answer. Mean (min–max) over the repetitions.",
        "",
        "| client | requests/s | client CPU ms/request (work) | process tree CPU ms/request | "
        "/ raw-openai (same rep) | / ceiling-aiohttp | server CPU share (max) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in res["summary"].items():
        lines.append(
            f"| {name} | {_spread(s['req_per_s'])} | {_spread(s['cpu_ms_per_req'], 2)} | "
            f"{s['tree_cpu_ms_per_req_mean']:.2f} | {_spread(s['over_raw-openai'], 2)} | "
            f"{_spread(s['over_ceiling-aiohttp'], 2)} | {s['server_cpu_share_max']:.2f} |"
        )
    lines += [
        "",
        "Client CPU (work) = the client process's CPU during its own work (time.process_time); process tree "
        "CPU = the whole client process with start-up, imports and child processes (getrusage). Server CPU "
        "share = server CPU seconds / client wall seconds (1.0 = one core busy): below the core count the "
        "server is not the limit.",
    ]
    if res.get("note"):
        lines += ["", f"Note: {res['note']}"]
    errors = [r for r in res["rows"] if "error" in r]
    for r in errors:
        lines.append(f"- {r['client']} rep {r.get('rep')}: {r['error']}")
    return "\n".join(lines) + "\n"


def orchestrate(args: argparse.Namespace) -> dict:
    work = Path(tempfile.mkdtemp(prefix="clientbound-"))
    pythons: dict[str, Path] = {}
    versions: dict[str, Any] = {}
    venvs = Path(args.venvs).expanduser() if args.venvs else peers.cache_root() / "bench-venvs"
    for name in args.clients:
        if name in peers.VENV_PEERS:
            pythons[name] = peers.ensure_venv(name, venvs)
            versions[name] = peers.peer_versions(pythons[name], name)
    import importlib.metadata as md

    for dist in ("mapo", "openai", "httpx", "aiohttp"):
        versions[dist] = md.version(dist)
    server = InstantServer(args.server_procs).start()
    try:
        spec, source = _spec(args, server.base_url)
        rows: list[dict] = []
        for rep in range(args.reps):
            order = list(args.clients) if rep % 2 == 0 else list(reversed(args.clients))
            for name in order:
                print(f"[clientbound] rep {rep + 1}/{args.reps}: {name}", flush=True)
                row = run_client(args, name, spec, server, work, pythons)
                row["rep"] = rep + 1
                print("[clientbound]   " + json.dumps(row), flush=True)
                rows.append(row)
    finally:
        server.stop()
    return {
        "command": " ".join(shlex.quote(a) for a in [".venv/bin/python", "bench/clientbound.py", *sys.argv[1:]]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": {k: v for k, v in peers.host_info().items() if k != "lscpu"},
        "versions": versions,
        "settings": {
            "requests": args.requests,
            "concurrency": args.concurrency,
            "reps": args.reps,
            "max_tokens": args.max_tokens,
            "server_procs": args.server_procs,
            "pairs_source": source,
        },
        "rows": rows,
        "summary": summarize(rows),
        "note": args.note,
    }


def _spec(args: argparse.Namespace, base_url: str) -> tuple[dict, str]:
    """peers.py's judge-stage spec for ``args.requests`` distinct requests against ``base_url`` (and its source)."""
    spec_args = argparse.Namespace(
        pairs_file=None,
        pairs=args.requests,
        prompts=0,
        served_name="fake",
        max_tokens=args.max_tokens,
        concurrency=args.concurrency,
        distilabel_batch=None,
        request_timeout=args.request_timeout,
    )
    return peers.build_spec(spec_args, base_url, "clientbound")


def profile(args: argparse.Namespace) -> None:
    """One client under cProfile against the instant server; the top functions by own and cumulative time."""
    import cProfile
    import pstats

    server = InstantServer(args.server_procs).start()
    try:
        spec, _ = _spec(args, server.base_url)
        prof = cProfile.Profile()
        prof.enable()
        result = WORKERS[args.profile](spec)
        prof.disable()
    finally:
        server.stop()
    print(json.dumps(result))
    out = Path(args.out) / f"profile-{args.profile}.pstats"
    out.parent.mkdir(parents=True, exist_ok=True)
    prof.dump_stats(out)
    stats = pstats.Stats(prof)
    stats.sort_stats("tottime").print_stats(35)
    stats.sort_stats("cumulative").print_stats(45)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=4000, help="distinct judge requests per client")
    ap.add_argument("--concurrency", type=int, default=64, help="requests in flight at most, for every client")
    ap.add_argument("--reps", type=int, default=2, help="repetitions, interleaved (the order alternates)")
    ap.add_argument("--clients", nargs="+", default=list(CLIENTS), choices=CLIENTS)
    ap.add_argument("--server-procs", type=int, default=2, help="processes of the instant server")
    ap.add_argument("--max-tokens", type=int, default=192)
    ap.add_argument("--request-timeout", type=float, default=600)
    ap.add_argument("--venvs", default=None, help="where the peers' venvs live (default: <cache>/bench-venvs)")
    ap.add_argument("--note", default=None, help="a line for the report (e.g. what else the machine was doing)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"), help="results folder")
    ap.add_argument("--profile", choices=sorted(WORKERS), help="cProfile this client in-process instead")
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main() -> None:
    args = parse_args()
    if args.worker:
        spec = json.loads(Path(args.spec).read_text())
        Path(args.result).write_text(json.dumps(WORKERS[args.worker](spec)))
        return
    if args.profile:
        profile(args)
        return
    res = orchestrate(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "clientbound.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / "clientbound.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
