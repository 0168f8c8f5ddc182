"""The one client layer: every LLM call in mapo goes through :class:`LLMClient`.

It owns transport (endpoint resolution, replicas, a concurrency bound per endpoint, retries
with exponential backoff and jitter on 429/5xx/timeouts/dropped connections, per-request
timeouts), token accounting per (role, model), and the content-hash response cache. Callers
ask for a model by its config name and a role; they never see URLs or keys.

Two per-model adaptations live here, applied to every request of that model: system messages
folded into the first user turn (``models.<name>.system_role``, :func:`merge_system`; ``auto`` is
decided by the pre-flight, :mod:`mapo.runs.preflight`), and structured outputs dropped where the
server cannot compile the constraint (:meth:`LLMClient.unconstrain`, or one request at a time
when the server answers a grammar error); both are counted. :meth:`LLMClient.tokenize` and
:meth:`LLMClient.probe` are the pre-flight's requests, through the same replicas, keys and retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import random
import re
import ssl
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx
import openai

from mapo.core import secrets
from mapo.core.config import OPTIONAL_SAMPLING, ConfigError, ModelConfig
from mapo.core.types import Completion, Message, Reward, Usage
from mapo.llm.batch import BatchQueue, Errors
from mapo.llm.cache import ResponseCache, cache_key
from mapo.llm.faults import (
    BadReply,
    BatchRequestRejected,
    BudgetExceeded,
    EndpointUnavailable,
    ItemFault,
    ModelNotFound,
    QuotaExhausted,
    RequestRejected,
    UnencodableText,
)
from mapo.llm.faults import BatchFailed as BatchFailed  # re-exported: callers catch faults from the client
from mapo.llm.faults import RunHalt as RunHalt

log = logging.getLogger(__name__)

# The one place that keeps the HTTP libraries quiet: at INFO, httpx logs a line per request
# (hundreds per run); their warnings and errors still show.
for _noisy in ("httpx", "httpx2", "httpcore", "openai"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)
# every log line is scrubbed of the API keys the client sends (mapo.core.secrets)
secrets.install_log_scrubber()

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}

CHARS_PER_TOKEN = 4
"""Tokens estimated from characters (the usual English rule of thumb): the budget's prompt estimate,
and the tokens of an answer whose server sent no ``usage``."""

_QUOTA = re.compile(r"(?i)insufficient_quota|\bquota\b|billing|credit balance|exceeded your current")
_MODEL_MISSING = re.compile(r"(?i)\bmodel\b.{0,200}?\b(does not exist|not found|unknown)|unknown model|no such model")
_GRAMMAR = re.compile(
    r"(?i)regex|grammar|xgrammar|outlines|guided|structured.?output|json.?schema|fsm|compil(e|ation) (timed out|failed)"
)
"""Server text of a structured-output failure (e.g. vLLM's ``Regex compilation timed out after 5s``)."""


def merge_system(messages: Sequence[Message]) -> list[Message]:
    """System messages folded into the turn after them, for a chat template without a system role: the
    rule of ``mapo/serving/chat_templates/gemma3-base.jinja`` (the system text, trimmed, then a blank
    line, heads the next turn); a trailing system message becomes a user turn."""
    out: list[Message] = []
    prefix = ""
    for msg in messages:
        if msg["role"] == "system":
            prefix += msg["content"].strip() + "\n\n"
            continue
        out.append({"role": msg["role"], "content": prefix + msg["content"]})
        prefix = ""
    if prefix:
        out.append({"role": "user", "content": prefix.rstrip("\n")})
    return out


@dataclass(frozen=True)
class Tokenized:
    """What a server's ``/tokenize`` says of a conversation: its prompt tokens (chat template
    applied, generation prompt added) and the context the server allows (None = not said)."""

    count: int
    max_model_len: int | None


@dataclass(frozen=True)
class Constraint:
    """Structured-output constraint (vLLM ``structured_outputs``): exactly one field set."""

    regex: str | None = None
    choice: tuple[str, ...] | None = None
    json_schema: dict | None = None

    def request_fields(self) -> dict:
        """The request body fields that carry this constraint."""
        if self.regex is not None:
            return {"structured_outputs": {"regex": self.regex}}
        if self.choice is not None:
            return {"structured_outputs": {"choice": list(self.choice)}}
        if self.json_schema is not None:
            return {"structured_outputs": {"json": self.json_schema}}
        return {}

    def key(self) -> dict:
        """What the cache key hashes for this constraint."""
        return {"regex": self.regex, "choice": self.choice, "json": self.json_schema}


@dataclass
class _Replica:
    base_url: str
    client: openai.AsyncOpenAI
    """The SDK's client: the model listing (:meth:`LLMClient.check`) and the Batch API."""
    semaphore: asyncio.Semaphore
    headers: dict[str, str]
    """What every request of the fast transport carries (the key, the content type)."""
    connections: int
    timeout_s: float
    in_flight: int = 0
    errors: int = 0
    """Connection failures in a row; replicas that answer are preferred over ones that don't."""
    session: aiohttp.ClientSession | None = None
    """The HTTP session of chat, pooling and tokenize requests (:meth:`http`), made in the running loop."""
    loop: asyncio.AbstractEventLoop | None = None

    def http(self) -> aiohttp.ClientSession:
        """This replica's aiohttp session in the running event loop (made on first use: a session
        belongs to the loop it was made in)."""
        loop = asyncio.get_running_loop()
        if self.session is None or self.session.closed or self.loop is not loop:
            self.loop = loop
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self.connections, ssl=_ssl_context() if self.base_url.startswith("https") else False
                ),
                # like the SDK's httpx client: the timeout bounds connecting and each gap between bytes;
                # the total deadline of an attempt is LLMClient._retrying's
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout_s, sock_read=self.timeout_s),
                trust_env=True,  # HTTP(S)_PROXY and NO_PROXY, as httpx honours them
            )
        return self.session

    async def aclose(self) -> None:
        await self.client.close()
        if self.session is not None and not self.session.closed:
            with contextlib.suppress(RuntimeError):  # made in an event loop that is gone: nothing left to close
                await self.session.close()

    async def post(self, url: str, body: Mapping[str, Any]) -> Any:
        """POST ``body`` as JSON to ``url``; the answer's JSON. Faults are raised as the openai SDK's
        exceptions (:class:`openai.APIStatusError` and its subclasses by status,
        :class:`openai.APITimeoutError`, :class:`openai.APIConnectionError`), a body that is not UTF-8
        or not JSON as :class:`UnicodeDecodeError` / :class:`json.JSONDecodeError`, so that one
        classification (:func:`_retryable`, :func:`_fault_by_meaning`, :func:`describe`) serves every path."""
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        try:
            async with self.http().post(url, data=data, headers=self.headers) as resp:
                raw = await resp.read()
                status = resp.status
                headers = resp.headers
        except TimeoutError as e:  # aiohttp's connect and read timeouts (the attempt deadline cancels instead)
            raise openai.APITimeoutError(request=httpx.Request("POST", url)) from e  # type: ignore[arg-type]
        except aiohttp.ClientError as e:  # refused, reset, dropped mid-answer, truncated body
            raise openai.APIConnectionError(request=httpx.Request("POST", url)) from e  # type: ignore[arg-type]
        if status >= 300:
            raise _status_error(url, status, headers, raw)
        return json.loads(raw.decode("utf-8"))


@dataclass
class _Model:
    name: str
    config: ModelConfig
    replicas: list[_Replica] = field(default_factory=list)
    polled_at: float = 0.0
    """When the registry file was last looked at for this model (``time.monotonic``)."""
    registry_stamp: tuple[int, int] | None = None
    """(mtime_ns, size) of the registry file when this model's replicas were last read from it."""


REGISTRY_POLL_S = 1.0
"""How often a model reached through the registry looks at the registry file (one ``stat``): a
replica registered mid-run takes requests within about this long, one unregistered stops taking them."""


@dataclass
class ClientStats:
    """Live counters for progress displays."""

    in_flight: int = 0
    retries: int = 0
    requests: int = 0
    cached: int = 0
    completion_tokens: int = 0


class LLMClient:
    """Async OpenAI-compatible client over every configured model.

    ``models`` maps config names to :class:`ModelConfig`; endpoints named ``endpoint:`` are
    resolved through the registry written by ``serve/`` (several entries = replicas,
    load-balanced by fewest requests in flight). Use it as ``async with LLMClient(...) as client:``:
    leaving the block closes its HTTP clients and its response cache. ``budget_usd`` bounds the
    priced cost (models with ``price_*_per_mtok``): a request that could exceed it raises
    :class:`BudgetExceeded` before it is sent.
    """

    def __init__(
        self,
        models: Mapping[str, ModelConfig],
        *,
        cache: ResponseCache | None = None,
        registry: str | os.PathLike | None = None,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 30.0,
        budget_usd: float | None = None,
    ) -> None:
        self._configs = dict(models)
        self._models: dict[str, _Model] = {}
        self.cache = cache
        self.registry = registry
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.budget_usd = budget_usd
        self.usage: dict[tuple[str, str], Usage] = defaultdict(Usage)
        self.stats = ClientStats()
        self._pending: dict[str, asyncio.Future] = {}
        self._reserved_usd = 0.0
        """Worst-case cost of the priced requests in flight (counted against the budget until they answer)."""
        self._unpriced_warned: set[str] = set()
        self._no_usage_warned: set[str] = set()
        self._failed_constraints: set[tuple[str, str]] = set()
        """(model, constraint) pairs whose server failed to compile the constraint: sent unconstrained."""
        self._retired: list[_Replica] = []
        self._batches: dict[str, BatchQueue] = {}
        self._closed = False
        self._merge_system: set[str] = set()
        """Models whose system messages are folded into the first user turn (config or pre-flight)."""
        self._unconstrained: dict[str, str] = {}
        """Models whose requests go without their constraint, and why (the pre-flight's fallback)."""
        self._listed_max_model_len: dict[str, int] = {}
        """``max_model_len`` as the server's model listing gave it (GET /models, vLLM)."""

    async def __aenter__(self) -> LLMClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ---- endpoints -------------------------------------------------------------------
    def _resolve(self, name: str) -> _Model:
        model = self._models.get(name)
        if model is not None:
            return model
        if name not in self._configs:
            raise ConfigError(f"unknown model {name!r}; known: {', '.join(sorted(self._configs))}")
        cfg = self._configs[name]
        model = _Model(name=name, config=cfg)
        if cfg.endpoint and not cfg.base_url:
            model.registry_stamp, model.polled_at = self._registry_stamp(), time.monotonic()
        model.replicas = self._make_replicas(name, cfg)
        self._models[name] = model
        return model

    def _registry_stamp(self) -> tuple[int, int] | None:
        from mapo.core import endpoints

        try:
            st = os.stat(endpoints.registry_path(self.registry))
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def _poll_registry(self, m: _Model) -> None:
        """At most every :data:`REGISTRY_POLL_S`: when the registry file changed, take its replicas of
        ``m`` (new ones join the balancing, unregistered ones leave it, and every replica gets a fresh
        chance: one restarted at the same address answers again)."""
        now = time.monotonic()
        if now - m.polled_at < REGISTRY_POLL_S:
            return
        m.polled_at = now
        stamp = self._registry_stamp()
        if stamp is None or stamp == m.registry_stamp:
            return
        m.registry_stamp = stamp
        self._refresh(m.name)
        for r in m.replicas:
            r.errors = 0

    def _make_replicas(self, name: str, cfg: ModelConfig) -> list[_Replica]:
        targets: list[tuple[str, str | None]] = []
        if cfg.base_url:
            key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
            if cfg.api_key_env and not key:
                raise ConfigError(f"models.{name}.api_key_env: {cfg.api_key_env} is not set")
            secrets.register(key)
            targets.append((cfg.base_url, key))
        elif cfg.endpoint:
            from mapo.core import endpoints

            for ep in endpoints.lookup(cfg.endpoint, self.registry):
                try:
                    key = ep.api_key()
                except OSError as e:
                    raise ConfigError(
                        f"models.{name}: endpoint {cfg.endpoint!r} ({ep.base_url}) names the API key file "
                        f"{ep.api_key_file}, which cannot be read ({e.strerror or e}); restart the server "
                        f"(python -m serve up --model {cfg.endpoint}) or fix the registry"
                    ) from None
                secrets.register(key)
                targets.append((ep.base_url, key))
        else:
            raise ConfigError(f"models.{name}: set base_url or endpoint")
        return [
            _Replica(
                base_url=url.rstrip("/"),
                client=openai.AsyncOpenAI(
                    base_url=url,
                    api_key=key or "EMPTY",
                    max_retries=0,  # retries are ours: one policy, counted
                    timeout=cfg.timeout_s,
                    # openai>=3 types this as its httpx2 fork; it accepts a plain httpx client too
                    http_client=httpx.AsyncClient(  # type: ignore[arg-type]
                        limits=httpx.Limits(max_connections=cfg.max_concurrency + 4),
                        timeout=cfg.timeout_s,
                    ),
                ),
                semaphore=asyncio.Semaphore(cfg.max_concurrency),
                headers={"Authorization": f"Bearer {key or 'EMPTY'}", "Content-Type": "application/json"},
                connections=cfg.max_concurrency + 4,
                timeout_s=cfg.timeout_s,
            )
            for url, key in targets
        ]

    def _refresh(self, name: str) -> None:
        """Re-read the registry after connection errors: a restarted server may have a new port."""
        model = self._models.get(name)
        if model is None or not model.config.endpoint:
            return
        try:
            fresh = self._make_replicas(name, model.config)
        except Exception as e:  # registry momentarily empty while a server restarts
            log.debug("registry refresh for %s failed: %s", name, e)
            return
        known = {r.base_url for r in model.replicas}
        for r in fresh:
            if r.base_url not in known:
                log.warning("model %s: new endpoint %s from the registry", name, r.base_url)
                model.replicas.append(r)
        registered = {r.base_url for r in fresh}
        gone = [r for r in model.replicas if r.base_url not in registered]
        if gone and len(gone) < len(model.replicas):  # unregistered (e.g. restarted elsewhere): stop using it
            log.warning("model %s: endpoint(s) %s left the registry", name, ", ".join(r.base_url for r in gone))
            model.replicas = [r for r in model.replicas if r.base_url in registered]
            self._retired += gone  # requests may still be in flight on them: close at the end
        self._retired += [r for r in fresh if r.base_url in known]  # duplicates of replicas we keep

    async def check(self, names: Sequence[str]) -> None:
        """Probe each model's endpoints (GET /models); fail naming the model and URL."""
        for name in dict.fromkeys(names):
            model = self._resolve(name)
            for replica in model.replicas:
                try:
                    listing = await asyncio.wait_for(
                        replica.client.models.list(), timeout=min(30.0, model.config.timeout_s)
                    )
                except Exception as e:
                    raise EndpointUnavailable(
                        f"model {name!r}: endpoint {replica.base_url} is unreachable ({describe(e, model.config)}). "
                        f"Is the server up? (python -m serve status)"
                    ) from None
                for card in getattr(listing, "data", None) or []:  # vLLM lists max_model_len with each model
                    limit = getattr(card, "max_model_len", None)
                    if getattr(card, "id", None) == model.config.served_name and isinstance(limit, int):
                        self._listed_max_model_len[name] = limit

    def max_tokens(self, name: str) -> int:
        """Model ``name``'s configured max_tokens."""
        return self._configs[name].generation.max_tokens

    def supports_constraints(self, name: str) -> bool:
        """Whether model ``name``'s server honours structured outputs."""
        return bool(self._configs[name].structured_output) if name in self._configs else False

    def max_model_len(self, name: str) -> int | None:
        """The context model ``name``'s server allows: as its model listing said (vLLM), else the
        config's ``serve.max_model_len``; None when neither says (an API model)."""
        if name in self._listed_max_model_len:
            return self._listed_max_model_len[name]
        serve = self._configs[name].serve if name in self._configs else None
        return serve.max_model_len if serve is not None else None

    def model_config(self, name: str) -> ModelConfig:
        """Model ``name``'s config."""
        return self._resolve(name).config

    # ---- per-model adaptations (the pre-flight's fallbacks) ----------------------------
    def unconstrained(self, name: str) -> bool:
        """Whether model ``name``'s requests go without their constraint (:meth:`unconstrain`)."""
        return name in self._unconstrained

    def merges_system(self, name: str) -> bool:
        """Whether model ``name``'s system messages are folded into the first user turn."""
        cfg = self._configs.get(name)
        return name in self._merge_system or (cfg is not None and cfg.system_role == "merge")

    def merge_system_role(self, name: str) -> None:
        """From now on fold model ``name``'s system messages into the first user turn (:func:`merge_system`)."""
        self._merge_system.add(name)

    def unconstrain(self, name: str, reason: str) -> None:
        """From now on send model ``name``'s requests without their structured-output constraint
        (counted in ``usage.unconstrained``; the ask loop parses and re-asks the free answers)."""
        self._unconstrained[name] = reason

    def adapted(self, name: str, messages: Sequence[Message]) -> list[Message]:
        """``messages`` as model ``name`` receives them (system role merged where it must be)."""
        msgs: list[Message] = [{"role": x["role"], "content": x["content"]} for x in messages]
        return merge_system(msgs) if self.merges_system(name) else msgs

    # ---- calls -----------------------------------------------------------------------
    async def chat(
        self,
        model: str,
        messages: Sequence[Message],
        *,
        role: str,
        constraint: Constraint | None = None,
        overrides: Mapping[str, Any] | None = None,
        sample: int = 0,
        top_logprobs: int | None = None,
    ) -> Completion:
        """One chat completion. Cached by content.

        ``top_logprobs=N`` asks the server for the N most likely tokens at each generated
        position (``logprobs=True, top_logprobs=N``); they come back in
        :attr:`Completion.top_logprobs` and are part of the cache key.

        Raises:
            EndpointUnavailable: the model failed every attempt (the run stops).
            BudgetExceeded: the request could take the priced cost past ``budget_usd`` (not sent).
            UnencodableText: a message cannot be encoded as UTF-8 (the item fails; nothing is sent).
            BadReply: the reply cannot be stored (the item fails; not retried).
        """
        m = self._resolve(model)
        gen = {
            "temperature": m.config.generation.temperature,
            "max_tokens": m.config.generation.max_tokens,
            "top_p": m.config.generation.top_p,
            "seed": m.config.generation.seed,
            "stop": list(m.config.generation.stop) if m.config.generation.stop else None,
        }
        for name in OPTIONAL_SAMPLING:  # only when set: the cache keys of requests without them stay the same
            value = getattr(m.config.generation, name)
            if value is not None:
                gen[name] = value
        gen.update(overrides or {})
        msgs = self.adapted(model, messages)
        _check_encodable(msgs, model)
        usage = self.usage[(role, model)]
        if constraint is not None and model in self._unconstrained:
            constraint = None  # the server cannot compile it (pre-flight): free text, parsed and re-asked
            usage.unconstrained += 1
        # top_logprobs joins the key only when asked for, so the keys of earlier caches stay valid
        logprob_key = {} if top_logprobs is None else {"top_logprobs": top_logprobs}
        key = cache_key(
            model=model,
            served=m.config.served_name,
            messages=msgs,
            params=gen,
            constraint=constraint.key() if constraint else None,
            sample=sample,
            **logprob_key,
        )
        hit = self._cached(model, key, usage)
        if hit is not None:
            return hit
        # identical requests in flight at once (e.g. a shared tournament pair) are sent once
        if key in self._pending:
            return await asyncio.shield(self._pending[key])
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending[key] = fut
        try:
            result = await self._send(m, msgs, gen, constraint, key, usage, top_logprobs)
            fut.set_result(result)
            return result
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # mark retrieved: no "never retrieved" warning when nobody waits
            raise
        finally:
            del self._pending[key]

    def _cached(self, model: str, key: str, usage: Usage) -> Completion | None:
        """The cached answer under ``key``, counted as a cache hit; None when there is none."""
        hit = self.cache.get(key) if self.cache is not None else None
        if hit is None:
            return None
        usage.cached += 1
        self.stats.cached += 1
        return Completion(
            text=hit["text"],
            model=model,
            prompt_tokens=hit.get("prompt_tokens", 0),
            completion_tokens=hit.get("completion_tokens", 0),
            latency_s=0.0,
            cached=True,
            finish_reason=hit.get("finish_reason"),
            cache_key=key,
            top_logprobs=hit.get("top_logprobs"),
        )

    # ---- reward models (vLLM's pooling API) ---------------------------------------------
    async def reward(self, model: str, messages: Sequence[Message], *, role: str) -> Reward:
        """The raw reward of a conversation (e.g. [user prompt, assistant response]) from reward model
        ``model``: vLLM's ``POST /pooling`` with the chat messages (rendered by the model's chat template,
        no generation prompt), ``models.<name>.pooling`` as the task and no activation, so the value is the
        model's own reward. Through the same replicas, retries, per-attempt deadline, response cache,
        budget (prompt tokens) and accounting per (role, model) as :meth:`chat`.

        Raises:
            ConfigError: ``model`` is not a reward model (``models.<name>.pooling`` unset).
            EndpointUnavailable, ModelNotFound, RequestRejected, UnencodableText: as for :meth:`chat`.
        """
        m = self._resolve(model)
        task = m.config.pooling
        if task is None:
            raise ConfigError(
                f"models.{model}.pooling is not set: {model!r} is a chat model; a reward model names its "
                "pooling task (classify | token_classify) and is served with serve.extra_args: [--runner, pooling]"
            )
        msgs: list[Message] = [{"role": x["role"], "content": x["content"]} for x in messages]
        _check_encodable(msgs, model)
        usage = self.usage[(role, model)]
        key = cache_key(model=model, served=m.config.served_name, messages=msgs, pooling=str(task))
        hit = self.cache.get(key) if self.cache is not None else None
        if hit is not None and isinstance(hit.get("reward"), (int, float)):
            usage.cached += 1
            self.stats.cached += 1
            return Reward(float(hit["reward"]), model, hit.get("prompt_tokens", 0), 0.0, True, key)
        if key in self._pending:  # the same response scored twice at once (e.g. a tournament's incumbent)
            return await asyncio.shield(self._pending[key])
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending[key] = fut
        body = {
            "model": m.config.served_name,
            "messages": msgs,
            "task": str(task),
            "use_activation": False,
            "add_generation_prompt": False,
        }

        async def send(replica: _Replica) -> Any:
            url = replica.base_url
            root = url[: -len("/v1")] if url.endswith("/v1") else url  # vLLM serves /pooling beside /v1
            return await replica.post(f"{root}/pooling", body)

        def accept(answer: Any, latency: float) -> Reward:
            value, prompt_tokens = _pooled_reward(answer)  # a garbled answer is retried like a transient fault
            if prompt_tokens is None:
                usage.estimated += 1
                prompt_tokens = -(-_chars(msgs) // CHARS_PER_TOKEN)
            usage.requests += 1
            usage.prompt_tokens += prompt_tokens
            usage.latency_s += latency
            self.stats.requests += 1
            if self.cache is not None:
                self.cache.put(key, model, {"reward": value, "prompt_tokens": prompt_tokens})
            return Reward(value, model, prompt_tokens, latency, False, key)

        reserved = self._reserve(m, msgs, {"max_tokens": 0})
        try:
            result: Reward = await self._retrying(m, usage, send, accept=accept, by_meaning=True)
            fut.set_result(result)
            return result
        except ModelNotFound as e:
            error = ModelNotFound(
                f"{e} (a reward model needs vLLM's pooling runner: serve.extra_args: [--runner, pooling])"
            )
            fut.set_exception(error)
            fut.exception()
            raise error from e
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # mark retrieved: no "never retrieved" warning when nobody waits
            raise
        finally:
            self._reserved_usd -= reserved
            del self._pending[key]

    # ---- cost ------------------------------------------------------------------------
    @staticmethod
    def _cost(cfg: ModelConfig, prompt_tokens: float, completion_tokens: float) -> float | None:
        """US dollars for the tokens at the model's prices (times ``batch.price_factor`` for a model on
        the Batch API); None when the model has no price."""
        if cfg.price_in_per_mtok is None and cfg.price_out_per_mtok is None:
            return None
        factor = cfg.batch.price_factor if cfg.batch.enabled else 1.0
        return (
            factor
            * (prompt_tokens * (cfg.price_in_per_mtok or 0.0) + completion_tokens * (cfg.price_out_per_mtok or 0.0))
            / 1e6
        )

    def cost_usd(self) -> float:
        """Priced cost of every request answered so far (cached answers cost nothing)."""
        return sum(
            self._cost(self._configs[model], u.prompt_tokens, u.completion_tokens) or 0.0
            for (_, model), u in self.usage.items()
            if model in self._configs
        )

    def _reserve(self, m: _Model, msgs: Sequence[Mapping[str, Any]], gen: Mapping[str, Any]) -> float:
        """Count a request's worst-case cost against the budget before it is sent (prompt tokens
        estimated from its length, completion at max_tokens); raise BudgetExceeded if it does not fit."""
        if self.budget_usd is None:
            return 0.0
        chars = sum(len(x["content"]) for x in msgs)
        estimate = self._cost(m.config, chars / CHARS_PER_TOKEN, gen.get("max_tokens") or 0)
        if estimate is None:
            if m.name not in self._unpriced_warned:
                self._unpriced_warned.add(m.name)
                log.warning(
                    "model %s has no price (price_in_per_mtok, price_out_per_mtok): "
                    "its requests do not count against client.budget_usd",
                    m.name,
                )
            return 0.0
        spent = self.cost_usd()
        if spent + self._reserved_usd + estimate > self.budget_usd:
            raise BudgetExceeded(
                f"client.budget_usd={self.budget_usd:g} would be exceeded: ${spent:.4f} spent, "
                f"${self._reserved_usd:.4f} in flight, and the next {m.name!r} request may cost up to ${estimate:.4f}"
            )
        self._reserved_usd += estimate
        return estimate

    async def _send(self, m: _Model, msgs, gen, constraint, key, usage: Usage, top_logprobs: int | None) -> Completion:
        body = {k: v for k, v in gen.items() if v is not None}
        if top_logprobs is not None:
            body |= {"logprobs": True, "top_logprobs": top_logprobs}
        extra = constraint.request_fields() if constraint else {}
        reserved = self._reserve(m, msgs, gen)
        try:
            if m.config.batch.enabled:
                return await self._batched(m, msgs, body, extra, key, usage)
            return await self._attempts(m, msgs, body, extra, key, usage)
        finally:
            self._reserved_usd -= reserved

    def _batch_queue(self, m: _Model) -> BatchQueue:
        queue = self._batches.get(m.name)
        if queue is None:
            if self.cache is None:
                raise ConfigError(f"models.{m.name}.batch.enabled=true needs the response cache (client.cache=true)")
            queue = self._batches[m.name] = BatchQueue(
                model=m.name,
                config=m.config,
                api=m.replicas[0].client,
                cache=self.cache,
                store=lambda key, reply: self._store_late_reply(m, key, reply),
                errors=Errors(_retryable, self._backoff, frozenset(RETRYABLE_STATUS)),
            )
        return queue

    async def _batched(self, m: _Model, msgs, body, extra, key, usage: Usage) -> Completion:
        """One request through the model's Batch API queue (mapo.llm.batch)."""
        request = {"model": m.config.served_name, "messages": msgs, **body, **extra}
        self.stats.in_flight += 1
        t0 = time.perf_counter()
        try:
            reply = await self._batch_queue(m).submit(key, request)
        except Exception:
            usage.failures += 1
            raise
        finally:
            self.stats.in_flight -= 1
        try:
            return self._accept(m, key, usage, reply, time.perf_counter() - t0, "top_logprobs" in body, _chars(msgs))
        except _Garbage as e:
            usage.failures += 1
            raise BatchRequestRejected(f"model {m.name!r}: the batch reply is unusable ({e})") from None

    def _estimate_missing_usage(self, m: _Model, record: dict, usage: Usage, prompt_chars: int) -> None:
        """An answer without ``usage``: its tokens estimated from the text (characters / 4), so that
        cost and the budget never count it as free; warned once per model, counted (``estimated``)."""
        if record["prompt_tokens"] is not None and record["completion_tokens"] is not None:
            return
        usage.estimated += 1
        if record["prompt_tokens"] is None:
            record["prompt_tokens"] = -(-prompt_chars // CHARS_PER_TOKEN)
        if record["completion_tokens"] is None:
            record["completion_tokens"] = -(-len(record["text"]) // CHARS_PER_TOKEN)
        if m.name not in self._no_usage_warned:
            self._no_usage_warned.add(m.name)
            log.warning(
                "model %s: the server sent no token usage; tokens are estimated as characters / %d for cost, "
                "client.budget_usd and the manifest (usage.estimated counts these answers)",
                m.name,
                CHARS_PER_TOKEN,
            )

    def _store_late_reply(self, m: _Model, key: str, reply: dict) -> None:
        """A batch reply nobody waits for any more: paid for, so it goes to the cache."""
        try:
            record, logprobs = _record(reply, with_logprobs=True)
            if logprobs is None:  # not asked for (or none sent): the record says nothing of them
                del record["top_logprobs"]
        except (_Garbage, ValueError) as e:
            log.debug("late batch reply %s unusable: %s", key[:12], e)
            return
        record["prompt_tokens"] = record["prompt_tokens"] or 0
        record["completion_tokens"] = record["completion_tokens"] or -(-len(record["text"]) // CHARS_PER_TOKEN)
        if self.cache is not None and _encodable(record["text"]):
            self.cache.put(key, m.name, record)

    def _accept(
        self,
        m: _Model,
        key: str | None,
        usage: Usage,
        resp: Any,
        latency: float,
        with_logprobs: bool,
        prompt_chars: int,
    ) -> Completion:
        """Account for a server's answer, check it, cache it (unless ``key`` is None) and return it."""
        record, logprobs = _record(resp, with_logprobs)
        self._estimate_missing_usage(m, record, usage, prompt_chars)
        text = record["text"]
        pt, ct = record["prompt_tokens"], record["completion_tokens"]
        usage.requests += 1
        usage.prompt_tokens += pt
        usage.completion_tokens += ct
        usage.latency_s += latency
        self.stats.requests += 1
        self.stats.completion_tokens += ct
        if not _encodable(text):
            usage.failures += 1
            raise BadReply(
                f"model {m.name!r} replied with text that is not valid Unicode "
                f"(a lone surrogate at character {_first_bad(text)}); the item fails"
            )
        if self.cache is not None and key is not None:
            self.cache.put(key, m.name, record)
        return Completion(
            text=text,
            model=m.name,
            prompt_tokens=pt,
            completion_tokens=ct,
            latency_s=latency,
            finish_reason=record["finish_reason"],
            cache_key=key or "",
            top_logprobs=logprobs,
        )

    async def _attempts(self, m: _Model, msgs, body, extra, key, usage: Usage) -> Completion:
        extra = dict(extra)
        if extra and self._unconstrainable(m, extra):
            usage.unconstrained += 1  # this server already failed to compile the same constraint
            extra = {}

        async def send(replica: _Replica) -> Any:
            request = {"model": m.config.served_name, "messages": msgs, **body, **extra}
            return await replica.post(f"{replica.base_url}/chat/completions", request)

        def unconstrained(e: Exception) -> bool:
            if not (extra and grammar_failure(e)):
                return False
            # the server cannot apply the constraint (e.g. xgrammar timed out compiling it):
            # ask unconstrained at once; the caller's parser and re-ask read the free text
            self._mark_unconstrainable(m, extra, e)
            usage.unconstrained += 1
            extra.clear()
            return True

        completion: Completion = await self._retrying(
            m,
            usage,
            send,
            accept=lambda resp, latency: self._accept(
                m, key, usage, resp, latency, "top_logprobs" in body, _chars(msgs)
            ),
            degrade=unconstrained,
            by_meaning=True,
        )
        return completion

    async def _retrying(
        self,
        m: _Model,
        usage: Usage,
        send: Callable[[_Replica], Awaitable[Any]],
        *,
        accept: Callable[[Any, float], Any] = lambda answer, latency: answer,
        degrade: Callable[[Exception], bool] | None = None,
        by_meaning: bool = False,
    ) -> Any:
        """``send`` on the replica with the fewest errors and requests in flight, under the one retry
        policy (exponential backoff and jitter on transport faults, registry refresh after connection
        errors). ``accept(answer, latency)`` checks the answer inside the attempt (a garbled one is
        retried too); ``degrade(error)`` True: the request was changed, it goes again at once;
        ``by_meaning``: HTTP errors become item or run faults by what the server says
        (:func:`_fault_by_meaning`), else they are raised as the SDK's."""
        last_error: Exception | None = None
        attempt = 0
        while True:
            if m.registry_stamp is not None:
                self._poll_registry(m)
            replica = min(m.replicas, key=lambda r: (r.errors, r.in_flight))
            replica.in_flight += 1
            try:
                async with replica.semaphore:
                    self.stats.in_flight += 1
                    t0 = time.perf_counter()
                    try:
                        # a total deadline per attempt: the HTTP timeout bounds only the gap between
                        # bytes, so a server dripping one byte a second would hold a request forever
                        async with asyncio.timeout(m.config.timeout_s):
                            answer = await send(replica)
                    finally:
                        self.stats.in_flight -= 1
                latency = time.perf_counter() - t0
                replica.errors = 0
                return accept(answer, latency)
            except Exception as e:
                if degrade is not None and degrade(e):
                    continue
                fault = _fault_by_meaning(m.name, replica.base_url, e) if by_meaning else None
                if fault is not None:
                    usage.failures += 1
                    raise fault from e
                if not _retryable(e):
                    if not isinstance(e, BadReply):
                        usage.failures += 1
                    raise
                last_error = e
                if attempt == m.config.max_retries:
                    break
                attempt += 1
                usage.retries += 1
                self.stats.retries += 1
                if isinstance(e, (openai.APIConnectionError, httpx.ConnectError)):
                    replica.errors += 1
                    self._refresh(m.name)
                await asyncio.sleep(self._backoff(attempt - 1, e))
            finally:
                replica.in_flight -= 1
        usage.failures += 1
        raise EndpointUnavailable(
            f"model {m.name!r} failed {m.config.max_retries + 1} attempts "
            f"({', '.join(r.base_url for r in m.replicas)}): {describe(last_error, m.config)}"
        )

    def _unconstrainable(self, m: _Model, extra: dict) -> bool:
        return (m.name, json.dumps(extra, sort_keys=True)) in self._failed_constraints

    def _mark_unconstrainable(self, m: _Model, extra: dict, e: Exception) -> None:
        """Remember that ``m``'s server cannot apply this constraint (warned once per model and constraint)."""
        marker = (m.name, json.dumps(extra, sort_keys=True))
        if marker not in self._failed_constraints:
            self._failed_constraints.add(marker)
            log.warning(
                "model %s: the server could not apply the structured-output constraint (%s); its requests "
                "with this constraint are sent unconstrained, the answers parsed and re-asked as free text "
                "(counted as unconstrained in the manifest's usage)",
                m.name,
                describe(e, m.config),
            )

    # ---- the pre-flight's requests (mapo.runs.preflight) ------------------------------
    async def tokenize(self, model: str, messages: Sequence[Message]) -> Tokenized | None:
        """The prompt tokens of ``messages`` as model ``model``'s server renders them (vLLM's
        ``POST /tokenize`` with ``messages`` and the generation prompt; system role adapted as for
        :meth:`chat`), and its ``max_model_len``. None when the server has no ``/tokenize`` (404/405:
        an API model). A rejected conversation raises the server's error (e.g. a 400
        ``System role not supported``)."""
        m = self._resolve(model)
        msgs = self.adapted(model, messages)
        usage = Usage()  # a render is no chat request: only its retries and failures are accounted

        async def send(replica: _Replica) -> Any:
            url = replica.base_url
            root = url[: -len("/v1")] if url.endswith("/v1") else url  # vLLM serves /tokenize beside /v1
            return await replica.post(
                f"{root}/tokenize", {"model": m.config.served_name, "messages": msgs, "add_generation_prompt": True}
            )

        try:
            answer = await self._retrying(m, usage, send)
        except openai.NotFoundError:
            return None
        except openai.APIStatusError as e:
            if e.status_code == 405:
                return None
            raise
        finally:
            if usage.retries or usage.failures:
                self.usage[("preflight", model)].add(usage)
        if not isinstance(answer, dict) or not isinstance(answer.get("count"), int):
            return None
        limit = answer.get("max_model_len")
        if isinstance(limit, int):
            self._listed_max_model_len[model] = limit
        return Tokenized(answer["count"], limit if isinstance(limit, int) else None)

    async def probe(
        self,
        model: str,
        messages: Sequence[Message],
        *,
        max_tokens: int,
        constraint: Constraint | None = None,
        top_logprobs: int | None = None,
    ) -> Completion:
        """One short request as a run would send it (system role adapted, the constraint and the
        logprobs it asks for), never degraded: what the server does with it is the answer. Counted
        under role ``preflight``; answers are cached like any other (a resumed run does not pay for
        its pre-flight twice), errors are not."""
        m = self._resolve(model)
        msgs = self.adapted(model, messages)
        usage = self.usage[("preflight", model)]
        gen = self._configs[model].generation
        body: dict[str, Any] = {"temperature": 0.0, "max_tokens": max_tokens, "seed": gen.seed}
        key = cache_key(
            model=model,
            served=m.config.served_name,
            messages=msgs,
            params={**body, "preflight": True},
            constraint=constraint.key() if constraint else None,
            sample=0,
            **({} if top_logprobs is None else {"top_logprobs": top_logprobs}),
        )
        hit = self._cached(model, key, usage)
        if hit is not None:
            return hit
        if top_logprobs is not None:
            body |= {"logprobs": True, "top_logprobs": top_logprobs}
        extra = constraint.request_fields() if constraint else {}

        async def send(replica: _Replica) -> Any:
            request = {"model": m.config.served_name, "messages": msgs, **body, **extra}
            return await replica.post(f"{replica.base_url}/chat/completions", request)

        def not_transport(e: Exception) -> bool:
            if extra and grammar_failure(e):
                raise e  # the constraint's fault: said at once, not retried as a transport fault
            return False

        completion: Completion = await self._retrying(
            m,
            usage,
            send,
            degrade=not_transport,
            accept=lambda resp, latency: self._accept(
                m, key, usage, resp, latency, top_logprobs is not None, _chars(msgs)
            ),
        )
        return completion

    def _backoff(self, attempt: int, error: Exception) -> float:
        retry_after = _retry_after(error)
        if retry_after is not None:
            return min(retry_after, self.backoff_cap_s * 4)
        return random.uniform(0.5, 1.0) * min(self.backoff_cap_s, self.backoff_base_s * 2**attempt)

    def usage_table(self) -> list[dict]:
        """One row per (role, model): requests, tokens, retries, failures, latency and ``cost_usd``
        (at the model's prices; None for a model without prices)."""
        rows = []
        for (role, model), u in sorted(self.usage.items()):
            cfg = self._configs.get(model)
            cost = self._cost(cfg, u.prompt_tokens, u.completion_tokens) if cfg is not None else None
            rows.append({"role": role, "model": model, **vars(u), "cost_usd": None if cost is None else round(cost, 6)})
        return rows

    async def aclose(self) -> None:
        """Close every HTTP client and the response cache; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for queue in self._batches.values():
            await queue.aclose()
        for m in self._models.values():
            for r in m.replicas:
                await r.aclose()
        for r in self._retired:
            await r.aclose()
        if self.cache is not None:
            self.cache.close()


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _first_bad(text: str) -> int:
    """1-based position of the first character UTF-8 cannot encode (a lone surrogate)."""
    return next((i for i, ch in enumerate(text, 1) if "\ud800" <= ch <= "\udfff"), 0)


def _check_encodable(msgs: Sequence[Message], model: str) -> None:
    for i, msg in enumerate(msgs):
        if not _encodable(msg["content"]):
            raise UnencodableText(
                f"message {i} ({msg['role']}) for model {model!r} holds text that is not valid Unicode "
                f"(a lone surrogate at character {_first_bad(msg['content'])}); it cannot be sent"
            )


def _record(answer: Any, with_logprobs: bool) -> tuple[dict, list[dict[str, float]] | None]:
    """The cache record of a chat completion's JSON (text, tokens, finish reason, logprobs when asked for).

    Raises:
        _Garbage: the answer has no message content (or is not shaped like a chat completion).
    """
    try:
        choice = answer["choices"][0]
        text = choice["message"]["content"]
    except (KeyError, IndexError, TypeError):
        text = None
    if not isinstance(text, str):
        raise _Garbage("response had no message content")
    usage = answer.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    record: dict[str, Any] = {
        "text": text,
        "prompt_tokens": _count(usage.get("prompt_tokens")),
        "completion_tokens": _count(usage.get("completion_tokens")),
        "finish_reason": choice.get("finish_reason"),
    }
    logprobs = _top_logprobs(choice) if with_logprobs else None
    if with_logprobs:
        record["top_logprobs"] = logprobs
    return record, logprobs


def _count(value: Any) -> int | None:
    """A token count as the server sent it; None when it sent none (or not a number)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _top_logprobs(choice: dict) -> list[dict[str, float]] | None:
    """``choice.logprobs.content`` -> one ``token -> logprob`` dict per generated token (the
    chosen token always included), or None when the server sent none.

    Raises:
        _Garbage: the logprobs are not shaped as the OpenAI API sends them.
    """
    logprobs = choice.get("logprobs")
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not content:
        return None
    out = []
    try:
        for pos in content:
            # tokens may be partial UTF-8 sequences (lone surrogates after JSON decoding): keep them storable
            entry = {_safe(t["token"]): t["logprob"] for t in pos.get("top_logprobs") or []}
            entry.setdefault(_safe(pos["token"]), pos["logprob"])
            out.append(entry)
    except (KeyError, TypeError, AttributeError) as e:
        raise _Garbage(f"logprobs not shaped as the API sends them ({type(e).__name__}: {e})") from None
    return out


def _safe(token: str) -> str:
    return token if _encodable(token) else token.encode("utf-8", "backslashreplace").decode("utf-8")


def _pooled_reward(answer: Any) -> tuple[float, int | None]:
    """(reward, prompt tokens or None) of a vLLM ``/pooling`` answer: ``data[0].data`` is ``[value, ...]``
    for a sequence classifier (the first label is the reward) or one such row per token for a per-token
    reward head (the last token's row).

    Raises:
        _Garbage: the answer holds no number where the reward should be.
    """
    try:
        pooled = answer["data"][0]["data"]
        if pooled and isinstance(pooled[-1], list):  # token_classify: one row per token
            pooled = pooled[-1]
        value = pooled[0]
    except (KeyError, IndexError, TypeError) as e:
        raise _Garbage(f"pooling answer without a reward ({type(e).__name__}: {e})") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise _Garbage(f"pooling answer with a reward that is not a number: {value!r}")
    usage = answer.get("usage") if isinstance(answer, dict) else None
    tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    return float(value), tokens if isinstance(tokens, int) else None


class _Garbage(Exception):
    """A 200 answer without usable content: retried like a transient fault (messages say so in words)."""


def _chars(msgs: Sequence[Mapping[str, Any]]) -> int:
    return sum(len(x["content"]) for x in msgs)


def item_failure(e: Exception) -> str | None:
    """Faults that belong to one item (recorded, the run goes on; scrubbed of secrets); None = fatal for the run."""
    if isinstance(e, ItemFault):
        return secrets.scrub(str(e))
    if isinstance(e, openai.BadRequestError):
        return f"request rejected (HTTP 400): {server_text(e)}"
    return None


def server_text(e: Exception, limit: int = 500) -> str:
    """The server's own words in an HTTP error (``error.message``, a plain ``error`` or ``detail``
    string as text-generation-inference and FastAPI send, else the body), on one line, scrubbed of
    secrets, at most ``limit`` characters."""
    body = getattr(e, "body", None)
    text: str | None = None
    if isinstance(body, dict):
        for field_name in ("message", "error", "detail", "msg"):
            value = body.get(field_name)
            if isinstance(value, dict) and isinstance(value.get("message"), str):
                value = value["message"]
            if isinstance(value, str) and value.strip():
                text = value
                break
            if isinstance(value, list) and value:
                text = json.dumps(value, ensure_ascii=False)
                break
        if text is None:
            text = json.dumps(body, ensure_ascii=False)
    elif isinstance(body, str) and body.strip():
        text = body
    if not text:
        response = getattr(e, "response", None)
        try:
            text = response.text if response is not None else ""
        except Exception:
            text = ""
    text = secrets.scrub(" ".join((text or "").split()))  # scrub before cutting: a cut key would not match
    if not text:
        return "(the server sent no error text)"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe(e: BaseException | None, config: ModelConfig | None = None) -> str:
    """A fault in words for messages: never an empty ``TimeoutError: .``, never an internal class name."""
    if e is None:
        return "no answer"
    if isinstance(e, (openai.APITimeoutError, TimeoutError, asyncio.TimeoutError)):
        limit = f" within timeout_s={config.timeout_s:g} s" if config is not None else ""
        return f"timed out: no complete answer{limit}"
    if isinstance(e, openai.APIStatusError):
        return f"HTTP {e.status_code}: {server_text(e)}"
    if isinstance(e, openai.APIConnectionError):
        cause = e.__cause__
        return secrets.scrub(f"connection failed ({cause or e})" if str(cause or "") else "connection failed")
    if isinstance(e, _Garbage):
        return f"answered without message content ({e})"
    if isinstance(e, json.JSONDecodeError):
        return f"the answer is not valid JSON ({e})"
    if isinstance(e, UnicodeDecodeError):
        return f"the answer is not valid UTF-8 ({e.reason} at byte {e.start})"
    text = str(e)
    return secrets.scrub(f"{type(e).__name__}: {text}" if text else type(e).__name__)


def grammar_failure(e: Exception) -> bool:
    """A constrained request the server failed to compile or apply (500 or 400 naming the grammar)."""
    return (
        isinstance(e, openai.APIStatusError) and e.status_code in (400, 500) and bool(_GRAMMAR.search(server_text(e)))
    )


def _fault_by_meaning(model: str, url: str, e: Exception) -> Exception | None:
    """An HTTP error classified by what the server says, not by status alone: the request's own
    fault (the item fails), or a fault of the run (model not served, quota): None = neither
    (retryable, credentials and other refusals are handled as before)."""
    if not isinstance(e, openai.APIStatusError):
        return None
    status, text = e.status_code, server_text(e)
    if status == 404 or (status in (400, 422) and _MODEL_MISSING.search(text)):
        return ModelNotFound(
            f"model {model!r} is not served at {url} (HTTP {status}): {text}; check models.{model}.served_name "
            "against the server's /v1/models"
        )
    if status in (402, 403, 429) and _QUOTA.search(text):
        return QuotaExhausted(f"model {model!r} at {url}: quota or billing limit reached (HTTP {status}): {text}")
    if status in (400, 413, 422):
        return RequestRejected(f"request rejected (HTTP {status}): {text}")
    return None


def _retryable(e: Exception) -> bool:
    if isinstance(
        e, (_Garbage, openai.APITimeoutError, openai.APIConnectionError, httpx.TransportError, asyncio.TimeoutError)
    ):
        return True
    if isinstance(e, openai.APIStatusError):
        return e.status_code in RETRYABLE_STATUS
    # a body that is not JSON (truncated, non-UTF-8) surfaces as a decode error from the SDK; other
    # ValueErrors (e.g. text that cannot be encoded) are no transport fault and are not retried
    return isinstance(e, (json.JSONDecodeError, UnicodeDecodeError))


def _retry_after(e: Exception) -> float | None:
    response = getattr(e, "response", None)
    if response is None:
        return None
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


_STATUS_ERRORS: dict[int, type[openai.APIStatusError]] = {
    400: openai.BadRequestError,
    401: openai.AuthenticationError,
    403: openai.PermissionDeniedError,
    404: openai.NotFoundError,
    409: openai.ConflictError,
    422: openai.UnprocessableEntityError,
    429: openai.RateLimitError,
}


def _status_error(url: str, status: int, headers: Mapping[str, str], raw: bytes) -> openai.APIStatusError:
    """An HTTP error answer as the openai SDK raises it: the class by status, ``body`` the JSON's
    ``error`` object (else the whole JSON, else the text), ``response`` with the status and headers
    (``Retry-After``), ``request`` with the URL."""
    text = raw.decode("utf-8", "replace").strip()
    body: object = text
    message = f"Error code: {status}"
    try:
        body = json.loads(text)
    except ValueError:
        pass
    else:
        error = body.get("error", body) if isinstance(body, dict) else None
        said = error.get("message") if isinstance(error, dict) else None
        if isinstance(said, str) and said:
            message += f" - {said}"
    data = body.get("error", body) if isinstance(body, dict) else body
    response = httpx.Response(status, headers=list(headers.items()), content=raw, request=httpx.Request("POST", url))
    cls = _STATUS_ERRORS.get(status) or (openai.InternalServerError if status >= 500 else openai.APIStatusError)
    return cls(message, response=response, body=data)  # type: ignore[arg-type]


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """The trust store of the SDK's httpx client (certifi's), for HTTPS endpoints."""
    try:
        import certifi

        return ssl.create_default_context(cafile=certifi.where())
    except ImportError:
        return ssl.create_default_context()
