from __future__ import annotations

import asyncio
import time

import pytest

from mapo.llm.cache import ResponseCache
from mapo.llm.client import Constraint, EndpointUnavailable, LLMClient
from tests.conftest import fake_model
from tests.fake_openai import FakeServer

MSG = [{"role": "user", "content": "hello"}]


def make(server, tmp_path, **model_overrides):
    return LLMClient(
        {"m": fake_model(server, **model_overrides)}, cache=ResponseCache(tmp_path / "c.sqlite"), backoff_base_s=0.01
    )


async def test_cache_makes_a_rerun_free(fake_server, tmp_path):
    client = make(fake_server, tmp_path)
    first = await client.chat("m", MSG, role="generator")
    second = await client.chat("m", MSG, role="generator")
    assert first.text == second.text and not first.cached and second.cached
    assert fake_server.completed == 1
    # a new client on the same cache file (a resumed run) sends nothing either
    again = LLMClient({"m": fake_model(fake_server)}, cache=ResponseCache(tmp_path / "c.sqlite"))
    assert (await again.chat("m", MSG, role="generator")).cached
    assert fake_server.completed == 1
    u = client.usage[("generator", "m")]
    assert u.requests == 1 and u.cached == 1 and u.completion_tokens > 0


async def test_cache_key_separates_samples_and_constraints(fake_server, tmp_path):
    client = make(fake_server, tmp_path)
    await client.chat("m", MSG, role="r", sample=0)
    await client.chat("m", MSG, role="r", sample=1)
    await client.chat("m", MSG, role="r", constraint=Constraint(regex="x+"))
    assert fake_server.completed == 3


async def test_cache_key_ignores_transport(tmp_path):
    # the same model on a restarted server (new port) still hits the cache
    with FakeServer() as a:
        c1 = LLMClient({"m": fake_model(a)}, cache=ResponseCache(tmp_path / "c.sqlite"))
        await c1.chat("m", MSG, role="r")
    with FakeServer() as b:
        c2 = LLMClient({"m": fake_model(b, timeout_s=9.0)}, cache=ResponseCache(tmp_path / "c.sqlite"))
        assert (await c2.chat("m", MSG, role="r")).cached
        assert b.completed == 0


@pytest.mark.parametrize("fault", ["429", "500", "503", "drop", "empty", "truncated", "nonutf8"])
async def test_transient_faults_are_retried(tmp_path, fault):
    with FakeServer(faults=lambda n, req: fault if n <= 2 else None) as server:
        client = make(server, tmp_path)
        c = await client.chat("m", MSG, role="judge")
        assert c.text.startswith("Response")
        assert client.usage[("judge", "m")].retries == 2


async def test_timeout_is_retried(tmp_path):
    with FakeServer(faults=lambda n, req: "hang" if n == 1 else None, hang_s=3) as server:
        client = make(server, tmp_path, timeout_s=0.5)
        c = await client.chat("m", MSG, role="judge")
        assert c.text and client.usage[("judge", "m")].retries == 1


async def test_persistent_failure_stops_in_bounded_time(tmp_path):
    with FakeServer(faults=lambda n, req: "503") as server:
        client = make(server, tmp_path, max_retries=3)
        t0 = time.monotonic()
        with pytest.raises(EndpointUnavailable, match="'m' failed 4 attempts"):
            await client.chat("m", MSG, role="judge")
        assert time.monotonic() - t0 < 5
        assert server.n == 4


async def test_concurrency_bound_per_endpoint(tmp_path):
    peak = 0
    live = 0

    class Counting(FakeServer):
        async def _chat(self, request):
            nonlocal peak, live
            live += 1
            peak = max(peak, live)
            try:
                await asyncio.sleep(0.05)
                return await super()._chat(request)
            finally:
                live -= 1

    with Counting() as server:
        client = make(server, tmp_path, max_concurrency=3)
        await asyncio.gather(*(client.chat("m", [{"role": "user", "content": str(i)}], role="g") for i in range(20)))
        assert peak == 3


async def test_identical_concurrent_requests_are_sent_once(fake_server, tmp_path):
    client = make(fake_server, tmp_path)
    results = await asyncio.gather(*(client.chat("m", MSG, role="g") for _ in range(5)))
    assert len({r.text for r in results}) == 1
    assert fake_server.completed == 1


async def test_unreachable_endpoint_fails_the_check_naming_the_model(tmp_path):
    from mapo.core.config import ModelConfig

    client = LLMClient({"ghost": ModelConfig(served_name="x", base_url="http://127.0.0.1:9/v1", timeout_s=1)})
    with pytest.raises(EndpointUnavailable, match="'ghost'.*127.0.0.1:9"):
        await client.check(["ghost"])


async def test_api_key_is_sent(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_KEY", "s3cret")
    with FakeServer(api_key="s3cret") as server:
        client = make(server, tmp_path, api_key_env="FAKE_KEY")
        assert (await client.chat("m", MSG, role="g")).text
