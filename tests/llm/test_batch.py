"""The OpenAI Batch API path of the client (mapo.llm.batch) against the fake server's Batch API."""

from __future__ import annotations

import asyncio
import json

import pytest

from mapo.core.config import BatchConfig, ClientConfig, ConfigError, ModelConfig, RunConfig
from mapo.llm.cache import ResponseCache
from mapo.llm.client import BatchFailed, BatchRequestRejected, LLMClient, RunHalt
from tests.conftest import fake_model
from tests.fake_openai import FakeServer, default_responder


def batch_model(server: FakeServer, **batch):
    return fake_model(
        server,
        batch=BatchConfig(enabled=True, flush_s=0.05, poll_s=0.02, **batch),
        price_in_per_mtok=2.0,
        price_out_per_mtok=8.0,
    )


def client(server: FakeServer, tmp_path, **batch) -> LLMClient:
    return LLMClient(
        {"m": batch_model(server, **batch)}, cache=ResponseCache(tmp_path / "c.sqlite"), backoff_base_s=0.01
    )


def ask(i: int) -> list[dict]:
    return [{"role": "user", "content": f"question {i}"}]


async def test_concurrent_requests_leave_as_one_batch_and_cost_half(fake_server, tmp_path):
    async with client(fake_server, tmp_path) as c:
        replies = await asyncio.gather(*(c.chat("m", ask(i), role="judge") for i in range(12)))
        assert [r.text for r in replies] == [
            default_responder({"model": "fake", "messages": ask(i)}) for i in range(12)
        ]
        assert fake_server.batches_created == 1 and fake_server.completed == 0  # no online request
        (row,) = c.usage_table()
        full = (row["prompt_tokens"] * 2.0 + row["completion_tokens"] * 8.0) / 1e6
        assert row["requests"] == 12 and row["cost_usd"] == pytest.approx(full / 2, abs=1e-6)
        # answered requests are cached and the journal is empty: a rerun sends nothing
        assert (await c.chat("m", ask(0), role="judge")).cached
        assert c.cache is not None and c.cache.pending_batch(replies[0].cache_key) is None
    assert fake_server.batches_created == 1


async def test_a_killed_run_waits_for_its_batch_instead_of_paying_twice(tmp_path):
    with FakeServer(batch_hold=True) as server:
        first = client(server, tmp_path)
        tasks = [asyncio.create_task(first.chat("m", ask(i), role="judge")) for i in range(5)]
        while not server.batches_created:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # the batch id is recorded
        for t in tasks:  # the process dies: nothing of the batch has come back
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await first.aclose()
        server.batch_hold = False
        async with client(server, tmp_path) as second:
            replies = await asyncio.gather(*(second.chat("m", ask(i), role="judge") for i in range(5)))
        assert server.batches_created == 1 and len(server.files) == 2  # one input file, one output file
        assert not any(r.cached for r in replies) and all(r.text for r in replies)


async def test_a_lost_create_answer_is_looked_up_not_created_again(tmp_path):
    # the first create succeeds at the API but its answer is lost (a dropped connection)
    with FakeServer(drop_batch_create=1) as server:
        async with client(server, tmp_path) as c:
            replies = await asyncio.gather(*(c.chat("m", ask(i), role="judge") for i in range(3)))
        assert server.batches_created == 1 and all(r.text for r in replies)


async def test_a_kill_between_upload_and_create_is_recovered_by_the_input_file(tmp_path):
    with FakeServer() as server:
        cache = ResponseCache(tmp_path / "c.sqlite")
        c = LLMClient({"m": batch_model(server)}, cache=cache)
        m = c._resolve("m")
        queue = c._batch_queue(m)

        uploaded_and_recorded = asyncio.Event()

        async def upload_only(keys):  # what _send does before the kill: upload, record; then the process dies
            lines = "".join(json.dumps({"custom_id": k, "body": queue._waiting[k].body}) + "\n" for k in keys)
            uploaded = await queue.api.files.create(
                file=("x.jsonl", lines.encode(), "application/jsonl"), purpose="batch"
            )
            cache.record_batch("m", uploaded.id, keys)
            uploaded_and_recorded.set()
            await asyncio.sleep(3600)

        queue._send = upload_only  # type: ignore[method-assign]
        task = asyncio.create_task(c.chat("m", ask(0), role="judge"))
        await uploaded_and_recorded.wait()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await c.aclose()
        reopened = ResponseCache(tmp_path / "c.sqlite")
        (key,) = reopened.batch_keys("file-1")
        assert reopened.pending_batch(key) == ("file-1", None)
        assert server.batches_created == 0
        async with client(server, tmp_path) as again:
            reply = await again.chat("m", ask(0), role="judge")
        assert reply.text and server.batches_created == 1  # created from the uploaded file, once


async def test_transient_errors_go_out_again_and_a_rejection_fails_only_its_item(tmp_path):
    tries: dict[str, int] = {}

    def faults(custom_id: str, body: dict) -> str | None:
        text = body["messages"][-1]["content"]
        tries[text] = tries.get(text, 0) + 1
        if text == "question 1":
            return "400"
        if text == "question 2" and tries[text] == 1:
            return "500"
        return None

    with FakeServer(batch_faults=faults) as server:
        async with client(server, tmp_path) as c:
            results = await asyncio.gather(
                *(c.chat("m", ask(i), role="judge") for i in range(4)), return_exceptions=True
            )
    assert isinstance(results[1], BatchRequestRejected) and "400" in str(results[1])
    assert all(not isinstance(r, Exception) for i, r in enumerate(results) if i != 1)
    assert server.batches_created == 2 and tries["question 2"] == 2 and tries["question 1"] == 1


async def test_an_expired_batch_is_resent_and_a_failed_batch_stops_the_run(tmp_path):
    with FakeServer(batch_end="expired") as server:
        async with client(server, tmp_path) as c:
            task = asyncio.create_task(c.chat("m", ask(0), role="judge"))
            while server.batches_created < 2:  # expired unanswered, so it went out again
                await asyncio.sleep(0.01)
            server.batch_end = "completed"
            assert (await task).text
    with FakeServer(batch_end="failed") as server:
        async with client(server, tmp_path / "other") as c:
            with pytest.raises(BatchFailed, match="injected failure") as failed:
                await c.chat("m", ask(0), role="judge")
            assert isinstance(failed.value, RunHalt)  # the runner marks the run stopped, work saved


def test_batch_needs_the_cache_and_checks_its_keys():
    with pytest.raises(ConfigError, match=r"models.m.batch.enabled=true needs client.cache=true"):
        RunConfig(models={"m": _model(enabled=True)}, client=ClientConfig(cache=False))
    with pytest.raises(ConfigError, match=r"models.m.batch.max_requests must be <= 50000"):
        RunConfig(models={"m": _model(max_requests=60_000)})
    with pytest.raises(ConfigError, match=r"models.m.batch.poll_s must be > 0"):
        RunConfig(models={"m": _model(poll_s=0)})


def _model(**batch) -> ModelConfig:
    return ModelConfig(served_name="x", base_url="http://h/v1", batch=BatchConfig(**batch))
