"""Throughput: mapo's pipeline stages against the server's own ceiling, in one run.

For each stage (judge = combined scoring over pairs; feedback = the loop, N=3, over prompts;
debate) on the same vLLM server and the same requests:

  pipeline    the stage through mapo (cache off), as users run it
  ceiling     the stage's recorded requests replayed raw at saturation (all in flight at once,
              no dependencies between them): what the server can do with this token mix
  sequential  the same requests one at a time, like the original authors' code

Generated tokens/s for each, pipeline/ceiling and pipeline/sequential, the client's peak RSS,
and vLLM's prefix-cache hit rate from /metrics. Every phase starts from a cold prefix cache
(POST /reset_prefix_cache, which needs VLLM_SERVER_DEV_MODE=1: the bench starts its own
server that way unless --registry names a running one), and the ceiling gets the same
in-flight bound as the pipeline (--concurrency), so the ratios compare like with like.

    python bench/throughput.py --out bench/results
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mapo.core import endpoints  # noqa: E402
from mapo.core.config import DebateConfig, FeedbackConfig, JudgeConfig, RunConfig  # noqa: E402
from mapo.data.sources import iter_prompts  # noqa: E402
from mapo.generation.feedback import FeedbackLoop  # noqa: E402
from mapo.judging.judge import Judge  # noqa: E402
from mapo.llm.client import LLMClient  # noqa: E402
from mapo.runs.runner import run_pool  # noqa: E402


@dataclass
class Recorded:
    model: str
    messages: list
    extra: dict
    gen: dict


@dataclass
class Recorder:
    """Wraps LLMClient.chat to keep each request the stage sent (for the replays)."""

    client: LLMClient
    requests: list[Recorded] = field(default_factory=list)

    def install(self) -> None:
        inner = self.client.chat

        async def chat(model, messages, *, role, constraint=None, overrides=None, sample=0):
            c = await inner(model, messages, role=role, constraint=constraint, overrides=overrides, sample=sample)
            m = self.client._configs[model]
            gen = {
                "temperature": m.generation.temperature,
                "max_tokens": m.generation.max_tokens,
                "seed": m.generation.seed,
            }
            self.requests.append(
                Recorded(model, [dict(x) for x in messages], constraint.request_fields() if constraint else {}, gen)
            )
            return c

        self.client.chat = chat  # type: ignore[method-assign]


def load_config(registry: str) -> RunConfig:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from mapo.core.config import REPO_ROOT, register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose("build", overrides=[f"client.registry={registry}", "output_dir=/tmp/unused"])
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


def endpoints_available(name: str, registry: str) -> bool:
    try:
        return bool(endpoints.lookup(name, registry))
    except Exception:
        return False


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def replay(cfg: RunConfig, registry: str, reqs: list[Recorded], concurrency: int) -> tuple[int, float]:
    """Send the requests raw (plain openai client, no mapo); returns (completion tokens, seconds)."""
    clients = {}
    for name in {r.model for r in reqs}:
        ep = endpoints.lookup(cfg.models[name].endpoint, registry)[0]
        clients[name] = (
            openai.AsyncOpenAI(
                base_url=ep.base_url,
                api_key=ep.api_key() or "EMPTY",
                max_retries=3,
                timeout=600,
                http_client=httpx.AsyncClient(limits=httpx.Limits(max_connections=concurrency + 8)),
            ),
            cfg.models[name].served_name,
        )
    sem = asyncio.Semaphore(concurrency)
    tokens = 0

    async def one(r: Recorded) -> None:
        nonlocal tokens
        client, served = clients[r.model]
        async with sem:
            resp = await client.chat.completions.create(
                model=served, messages=r.messages, extra_body=r.extra or None, **r.gen
            )
        tokens += resp.usage.completion_tokens

    t0 = time.perf_counter()
    await asyncio.gather(*(one(r) for r in reqs))
    return tokens, time.perf_counter() - t0


async def prefix_cache_hit_rate(cfg: RunConfig, registry: str, model: str) -> float | None:
    ep = endpoints.lookup(cfg.models[model].endpoint, registry)[0]
    url = ep.base_url.removesuffix("/v1") + "/metrics"
    async with httpx.AsyncClient() as c:
        text = (await c.get(url, headers={"Authorization": f"Bearer {ep.api_key()}"})).text
    vals = {}
    for line in text.splitlines():
        for name in ("vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total"):
            if line.startswith(name):
                vals[name] = vals.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    q = vals.get("vllm:prefix_cache_queries_total")
    return vals.get("vllm:prefix_cache_hits_total", 0.0) / q if q else None


async def reset_prefix_cache(cfg: RunConfig, registry: str, models: set[str]) -> None:
    for model in models:
        for ep in endpoints.lookup(cfg.models[model].endpoint, registry):
            async with httpx.AsyncClient() as c:
                r = await c.post(
                    ep.base_url.removesuffix("/v1") + "/reset_prefix_cache",
                    headers={"Authorization": f"Bearer {ep.api_key()}"},
                )
                if r.status_code != 200:
                    print(
                        f"warning: could not reset the prefix cache of {model} ({r.status_code}); "
                        "start the server with VLLM_SERVER_DEV_MODE=1",
                        file=sys.stderr,
                    )


async def stage(name: str, cfg: RunConfig, registry: str, run, seq_sample: int, concurrency: int) -> dict:
    served = {m for m, c in cfg.models.items() if c.endpoint and endpoints_available(c.endpoint, registry)}
    await reset_prefix_cache(cfg, registry, served)
    client = LLMClient(cfg.models, cache=None, registry=registry)
    rec = Recorder(client)
    rec.install()
    t0 = time.perf_counter()
    await run(client)
    wall = time.perf_counter() - t0
    tokens = client.stats.completion_tokens
    await client.aclose()
    pipeline_tps = tokens / wall
    await reset_prefix_cache(cfg, registry, served)
    c_tokens, c_wall = await replay(cfg, registry, rec.requests, concurrency=concurrency)
    s_reqs = rec.requests[:seq_sample]
    await reset_prefix_cache(cfg, registry, served)
    s_tokens, s_wall = await replay(cfg, registry, s_reqs, concurrency=1)
    out = {
        "stage": name,
        "requests": len(rec.requests),
        "pipeline": {"tokens": tokens, "seconds": round(wall, 2), "tok_per_s": round(pipeline_tps, 1)},
        "ceiling": {"tokens": c_tokens, "seconds": round(c_wall, 2), "tok_per_s": round(c_tokens / c_wall, 1)},
        "sequential": {
            "requests": len(s_reqs),
            "tokens": s_tokens,
            "seconds": round(s_wall, 2),
            "tok_per_s": round(s_tokens / s_wall, 1),
        },
    }
    out["pipeline_over_ceiling"] = round(pipeline_tps / out["ceiling"]["tok_per_s"], 3)
    out["pipeline_over_sequential"] = round(pipeline_tps / out["sequential"]["tok_per_s"], 2)
    print(json.dumps(out), flush=True)
    return out


async def main(args: argparse.Namespace) -> dict:
    cfg = load_config(args.registry)
    model = args.model
    for m in cfg.models.values():
        m.max_concurrency = args.concurrency
    prompts = [p.prompt for p in iter_prompts(cfg.prompts.__class__(source="builtin"))]
    pairs = [
        (
            prompts[i % len(prompts)],
            f"Answer {i}: " + prompts[(i + 1) % len(prompts)],
            f"Reply {i}: " + prompts[(i + 2) % len(prompts)],
        )
        for i in range(args.pairs)
    ]

    async def judge_stage(client):
        judge = Judge(client, model, JudgeConfig(strategy="combined", scale=10))
        await run_pool(pairs, lambda p: judge.judge_pair(*p), args.concurrency)

    async def feedback_stage(client):
        loop = FeedbackLoop(client, model, [args.reviewer or model], FeedbackConfig(iterations=3))
        qs = [prompts[i % len(prompts)] + ("" if i < len(prompts) else f" (variant {i})") for i in range(args.prompts)]
        await run_pool(qs, loop.run, args.concurrency)

    async def debate_stage(client):
        from mapo.judging.debate import Debate

        debate = Debate(client, [model], DebateConfig(rounds=1))
        await run_pool(pairs[: args.debates], lambda p: debate.judge_pair(*p), args.concurrency)

    from mapo.serving.cpu import cpu_info

    # machines differ (bfloat16 native or emulated, AMX or not): every figure names its CPU
    results = {"model": model, "concurrency": args.concurrency, "cpu": cpu_info(), "stages": []}
    for name, fn in (("judge", judge_stage), ("feedback", feedback_stage), ("debate", debate_stage)):
        if name in args.stages:
            results["stages"].append(await stage(name, cfg, args.registry, fn, args.sequential, args.concurrency))
    results["client_peak_rss_mb"] = round(peak_rss_mb(), 1)
    results["prefix_cache_hit_rate"] = await prefix_cache_hit_rate(cfg, args.registry, model)
    return results


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = [s["stage"] for s in results["stages"]]
    kinds = ("sequential", "pipeline", "ceiling")
    fig, ax = plt.subplots(figsize=(7, 3.5))
    w = 0.25
    for k, kind in enumerate(kinds):
        ax.bar(
            [i + (k - 1) * w for i in range(len(stages))],
            [s[kind]["tok_per_s"] for s in results["stages"]],
            w,
            label=kind,
        )
    ax.set_xticks(range(len(stages)), stages)
    ax.set_ylabel("generated tokens / s")
    ax.set_title(f"mapo throughput on {results['model']} (vLLM)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def start_server(model: str) -> tuple[str, list[str]]:
    """Our own server (dev mode for the prefix-cache reset) in a private registry."""
    registry = str(Path(tempfile.mkdtemp(prefix="mapo-bench-")) / "endpoints.json")
    cmd = [sys.executable, "-m", "serve", "up", "--model", model, "--registry", registry]
    env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1"}
    subprocess.run(cmd, check=True, env=env, cwd=Path(__file__).resolve().parents[1])
    return registry, [sys.executable, "-m", "serve", "down", "--model", model, "--registry", registry]


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--registry", default=None, help="use running servers from this registry (default: start one)")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--reviewer", default=None, help="reviewer model for the feedback stage (default: --model)")
    ap.add_argument("--pairs", type=int, default=48)
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--debates", type=int, default=8)
    ap.add_argument(
        "--concurrency", type=int, default=64, help="in-flight bound for the pipeline and the ceiling alike"
    )
    ap.add_argument("--sequential", type=int, default=12, help="requests replayed one at a time")
    ap.add_argument("--stages", nargs="+", default=["judge", "feedback", "debate"])
    ap.add_argument("--out", default="bench/results")
    a = ap.parse_args()
    stop = None
    if a.registry is None:
        a.registry, stop = start_server(a.model)
    try:
        res = asyncio.run(main(a))
    finally:
        if stop:
            subprocess.run(stop, cwd=Path(__file__).resolve().parents[1])
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "throughput.json").write_text(json.dumps(res, indent=2) + "\n")
    plot(res, out / "throughput.png")
    print(json.dumps(res, indent=2))
