"""evaluator=cascade (mapo.judging.cascade) against the fake server: the cheap judge judges every
item, the strong judge only the items the rule escalates; records and kappas like any evaluator."""

from __future__ import annotations

import json

from mapo.core.config import CascadeConfig, JudgeConfig
from mapo.judging.base import RecordContext
from mapo.judging.cascade import Cascade
from mapo.judging.judge import Judge
from mapo.llm.cache import ResponseCache
from mapo.llm.client import LLMClient
from tests.conftest import fake_model
from tests.fake_openai import FakeServer
from tests.runs.test_evaluate import mapo, ok, records


def combined(a: int, b: int) -> str:
    return f"### Evaluation Evidence:\nx\n\n### Score Assistant A:\n{a}/10\n\n### Score Assistant B:\n{b}/10"


def cascade_with(tmp_path, cheap_answers, strong_answer, **rule):
    calls = {"cheap": 0, "strong": 0}

    def responder(req):
        who = req["model"]
        calls[who] += 1
        question = next(m["content"] for m in req["messages"] if m["role"] == "user").split("\n")[1]
        return cheap_answers[question] if who == "cheap" else strong_answer

    server = FakeServer(responder=responder).start()
    models = {m: fake_model(server, served_name=m) for m in ("cheap", "strong")}
    client = LLMClient(models, cache=ResponseCache(tmp_path / "c.sqlite"), backoff_base_s=0.01)
    judges = Judge(client, "cheap", JudgeConfig()), Judge(client, "strong", JudgeConfig())
    return server, calls, Cascade(*judges, CascadeConfig(**rule))


async def test_only_unsure_or_failed_items_reach_the_strong_judge(tmp_path):
    answers = {"sure": combined(9, 2), "close": combined(5, 6), "broken": "I like both."}
    server, calls, cascade = cascade_with(tmp_path, answers, combined(1, 8), max_margin=1)
    sure = await cascade.judge_pair("sure", "x", "y")
    assert (sure.label, sure.escalated, sure.reason) == ("model_a", False, "sure") and calls["strong"] == 0
    close = await cascade.judge_pair("close", "x", "y")
    assert (close.label, close.escalated, close.reason) == ("model_b", True, "margin 1 <= 1")
    broken = await cascade.judge_pair("broken", "x", "y")
    assert broken.escalated and broken.reason == "failure" and broken.label == "model_b"
    assert calls["strong"] == 2 and cascade.escalations == 2
    # records: the cheap judge as a member, the cascade's own last, with the escalation and both judges' tokens
    recs = close.records(RecordContext(item_id="q1", human="model_b", order="AB", version=1, evaluator="cascade"))
    assert [r["kind"] for r in recs] == ["juror", "cascade"]
    assert recs[0]["judge"] == "cheap" and recs[0]["member_of"] == "cascade[cheap>strong]"
    own = recs[1]
    assert own["detail"]["escalated"] and own["detail"]["strong"]["label"] == "model_b" and own["label"] == "model_b"
    assert own["models"] == ["cheap", "strong"] and own["setup"] == "combined10>combined10/m1+orders"
    server.stop()


async def test_orders_that_disagree_escalate(tmp_path):
    # a cheap judge that always prefers the first shown: its two orders disagree on every item
    server, calls, cascade = cascade_with(tmp_path, {"q": combined(9, 2)}, combined(2, 9), max_margin=None)
    cascade.cheap.config.both_orders = True  # the strong judge keeps one order
    j = await cascade.judge_pair("q", "x", "y")
    assert j.escalated and j.reason == "orders disagree" and j.label == "model_b"
    server.stop()


def test_mapo_evaluate_cascade_end_to_end(fake_server, tmp_path):
    common = ("evaluator=cascade", "roles.judge=smollm2-135m", "roles.strong_judge=gemma3-270m")
    ok(mapo(fake_server, tmp_path, *common, "cascade.max_margin=10", run="all"))
    recs = records(tmp_path / "all")
    own = [r for r in recs if r["kind"] == "cascade"]
    assert len(own) == 6 and all(r["detail"]["escalated"] for r in own)
    assert sum(r["kind"] == "juror" for r in recs) == 6
    agreement = json.loads((tmp_path / "all" / "agreement.json").read_text())
    names = {e["judge"] for e in agreement["results"]}
    assert {"cascade[smollm2-135m>gemma3-270m]", "smollm2-135m"} <= names
    # the leaderboard takes the cascade like any evaluator: a row with its verdict against the reference
    from mapo.report.leaderboard import main as leaderboard

    assert leaderboard([str(tmp_path / "all"), "--out", str(tmp_path / "board")]) == 0
    board = (tmp_path / "board" / "leaderboard.csv").read_text()
    assert "cascade[smollm2-135m>gemma3-270m]" in board and "smollm2-135m" in board
    ok(mapo(fake_server, tmp_path, *common, "cascade.max_margin=null", "cascade.orders_disagree=false", run="none"))
    own = [r for r in records(tmp_path / "none") if r["kind"] == "cascade"]
    assert len(own) == 6 and not any(r["detail"]["escalated"] and r["detail"]["reason"] != "failure" for r in own)
