"""mapo/serving/auth.py in-process (fast): the key on every route but GET /health."""

from __future__ import annotations

import asyncio

import pytest

from mapo.serving import launch
from mapo.serving.auth import KeyOnEveryRoute

KEY = "s3cret-key-of-the-job"


async def _app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"served"})


def _call(method: str, path: str, auth: str | None, kind: str = "http") -> tuple[int | None, list[dict]]:
    headers = [(b"authorization", auth.encode())] if auth is not None else []
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b""}

    async def send(message):
        sent.append(message)

    scope = {"type": kind, "method": method, "path": path, "root_path": "", "headers": headers}
    asyncio.run(KeyOnEveryRoute(_app, key=KEY)(scope, receive, send))
    start = next((m for m in sent if m["type"] == "http.response.start"), None)
    return (start["status"] if start else None), sent


@pytest.mark.parametrize("path", ["/invocations", "/tokenize", "/metrics", "/pause", "/abort_requests", "/v1/models"])
@pytest.mark.parametrize("auth", [None, "", "Bearer wrong", f"Basic {KEY}", "Bearer", f"Bearer {KEY}x"])
def test_every_route_refuses_a_request_without_the_key(path, auth):
    status, sent = _call("POST", path, auth)
    assert status == 401
    assert b"served" not in b"".join(m.get("body", b"") for m in sent)


@pytest.mark.parametrize("path", ["/invocations", "/tokenize", "/metrics", "/v1/chat/completions", "/health"])
def test_the_key_opens_every_route(path):
    assert _call("POST", path, f"Bearer {KEY}")[0] == 200
    assert _call("GET", path, f"bearer  {KEY}")[0] == 200  # scheme case and spacing as HTTP allows


def test_only_get_health_is_open():
    assert _call("GET", "/health", None)[0] == 200
    assert _call("POST", "/health", None)[0] == 401
    assert _call("GET", "/ping", None)[0] == 401


def test_a_websocket_without_the_key_is_closed_before_it_is_accepted():
    status, sent = _call("GET", "/v1/realtime", None, kind="websocket")
    assert status is None and sent == [{"type": "websocket.close", "code": 1008}]


def test_lifespan_events_pass_through():
    seen = []

    async def app(scope, receive, send):
        seen.append(scope["type"])

    asyncio.run(KeyOnEveryRoute(app, key=KEY)({"type": "lifespan"}, None, None))
    assert seen == ["lifespan"]


def test_a_server_without_a_key_refuses_to_start(monkeypatch):
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    with pytest.raises(RuntimeError, match="never starts without its key"):
        KeyOnEveryRoute(_app)
    monkeypatch.setenv("VLLM_API_KEY", KEY)
    assert _call("GET", "/health", None)[0] == 200


def test_the_launcher_loads_the_middleware_on_every_server():
    assert launch.AUTH_MIDDLEWARE == ["--middleware", "mapo.serving.auth.KeyOnEveryRoute"]
    # vLLM imports it by this path in its API process: it must resolve to the class tested here
    module, name = launch.AUTH_MIDDLEWARE[1].rsplit(".", 1)
    assert getattr(__import__(module, fromlist=[name]), name) is KeyOnEveryRoute
