"""Judge packs through the Judge (fake server): each pack's published prompt goes out, its format
is parsed, an unreadable answer is re-asked and then recorded as a failure, and the constrained
pattern is sent where the server supports structured outputs."""

from __future__ import annotations

import pytest

from mapo.core.config import ConfigError, JudgeConfig
from mapo.judging.judge import Judge
from mapo.judging.packs import PACKS
from mapo.llm.cache import ResponseCache
from mapo.llm.client import LLMClient
from tests.conftest import fake_model
from tests.fake_openai import FakeServer

PRESETS = {
    "prometheus_relative": dict(strategy="prometheus_relative", prompt_set="prometheus"),
    "prometheus_absolute": dict(strategy="prometheus_absolute", prompt_set="prometheus", scale=5),
    "judgelm": dict(strategy="judgelm", prompt_set="judgelm"),
    "pandalm": dict(strategy="pandalm", prompt_set="pandalm"),
    "skywork_critic": dict(strategy="skywork_critic", prompt_set="skywork_critic"),
}


def judge_with(responder, tmp_path, structured=False, **cfg):
    server = FakeServer(responder=responder).start()
    model = fake_model(server, structured_output=structured)
    client = LLMClient({"j": model}, cache=ResponseCache(tmp_path / "c.sqlite"), backoff_base_s=0.01)
    return server, Judge(client, "j", JudgeConfig(**cfg))


def user(req) -> str:
    return next(m["content"] for m in req["messages"] if m["role"] == "user")


def first_shown(req, pack: str) -> str:
    text = user(req)
    marker = {
        "prometheus_relative": "###Response A:\n",
        "judgelm": "[The Start of Assistant 1's Answer]\n",
        "pandalm": "### Response 1:\n",
        "skywork_critic": "[The Start of Assistant A's Answer]\n",
    }[pack]
    return text.split(marker)[1].split("\n")[0]


ANSWERS = {  # the pack's format, preferring the response "good" wherever it is shown
    "prometheus_relative": lambda good_first: f"Feedback: one is right. [RESULT] {'A' if good_first else 'B'}",
    "judgelm": lambda good_first: ("9 4" if good_first else "4 9") + "\nthe good one is better",
    "pandalm": lambda good_first: ("1" if good_first else "2") + "\n\n### Reason: better.\n\n### Reference: x",
    "skywork_critic": lambda good_first: "[[A]]" if good_first else "[[B]]",
}


@pytest.mark.parametrize("pack", sorted(ANSWERS))
async def test_pairwise_pack_judges_both_orders(pack, tmp_path):
    seen = []

    def responder(req):
        seen.append(req)
        return ANSWERS[pack](first_shown(req, pack) == "good")

    server, judge = judge_with(responder, tmp_path, both_orders=True, **PRESETS[pack])
    j = await judge.judge_pair("q?", "bad", "good")
    assert j.ok and j.label == "model_b", j
    assert [a.order for a in j.attempts] == ["AB", "BA"]
    assert j.prompt_sha == judge.prompt_sha and len(j.prompt_sha) == 16
    # the published template went out (its own delimiters), no paper prompt
    assert all("### Evaluation Evidence" not in user(r) for r in seen)
    server.stop()


async def test_prometheus_absolute_scores_each_response_alone(tmp_path):
    def responder(req):
        text = user(req)
        assert "###Score Rubrics:\n[Does the model provide relevant" in text
        assert req["messages"][0]["content"].startswith("You are a fair judge assistant")
        return (
            "Feedback: good. [RESULT] 5" if "###Response to evaluate:\ngood" in text else "Feedback: weak. [RESULT] 2"
        )

    server, judge = judge_with(responder, tmp_path, both_orders=True, **PRESETS["prometheus_absolute"])
    j = await judge.judge_pair("q?", "bad", "good")
    assert (j.label, j.score_a, j.score_b) == ("model_b", 2.0, 5.0)
    assert len(j.attempts) == 1  # pointwise: no presentation order
    server.stop()


async def test_unreadable_answer_is_reasked_then_a_failure_never_a_tie(tmp_path):
    asks = []

    def responder(req):
        asks.append(req)
        return "Response 2 is better."  # PandaLM's own parser would call this a tie

    server, judge = judge_with(responder, tmp_path, reask=1, **PRESETS["pandalm"])
    j = await judge.judge_pair("q?", "x", "y")
    assert j.label is None and "not 1, 2 or Tie" in j.failure
    assert len(asks) == 2 and "could not be read" in asks[1]["messages"][-1]["content"]
    assert j.raw == ["Response 2 is better.", "Response 2 is better."]
    server.stop()


async def test_reask_recovers_a_missing_marker(tmp_path):
    def responder(req):
        reasked = len(req["messages"]) > 2
        return "Feedback: fine. [RESULT] 4" if reasked else "Feedback: fine. Score: 4"

    server, judge = judge_with(responder, tmp_path, reask=1, **PRESETS["prometheus_absolute"])
    j = await judge.judge_pair("q?", "x", "y")
    assert (j.label, j.score_a, j.score_b) == ("tie", 4.0, 4.0)
    assert j.raw.count("Feedback: fine. Score: 4") == 2  # each response's first answer, then its re-ask
    server.stop()


async def test_constraint_sent_where_supported(tmp_path):
    seen = []

    def responder(req):
        seen.append(req)
        return "[[B]]"

    server, judge = judge_with(responder, tmp_path, structured=True, **PRESETS["skywork_critic"])
    j = await judge.judge_pair("q?", "x", "y")
    assert j.label == "model_b"
    body = seen[0]
    regex = body.get("structured_outputs", {}).get("regex") or body.get("guided_regex")
    assert regex == "\\[\\[(A|B)\\]\\]", body
    server.stop()


def test_every_pack_is_a_strategy_with_its_prompts():
    from mapo.core.config import JudgeStrategy
    from mapo.core.prompts import load
    from mapo.judging.judge import STRATEGIES

    for name in PACKS:
        assert name in STRATEGIES.names() and JudgeStrategy(name) == name
    for name, preset in PRESETS.items():
        pack = PACKS[name]
        for f in (pack.system, pack.user, pack.reask, *([pack.rubric] if pack.rubric else [])):
            load(preset["prompt_set"], f)


def test_pack_config_checks_name_the_key():
    with pytest.raises(ConfigError, match=r"judge.scale: prometheus_absolute scores out of 5"):
        JudgeConfig(strategy="prometheus_absolute", scale=10).check()
    with pytest.raises(ConfigError, match=r"judge.explain"):
        JudgeConfig(strategy="judgelm", explain=False).check()


CANNED = {
    "skywork_critic": "[[B]]",
    "prometheus_absolute": "Feedback: helpful and correct. [RESULT] 4",
    "judgelm": "7 8\nAssistant 2 gives more detail.",
}


@pytest.mark.parametrize("preset", sorted(CANNED))
def test_mapo_evaluate_with_a_pack_reaches_agreement_and_the_leaderboard(tmp_path, preset):
    """`mapo evaluate judge=<pack>` end to end through the real CLI, then `mapo leaderboard`."""
    import json

    from mapo.report.leaderboard import main as leaderboard
    from tests.runs.test_evaluate import mapo, ok, records

    with FakeServer(responder=lambda req: CANNED[preset]) as server:
        ok(mapo(server, tmp_path, f"judge={preset}", "judge.both_orders=true"))
    recs = records(tmp_path / "run")
    assert recs and all(r["failure"] is None for r in recs), [r["failure"] for r in recs]
    assert {r["strategy"] for r in recs} == {preset}
    agreement = json.loads((tmp_path / "run" / "agreement.json").read_text())
    assert [e["judge"] for e in agreement["results"]] == ["smollm2-135m"]
    assert leaderboard([str(tmp_path / "run"), "--out", str(tmp_path / "board")]) == 0
    assert preset in (tmp_path / "board" / "leaderboard.csv").read_text()


async def test_mapo_build_selects_with_a_pack_judge(tmp_path):
    """`mapo build roles.judge=<pack model> judge=<pack>`: the pack picks the chosen response."""
    import dataclasses

    from mapo.runs.build import build
    from tests.fake_openai import default_responder
    from tests.runs.test_build import lines, run_config

    def responder(req):
        text = user(req)
        if "[[A]]" in text and "[The Start of Assistant A's Answer]" in text:  # Skywork-Critic's prompt
            return "[[B]]"
        return default_responder(req)

    with FakeServer(responder=responder) as server:
        cfg = run_config(server, tmp_path)
        cfg.judge = dataclasses.replace(cfg.judge, strategy="skywork_critic", prompt_set="skywork_critic")
        await build(cfg)
    sels = lines(tmp_path / "run" / "selections.jsonl")
    assert sels and all(s["best"] is not None for s in sels)  # a pick every time: no tie in this format
    assert all(j["strategy"] == "skywork_critic" for s in sels for j in s["judgements"]), sels[0].keys()
