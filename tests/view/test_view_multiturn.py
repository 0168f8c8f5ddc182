"""Multi-turn items whole in ``mapo view`` (issue 25): an evaluated conversation's earlier turns, each side's
own earlier answers where they differ (MT-Bench turn 2), the judged turn numbered; a built multi-turn prompt's
earlier turns; single-turn items as before. Runs made by the real pipeline against the fake server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from mapo.core.config import PromptSourceConfig, RolesConfig, RunConfig
from mapo.report import evidence
from mapo.report.evidence import earlier_turns
from mapo.runs.build import build
from mapo.view.data import load_views
from tests.conftest import fake_model
from tests.report.test_report import _client, evaluate_run, server  # noqa: F401 - server is a fixture

TURNS = [
    {"role": "user", "content": "Name one primary colour."},
    {"role": "assistant", "content": "Red is a primary colour."},
    {"role": "user", "content": "Name another one, different from the one you gave."},
]
B_TURN_1 = {"role": "assistant", "content": "Blue, as it happens."}
LABELS = ["model_a", "model_b", "tie", "model_a", "model_b", "model_a"]


def write_conversations(path: Path, n: int = 6) -> Path:
    """``n`` items: even ones two-turn (a ``conversation`` column), odd ones single-turn."""
    with open(path, "w") as fh:
        for i in range(n):
            row: dict = {"id": f"m{i}", "response_a": f"Green, {i}.", "response_b": f"Yellow {i}.", "human": LABELS[i]}
            if i % 2 == 0:
                row["conversation"] = [*TURNS[:2], {"role": "user", "content": f"{TURNS[2]['content']} ({i})"}]
            else:
                row["question"] = f"Single question {i}?"
            fh.write(json.dumps(row) + "\n")
    return path


def multiturn_build(server, tmp_path: Path) -> Path:  # noqa: F811
    prompts = tmp_path / "prompts.jsonl"
    rows = [
        {"id": "two-turn", "messages": TURNS},
        {"id": "one-turn", "messages": TURNS[:1]},
        {"id": "user-turns", "messages": [TURNS[0]["content"], TURNS[2]["content"]]},  # MT-Bench: no answers given
    ]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    models = {n: fake_model(server, served_name=n) for n in ("gen", "rev", "judge")}
    cfg = RunConfig(
        models=models,
        roles=RolesConfig(generator="gen", reviewers=["rev"], judge="judge"),
        prompts=PromptSourceConfig(source="file", path=str(prompts), prompt_column="messages", id_column="id"),
        client=_client(tmp_path),
        output_dir=str(tmp_path / "build"),
        max_items_in_flight=4,
    )
    asyncio.run(build(cfg))
    return tmp_path / "build"


def test_earlier_turns_pair_each_user_turn_with_its_answer_per_side():
    assert earlier_turns([]) == [] and earlier_turns(None, None) == []
    shared = earlier_turns(TURNS[:2])
    assert shared == [{"turn": 1, "user": TURNS[0]["content"], "answer": TURNS[1]["content"]}]
    assert earlier_turns(TURNS[:2], list(TURNS[:2])) == shared  # B saw the same turns: one answer
    own = earlier_turns(TURNS[:2], [TURNS[0], B_TURN_1])
    assert own == [
        {"turn": 1, "user": TURNS[0]["content"], "answer_a": TURNS[1]["content"], "answer_b": B_TURN_1["content"]}
    ]
    asked = earlier_turns(TURNS[:2], [{"role": "user", "content": "other"}, B_TURN_1])
    assert asked[0]["user_b"] == "other"
    assert [t["turn"] for t in earlier_turns([*TURNS, {"role": "assistant", "content": "x"}])] == [1, 2]


def test_an_evaluated_conversation_shows_every_turn_and_the_judged_one(server, tmp_path):  # noqa: F811
    run = evaluate_run(server, tmp_path, "judge", name="mt", items=write_conversations(tmp_path / "conv.jsonl"))
    (view,) = load_views([run])[0]
    rows = {r["id"]: r for r in view.rows()}
    assert rows["m0"]["question"].startswith("[turn 2 of 2] Name another one")
    assert rows["m1"]["question"] == "Single question 1?"  # single-turn: as before
    item = view.item("m0")
    assert item is not None and item["turn"] == 2
    assert item["question"] == f"{TURNS[2]['content']} (0)" and item["response_a"] == "Green, 0."
    assert item["turns"] == [{"turn": 1, "user": TURNS[0]["content"], "answer": TURNS[1]["content"]}]
    assert item["evaluators"] and item["evaluators"][0]["records"]
    single = view.item("m1")
    assert single is not None and "turns" not in single and "turn" not in single


def test_mt_bench_turn_2_shows_each_sides_own_turn_1_answer(server, tmp_path, monkeypatch):  # noqa: F811
    """An MT-Bench turn-2 row carries ``context_b`` (B's model answered turn 1 itself): the item shows both answers."""
    run = evaluate_run(server, tmp_path, "judge", name="mt", items=write_conversations(tmp_path / "conv.jsonl"))
    real = evidence.offline_items

    def with_b(spec):
        rows, path = real(spec)
        for r in rows:
            if "context" in r:
                r["context_b"] = [r["context"][0], B_TURN_1]
        return rows, path

    monkeypatch.setattr(evidence, "offline_items", with_b)
    (view,) = load_views([run])[0]
    item = view.item("m2")
    assert item is not None
    ((turn,),) = [item["turns"]]
    assert turn["answer_a"] == TURNS[1]["content"] and turn["answer_b"] == B_TURN_1["content"]
    assert "answer" not in turn


def test_a_built_conversation_shows_its_earlier_turns(server, tmp_path):  # noqa: F811
    run = multiturn_build(server, tmp_path)
    (view,) = load_views([run])[0]
    rows = {r["id"]: r for r in view.rows()}
    assert rows["two-turn"]["prompt"].startswith("[turn 2 of 2] Name another one")
    assert rows["one-turn"]["prompt"] == TURNS[0]["content"]
    item = view.item("two-turn")
    assert item is not None and item["turn"] == 2 and item["prompt"] == TURNS[2]["content"]
    assert item["turns"] == [{"turn": 1, "user": TURNS[0]["content"], "answer": TURNS[1]["content"]}]
    assert "answered_by" not in item  # the answer was given in the prompt file
    answered = view.item("user-turns")
    assert answered is not None and answered["answered_by"] == "generator"
    (t1,) = answered["turns"]
    assert t1["user"] == TURNS[0]["content"] and t1["answer"].strip()  # the generator's own turn-1 answer
    one = view.item("one-turn")
    assert one is not None and "turns" not in one
