"""A reward model in the run commands, against the fake server's pooling route: ``mapo build`` selecting
best-of-N with ``roles.judge=<rm>`` (one override), ``mapo evaluate evaluator=reward`` through the real
Hydra CLI (records, agreement, resume, ``mapo agreement``, report), and ``mapo winrate`` judged by it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from mapo.core.config import ClientConfig, ConfigError, PromptSourceConfig, RolesConfig, RunConfig, SelectionConfig
from mapo.runs.build import build
from mapo.runs.reparse import reparse_run
from mapo.runs.winrate import winrate
from tests.conftest import REPO, fake_model
from tests.fake_openai import FakeServer
from tests.runs.test_evaluate import mapo, records
from tests.runs.test_winrate import run_config as winrate_config


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def build_config(server: FakeServer, tmp_path: Path, **kw) -> RunConfig:
    models = {name: fake_model(server) for name in ("gen", "rev")}
    models["rm"] = fake_model(server, pooling="classify")
    cfg = RunConfig(
        models=models,
        roles=RolesConfig(generator="gen", reviewers=["rev"], judge="rm"),
        prompts=PromptSourceConfig(source="builtin", limit=4),
        client=ClientConfig(cache_path=str(tmp_path / "cache.sqlite"), progress="off"),
        output_dir=str(tmp_path / "run"),
        max_items_in_flight=4,
    )
    for k, v in kw.items():
        setattr(cfg, k, v)
    cfg.check()
    return cfg


@pytest.mark.parametrize("method", ["tournament", "score_all"])
async def test_build_selects_best_of_n_by_a_reward_model_and_resumes(fake_server, tmp_path, method):
    cfg = build_config(fake_server, tmp_path, selection=SelectionConfig(method=method))
    manifest = await build(cfg)
    run = tmp_path / "run"
    assert manifest["status"] == "complete"
    sels = lines(run / "selections.jsonl")
    gens = {g["key"]: g for g in lines(run / "generations.jsonl")}
    assert len(sels) == 4 and all(s["best"] is not None for s in sels)
    for s in sels:
        rewards = [len(it["response"].split()) / 10 for it in gens[s["key"]]["iterations"]]  # the fake's rule
        assert rewards[s["best"]] == max(rewards)  # the highest reward is chosen (ties: the earliest)
        assert s["best"] == rewards.index(max(rewards))
    dpo = lines(run / "dpo.jsonl")
    assert dpo and all(r["chosen_score"] > r["rejected_score"] for r in dpo)  # a tie never makes a pair
    usage = {(u["role"], u["model"]): u for u in manifest["usage"]}
    assert usage[("judge", "rm")]["requests"] == 4 * 3  # every response scored once (cached in a tournament)
    assert all(b["task"] == "classify" for b in fake_server.pooled)
    assert "reward.tie_margin" in (run / "fingerprint.json").read_text()
    sent = fake_server.n
    manifest = await build(build_config(fake_server, tmp_path, selection=SelectionConfig(method=method)))
    assert fake_server.n == sent and manifest["throughput"]["requests"] == 0
    summary = reparse_run(run)  # nothing to re-parse in a reward: the choice stands
    assert summary["selections.jsonl"]["changed"] == 0


async def test_build_with_a_tie_margin_writes_no_pair_from_rewards_too_close(tmp_path):
    with FakeServer(rewarder=lambda body: 1.0) as server:  # every response gets the same reward
        manifest = await build(build_config(server, tmp_path))
    assert manifest["status"] == "complete"
    assert not (tmp_path / "run" / "dpo.jsonl").read_text().strip()  # equal rewards: no preference, no pair


async def test_winrate_judged_by_a_reward_model(fake_server, tmp_path):
    cfg = winrate_config(fake_server, tmp_path)
    cfg.models["judge"] = fake_model(fake_server, served_name="judge", pooling="classify")
    cfg.check()
    manifest = await winrate(cfg)
    assert manifest["status"] == "complete"
    judgements = lines(tmp_path / "run" / "judgements.jsonl")
    assert len(judgements) == 16 and all(j["setup"] == "reward/margin0" for j in judgements)
    assert all(j["strategy"] == "reward" and j["scale"] is None for j in judgements)
    decided = [j for j in judgements if not j["identical"]]
    assert decided and all(j["detail"]["reward_a"] == j["score_a"] for j in decided)
    assert all(j["outcome"] == {"model_a": "win", "model_b": "loss", "tie": "tie"}[j["label"]] for j in decided)
    table = json.loads((tmp_path / "run" / "winrate.json").read_text())
    assert table["rows"] == ["gen+rev", "gen alone"]


def rm_conf(server: FakeServer, folder: Path) -> Path:
    """A conf/model entry for a reward model on ``server``, in a folder Hydra searches (as a trained model's)."""
    (folder / "model").mkdir(parents=True, exist_ok=True)
    (folder / "model" / "rm.yaml").write_text(
        f"# @package models\nrm:\n  served_name: fake\n  base_url: {server.base_url}\n  pooling: classify\n"
    )
    return folder


def rm_args(server: FakeServer, tmp_path: Path) -> tuple[str, ...]:
    conf = rm_conf(server, tmp_path / "conf")
    return (f"hydra.searchpath=[file://{conf}]", "model=[smollm2-135m,gemma3-270m,rm]", "roles.judge=rm")


def test_evaluate_evaluator_reward_records_agreement_resume_and_report(fake_server, tmp_path):
    proc = mapo(fake_server, tmp_path, "evaluator=reward", "reward.tie_margin=0.05", *rm_args(fake_server, tmp_path))
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = tmp_path / "run"
    recs = records(run)
    assert len(recs) == 6 and {r["kind"] for r in recs} == {"reward"} and {r["order"] for r in recs} == {"AB"}
    r = recs[0]
    assert (r["judge"], r["setup"], r["prompt_sha"], r["strategy"], r["evaluator"]) == (
        "rm",
        "reward/margin0.05",
        "none",
        "reward",
        "reward",
    )
    # the fake's reward: a tenth per word; "Answer B to i, longer." has one word more than "Answer A to i."
    assert all((x["score_a"], x["score_b"], x["label"]) == (0.4, 0.5, "model_b") for x in recs)
    assert all(x["detail"]["reward_a"] == 0.4 and x["detail"]["tie_margin"] == 0.05 for x in recs)
    agreement = json.loads((run / "agreement.json").read_text())
    (main,) = agreement["results"]
    assert main["kind"] == "reward" and main["n"] == 6 and main["kappa_ci"] is not None
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["agreement"]["n"] == 6
    assert {(u["role"], u["model"]) for u in manifest["usage"]} == {("judge", "rm")}
    sent = fake_server.n
    assert sent == 12  # two responses scored per item
    again = mapo(fake_server, tmp_path, "evaluator=reward", "reward.tie_margin=0.05", *rm_args(fake_server, tmp_path))
    assert again.returncode == 0 and fake_server.n == sent, "a resumed run sends no request"
    changed = mapo(fake_server, tmp_path, "evaluator=reward", "reward.tie_margin=0.2", *rm_args(fake_server, tmp_path))
    assert changed.returncode != 0 and "reward.tie_margin" in changed.stdout + changed.stderr  # changes verdicts
    # `mapo agreement` and the report treat it like any judge
    agree = subprocess.run(
        [*_mapo_bin(), "agreement", str(run / "judgements.jsonl"), "--out", str(tmp_path / "agree.json")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert agree.returncode == 0, agree.stderr[-3000:]
    table = json.loads((tmp_path / "agree.json").read_text())
    assert [e["judge"] for e in table["results"]] == ["rm"] and table["results"][0]["kind"] == "reward"
    report = subprocess.run([*_mapo_bin(), "report", str(run)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    md = (run / "report" / "report.md").read_text()
    assert "rm" in md and "reward/margin0.05" in md
    board = subprocess.run(
        [*_mapo_bin(), "leaderboard", str(run), "--out", str(tmp_path / "board")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert board.returncode == 0, board.stderr[-3000:]
    assert "rm" in (tmp_path / "board" / "leaderboard.md").read_text()
    assert reparse_run(run)["judgements.jsonl"]["records"] == 6  # kept, none dropped


def test_evaluator_reward_on_a_chat_model_fails_before_any_call(fake_server, tmp_path):
    proc = mapo(fake_server, tmp_path, "evaluator=reward", "roles.judge=smollm2-135m")
    assert proc.returncode == 2 and fake_server.n == 0
    assert "roles.judge='smollm2-135m' is not a reward model" in proc.stdout + proc.stderr


def _mapo_bin() -> list[str]:
    from tests.runs.test_evaluate import MAPO

    return [MAPO]


def test_a_reward_model_with_the_batch_api_is_refused():
    cfg = fake_model(FakeServer(), pooling="classify")
    cfg.batch.enabled = True
    with pytest.raises(ConfigError, match=r"models.rm.batch.enabled: a reward model"):
        cfg.check("models.rm")
