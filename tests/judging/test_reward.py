"""The reward-model evaluator against the fake server's pooling route (vLLM's ``POST /pooling``):
the client call (cache, retries, accounting), pairs and ties under the margin, best-of-N selection.
(The run commands: tests/runs/test_reward_runs.py; real vLLM-CPU: tests/test_e2e_reward_vllm.py.)"""

from __future__ import annotations

import pytest

from mapo.core.config import ConfigError, RewardConfig
from mapo.generation.selection import score_all, tournament
from mapo.judging.base import NO_PROMPT, RecordContext
from mapo.judging.reward import RewardJudge, reward_label
from mapo.llm.cache import ResponseCache
from mapo.llm.client import LLMClient, RequestRejected
from tests.conftest import fake_model
from tests.fake_openai import FakeServer


def reward_client(server: FakeServer, tmp_path, **overrides) -> LLMClient:
    rm = fake_model(server, **{"pooling": "classify", **overrides})
    rm.check("models.rm")
    return LLMClient(
        {"rm": rm, "chat": fake_model(server)}, cache=ResponseCache(tmp_path / "c.sqlite"), backoff_base_s=0.01
    )


def rm_judge(client: LLMClient, tie_margin: float = 0.0) -> RewardJudge:
    return RewardJudge(client, "rm", RewardConfig(tie_margin=tie_margin))


CTX = RecordContext(item_id="q1", human="model_a", order="AB", version=1, evaluator="reward")


async def test_the_client_scores_a_conversation_through_pooling_cached_and_accounted(tmp_path):
    with FakeServer() as server:
        async with reward_client(server, tmp_path) as client:
            convo = [{"role": "user", "content": "q?"}, {"role": "assistant", "content": "REWARD=1.25 fine"}]
            r = await client.reward("rm", convo, role="judge")
            assert (r.value, r.cached) == (1.25, False)
            body = server.pooled[0]
            # the conversation rendered by the model's template, no generation prompt, raw reward (no sigmoid)
            assert body["messages"] == convo and body["task"] == "classify" and body["model"] == "fake"
            assert body["use_activation"] is False and body["add_generation_prompt"] is False
            again = await client.reward("rm", convo, role="judge")
            assert (again.value, again.cached, len(server.pooled)) == (1.25, True, 1)
            usage = client.usage[("judge", "rm")]
            assert (usage.requests, usage.cached, usage.prompt_tokens) == (1, 1, r.prompt_tokens)
            assert r.prompt_tokens > 0
            with pytest.raises(ConfigError, match=r"models.chat.pooling is not set"):
                await client.reward("chat", convo, role="judge")


async def test_per_token_rewards_take_the_last_token(tmp_path):
    with FakeServer() as server:
        async with reward_client(server, tmp_path, pooling="token_classify") as client:
            convo = [{"role": "user", "content": "q?"}, {"role": "assistant", "content": "REWARD=-2.5"}]
            assert (await client.reward("rm", convo, role="judge")).value == -2.5
            assert server.pooled[0]["task"] == "token_classify"


async def test_transient_faults_are_retried_and_a_rejected_request_fails_its_item(tmp_path):
    with FakeServer(faults=lambda n, body: "503" if n == 1 else ("garbage" if n == 2 else None)) as server:
        async with reward_client(server, tmp_path) as client:
            convo = [{"role": "user", "content": "q?"}, {"role": "assistant", "content": "REWARD=3"}]
            assert (await client.reward("rm", convo, role="judge")).value == 3.0
            assert client.usage[("judge", "rm")].retries == 2  # a 503 and a reward that is no number
    with FakeServer(faults=lambda n, body: "400") as server:
        async with reward_client(server, tmp_path / "b") as client:
            with pytest.raises(RequestRejected, match="HTTP 400"):
                await client.reward("rm", [{"role": "user", "content": "q"}], role="judge")


async def test_a_pair_is_judged_by_its_two_rewards_and_a_gap_under_the_margin_is_a_tie(tmp_path):
    with FakeServer() as server:
        async with reward_client(server, tmp_path) as client:
            j = await rm_judge(client).judge_pair("q?", "REWARD=2.0", "REWARD=0.5")
            assert (j.label, j.score_a, j.score_b, j.ok) == ("model_a", 2.0, 0.5, True)
            j = await rm_judge(client, tie_margin=1.0).judge_pair("q?", "REWARD=1.5", "REWARD=2.2")
            assert (j.label, j.score_a, j.score_b) == ("tie", 1.5, 2.2)  # closer than the margin: never a preference
            j = await rm_judge(client, tie_margin=1.0).judge_pair("q?", "REWARD=1.5", "REWARD=2.5")
            assert j.label == "model_b"  # a gap of exactly the margin decides
            j = await rm_judge(client).judge_pair("q?", "REWARD=1 x", "REWARD=1 y")
            assert j.label == "tie"  # equal rewards, margin 0
    assert reward_label(0.0, 0.0, 0.0) == "tie" and reward_label(0.1, 0.0, 0.0) == "model_a"


async def test_records_keep_each_raw_reward_and_invent_no_prompt(tmp_path):
    with FakeServer() as server:
        async with reward_client(server, tmp_path) as client:
            ev = rm_judge(client, tie_margin=0.25)
            assert (ev.name, ev.kind, ev.setup, ev.prompt_sha, ev.scale, ev.ordered) == (
                "rm",
                "reward",
                "reward/margin0.25",
                NO_PROMPT,
                None,
                False,
            )
            j = await ev.judge_pair("q?", "REWARD=0.75", "REWARD=0.25")
            (rec,) = j.records(CTX)
            assert rec["kind"] == "reward" and rec["evaluator"] == "reward" and rec["label"] == "model_a"
            assert rec["pick"] == "A" and rec["raw"] == [] and rec["failure"] is None
            assert rec["detail"] == {"reward_a": 0.75, "reward_b": 0.25, "margin": 0.5, "tie_margin": 0.25}
            assert rec["key"] == "q1|rm|reward/margin0.25|v1|none|AB"
            swapped = j.records(RecordContext("q1", "model_a", "BA", 1, "reward"))[0]  # dataset terms
            assert (swapped["label"], swapped["score_a"], swapped["detail"]["reward_a"]) == ("model_b", 0.25, 0.25)
            (failed,) = ev.failed_records(CTX, "request rejected (HTTP 400): too long")
            assert failed["label"] is None and failed["kind"] == "reward" and failed["key"] == rec["key"]


async def test_best_of_n_by_a_reward_model_tournament_and_score_all(tmp_path):
    responses = ["REWARD=0.5 a", "REWARD=2.0 b", "REWARD=1.9 c"]
    with FakeServer() as server:
        async with reward_client(server, tmp_path) as client:
            sel = await tournament(rm_judge(client, tie_margin=0.5), "q?", responses)
            assert sel.best == 1 and sel.failure is None
            losses = sel.losses()
            assert losses[0].decisive and not losses[2].decisive and losses[2].reason == "within_tie_margin"
            assert sel.judgements[0]["reward_a"] == 0.5 and sel.judgements[0]["reward_b"] == 2.0
            sel = await score_all(rm_judge(client, tie_margin=0.5), "q?", responses, skip=[0])
            assert (sel.best, sel.scores) == (1, [None, 2.0, 1.9])
            assert not sel.losses()[2].decisive and sel.losses()[2].reason == "within_tie_margin"
            sel = await score_all(rm_judge(client), "q?", responses)
            assert sel.best == 1 and sel.losses()[2].decisive and sel.losses()[0].margin == pytest.approx(1.5)
            # every response was scored once: a tournament's incumbent is not scored again (cache)
            assert len(server.pooled) == 3
