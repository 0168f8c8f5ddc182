"""What every run command shares: the client, the bounded item pool, the manifest fields."""

from __future__ import annotations

import asyncio
import platform
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import openai
from omegaconf import OmegaConf

from mapo.core.config import RunConfig, cache_dir
from mapo.llm.cache import ResponseCache
from mapo.llm.client import LLMClient
from mapo.runs.store import atomic_write_text


class RunStopped(RuntimeError):
    """The run stopped on a fault it cannot ride out; everything finished so far is saved."""


def make_client(cfg: RunConfig) -> LLMClient:
    cache = None
    if cfg.client.cache:
        cache = ResponseCache(cfg.client.cache_path or cache_dir() / "responses.sqlite")
    return LLMClient(cfg.models, cache=cache, registry=cfg.client.registry)


async def run_pool(items: Iterable[Any], worker: Callable[[Any], Awaitable[None]], width: int) -> None:
    """Run ``worker`` over ``items`` with at most ``width`` in flight; items are pulled lazily
    (memory flat), a slow item never blocks the others, and the first fatal error cancels the rest."""
    iterator = iter(items)
    lock = asyncio.Lock()

    async def lane() -> None:
        while True:
            async with lock:
                item = next(iterator, _END)
            if item is _END:
                return
            await worker(item)

    tasks = [asyncio.create_task(lane()) for _ in range(width)]
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for t in done:
            if t.exception() is not None:
                raise t.exception()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


_END = object()


def item_failure(e: Exception) -> str | None:
    """Faults that belong to one item (recorded, the run goes on); None = fatal for the run."""
    if isinstance(e, openai.BadRequestError):
        return f"request rejected: {e.message}"
    return None


def write_config(cfg: RunConfig, run_dir: Path) -> None:
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.structured(cfg)))


def models_manifest(cfg: RunConfig, names: Iterable[str]) -> dict:
    return {
        n: {
            "served_name": cfg.models[n].served_name,
            "endpoint": cfg.models[n].endpoint,
            "base_url": cfg.models[n].base_url,
        }
        for n in dict.fromkeys(names)
    }


def run_accounting(client: LLMClient, wall: float) -> dict[str, Any]:
    """The manifest fields every command reports: usage per (role, model), throughput, host."""
    return {
        "usage": client.usage_table(),
        "throughput": {
            "completion_tokens_per_s": round(client.stats.completion_tokens / wall, 2) if wall else None,
            "requests": client.stats.requests,
            "cached": client.stats.cached,
            "retries": client.stats.retries,
        },
        "host": platform.node(),
    }
