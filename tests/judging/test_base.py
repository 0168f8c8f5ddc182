"""The evaluator interface: the one ask loop, records written by the judgements themselves, and
identities that let a run key, resume and record any evaluator without asking its type."""

from __future__ import annotations

import inspect

import pytest

from mapo.core.config import DebateConfig, JudgeConfig, JuryConfig
from mapo.core.parsers import PARSERS
from mapo.core.types import Verdict
from mapo.judging.base import Evaluator, RecordContext, ask, constraint_for
from mapo.judging.debate import Debate
from mapo.judging.judge import Attempt, Judge, PairJudgement
from mapo.judging.jury import Jury
from mapo.llm.client import LLMClient
from mapo.runs import evaluate
from tests.conftest import fake_model
from tests.fake_openai import FakeServer

CTX = RecordContext(item_id="q1", human="model_a", order="BA", version=3, evaluator="judge")


async def test_ask_re_asks_in_the_same_conversation_and_sums_the_accounting():
    seen = []

    def responder(req):
        seen.append(req["messages"])
        return "Answer: B" if len(req["messages"]) >= 5 else "hmm"

    with FakeServer(responder=responder) as server:
        client = LLMClient({"m": fake_model(server)})
        try:
            answer = await ask(
                client,
                "m",
                [{"role": "user", "content": "pick"}],
                role="judge",
                parse=PARSERS.get("pick"),
                reask=lambda: "again",
                reasks=3,
            )
            capped = await ask(
                client,
                "m",
                [{"role": "user", "content": "x"}],
                role="judge",
                parse=PARSERS.get("pick"),
                reask=lambda: "again",
                reasks=0,
            )
        finally:
            await client.aclose()
    assert answer.result.value == "B" and answer.raw == ["hmm", "hmm", "Answer: B"]
    assert [m["role"] for m in seen[2]] == ["user", "assistant", "user", "assistant", "user"]
    assert seen[2][-1]["content"] == "again"
    assert answer.completion_tokens == 1 + 1 + 2 and not answer.cached
    assert not capped.result.ok and capped.raw == ["hmm"]  # reasks=0: asked once


def test_the_constraint_decision():
    with FakeServer() as server:
        client = LLMClient({"plain": fake_model(server), "so": fake_model(server, structured_output=True)})
        assert constraint_for("auto", client, "plain", "pick") is None
        assert constraint_for("off", client, "so", "pick") is None
        assert constraint_for("on", client, "plain", "pick") is not None
        full = constraint_for("auto", client, "so", "score_pair").regex
        short = constraint_for("auto", client, "so", "score_pair", explain=False).regex
        assert "Evaluation Evidence" in full and "Evaluation Evidence" not in short and full.endswith(short)


def _pair(judge: str, label, sa, sb, failure=None) -> PairJudgement:
    attempt = Attempt(order="AB", raw=[f"{judge} says"], verdict=Verdict(pick="A"), prompt_tokens=5, cached=True)
    return PairJudgement(
        judge=judge,
        strategy="combined",
        scale=10,
        prompt_sha="sha",
        setup="combined10",
        attempts=[attempt],
        label=label,
        score_a=sa,
        score_b=sb,
        failure=failure,
    )


def test_a_judgement_writes_its_record_in_dataset_terms():
    rec = _pair("j1", "model_a", 8.0, 3.0).records(CTX)[-1]
    # judged with response_b shown first: "A" as shown is response_b
    assert (rec["pick"], rec["label"], rec["score_a"], rec["score_b"]) == ("A", "model_b", 3.0, 8.0)
    assert rec["key"] == "q1|j1|combined10|v3|sha|BA" and rec["kind"] == "judge" and rec["models"] == ["j1"]
    assert rec["raw"] == ["j1 says"] and rec["detail"]["attempts"][0]["verdict"]["pick"] == "A"
    assert rec["prompt_tokens"] == 5 and rec["cached"] is True
    failed = _pair("j1", "model_a", None, None, failure="unparseable").record(CTX)
    assert failed["label"] is None and failed["pick"] is None  # a failure is never a verdict


async def test_every_evaluator_names_itself_and_a_jury_writes_its_jurors_first():
    with FakeServer() as server:
        client = LLMClient({m: fake_model(server, served_name=m) for m in ("j1", "j2", "j3")})
        judge = Judge(client, "j1", JudgeConfig(strategy="direct"))
        jury = Jury(client, ["j1", "j2", "j3"], JudgeConfig(), JuryConfig(aggregate="majority"))
        debate = Debate(client, ["j1"], DebateConfig(rounds=1))
        evaluators: list[Evaluator] = [judge, jury, debate]
        assert [e.identity()[:2] for e in evaluators] == [
            ("j1", "direct"),
            ("jury[j1+j2+j3]", "combined10/majority-tie"),
            ("debate[j1]", "debate10/r1/mean_score/general_public,psychologist,critic"),
        ]
        assert [e.models for e in evaluators] == [["j1"], ["j1", "j2", "j3"], ["j1"]]
        for ev in evaluators:
            (rec,) = ev.failed_records(CTX, "rejected")
            assert (rec["kind"], rec["judge"], rec["failure"], rec["label"]) == (ev.kind, ev.name, "rejected", None)
            assert rec["key"] == "|".join(["q1", ev.name, ev.setup, "v3", ev.prompt_sha, "BA"])
        failed = Judge(client, "j3", JudgeConfig()).failed("rejected")
        verdict = jury.aggregate([_pair("j1", "model_a", 8.0, 2.0), _pair("j2", "model_b", 1.0, 9.0), failed])
        recs = verdict.records(CTX)
    assert [(r["kind"], r["judge"], r["member_of"]) for r in recs] == [
        ("juror", "j1", "jury[j1+j2+j3]"),
        ("juror", "j2", "jury[j1+j2+j3]"),
        ("juror", "j3", "jury[j1+j2+j3]"),
        ("jury", "jury[j1+j2+j3]", None),
    ]
    assert recs[0]["key"].startswith("q1|jury[j1+j2+j3]/j1|")
    jury_rec = recs[-1]
    assert jury_rec["raw"] == [] and jury_rec["detail"]["n_failed"] == 1
    assert jury_rec["detail"]["members"] == {"j1": "model_b", "j2": "model_a", "j3": None}  # dataset terms (BA)
    assert recs[2]["failure"] == "rejected" and recs[2]["detail"] == {"attempts": []}


@pytest.mark.parametrize("name", ["_records", "_identity", "_failed_records", "_build"])
def test_evaluate_never_asks_the_evaluators_type(name):
    assert "isinstance" not in inspect.getsource(getattr(evaluate, name))
