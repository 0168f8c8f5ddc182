"""The OpenAI Batch API behind :meth:`LLMClient.chat`, for models with ``batch.enabled``.

A request queues until none arrived for ``batch.flush_s`` (or ``batch.max_requests`` are
queued); the queue then leaves as one JSONL file and one batch job, and a watcher polls the
job every ``batch.poll_s`` and hands each reply to the request waiting for it. Callers see an
ordinary (slow) chat call: the evaluators, the re-ask loop and the runner are unchanged.

Nothing is paid twice. The response cache records which request went out in which file
*before* the batch is created, and the batch id once it exists. A rerun after a kill finds
each request's batch there and waits for it; when the kill came between the upload and the
creation, the batch is looked up by its input file, and created only if it does not exist.
Requests a batch did not answer (expired, cancelled, a 429 or 5xx) go out again in the next
batch, up to the model's ``max_retries``; a request the API rejected (a 400) fails its item.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import openai

from mapo.core.config import ModelConfig
from mapo.llm.cache import ResponseCache
from mapo.llm.faults import BatchFailed, BatchRequestRejected

log = logging.getLogger(__name__)

ENDPOINT: Final = "/v1/chat/completions"
COMPLETION_WINDOW: Final = "24h"
TERMINAL = {"completed", "failed", "expired", "cancelled"}
LOOKUP_LIMIT = 1000
"""Batches scanned (newest first) when looking for the batch of an uploaded file."""


@dataclass
class _Request:
    body: dict
    future: asyncio.Future
    retries: int = 0


@dataclass
class BatchQueue:
    """The batch queue of one model: ``await submit(key, body)`` returns the reply body (a chat
    completion as JSON). ``store(key, body)`` receives replies nobody waits for any more (a rerun
    with fewer items), so that what was paid for lands in the response cache."""

    model: str
    config: ModelConfig
    api: openai.AsyncOpenAI
    cache: ResponseCache
    store: Callable[[str, dict], None]
    errors: Errors
    _waiting: dict[str, _Request] = field(default_factory=dict)
    _queued: list[str] = field(default_factory=list)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)
    _flusher: asyncio.Task | None = None
    _watchers: dict[str, asyncio.Task] = field(default_factory=dict)
    batches_created: int = 0

    async def submit(self, key: str, body: dict) -> dict:
        """Queue ``body`` (or join the pending batch that already carries ``key``) and wait for its reply."""
        request = self._waiting.get(key)
        if request is None:
            request = _Request(body, asyncio.get_running_loop().create_future())
            self._waiting[key] = request
            pending = self.cache.pending_batch(key)
            if pending is None:
                self._enqueue(key)
            else:  # an earlier run sent it: wait for that batch (found by its file if its id was not recorded)
                self._watch(*pending, look_first=True)
        return await asyncio.shield(request.future)

    @property
    def waiting(self) -> int:
        """Requests queued or in a batch, not answered yet."""
        return len(self._waiting)

    async def aclose(self) -> None:
        """Stop queueing and polling; batches already created keep running at the API (a rerun collects them)."""
        tasks = [t for t in (self._flusher, *self._watchers.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        in_batches = sum(1 for key in self._waiting if key not in self._queued)
        if in_batches:
            log.warning(
                "model %s: %d request(s) wait in batches at the API; rerun the same command to collect them",
                self.model,
                in_batches,
            )

    # ---- sending ---------------------------------------------------------------------
    def _enqueue(self, key: str) -> None:
        self._queued.append(key)
        self._arrived.set()
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        limit = self.config.batch.max_requests
        while self._queued:
            while len(self._queued) < limit:  # a quiet spell of flush_s, or a full batch
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), self.config.batch.flush_s)
                except TimeoutError:
                    break
            keys, self._queued = self._queued[:limit], self._queued[limit:]
            try:
                await self._send(keys)
            except Exception as e:
                self._fail(keys, e)

    async def _send(self, keys: list[str]) -> None:
        lines = (
            json.dumps({"custom_id": k, "method": "POST", "url": ENDPOINT, "body": self._waiting[k].body}) for k in keys
        )
        data = ("\n".join(lines) + "\n").encode("utf-8")
        name = f"mapo-{self.model}-{uuid.uuid4().hex[:12]}.jsonl"
        uploaded = await self._call(self.api.files.create, file=(name, data, "application/jsonl"), purpose="batch")
        # recorded before the batch exists: a kill from here on is recovered by the input file's id
        self.cache.record_batch(self.model, uploaded.id, keys)
        self._watch(uploaded.id, None, look_first=False)

    async def _create(self, file_id: str, *, look_first: bool) -> Any:
        """The batch of ``file_id``: found at the API if it exists (a rerun, or a create whose answer
        was lost: looked up before every retry), else created."""
        for attempt in range(self.config.max_retries + 1):
            found = await self._find(file_id) if attempt or look_first else None
            if found is not None:
                return found
            try:
                batch = await self.api.batches.create(
                    input_file_id=file_id,
                    endpoint=ENDPOINT,
                    completion_window=COMPLETION_WINDOW,
                    metadata={"mapo_model": self.model},
                )
                self.batches_created += 1
                return batch
            except Exception as e:
                if not self.errors.retryable(e) or attempt == self.config.max_retries:
                    raise
                await asyncio.sleep(self.errors.backoff(attempt, e))
        raise AssertionError("unreachable")

    async def _find(self, file_id: str) -> Any | None:
        seen = 0
        async for batch in self.api.batches.list(limit=100):
            if batch.input_file_id == file_id:
                return batch
            seen += 1
            if seen >= LOOKUP_LIMIT:
                break
        return None

    # ---- waiting ---------------------------------------------------------------------
    def _watch(self, file_id: str, batch_id: str | None, *, look_first: bool) -> None:
        if file_id not in self._watchers:
            self._watchers[file_id] = asyncio.create_task(self._watch_loop(file_id, batch_id, look_first))

    async def _watch_loop(self, file_id: str, batch_id: str | None, look_first: bool) -> None:
        keys = self.cache.batch_keys(file_id)
        try:
            if batch_id is None:
                batch = await self._create(file_id, look_first=look_first)
                self.cache.set_batch_id(file_id, batch.id)
                log.info(
                    "model %s: batch %s submitted with %d request(s) (Batch API, results within %s)",
                    self.model,
                    batch.id,
                    len(keys),
                    COMPLETION_WINDOW,
                )
            else:
                batch = await self._call(self.api.batches.retrieve, batch_id)
                log.info(
                    "model %s: waiting for batch %s (%d request(s)) of an earlier run", self.model, batch_id, len(keys)
                )
            status = batch.status
            while batch.status not in TERMINAL:
                await asyncio.sleep(self.config.batch.poll_s)
                batch = await self._call(self.api.batches.retrieve, batch.id)
                if batch.status != status:
                    status = batch.status
                    counts = batch.request_counts
                    done = f" ({counts.completed}/{counts.total} done)" if counts else ""
                    log.info("model %s: batch %s is %s%s", self.model, batch.id, status, done)
            await self._collect(file_id, batch, keys)
        except Exception as e:  # not a cancellation (a BaseException): aclose leaves the batch to a rerun
            self._fail([k for k in keys if k in self._waiting], e)
        finally:
            self._watchers.pop(file_id, None)

    async def _collect(self, file_id: str, batch: Any, keys: list[str]) -> None:

        if batch.status == "failed":
            reasons = "; ".join(e.message or e.code or "?" for e in (batch.errors.data or [])) if batch.errors else ""
            error = BatchFailed(f"model {self.model!r}: batch {batch.id} failed: {reasons or 'no reason given'}")
            self.cache.forget_batch(file_id)
            self._fail([k for k in keys if k in self._waiting], error)
            return
        replies: dict[str, dict] = {}
        for output in (batch.output_file_id, batch.error_file_id):
            if output:
                content = await self._call(self.api.files.content, output)
                for line in content.text.split("\n"):  # "\n" only: a raw U+2028 is text in a JSON string
                    if line.strip():
                        reply = json.loads(line)
                        replies[reply.get("custom_id", "")] = reply
        again = []
        for key in keys:
            reply = replies.get(key) or {}
            response = reply.get("response") or {}
            status = response.get("status_code")
            request = self._waiting.get(key)
            if status == 200:
                if request is None:
                    self.store(key, response["body"])
                else:
                    del self._waiting[key]
                    request.future.set_result(response["body"])
                continue
            if request is None:
                continue
            message = _error_message(reply, response) or f"not answered (the batch ended {batch.status})"
            if status is not None and status not in self.errors.retryable_status:
                del self._waiting[key]
                request.future.set_exception(
                    BatchRequestRejected(f"model {self.model!r}: batch {batch.id} rejected the request: {message}")
                )
            elif request.retries < self.config.max_retries:
                request.retries += 1
                again.append(key)
            else:
                self._fail(
                    [key],
                    BatchFailed(f"model {self.model!r}: batch {batch.id}: {message}, {request.retries + 1} times"),
                )
        self.cache.forget_batch(file_id)
        if again:
            log.warning("model %s: %d request(s) of batch %s go out again", self.model, len(again), batch.id)
            for key in again:
                self._enqueue(key)

    # ---- helpers ---------------------------------------------------------------------
    def _fail(self, keys: list[str], error: BaseException) -> None:
        for key in keys:
            request = self._waiting.pop(key, None)
            if request is not None and not request.future.done():
                request.future.set_exception(error)
                request.future.exception()  # retrieved: no warning when nobody waits any more

    async def _call(self, fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
        """``fn`` with the model's retry policy (429, 5xx, dropped connections)."""
        for attempt in range(self.config.max_retries + 1):
            try:
                return await fn(*args, **kwargs)
            except Exception as e:
                if not self.errors.retryable(e) or attempt == self.config.max_retries:
                    raise
                await asyncio.sleep(self.errors.backoff(attempt, e))
        raise AssertionError("unreachable")


@dataclass(frozen=True)
class Errors:
    """The client's retry policy, handed to the queue (one policy for both transports)."""

    retryable: Callable[[Exception], bool]
    backoff: Callable[[int, Exception], float]
    retryable_status: frozenset[int]


def _error_message(reply: dict, response: dict) -> str:
    error = reply.get("error") or (response.get("body") or {}).get("error") or {}
    status = response.get("status_code")
    text = error.get("message") if isinstance(error, dict) else str(error)
    return f"{status or ''} {text or ''}".strip()
