"""The report's examples of multi-turn items (issue 25): a built conversation's and a judged conversation's
earlier turns, shortened, before the question, numbered "turn n of N"; single-turn examples as before."""

from __future__ import annotations

import json

from mapo.report import render as report
from mapo.report.document import Example
from mapo.report.sections.common import TURN_CHARS, turn_fields
from tests.report.test_report import evaluate_run, server  # noqa: F401 - server is a fixture
from tests.view.test_view_multiturn import TURNS, multiturn_build, write_conversations


def examples(doc) -> list[Example]:
    return [b for s in doc.sections for b in s.blocks if isinstance(b, Example)]


def test_turn_fields_number_and_shorten_the_earlier_turns():
    assert turn_fields([], "Q?", "prompt") == [("prompt", "Q?")]  # single-turn: as before
    long = "word " * 400
    fields = turn_fields([{"turn": 1, "user": long, "answer_a": "a1", "answer_b": "b1"}], "Q2?", "the question judged")
    assert [f for f, _ in fields] == [
        "turn 1 of 2 · user",
        "turn 1 of 2 · response A's model answered",
        "turn 1 of 2 · response B's model answered",
        "turn 2 of 2 · the question judged",
    ]
    assert fields[0][1].startswith(long[:TURN_CHARS]) and "more characters in the run folder" in fields[0][1]
    assert fields[-1][1] == "Q2?"


def test_build_report_examples_show_a_conversation_turn_by_turn(server, tmp_path):  # noqa: F811
    run = multiturn_build(server, tmp_path)
    doc = report.build_document(report.load_run(run), n_examples=10)
    by_item = {e.item: e for e in examples(doc)}
    two = dict(by_item["two-turn"].fields)
    assert two["turn 1 of 2 · user"] == TURNS[0]["content"]
    assert two["turn 1 of 2 · assistant"] == TURNS[1]["content"]
    assert two["turn 2 of 2 · prompt"] == TURNS[2]["content"]
    answered = dict(by_item["user-turns"].fields)
    assert answered["turn 1 of 2 · assistant (the generator's answer)"].strip()
    assert by_item["one-turn"].fields[0] == ("prompt", TURNS[0]["content"])  # single-turn: as before
    paths = report.write_report(run, tmp_path / "rep", 10)
    assert "turn 1 of 2 · user" in paths["md"].read_text() and "turn 1 of 2 · user" in paths["html"].read_text()


def test_evaluate_report_disagreements_show_the_earlier_turns(server, tmp_path):  # noqa: F811
    items = write_conversations(tmp_path / "conv.jsonl")
    run = evaluate_run(server, tmp_path, "judge", name="mt", items=items)
    recs = [json.loads(x) for x in (run / "judgements.jsonl").read_text().splitlines()]
    disagree = {r["item_id"] for r in recs if r["label"] is not None and r["label"] != r["human"]}
    assert disagree & {"m0", "m2", "m4"} and disagree & {"m1", "m3", "m5"}, disagree  # both kinds shown
    doc = report.build_document(report.load_run(run), n_examples=20)
    shown = [e for e in examples(doc) if e.item in disagree]
    assert {e.item for e in shown} == disagree
    for e in shown:
        fields = dict(e.fields)
        if int(str(e.item)[1:]) % 2 == 0:
            assert e.title.endswith(", turn 2 of 2")
            assert fields["turn 1 of 2 · user"] == TURNS[0]["content"]
            assert fields["turn 1 of 2 · assistant (both responses' models)"] == TURNS[1]["content"]
            assert fields["turn 2 of 2 · the question judged"].startswith(TURNS[2]["content"])
        else:  # a single-turn item's example: its raw texts only, as before
            assert "turn" not in e.title and all(f.startswith("raw") for f in fields)
