from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time

import pytest

from mapo.core.config import ModelConfig
from mapo.llm.cache import ResponseCache
from mapo.llm.client import (
    BadReply,
    BudgetExceeded,
    Constraint,
    EndpointUnavailable,
    ItemFault,
    LLMClient,
    ModelNotFound,
    QuotaExhausted,
    RequestRejected,
    RunHalt,
    UnencodableText,
)
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


async def test_a_model_penalty_is_sent_and_keyed_and_unset_keeps_the_old_key(tmp_path):
    from mapo.core.config import GenerationConfig
    from mapo.llm.cache import cache_key

    bodies: list[dict] = []

    def spy(req):
        bodies.append(req)
        return "ok"

    with FakeServer(responder=spy) as server:
        plain = LLMClient({"m": fake_model(server)}, cache=ResponseCache(tmp_path / "c.sqlite"))
        c = await plain.chat("m", MSG, role="r")
        # the key of a request without penalties is the key mapo computed before they existed
        old = {"temperature": 0.0, "max_tokens": 64, "top_p": 1.0, "seed": 0, "stop": None}
        assert c.cache_key == cache_key(model="m", served="fake", messages=MSG, params=old, constraint=None, sample=0)
        penalised = fake_model(server, generation=GenerationConfig(max_tokens=64, repetition_penalty=1.2))
        again = LLMClient({"m": penalised}, cache=ResponseCache(tmp_path / "c.sqlite"))
        assert not (await again.chat("m", MSG, role="r")).cached  # another sampling: not the cached answer
    assert "repetition_penalty" not in bodies[0] and bodies[1]["repetition_penalty"] == 1.2


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
    client = LLMClient({"ghost": ModelConfig(served_name="x", base_url="http://127.0.0.1:9/v1", timeout_s=1)})
    with pytest.raises(EndpointUnavailable, match="'ghost'.*127.0.0.1:9"):
        await client.check(["ghost"])


async def test_api_key_is_sent(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_KEY", "s3cret")
    with FakeServer(api_key="s3cret") as server:
        client = make(server, tmp_path, api_key_env="FAKE_KEY")
        assert (await client.chat("m", MSG, role="g")).text


# ---- logprobs (seam 3) --------------------------------------------------------------------


class LogprobServer(FakeServer):
    """The fake server, plus OpenAI-shaped ``logprobs`` when a request asks for them."""

    async def _chat(self, request):
        from aiohttp import web

        resp = await super()._chat(request)
        body = await request.json()
        payload = json.loads(resp.body)
        if body.get("logprobs"):
            n = body["top_logprobs"]
            tokens = payload["choices"][0]["message"]["content"].split()[:3]
            payload["choices"][0]["logprobs"] = {
                "content": [
                    {
                        "token": tok,
                        "logprob": -0.1,
                        "bytes": None,
                        "top_logprobs": [
                            {"token": tok if k == 0 else f"{tok}~{k}", "logprob": -0.1 - k, "bytes": None}
                            for k in range(n)
                        ],
                    }
                    for tok in tokens
                ]
            }
        return web.json_response(payload)


async def test_top_logprobs_are_requested_returned_and_cached(tmp_path):
    with LogprobServer() as server:
        async with make(server, tmp_path) as client:
            plain = await client.chat("m", MSG, role="judge")
            assert plain.top_logprobs is None
            first = await client.chat("m", MSG, role="judge", top_logprobs=2)
            assert server.completed == 2  # top_logprobs is part of the cache key
            assert first.top_logprobs is not None and len(first.top_logprobs) == 3
            tok = first.text.split()[0]
            assert first.top_logprobs[0] == {tok: -0.1, f"{tok}~1": -1.1}
            again = await client.chat("m", MSG, role="judge", top_logprobs=2)
            assert again.cached and again.top_logprobs == first.top_logprobs and server.completed == 2
            other_n = await client.chat("m", MSG, role="judge", top_logprobs=3)
            assert not other_n.cached and len(other_n.top_logprobs[0]) == 3


async def test_top_logprobs_none_when_the_server_sends_none(fake_server, tmp_path):
    async with make(fake_server, tmp_path) as client:
        c = await client.chat("m", MSG, role="judge", top_logprobs=5)
        assert c.top_logprobs is None
        assert (await client.chat("m", MSG, role="judge", top_logprobs=5)).cached


# ---- lifetime (seam 4) ---------------------------------------------------------------------


async def test_async_with_closes_http_clients_and_cache(fake_server, tmp_path):
    async with make(fake_server, tmp_path) as client:
        await client.chat("m", MSG, role="g")
        http = client._models["m"].replicas[0].client
    assert http.is_closed()
    with pytest.raises(sqlite3.ProgrammingError):  # the cache is closed too
        len(client.cache)
    await client.aclose()  # a second close is harmless


# ---- a total deadline per attempt (issue 13 item 3) -------------------------------------------


async def test_a_dripping_server_cannot_hold_a_request_past_its_timeout(tmp_path):
    """A server that sends one byte every 0.2 s never trips the gap-between-bytes timeout; the
    per-attempt deadline must still end each attempt after timeout_s."""
    body = b'{"id": "x", "choices": []}' + b" " * 2000

    async def drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
            writer.write(f"Content-Length: {len(body)}\r\n\r\n".encode())
            for i in range(len(body)):
                writer.write(body[i : i + 1])
                await writer.drain()
                await asyncio.sleep(0.2)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(drip, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        cfg = ModelConfig(served_name="x", base_url=f"http://127.0.0.1:{port}/v1", timeout_s=1.0, max_retries=1)
        async with LLMClient({"m": cfg}, backoff_base_s=0.01) as client:
            t0 = time.monotonic()
            with pytest.raises(
                EndpointUnavailable, match=r"failed 2 attempts.*: timed out: no complete answer within timeout_s=1 s$"
            ):
                await asyncio.wait_for(client.chat("m", MSG, role="g"), timeout=20)
            assert time.monotonic() - t0 < 5
    finally:
        server.close()


# ---- logs (issue 17 item 4) -----------------------------------------------------------------


async def test_no_log_line_per_http_request_at_info(fake_server, tmp_path, caplog):
    caplog.set_level(logging.INFO)  # the CLI's default level
    async with make(fake_server, tmp_path) as client:
        for i in range(3):
            await client.chat("m", [{"role": "user", "content": str(i)}], role="g")
    assert fake_server.completed == 3
    client_side = [r for r in caplog.records if not r.name.startswith("aiohttp")]  # not the fake server's log
    assert [r.getMessage() for r in client_side if "HTTP" in r.getMessage()] == []


# ---- text mapo cannot encode (issue 13 item 5) --------------------------------------------------


async def test_a_prompt_with_a_lone_surrogate_is_refused_unsent(fake_server, tmp_path):
    async with make(fake_server, tmp_path) as client:
        with pytest.raises(UnencodableText, match=r"message 1 \(user\).*lone surrogate at character 5"):
            await client.chat(
                "m", [{"role": "system", "content": "ok"}, {"role": "user", "content": "Say \ud800"}], role="g"
            )
        assert fake_server.n == 0 and client.usage[("g", "m")].retries == 0
        assert isinstance(UnencodableText("x"), ItemFault) and not isinstance(UnencodableText("x"), RunHalt)


async def test_a_reply_with_a_lone_surrogate_fails_the_item_without_retries(tmp_path):
    replies = iter(["bad \ud800 reply", "fine reply"])
    with FakeServer(responder=lambda req: next(replies)) as server:
        async with make(server, tmp_path) as client:
            with pytest.raises(BadReply, match=r"model 'm' replied with text that is not valid Unicode"):
                await client.chat("m", MSG, role="judge")
            assert server.n == 1  # not retried as if the transport had failed
            u = client.usage[("judge", "m")]
            assert u.retries == 0 and u.failures == 1
            # nothing was cached: the same request asks again (and gets the good reply)
            assert (await client.chat("m", MSG, role="judge")).text == "fine reply"


# ---- cost and budget (issue 17 item 5) -------------------------------------------------------------


def priced(server, tmp_path, budget_usd=None, **overrides):
    # $1000 per million output tokens = $0.001 a token; max_tokens 64 -> at most $0.064 a request
    model = fake_model(server, price_in_per_mtok=0.0, price_out_per_mtok=1000.0, **overrides)
    return LLMClient(
        {"m": model, "free": fake_model(server)},
        cache=ResponseCache(tmp_path / "c.sqlite"),
        backoff_base_s=0.01,
        budget_usd=budget_usd,
    )


async def test_cost_per_role_from_the_model_prices(fake_server, tmp_path):
    async with priced(fake_server, tmp_path) as client:
        a = await client.chat("m", MSG, role="judge")
        await client.chat("m", MSG, role="judge")  # cached: free
        b = await client.chat("m", [{"role": "user", "content": "other"}], role="generator")
        await client.chat("free", MSG, role="judge", sample=1)
        rows = {(r["role"], r["model"]): r for r in client.usage_table()}
        assert rows[("judge", "m")]["cost_usd"] == pytest.approx(a.completion_tokens * 0.001)
        assert rows[("generator", "m")]["cost_usd"] == pytest.approx(b.completion_tokens * 0.001)
        assert rows[("judge", "free")]["cost_usd"] is None  # no price: unknown, not zero
        assert client.cost_usd() == pytest.approx((a.completion_tokens + b.completion_tokens) * 0.001)
        json.dumps(client.usage_table())


async def test_the_budget_stops_before_the_request_that_could_exceed_it(fake_server, tmp_path):
    async with priced(fake_server, tmp_path, budget_usd=0.069) as client:
        first = await client.chat("m", [{"role": "user", "content": "one"}], role="g")
        second = await client.chat("m", [{"role": "user", "content": "two"}], role="g")
        spent = client.cost_usd()
        assert spent == pytest.approx((first.completion_tokens + second.completion_tokens) * 0.001)
        # spent + a worst case of 64 tokens ($0.064) > $0.069: the third is never sent
        with pytest.raises(BudgetExceeded, match=r"client\.budget_usd=0\.069 would be exceeded"):
            await client.chat("m", [{"role": "user", "content": "three"}], role="g")
        assert fake_server.n == 2 and client.cost_usd() == spent
        assert isinstance(BudgetExceeded("x"), RunHalt) and not isinstance(BudgetExceeded("x"), EndpointUnavailable)
        # what is cached costs nothing and is still served; unpriced models do not count
        assert (await client.chat("m", [{"role": "user", "content": "one"}], role="g")).cached
        assert (await client.chat("free", [{"role": "user", "content": "three"}], role="g")).text


async def test_the_budget_counts_requests_in_flight(tmp_path):
    with FakeServer(latency_s=0.3) as server:
        async with priced(server, tmp_path, budget_usd=0.1) as client:
            results = await asyncio.gather(
                *(client.chat("m", [{"role": "user", "content": str(i)}], role="g") for i in range(4)),
                return_exceptions=True,
            )
        # one worst case ($0.064) fits in $0.1, a second in flight at the same time would not
        assert sum(isinstance(r, BudgetExceeded) for r in results) == 3
        assert server.n == 1


async def test_a_prompt_longer_than_the_budget_is_refused(fake_server, tmp_path):
    client = priced(fake_server, tmp_path, budget_usd=1.0)
    client._configs["m"].price_in_per_mtok = 1_000_000.0  # $1 a token: 8 characters ~ 2 tokens ~ $2
    async with client:
        with pytest.raises(BudgetExceeded, match="may cost up to"):
            await client.chat("m", [{"role": "user", "content": "8 chars!"}], role="g")
        assert fake_server.n == 0


@pytest.mark.parametrize(
    ("fault", "error", "text"),
    [
        ((404, {"error": {"message": "The model `fake` does not exist."}}), ModelNotFound, "does not exist"),
        ((400, {"error": {"message": "model 'fake' not found, try pulling it"}}), ModelNotFound, "not found"),
        (
            (429, {"error": {"message": "You exceeded your current quota", "code": "insufficient_quota"}}),
            QuotaExhausted,
            "exceeded your current quota",
        ),
        (
            (400, {"error": {"message": "This model's maximum context length is 2048 tokens."}}),
            RequestRejected,
            r"request rejected \(HTTP 400\): This model's maximum context length",
        ),
        ((413, "Request Entity Too Large"), RequestRejected, r"\(HTTP 413\): Request Entity Too Large"),
        (
            (422, {"detail": [{"loc": ["body", "messages"], "msg": "field required"}]}),
            RequestRejected,
            "field required",
        ),
    ],
    ids=["404-model", "400-model", "429-quota", "400-context", "413-text", "422-fastapi"],
)
async def test_http_errors_are_classified_by_meaning_and_keep_the_server_text(fault, error, text):
    """An item's fault (the request) or the run's (model not served, quota) by what the server says;
    none is retried, and the server's text is in the message."""
    with FakeServer(faults=lambda n, body: fault) as server:
        async with LLMClient({"m": fake_model(server, max_retries=3)}, backoff_base_s=0.01) as client:
            with pytest.raises(error, match=text):
                await client.chat("m", [{"role": "user", "content": "hi"}], role="generator")
        assert server.n == 1, "retried"


def test_the_scrubber_removes_registered_keys_and_bearer_values(caplog):
    from mapo.core import secrets

    key = "sk-scrub-" + "x1" * 10
    secrets.register(key)
    secrets.register("EMPTY")  # too short to be a secret: ordinary words stay
    assert secrets.scrub(f"echo {key} and Authorization: Bearer other-token-123") == (
        "echo [redacted] and Authorization: Bearer [redacted]"
    )
    assert secrets.scrub("Bearer abc", bearer=False) == "Bearer abc" and secrets.scrub("EMPTY") == "EMPTY"
    assert secrets.scrub_value({"a": [f"k={key}"], "n": 1}) == {"a": ["k=[redacted]"], "n": 1}
    caplog.set_level(logging.INFO)
    try:
        raise RuntimeError(f"server said {key}")
    except RuntimeError:
        logging.getLogger("mapo.test").exception("failed with %s", key)
    assert key not in caplog.text and caplog.text.count("[redacted]") >= 2
