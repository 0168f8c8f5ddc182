from __future__ import annotations

import os
from pathlib import Path

import pytest

from mapo.config import GenerationConfig, ModelConfig

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
    cfg = ModelConfig(served_name="fake", base_url=server.base_url, max_concurrency=8, timeout_s=5.0, max_retries=4,
                      generation=GenerationConfig(max_tokens=64))
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg
