"""Logprob-weighted scoring from constructed logprob tables (exact expected values), and through
the judge against a server that sends logprobs (the fake server extended with an OpenAI-shaped
``logprobs`` block), one that sends none (fallback, said once, counted), and score-only answers."""

from __future__ import annotations

import json
import logging
import math
import re

import pytest
from aiohttp import web

from mapo.core.config import JudgeConfig
from mapo.core.parsers import PARSERS, to_verdict
from mapo.judging.base import RecordContext
from mapo.judging.judge import STRATEGIES, Judge
from mapo.judging.scoring import (
    expected_verdict,
    locate,
    pick_probabilities,
    value_probabilities,
)
from mapo.llm.client import LLMClient
from tests.conftest import fake_model
from tests.fake_openai import FakeServer

L = math.log


def table(*positions: dict[str, float]) -> list[dict[str, float]]:
    """Positions given as token -> probability; stored as logprobs, like the client returns them."""
    return [{t: L(p) for t, p in pos.items()} for pos in positions]


def dist(top: dict[str, float], token: str, prefix: str = "", nxt: dict[str, float] | None = None) -> dict:
    return {
        "value": "score",
        "prefix": prefix,
        "token": token,
        "top": {t: L(p) for t, p in top.items()},
        "next": None if nxt is None else {t: L(p) for t, p in nxt.items()},
    }


# ---- constructed tables -------------------------------------------------------------------


def test_half_eight_half_nine_is_eight_and_a_half():
    v = expected_verdict("score", [dist({"8": 0.5, "9": 0.5}, "8")], 10)
    assert v is not None and v.score_a == pytest.approx(8.5)


def test_only_values_count_and_are_renormalised():
    # "**" is no value, "11" is outside 0..10, " 7" lacks the shared prefix: 0.6 of mass is left, 8 and 6 split it 2:1
    d = dist({"8": 0.4, "6": 0.2, "**": 0.2, "11": 0.1, " 7": 0.1}, "8")
    assert value_probabilities(d, 10) == pytest.approx({6: 1 / 3, 8: 2 / 3})
    assert expected_verdict("score", [d], 10).score_a == pytest.approx(6 * 1 / 3 + 8 * 2 / 3)


def test_an_emitted_first_digit_is_split_by_the_next_token():
    # "1" then "0" (10) or "/" (1): P(1 first) = 0.8 split 3:1 -> P(10) = 0.6, P(1) = 0.2; P(9) = 0.2
    d = dist({"1": 0.8, "9": 0.2}, "1", nxt={"0": 0.75, "/": 0.25})
    assert value_probabilities(d, 10) == pytest.approx({1: 0.2, 9: 0.2, 10: 0.6})
    assert expected_verdict("score", [d], 10).score_a == pytest.approx(0.2 + 1.8 + 6.0)


def test_a_decimal_is_scored_on_its_integer_part():
    # "8.5": the emitted "8" is followed by "." -> 8, whatever the decimals
    d = dist({"8": 0.5, "9": 0.5}, "8", nxt={".": 1.0})
    assert expected_verdict("score", [d], 10).score_a == pytest.approx(8.5)


def test_a_token_carrying_the_next_character_is_complete():
    d = dist({"8/": 0.25, "9/": 0.75}, "9/")
    assert value_probabilities(d, 10) == pytest.approx({8: 0.25, 9: 0.75})


def test_pick_compares_p_a_with_p_b_even_when_the_tie_is_likelier():
    d = {"value": "pick", "prefix": "\n", "token": "\nC", "top": {"\nC": L(0.5), "\nA": L(0.3), "\nB": L(0.2)}}
    assert pick_probabilities(d) == pytest.approx({"A": 0.3, "B": 0.2, "C": 0.5})
    assert expected_verdict("pick", [d], 10).pick == "A"
    d["top"] = {"\nA": L(0.4), "\nB": L(0.4), "\nAssistant": L(0.2)}  # equal: a tie ("Assistant" is no pick)
    assert expected_verdict("pick", [d], 10).pick == "tie"
    d["top"] = {"\nC": 0.0}
    assert expected_verdict("pick", [d], 10) is None  # no mass on A or B: nothing to weigh


def test_locate_aligns_from_the_end_and_finds_both_scores():
    text = "### Evaluation Evidence:\nfine\n\n### Score Assistant A:\n8/10\n\n### Score Assistant B:\n10/10"
    pieces = ["### Evaluation Evidence:", "\nfine", "\n\n", "### Score Assistant A:", "\n8", "/", "10", "\n\n"]
    pieces += ["### Score Assistant B:", "\n", "1", "0", "/", "10", "<|im_end|>"]
    assert "".join(pieces[:-1]) == text
    tops = [{p: 0.0} for p in pieces]
    tops[4] = {"\n8": L(0.5), "\n7": L(0.25), "\n9": L(0.25), "\n": L(0.0001)}  # A: E = 8
    tops[10] = {"1": L(0.8), "9": L(0.2)}  # B: "1" then "0" (3:1 over "/")
    tops[11] = {"0": L(0.75), "/": L(0.25)}
    spans = PARSERS.get("score_pair")(text, scale=10).spans
    dists = locate(text, tops, spans, ["score_a", "score_b"])
    assert dists is not None
    a, b = dists
    assert (a["value"], a["prefix"], a["token"]) == ("score_a", "\n", "\n8")
    assert (b["value"], b["prefix"], b["token"]) == ("score_b", "", "1")
    v = expected_verdict("score_pair", dists, 10)
    assert v.score_a == pytest.approx(8.0) and v.score_b == pytest.approx(8.0) and v.pick == "tie"


def test_ambiguous_boundaries_backtrack_and_misaligned_logprobs_give_none():
    text = "Score: 7/10"
    # the likelier "/10" at the last position leads nowhere before "7"; "10" does
    tops = table({"Score:": 1}, {" 7": 0.9, " ": 0.1}, {"/": 0.6, "7/": 0.4}, {"10": 0.7, "/10": 0.3})
    spans = PARSERS.get("score")(text, scale=10).spans
    dists = locate(text, tops, spans, ["score"])
    assert dists is not None and dists[0]["token"] == " 7" and dists[0]["prefix"] == " "
    assert locate(text, table({"Nope": 1}, {"x": 1}), spans, ["score"]) is None
    assert locate(text, None, spans, ["score"]) is None


# ---- through the judge ------------------------------------------------------------------------


def _tokens(text: str) -> list[str]:
    """A toy tokenizer: digits one by one, a final pick letter with its newline, the rest in runs."""
    return re.findall(r"\d|\n[ABC]$|\n|[^\d\n]+", text)


def _alternative(tok: str) -> str:
    if tok.isdigit():
        return str(int(tok) + 1) if tok != "9" else "8"
    if re.fullmatch(r"\n[ABC]", tok):
        return "\n" + {"A": "B", "B": "C", "C": "A"}[tok[1]]
    return tok + "~"


class LogprobServer(FakeServer):
    """The fake server plus an OpenAI-shaped logprobs block: every token at probability 0.5,
    each digit shared with the next digit up (9 with 8) at 0.5."""

    bodies: list[dict]
    send_logprobs: bool = True

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        text = self.responder(body)
        content = []
        for tok in _tokens(text):
            top = [{"token": tok, "logprob": L(0.5)}, {"token": _alternative(tok), "logprob": L(0.5)}]
            content.append({"token": tok, "logprob": L(0.5), "top_logprobs": top})
        choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
        if body.get("logprobs") and self.send_logprobs:
            choice["logprobs"] = {"content": content}
        usage = {"prompt_tokens": 10, "completion_tokens": len(content), "total_tokens": 0}
        return web.json_response(
            {
                "id": "lp",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [choice],
                "usage": usage,
            }
        )


def combined_text(a: int, b: int) -> str:
    return f"### Evaluation Evidence:\nok\n\n### Score Assistant A:\n{a}/10\n\n### Score Assistant B:\n{b}/10"


async def judged(responder, logprobs: bool = True, structured: bool = False, **cfg):
    server = LogprobServer(responder=responder)
    server.bodies, server.send_logprobs = [], logprobs
    with server:
        client = LLMClient({"j": fake_model(server, structured_output=structured)})
        try:
            judge = Judge(client, "j", JudgeConfig(**cfg))
            return judge, await judge.judge_pair("q?", "first", "second"), server.bodies
        finally:
            await client.aclose()


async def test_expected_scoring_weighs_the_scores_and_keeps_the_distribution():
    judge, j, bodies = await judged(lambda r: combined_text(8, 6), scoring="expected")
    assert bodies[0]["logprobs"] is True and bodies[0]["top_logprobs"] == 20
    # each score digit d shares its mass with d+1: E = d + 0.5
    assert (j.label, j.score_a, j.score_b) == ("model_a", pytest.approx(8.5), pytest.approx(6.5))
    a = j.attempts[0]
    assert a.scoring == "expected" and (a.argmax.score_a, a.argmax.score_b) == (8.0, 6.0)
    assert judge.scoring_counts == {"expected": 1} and judge.setup == "combined10+expected"
    # the record keeps the distributions: either scoring is recomputed from it with no model call
    rec = j.record(RecordContext(item_id="x", human="tie", order="AB", version=1, evaluator="judge"))
    stored = rec["detail"]["attempts"][0]
    assert [d["value"] for d in stored["logprobs"]] == ["score_a", "score_b"]
    json.dumps(rec)  # storable
    again = STRATEGIES.get("combined").rescore(stored, 10)
    assert (again.score_a, again.score_b) == (pytest.approx(8.5), pytest.approx(6.5))
    written = to_verdict(PARSERS.get("score_pair")(stored["raw"][-1], scale=10), "score_pair")
    assert (written.score_a, written.score_b) == (stored["argmax"]["score_a"], stored["argmax"]["score_b"])


async def test_expected_direct_compares_p_a_with_p_b():
    _, j, _ = await judged(
        lambda r: "### Evaluation Evidence:\nok\n\n### Answer:\nC", strategy="direct", scoring="expected"
    )
    # C at 0.5 and A at 0.5 (the toy server's alternative): P(A) > P(B) = 0
    assert j.label == "model_a" and j.attempts[0].argmax.pick == "tie"


async def test_expected_independent_weighs_each_score():
    def responder(req):
        return (
            "### Evaluation Evidence:\nok\n\n### Overall Score:\n"
            + ("7" if "first" in req["messages"][-1]["content"] else "3")
            + "/10"
        )

    _, j, _ = await judged(responder, strategy="independent", scoring="expected")
    assert (j.score_a, j.score_b) == (pytest.approx(7.5), pytest.approx(3.5))
    stored = j.attempts[0].to_record()
    assert [d["value"] for d in stored["logprobs"]] == ["score_a", "score_b"]
    again = STRATEGIES.get("independent").rescore(stored, 10)
    assert (again.score_a, again.score_b) == (pytest.approx(7.5), pytest.approx(3.5))
    assert (stored["argmax"]["score_a"], stored["argmax"]["score_b"]) == (7.0, 3.0)
    assert STRATEGIES.get("combined").rescore({"raw": ["x"]}, 10) is None  # an argmax-era attempt


async def test_stored_verdict_gives_either_scoring_from_one_record():
    _, j, _ = await judged(lambda r: combined_text(8, 6), scoring="expected")
    stored = json.loads(json.dumps(j.attempts[0].to_record()))  # as read back from judgements.jsonl
    argmax, how = STRATEGIES.get("combined").stored_verdict(stored, 10, "argmax")
    assert (argmax.pick, argmax.score_a, argmax.score_b, how) == ("A", 8.0, 6.0, "argmax")
    weighted, how = STRATEGIES.get("combined").stored_verdict(stored, 10, "expected")
    assert (weighted.score_a, weighted.score_b, how) == (pytest.approx(8.5), pytest.approx(6.5), "expected")
    # an argmax-era record has no distribution: the written value stands, and says why
    _, old, _ = await judged(lambda r: combined_text(8, 6))
    v, how = STRATEGIES.get("combined").stored_verdict(old.attempts[0].to_record(), 10, "expected")
    assert (v.score_a, v.score_b, how) == (8.0, 6.0, "argmax: no logprobs stored")
    # a failure stays a failure under both scorings
    failed = {"raw": ["x"], "verdict": {"pick": None, "score_a": None, "score_b": None, "failure": "unparseable"}}
    assert [STRATEGIES.get("combined").stored_verdict(failed, 10, s)[0].failure for s in ("argmax", "expected")] == [
        "unparseable"
    ] * 2


async def test_no_logprobs_falls_back_to_argmax_said_once_and_counted(caplog):
    with caplog.at_level(logging.WARNING, logger="mapo.judging.judge"):
        judge, j, bodies = await judged(lambda r: combined_text(8, 6), False, scoring="expected", both_orders=True)
    assert bodies[0]["logprobs"] is True  # asked for, not sent
    assert [(a.verdict.score_a, a.verdict.score_b) for a in j.attempts] == [(8.0, 6.0)] * 2
    assert [a.scoring for a in j.attempts] == ["argmax: the server sent no logprobs"] * 2
    assert judge.scoring_counts == {"argmax: the server sent no logprobs": 2}
    assert caplog.text.count("sent no logprobs") == 1


async def test_argmax_records_keep_their_old_shape():
    _, j, bodies = await judged(lambda r: combined_text(8, 6))
    assert "logprobs" not in bodies[0]
    assert set(j.attempts[0].to_record()) == {
        "order", "raw", "verdict", "prompt_tokens", "completion_tokens", "latency_s", "cached"
    }  # fmt: skip


async def test_score_only_answers_have_no_explanation():
    judge, j, bodies = await judged(
        lambda r: "### Score Assistant A:\n3/10\n\n### Score Assistant B:\n9/10", structured=True, explain=False
    )
    system = bodies[0]["messages"][0]["content"]
    assert "Evaluation Evidence" not in system and "### Score Assistant B:" in system
    regex = bodies[0]["structured_outputs"]["regex"]
    assert re.fullmatch(regex, "### Score Assistant A:\n3/10\n\n### Score Assistant B:\n9/10")
    assert not re.fullmatch(
        regex, "### Evaluation Evidence:\nx\n\n### Score Assistant A:\n3/10\n\n### Score Assistant B:\n9/10"
    )
    assert j.label == "model_b" and judge.setup == "combined10+score_only"
    assert judge.prompt_sha != Judge(judge.client, "j", JudgeConfig()).prompt_sha


@pytest.mark.parametrize("strategy, kind", [("direct", "pick"), ("independent", "score")])
async def test_score_only_prompts_exist_for_every_strategy(strategy, kind):
    answer = {"pick": "### Answer:\nB", "score": "### Overall Score:\n4/10"}[kind]
    _, j, bodies = await judged(lambda r: answer, structured=True, strategy=strategy, explain=False)
    assert j.ok and "Evaluation Evidence" not in bodies[0]["messages"][0]["content"]
    assert "Evaluation Evidence" not in bodies[0]["structured_outputs"]["regex"]


async def test_expected_prometheus_absolute_keeps_each_side_and_reparse_reproduces_it(tmp_path):
    """A pointwise pack keeps each side's distributions as independent does: the attempt stores them, so
    ``mapo reparse`` re-weighs them instead of returning the written scores (issue 21 leftover g)."""
    from mapo.runs.reparse import reparse_run

    def responder(req):
        return "Feedback: fine. [RESULT] " + ("4" if "ZEBRA" in req["messages"][-1]["content"] else "2")

    server = LogprobServer(responder=responder)
    server.bodies, server.send_logprobs = [], True
    with server:
        client = LLMClient({"j": fake_model(server)})
        try:
            cfg = JudgeConfig(strategy="prometheus_absolute", prompt_set="prometheus", scale=5, scoring="expected")
            j = await Judge(client, "j", cfg).judge_pair("q?", "ZEBRA", "QUOKKA")
        finally:
            await client.aclose()
    assert (j.score_a, j.score_b) == (pytest.approx(4.5), pytest.approx(2.5))  # 4|5 and 2|3 at 0.5 each
    rec = j.record(RecordContext(item_id="x", human="model_a", order="AB", version=1, evaluator="judge"))
    stored = rec["detail"]["attempts"][0]
    assert stored["scoring"] == "expected" and [d["value"] for d in stored["logprobs"]] == ["score_a", "score_b"]
    assert (stored["argmax"]["score_a"], stored["argmax"]["score_b"]) == (4.0, 2.0)
    (tmp_path / "judgements.jsonl").write_text(json.dumps(rec) + "\n")
    c = reparse_run(tmp_path)["judgements.jsonl"]
    assert (c["changed"], c["scores_changed"]) == (0, 0)
    (out,) = [json.loads(x) for x in (tmp_path / "reparsed.jsonl").read_text().splitlines()]
    assert (out["score_a"], out["score_b"]) == (pytest.approx(4.5), pytest.approx(2.5))
