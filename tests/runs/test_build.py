"""The main job on the in-process fake server (fast); the real-vLLM run is tests/test_e2e_vllm.py."""

from __future__ import annotations

import asyncio
import json

import pytest

from mapo.core.config import ClientConfig, ConfigError, PromptSourceConfig, RolesConfig, RunConfig
from mapo.runs.build import build
from mapo.runs.runner import run_pool
from tests.conftest import fake_model


def run_config(server, tmp_path, **kw) -> RunConfig:
    models = {name: fake_model(server) for name in ("gen", "rev", "rev2", "judge")}
    cfg = RunConfig(
        models=models,
        roles=RolesConfig(generator="gen", reviewers=["rev"], judge="judge"),
        prompts=PromptSourceConfig(source="builtin", limit=6),
        client=ClientConfig(cache_path=str(tmp_path / "cache.sqlite"), progress="off"),
        output_dir=str(tmp_path / "run"),
        max_items_in_flight=4,
    )
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


async def test_build_writes_every_record_once(fake_server, tmp_path):
    cfg = run_config(fake_server, tmp_path)
    manifest = await build(cfg)
    run = tmp_path / "run"
    sels = lines(run / "selections.jsonl")
    assert len({s["key"] for s in sels}) == 6
    gens = lines(run / "generations.jsonl")
    assert all(len(g["iterations"]) == 3 for g in gens)
    dpo = lines(run / "dpo.jsonl")
    kto = lines(run / "kto.jsonl")
    decided = [s for s in sels if s["best"] is not None]
    assert len(kto) == 3 * len(decided)
    assert manifest["rows"]["kto"] == len(kto) and manifest["rows"]["dpo"] == len(dpo)
    assert manifest["items"]["done"] == 6
    roles = {u["role"] for u in manifest["usage"]}
    assert roles == {"generator", "reviewer", "judge"}


async def test_rerun_resumes_without_requests(fake_server, tmp_path):
    cfg = run_config(fake_server, tmp_path)
    await build(cfg)
    sent = fake_server.completed
    before = (tmp_path / "run" / "dpo.jsonl").read_text()
    manifest = await build(run_config(fake_server, tmp_path))
    assert fake_server.completed == sent
    assert manifest["throughput"]["requests"] == 0
    assert (tmp_path / "run" / "dpo.jsonl").read_text() == before


async def test_two_reviewers_use_the_double_feedback_message(fake_server, tmp_path):
    cfg = run_config(
        fake_server, tmp_path, roles=RolesConfig(generator="gen", reviewers=["rev", "rev2"], judge="judge")
    )
    await build(cfg)
    gens = lines(tmp_path / "run" / "generations.jsonl")
    assert all(len(it["reviews"]) == 2 for g in gens for it in g["iterations"])


async def test_unknown_role_model_fails_before_any_call(fake_server, tmp_path):
    cfg = run_config(fake_server, tmp_path, roles=RolesConfig(generator="gen", reviewers=["rev"], judge="nobody"))
    with pytest.raises(ConfigError, match="roles.judge='nobody'"):
        await build(cfg)
    assert fake_server.n == 0


async def test_run_pool_bounds_in_flight_and_propagates_errors():
    live = peak = 0

    async def work(i):
        nonlocal live, peak
        live += 1
        peak = max(peak, live)
        await asyncio.sleep(0.01)
        live -= 1
        if i == 30:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await run_pool(range(100), work, 5)
    assert peak == 5
