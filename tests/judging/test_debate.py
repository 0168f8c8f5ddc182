"""LLM debate on the fake server: turn order, history, finals, aggregation, debaters config."""

from __future__ import annotations

import pytest

from mapo.core.config import ConfigError, DebateConfig
from mapo.judging.debate import Debate, role_title
from mapo.llm.client import LLMClient
from tests.conftest import fake_model
from tests.fake_openai import FakeServer

ROLES = ["general_public", "psychologist", "critic"]


class Script:
    """Discussion turns say who spoke; finals give per-role scripted scores."""

    def __init__(self, finals: dict[str, str]):
        self.finals = finals
        self.requests: list[dict] = []

    def __call__(self, body: dict) -> str:
        self.requests.append(body)
        user = body["messages"][1]["content"]
        last = body["messages"][-1]["content"]
        for role in ROLES:
            if f"{role_title(role)}, give your final scores" in last:
                return self.finals[role]
            if f"You are now {role_title(role)}," in user:
                return f"{role} turn {sum(f'You are now {role_title(role)},' in r['messages'][1]['content'] for r in self.requests)}"
        raise AssertionError(f"unexpected request: {last[:200]}")


def pair(a, b):
    return f"Thinking it over.\nAssistant 1: {a}/10\nAssistant 2: {b}/10"


async def run(finals, debaters=("m1",), **cfg):
    script = Script(finals)
    with FakeServer(responder=script) as server:
        client = LLMClient({m: fake_model(server, served_name=m) for m in ("m1", "m2", "m3")})
        try:
            debate = Debate(client, list(debaters), DebateConfig(**cfg))
            result = await debate.judge_pair("Why is the sky blue?", "Rayleigh scattering.", "Because.")
        finally:
            await client.aclose()
    return result, script


FINALS = {"general_public": pair(8, 2), "psychologist": pair(2, 3), "critic": pair(5, 5)}


async def test_roles_speak_in_turn_and_see_the_history():
    result, script = await run(FINALS)
    turns = [(u.role, u.round) for u in result.utterances]
    assert turns == [(r, k) for k in range(2) for r in ROLES]
    discussion = script.requests[:6]
    assert "(none yet)" in discussion[0]["messages"][1]["content"]
    for i, req in enumerate(discussion):
        user = req["messages"][1]["content"]
        # every earlier turn, in order, labelled with its speaker; no later turn
        earlier = [f"[{role_title(u.role)}]: {u.text}" for u in result.utterances[:i]]
        positions = [user.index(e) for e in earlier]
        assert positions == sorted(positions)
        assert all(u.text not in user for u in result.utterances[i:])
        assert "Rayleigh scattering." in user and "Because." in user
        assert req["messages"][0]["role"] == "system" and "referees" in req["messages"][0]["content"]
    # finals: one per role, each after the whole discussion, asking for both scores
    finals = script.requests[6:]
    assert len(finals) == 3
    for req in finals:
        assert all(u.text in req["messages"][1]["content"] for u in result.utterances)
        assert "Assistant 1: X/10" in req["messages"][-1]["content"]
    assert [f.role for f in result.finals] == ROLES
    assert len(result.raw) == 9


async def test_mean_score_aggregate():
    result, _ = await run(FINALS)
    assert result.score_a == pytest.approx(5.0) and result.score_b == pytest.approx(10 / 3)
    assert result.label == "model_a" and result.ok and result.n_failed == 0


async def test_votes_aggregate_three_way_mode_is_a_tie():
    result, _ = await run(FINALS, aggregate="votes")  # A, B, tie
    assert result.label == "tie"
    result, _ = await run({**FINALS, "critic": pair(1, 7)}, aggregate="votes")  # A, B, B
    assert result.label == "model_b"


async def test_an_unparseable_final_abstains_and_is_counted():
    result, script = await run({**FINALS, "psychologist": "I cannot decide."})
    assert result.n_failed == 1 and result.label == "model_a"
    psych = result.finals[1]
    assert not psych.ok and psych.score_a is None and len(psych.raw) == 2  # re-asked once
    assert result.score_a == pytest.approx(6.5)
    everyone = {r: "no scores" for r in ROLES}
    result, _ = await run(everyone)
    assert result.label is None and not result.ok and result.n_failed == 3


async def test_one_model_per_role():
    result, script = await run(FINALS, debaters=("m1", "m2", "m3"), rounds=1)
    assert [u.model for u in result.utterances] == ["m1", "m2", "m3"]
    assert [r["model"] for r in script.requests[:3]] == ["m1", "m2", "m3"]
    assert sorted(r["model"] for r in script.requests[3:]) == ["m1", "m2", "m3"]


async def test_zero_rounds_goes_straight_to_finals():
    result, script = await run(FINALS, rounds=0)
    assert result.utterances == [] and len(script.requests) == 3


@pytest.mark.parametrize("debaters", [("m1", "m2"), ("m1", "m2", "m3", "m1"), ()])
async def test_debaters_must_be_one_or_one_per_role(debaters):
    with pytest.raises(ConfigError, match="roles.debaters"):
        await run(FINALS, debaters=debaters)


async def test_bad_debate_configs():
    with pytest.raises(ConfigError, match="debate.aggregate"):
        await run(FINALS, aggregate="median")
    with pytest.raises(ConfigError, match="no prompt 'debate_role_judge'"):
        await run(FINALS, roles=["general_public", "judge"], debaters=("m1",))


class Counting(FakeServer):
    """Records the most requests in flight at once (each answer takes ``latency_s``)."""

    in_flight: int = 0
    peak: int = 0

    async def _chat(self, request):
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            return await super()._chat(request)
        finally:
            self.in_flight -= 1


async def test_debates_interleave_and_the_finals_are_asked_at_once():
    import asyncio

    # alone: the discussion goes one turn at a time; the three finals overlap. Each answer takes 0.5 s so that
    # the four debates below stay in step on a loaded CI machine (at 0.2 s one debate's finals could end before
    # another's began: peak 11 of 12 under load 11)
    with Counting(latency_s=0.5) as server:
        client = LLMClient({"m1": fake_model(server, served_name="m1", max_concurrency=32)})
        try:
            debate = Debate(client, ["m1"], DebateConfig(rounds=1))
            await debate.judge_pair("q?", "a", "b")
            assert server.n == 6 and server.peak == 3
            # four debates at once: no debate waits on another, so their turns share the server
            server.peak = 0
            await asyncio.gather(*(debate.judge_pair(f"q{i}?", "a", "b") for i in range(4)))
            assert server.peak >= 4 * 3  # the finals of all four together (each discussion turn: 4 in flight)
        finally:
            await client.aclose()
