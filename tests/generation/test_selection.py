"""Best of N on the fake server with a real Judge: how each response lost (decision or tie),
which responses take part (truncated ones do not), and what a build writes from that."""

from __future__ import annotations

import json
import re

import pytest
from aiohttp import web

from mapo.core.config import (
    ClientConfig,
    FeedbackConfig,
    JudgeConfig,
    ProgressMode,
    PromptSource,
    PromptSourceConfig,
    RolesConfig,
    RunConfig,
    SelectionConfig,
)
from mapo.generation.selection import Loss, excluded, losses, score_all, tournament
from mapo.judging.judge import Judge
from mapo.llm.cache import ResponseCache
from mapo.llm.client import LLMClient
from mapo.runs.build import build
from tests.conftest import fake_model
from tests.fake_openai import FakeServer, default_responder

QUALITY = re.compile(r"q=(\d+)")


def _answers(req: dict) -> list[int]:
    """The quality marks (``q=N``) of the responses shown to the judge, in presentation order."""
    return [int(q) for q in QUALITY.findall(req["messages"][-1]["content"])]


def combined(req: dict) -> str:
    """A fair combined-scoring judge: each response scores its own quality mark."""
    a, b = _answers(req)
    return f"### Evaluation Evidence:\nx\n\n### Score Assistant A:\n{a}/10\n\n### Score Assistant B:\n{b}/10"


def single(req: dict) -> str:
    (q,) = _answers(req)
    return f"### Evaluation Evidence:\nx\n\n### Overall Score:\n{q}/10"


@pytest.fixture
def judge_with(tmp_path):
    servers: list[FakeServer] = []

    def make(responder, **cfg) -> tuple[FakeServer, Judge]:
        server = FakeServer(responder=responder).start()
        servers.append(server)
        client = LLMClient({"j": fake_model(server)}, cache=ResponseCache(tmp_path / "c.sqlite"), backoff_base_s=0.01)
        return server, Judge(client, "j", JudgeConfig(**cfg))

    yield make
    for s in servers:
        s.stop()


async def test_tournament_records_a_tie_as_an_undecided_loss(judge_with):
    _, judge = judge_with(combined)
    sel = await tournament(judge, "q?", ["q=5", "q=5", "q=7"])
    assert sel.best == 2
    # 0 vs 1 tie keeps 0 (no decision about 1); 0 vs 2: the judge prefers 2 by 2 points
    assert _core(sel.losses()) == _core({1: Loss(0, False, 0.0, "equal_scores"), 0: Loss(2, True, 2.0)})
    # the deciding scores ride along: the chosen 7 vs 5 (issue 25: the dataset shows what decided)
    assert (sel.losses()[0].winner_score, sel.losses()[0].loser_score) == (7.0, 5.0)


async def test_stored_record_gives_the_same_losses(judge_with):
    _, judge = judge_with(combined)
    sel = await tournament(judge, "q?", ["q=8", "q=3", "q=8"])
    stored = json.loads(json.dumps({"method": sel.method, "best": sel.best, "judgements": sel.judgements}))
    assert losses(stored["method"], stored["best"], stored["judgements"], []) == sel.losses()
    assert _core(sel.losses()) == _core({1: Loss(0, True, 5.0), 2: Loss(0, False, 0.0, "equal_scores")})


async def test_position_bias_caught_by_both_orders_is_a_tie_without_margin(judge_with):
    _, judge = judge_with(
        lambda r: "### Evaluation Evidence:\nx\n\n### Answer:\nA", strategy="direct", both_orders=True
    )
    sel = await tournament(judge, "q?", ["one", "two"])
    assert sel.best == 0 and _core(sel.losses()) == _core({1: Loss(0, False, None, "orders_disagree")})


async def test_a_judge_that_answers_tie(judge_with):
    _, judge = judge_with(lambda r: "### Evaluation Evidence:\nx\n\n### Answer:\nC", strategy="direct")
    sel = await tournament(judge, "q?", ["one", "two"])
    assert _core(sel.losses()) == _core({1: Loss(0, False, None, "judge_tie")})


async def test_skipped_responses_are_never_judged_or_chosen(judge_with):
    server, judge = judge_with(combined)
    sel = await tournament(judge, "q?", ["q=9", "q=3", "q=5"], skip=[0])
    assert sel.best == 2 and [(j["a"], j["b"]) for j in sel.judgements] == [(1, 2)]
    assert server.n == 1 and set(sel.losses()) == {1}


async def test_no_eligible_response_is_a_named_failure_without_calls(judge_with):
    server, judge = judge_with(combined)
    for select in (tournament, score_all):
        sel = await select(judge, "q?", ["q=9", "q=3"], skip=[0, 1])
        assert sel.best is None and "cut by max_tokens" in (sel.failure or "")
    assert server.n == 0


async def test_score_all_equal_scores_are_ties(judge_with):
    _, judge = judge_with(single, strategy="independent")
    sel = await score_all(judge, "q?", ["q=4", "q=7", "q=7", "q=9"], skip=[3])
    assert sel.best == 1 and sel.scores == [4.0, 7.0, 7.0, None]
    assert _core(sel.losses()) == _core({0: Loss(1, True, 3.0), 2: Loss(1, False, 0.0, "equal_scores")})


def test_excluded_reads_finish_reason():
    its = [{"finish_reason": "length"}, {"finish_reason": "stop"}, {}]  # missing: unknown, not truncated
    assert excluded(its, allow_truncated=False) == [0]
    assert excluded(its, allow_truncated=True) == []


# ---- the whole job: what `mapo build` writes from these decisions ------------------------


class Truncating(FakeServer):
    """Reports ``finish_reason: length`` for the generator's second response of each prompt."""

    async def _chat(self, request):
        body = await request.json()
        resp = await super()._chat(request)
        assert isinstance(resp, web.Response)
        is_generator = body["messages"][0]["role"] == "user"  # reviewers and judge send a system prompt
        if is_generator and sum(m["role"] == "assistant" for m in body["messages"]) == 1:
            assert isinstance(resp.body, bytes)
            payload = json.loads(resp.body)
            payload["choices"][0]["finish_reason"] = "length"
            return web.json_response(payload)
        return resp


def run_config(server: FakeServer, tmp_path, **selection) -> RunConfig:
    return RunConfig(
        models={name: fake_model(server) for name in ("gen", "rev", "judge")},
        roles=RolesConfig(generator="gen", reviewers=["rev"], judge="judge"),
        prompts=PromptSourceConfig(source=PromptSource.builtin, limit=5),
        feedback=FeedbackConfig(iterations=3),
        selection=SelectionConfig(**selection),
        client=ClientConfig(cache_path=str(tmp_path / "cache.sqlite"), progress=ProgressMode.off),
        output_dir=str(tmp_path / "run"),
    )


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def tie_judge(req: dict) -> str:
    """Every judged pair ties (the embedded judge's 10/10 vs 10/10); the rest as usual."""
    if "Score Assistant A" in req["messages"][0]["content"]:
        return "### Evaluation Evidence:\nx\n\n### Score Assistant A:\n10/10\n\n### Score Assistant B:\n10/10"
    return default_responder(req)


async def test_build_with_a_judge_that_always_ties_writes_no_preference(tmp_path):
    with FakeServer(responder=tie_judge) as server:
        manifest = await build(run_config(server, tmp_path))
    run = tmp_path / "run"
    assert lines(run / "dpo.jsonl") == [] and lines(run / "kto.jsonl") == []
    assert manifest["rows"] == {"dpo": 0, "kto": 0}
    p = manifest["pairs"]
    assert p["pairs_written"] == 0 and p["items_without_pairs"] == 5
    assert p["ties_dropped_by_reason"] == {"equal_scores": 10}  # 2 rounds x 5 prompts


async def test_build_keeps_ties_when_asked_and_marks_them(tmp_path):
    with FakeServer(responder=tie_judge) as server:
        manifest = await build(run_config(server, tmp_path, on_tie="keep"))
    dpo = lines(tmp_path / "run" / "dpo.jsonl")
    assert len(dpo) == 10 and all(r["chosen_iteration"] == 0 and r["decisive"] is False for r in dpo)
    assert all(r["margin"] == 0.0 for r in dpo)
    assert manifest["pairs"]["ties_kept"] == 10 and manifest["rows"]["dpo"] == 10
    card = (tmp_path / "run" / "dataset" / "dpo" / "README.md").read_text()
    assert "ties kept as pairs" in card and "10" in card


async def test_build_never_chooses_a_truncated_response(tmp_path):
    with Truncating() as server:
        manifest = await build(run_config(server, tmp_path))
    run = tmp_path / "run"
    assert all(g["iterations"][1]["finish_reason"] == "length" for g in lines(run / "generations.jsonl"))
    sels = lines(run / "selections.jsonl")
    assert all(s["best"] in (0, 2) and all(1 not in (j["a"], j["b"]) for j in s["judgements"]) for s in sels)
    assert all(r["rejected_iteration"] != 1 for r in lines(run / "dpo.jsonl"))
    assert all(r["iteration"] != 1 for r in lines(run / "kto.jsonl"))
    assert manifest["pairs"]["truncated_excluded"] == 5
    card = (run / "dataset" / "kto" / "README.md").read_text()
    assert "left out" in card


async def test_build_may_choose_truncated_when_allowed_and_marks_it(tmp_path):
    with Truncating() as server:
        manifest = await build(run_config(server, tmp_path, allow_truncated=True))
    run = tmp_path / "run"
    kto = lines(run / "kto.jsonl")
    assert {r["truncated"] for r in kto if r["iteration"] == 1} == {True}
    assert {r["truncated"] for r in kto if r["iteration"] != 1} == {False}
    assert manifest["pairs"]["truncated_excluded"] == 0


def _core(losses):
    """How each response lost (winner, decisive, margin, reason), without the scores that ride along."""
    return {i: (x.winner, x.decisive, x.margin, x.reason) for i, x in losses.items()}


def test_written_scores_come_back_to_the_pairs_order_and_only_with_expected_scoring():
    """judge.scoring=expected keeps the written verdict as argmax; both orders averaged in the pair's order."""
    from mapo.generation.selection import _written_scores, losses

    j = {
        "a": 0,
        "b": 1,
        "label": "model_a",
        "score_a": 9.6,
        "score_b": 8.89,
        "attempts": [
            {"order": "AB", "verdict": {"pick": "A", "score_a": 9.7, "score_b": 8.9}, "argmax": {"pick": "tie", "score_a": 10.0, "score_b": 10.0}},
            {"order": "BA", "verdict": {"pick": "B", "score_a": 8.88, "score_b": 9.5}, "argmax": {"pick": "B", "score_a": 9.0, "score_b": 10.0}},
        ],
    }  # fmt: skip
    assert _written_scores(j) == (10.0, 9.5)
    loss = losses("tournament", 0, [j], [])[1]
    assert (loss.winner_score, loss.loser_score, loss.winner_written, loss.loser_written) == (9.6, 8.89, 10.0, 9.5)
    assert loss.winner_score > loss.loser_score and loss.margin == pytest.approx(0.71)
    plain = {**j, "attempts": [{k: v for k, v in a.items() if k != "argmax"} for a in j["attempts"]]}
    assert _written_scores(plain) == (None, None)  # argmax scoring: the deciding scores are the written ones
