"""LLMs-as-a-jury on the fake server: aggregation rules, ties, failed jurors, warnings."""

from __future__ import annotations

import logging

import pytest

from mapo.core.config import ConfigError, JudgeConfig, JuryConfig
from mapo.judging.jury import Jury
from mapo.llm.client import LLMClient
from tests.conftest import fake_model
from tests.fake_openai import FakeServer

# what each juror (by served name) answers: a score pair, or garbage
SCRIPT = {"j1": (8, 2), "j2": (8, 3), "j3": (1, 9), "j4": (5, 5), "bad": None}


def _score_text(pair):
    if pair is None:
        return "I refuse to give numbers."
    a, b = pair
    return f"### Evaluation Evidence:\nok\n\n### Score Assistant A:\n{a}/10\n\n### Score Assistant B:\n{b}/10"


def _pick_text(pair):
    if pair is None:
        return "no idea"
    a, b = pair
    return f"### Evaluation Evidence:\nok\n\n### Answer:\n{'A' if a > b else 'B' if b > a else 'C'}"


def responder(body):
    pair = SCRIPT[body["model"]]
    system = body["messages"][0]["content"]
    return _pick_text(pair) if "### Answer" in system else _score_text(pair)


@pytest.fixture
def server():
    with FakeServer(responder=responder) as s:
        yield s


def client_for(server) -> LLMClient:
    return LLMClient({name: fake_model(server, served_name=name) for name in SCRIPT})


async def judge(server, jurors, judge_cfg=None, jury_cfg=None, **kw):
    client = client_for(server)
    try:
        jury = Jury(client, jurors, judge_cfg or JudgeConfig(), jury_cfg or JuryConfig(), **kw)
        return await jury.judge_pair("q?", "first answer", "second answer")
    finally:
        await client.aclose()


async def test_mode_takes_the_most_common_pick_and_keeps_every_juror(server):
    j = await judge(server, ["j1", "j2", "j3"])
    assert j.label == "model_a" and j.ok and j.n_failed == 0
    assert [m.judge for m in j.members] == ["j1", "j2", "j3"]
    assert [m.label for m in j.members] == ["model_a", "model_a", "model_b"]
    assert j.score_a == pytest.approx((8 + 8 + 1) / 3) and j.score_b == pytest.approx((2 + 3 + 9) / 3)
    assert len(j.raw) == 3 and all("Score Assistant A" in t for t in j.raw)
    assert j.to_record()["members"][2]["attempts"][0]["raw"] == [_score_text(SCRIPT["j3"])]


async def test_a_multi_way_mode_is_a_tie(server):
    j = await judge(server, ["j1", "j3", "j4"])  # model_a, model_b, tie
    assert j.label == "tie" and j.failure is None


async def test_failed_jurors_abstain_and_are_counted(server):
    j = await judge(server, ["j1", "j2", "bad"])
    assert j.label == "model_a" and j.n_failed == 1
    bad = j.members[2]
    assert not bad.ok and bad.label is None and len(bad.attempts[0].raw) == 2  # asked, then re-asked once
    # a failed juror is never a tie: 1 vs 1 among the answering jurors is the tie, not the failure
    j = await judge(server, ["j1", "j3", "bad"])
    assert j.label == "tie" and j.n_failed == 1


async def test_every_juror_failing_is_a_failure_not_a_tie(server):
    client = client_for(server)
    try:
        jury = Jury(client, ["bad"], JudgeConfig(reask=0), JuryConfig())
        j = await jury.judge_pair("q", "a", "b")
    finally:
        await client.aclose()
    assert j.label is None and not j.ok and "every juror failed" in j.failure


async def test_majority_tie_break_first_juror_and_the_even_jury_warning(server, caplog):
    with caplog.at_level(logging.WARNING, logger="mapo.judging.jury"):
        j = await judge(server, ["j3", "j1"], jury_cfg=JuryConfig(aggregate="majority", tie_break="first_juror"))
    assert j.label == "model_b"  # 1-1 split: the first juror decides
    assert "even number of members (2)" in caplog.text
    j = await judge(server, ["j3", "j1"], jury_cfg=JuryConfig(aggregate="majority", tie_break="tie"))
    assert j.label == "tie"
    j = await judge(server, ["j3", "j1"], jury_cfg=JuryConfig(aggregate="majority", tie_break="first"))
    assert j.label == "model_b" and j.tie_break == "first_juror"  # the old spelling: one vocabulary


async def test_mean_score_aggregates_scores(server):
    # picks A, B, tie (the mode would be a tie), but the mean scores decide: a = 14/3 < b = 16/3
    j = await judge(server, ["j1", "j3", "j4"], jury_cfg=JuryConfig(aggregate="mean_score"))
    assert j.label == "model_b"
    j = await judge(server, ["j1", "j2", "j4"], jury_cfg=JuryConfig(aggregate="mean_score"))
    assert j.label == "model_a" and j.score_a == pytest.approx(7.0)


async def test_direct_strategy_jury(server):
    j = await judge(server, ["j1", "j2", "j3"], judge_cfg=JudgeConfig(strategy="direct"))
    assert j.label == "model_a" and j.score_a is None


async def test_self_judging_warning(server, caplog):
    with caplog.at_level(logging.WARNING, logger="mapo.judging.jury"):
        await judge(server, ["j1", "j2", "j3"], producers=["J2", "someone-else"])
    assert "juror j2 also produced a response it judges" in caplog.text


@pytest.mark.parametrize(
    "jurors, judge_cfg, jury_cfg, match",
    [
        ([], JudgeConfig(), JuryConfig(), "roles.jurors is empty"),
        (["j1", "j1", "j2"], JudgeConfig(), JuryConfig(), "more than once"),
        (["j1", "j2", "j3"], JudgeConfig(strategy="direct"), JuryConfig(aggregate="mean_score"), "needs scores"),
        (["j1", "j2", "j3"], JudgeConfig(), JuryConfig(tie_break="coin"), "jury.tie_break"),
    ],
)
async def test_bad_jury_configs_fail_before_any_call(server, jurors, judge_cfg, jury_cfg, match):
    with pytest.raises(ConfigError, match=match):
        await judge(server, jurors, judge_cfg, jury_cfg)
    assert server.n == 0


async def test_unknown_aggregate_names_the_key(server):
    with pytest.raises(ConfigError, match="jury.aggregate='median'; allowed: mode, majority, mean_score"):
        await judge(server, ["j1", "j2", "j3"], jury_cfg=JuryConfig(aggregate="median"))
