"""Human-labelled evaluation sets: local files with mappings, clear errors, and the row
mapping of the Hugging Face sets on small hand-made rows (the hub is not reached)."""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

import pytest

from mapo.core.types import Conversation
from mapo.data import humans
from mapo.data.humans import (
    FIELDS,
    LOADERS,
    HumanDataError,
    alpaca_eval_rows,
    item_question,
    load_faireval,
    load_local,
    mt_bench_rows,
    pandalm_rows,
)

SHARED = Path(os.environ.get("MAPO_SHARED", Path(__file__).resolve().parents[3] / "shared"))
FAIREVAL = SHARED / "data" / "faireval" / "fair_eval.jsonl"


def _row(i: int, winner: str = "model_a") -> dict:
    return {"id": i, "question": f"q{i}", "response_a": f"a{i}", "response_b": f"b{i}", "winner": winner}


def test_faireval():
    if not FAIREVAL.is_file():
        pytest.skip(f"FairEval is not at {FAIREVAL} (set MAPO_SHARED to the shared/ folder)")
    rows = load_faireval(FAIREVAL)
    assert len(rows) == 80 and set(rows[0]) == set(FIELDS)
    assert [r["id"] for r in rows] == [str(i) for i in range(80)]
    from collections import Counter

    assert Counter(r["human"] for r in rows) == {"model_b": 41, "model_a": 25, "tie": 14}


def test_jsonl_with_mapping(tmp_path):
    p = tmp_path / "set.jsonl"
    p.write_text(
        "\n".join(
            json.dumps({"qid": i, "prompt": f"q{i}", "response_a": "a", "response_b": "b", "pref": v})
            for i, v in enumerate(["first", "second", "same"])
        )
        + "\n\n"
    )
    rows = load_local(
        p,
        columns={"id": "qid", "question": "prompt", "human": "pref"},
        labels={"first": "model_a", "second": "model_b", "same": "tie"},
    )
    assert [(r["id"], r["question"], r["human"]) for r in rows] == [
        ("0", "q0", "model_a"),
        ("1", "q1", "model_b"),
        ("2", "q2", "tie"),
    ]


def test_json_and_csv(tmp_path):
    j = tmp_path / "set.json"
    j.write_text(json.dumps([_row(0), _row(1, "tie")]))
    assert [r["human"] for r in load_local(j, columns={"human": "winner"})] == ["model_a", "tie"]
    c = tmp_path / "set.csv"
    c.write_text('question,response_a,response_b,label\n"q, with comma",a,b,1\nq2,a,b,2\n')
    rows = load_local(c, labels={1: "model_a", 2: "model_b"}, columns={"human": "label"})
    assert [(r["id"], r["question"], r["human"]) for r in rows] == [
        ("0", "q, with comma", "model_a"),
        ("1", "q2", "model_b"),
    ]
    # JSON numbers find string-keyed mappings too
    j.write_text(json.dumps([{**_row(0), "winner": 2}]))
    assert load_local(j, columns={"human": "winner"}, labels={"1": "model_a", "2": "model_b"})[0]["human"] == "model_b"


def test_broken_json_line_is_named(tmp_path):
    p = tmp_path / "set.jsonl"
    lines = [json.dumps(_row(i)) for i in range(20)]
    lines[16] = lines[16][:-5]
    p.write_text("\n".join(lines))
    with pytest.raises(HumanDataError, match=r"set\.jsonl: line 17: broken JSON"):
        load_local(p, columns={"human": "winner"})


def test_missing_column_is_named(tmp_path):
    p = tmp_path / "set.jsonl"
    rows = [_row(0), _row(1)]
    del rows[1]["winner"]
    p.write_text("\n".join(map(json.dumps, rows)))
    with pytest.raises(HumanDataError, match=r"line 2: missing column 'winner'"):
        load_local(p, columns={"human": "winner"})


def test_unknown_label_is_named(tmp_path):
    p = tmp_path / "set.jsonl"
    p.write_text("\n".join(map(json.dumps, [_row(0), _row(1), _row(2, "gpt-3.5")])))
    with pytest.raises(HumanDataError, match=r"line 3: unknown label value 'gpt-3.5' in column 'winner'"):
        load_local(p, columns={"human": "winner"})


@pytest.mark.parametrize(
    "name,content,kwargs,match",
    [
        ("x.jsonl", "[1, 2]", {}, "line 1: expected an object"),
        ("x.json", '{"a": 1}', {}, "expected a JSON list"),
        ("x.json", "[{", {}, "line 1: broken JSON"),
        ("x.txt", "", {}, "unknown format 'txt'"),
        ("x.jsonl", json.dumps(_row(0)), {"columns": {"verdict": "winner"}}, "unknown fields"),
    ],
)
def test_other_bad_inputs(tmp_path, name, content, kwargs, match):
    p = tmp_path / name
    p.write_text(content)
    with pytest.raises(HumanDataError, match=match):
        load_local(p, **kwargs)


def test_missing_file(tmp_path):
    with pytest.raises(HumanDataError, match="no such file"):
        load_local(tmp_path / "nope.jsonl")
    with pytest.raises(HumanDataError, match=rf"{tmp_path} is a folder, not a file"):  # was "no such file"
        load_local(tmp_path)


# --------------------------------------------------------------------------- Hugging Face mappings


def _panda(idx, votes, inp=None):
    return {
        "idx": idx,
        "instruction": "Rewrite it.",
        "input": inp,
        "response1": "r1",
        "response2": "r2",
        "annotator1": votes[0],
        "annotator2": votes[1],
        "annotator3": votes[2],
    }


def test_pandalm_majority_of_three():
    rows = pandalm_rows(
        [
            _panda(0, (2, 2, 1), "the text"),
            _panda(1, (1, 1, 1), float("nan")),
            _panda(2, (0, 0, 2)),
            _panda(3, (0, 1, 2)),
        ]
    )
    assert [r["human"] for r in rows] == ["model_b", "model_a", "tie", "tie"]  # 0-1-2: a three-way split is a tie
    assert rows[0]["question"] == "Rewrite it.\n\nthe text" and rows[1]["question"] == "Rewrite it."
    assert (rows[0]["response_a"], rows[0]["response_b"], rows[0]["id"]) == ("r1", "r2", "0")


def test_non_text_fields_are_kept_and_flagged_not_refused(tmp_path, caplog):
    """A response field holding a list / number / null never refuses the file (kappa needs an id
    and a label): the value is kept as text and the row names the odd field."""
    p = tmp_path / "set.jsonl"
    rows = [_row(0), {**_row(1), "response_b": ["a", "list"]}, {**_row(2), "question": 3, "response_a": None}]
    p.write_text("\n".join(map(json.dumps, rows)))
    with caplog.at_level("WARNING", logger="mapo.data.humans"):
        got = load_local(p, columns={"human": "winner"})
    assert [r["human"] for r in got] == ["model_a"] * 3 and "odd_fields" not in got[0]
    assert got[1]["response_b"] == '["a", "list"]' and got[1]["odd_fields"] == ["response_b: list"]
    assert (got[2]["question"], got[2]["response_a"]) == ("3", "")
    assert got[2]["odd_fields"] == ["question: int", "response_a: NoneType"]
    assert "2 of 3 rows hold non-text values" in caplog.text and "line 2: response_b: list" in caplog.text


def test_id_and_label_only(tmp_path):
    p = tmp_path / "labels.csv"
    p.write_text("question_id,verdict\n7,1\n8,2\n9,0\n")
    with pytest.raises(HumanDataError, match="missing column 'question'"):
        load_local(p, columns={"id": "question_id", "human": "verdict"}, labels={1: "model_a", 2: "model_b", 0: "tie"})
    got = load_local(
        p,
        columns={"id": "question_id", "human": "verdict"},
        labels={1: "model_a", 2: "model_b", 0: "tie"},
        need_text=False,
    )
    assert [(r["id"], r["human"]) for r in got] == [("7", "model_a"), ("8", "model_b"), ("9", "tie")]


def test_pandalm_non_text_response_is_flagged_not_refused(caplog):
    """PandaLM's public test set has items whose response is not text."""
    rec = {**_panda(5, (1, 1, 2)), "response2": 42}
    with caplog.at_level("WARNING", logger="mapo.data.humans"):
        (row,) = pandalm_rows([rec])
    assert row["human"] == "model_a" and row["response_b"] == "42" and row["odd_fields"] == ["response_b: int"]
    assert "PandaLM: 1 of 1 rows" in caplog.text


def test_pandalm_bad_vote():
    with pytest.raises(HumanDataError, match=r"row 0: unknown label value 3 in column 'annotator2'"):
        pandalm_rows([_panda(0, (1, 3, 1))])


def _mt(winner, turn=1, judge="author_0"):
    def conv(who):
        return [
            {"role": "user", "content": "Q1"},
            {"role": "assistant", "content": f"{who}1"},
            {"role": "user", "content": "Q2"},
            {"role": "assistant", "content": f"{who}2"},
        ]

    return {
        "question_id": 81,
        "model_a": "gpt-4",
        "model_b": "vicuna",
        "winner": winner,
        "judge": judge,
        "conversation_a": conv("a"),
        "conversation_b": conv("b"),
        "turn": turn,
    }


def test_mt_bench_rows():
    rows = mt_bench_rows([_mt("model_a"), _mt("tie (bothbad)"), _mt("model_b", turn=2)])
    assert [r["human"] for r in rows] == ["model_a", "tie", "model_b"]
    assert (rows[0]["question"], rows[0]["response_a"], rows[0]["response_b"]) == ("Q1", "a1", "b1")
    # turn 2 is judged on turn 2's answers; each side's own turn 1 is its context (shown to the judge)
    assert (rows[2]["question"], rows[2]["response_a"], rows[2]["response_b"]) == ("Q2", "a2", "b2")
    assert "context" not in rows[0] and "context_b" not in rows[0]
    assert rows[2]["context"] == [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "a1"}]
    assert rows[2]["context_b"] == [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "b1"}]
    q = item_question(rows[2])
    assert isinstance(q, Conversation) and q.question == "Q2"
    assert q.side()[1]["content"] == "a1" and q.side(b=True)[1]["content"] == "b1"
    assert q.swapped().side()[1]["content"] == "b1"
    assert item_question(rows[0]) == "Q1"  # a single-turn row: the plain question, as before
    assert rows[0]["id"] == "81:gpt-4:vicuna:t1:author_0"
    assert len(mt_bench_rows([_mt("model_a"), _mt("model_b", turn=2)], turn=2)) == 1
    with pytest.raises(HumanDataError, match=r"row 0: unknown label value 'draw'"):
        mt_bench_rows([_mt("draw")])


def test_alpaca_eval_majority_per_pair():
    def r(pref, out1="o1"):
        return {"instruction": "i", "output_1": out1, "output_2": "o2", "preference": pref}

    rows = alpaca_eval_rows([r(1), r(1.0), r(2), r(1), r(2, "x"), r(2, "x"), r(1, "x"), r(1, "x")])
    assert [(row["response_a"], row["human"]) for row in rows] == [("o1", "model_a"), ("x", "tie")]  # 2-2 is a tie
    with pytest.raises(HumanDataError, match="unknown label value 3"):
        alpaca_eval_rows([r(3)])


def test_hub_loaders_call_datasets_lazily(monkeypatch):
    calls = []

    def load_dataset(name, *args, **kwargs):
        calls.append((name, args, kwargs))
        return [_mt("model_a")] if "mt_bench" in name else [_panda(0, (1, 1, 2))]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    assert LOADERS.get("mt_bench")()[0]["human"] == "model_a"
    assert humans.load_pandalm()[0]["human"] == "model_a"
    assert calls[0] == ("lmsys/mt_bench_human_judgments", (), {"split": "human"})
    assert set(LOADERS) == {"alpaca_eval", "faireval", "local", "mt_bench", "pandalm"}


def test_hub_loader_without_datasets_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ImportError, match="pip install datasets"):
        humans.load_mt_bench()


def test_local_conversation_column(tmp_path):
    """A ``conversation`` column makes an item multi-turn: its last user turn is the question, the turns before
    it the context; a row without the column stays single-turn and is read exactly as before."""
    conv = [
        {"role": "user", "content": "Name a prime."},
        {"role": "assistant", "content": "7"},
        {"role": "user", "content": "And the next one?"},
    ]
    path = tmp_path / "mt.jsonl"
    lines = [
        {"id": "m", "conversation": conv, "response_a": "11", "response_b": "9", "winner": "model_a"},
        _row(1),
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    rows = load_local(path, columns={"human": "winner"})
    assert rows[0]["question"] == "And the next one?" and rows[0]["context"] == conv[:2]
    assert item_question(rows[0]) == Conversation("And the next one?", tuple(conv[:2]))
    assert rows[1] == {"id": "1", "question": "q1", "response_a": "a1", "response_b": "b1", "human": "model_a"}
    for bad, match in (
        (conv[:2], "the last turn must be the user's question"),
        ([conv[0], conv[0]], r"turn 1 is 'user', expected 'assistant'"),
        ("text", "expected a non-empty list"),
    ):
        path.write_text(json.dumps({**lines[0], "conversation": bad}) + "\n")
        with pytest.raises(HumanDataError, match=match):
            load_local(path, columns={"human": "winner"})
    path.write_text(json.dumps({**lines[0], "question": "Another question"}) + "\n")
    with pytest.raises(HumanDataError, match="differs from the last user turn"):
        load_local(path, columns={"human": "winner"})


def test_mt_bench_references_give_each_row_its_turns_reference(tmp_path):
    """FastChat's reference answers (question_id, choices[0].turns) -> each row's reference for its turn."""
    refs = tmp_path / "gpt-4.jsonl"
    refs.write_text(json.dumps({"question_id": 81, "choices": [{"index": 0, "turns": ["R1", "R2"]}]}) + "\n")
    rows = mt_bench_rows([_mt("model_a"), _mt("model_b", turn=2)], references=humans.read_mt_bench_references(refs))
    assert [r["reference"] for r in rows] == ["R1", "R2"]
    assert item_question(rows[0]) == Conversation("Q1", (), None, "R1")  # no earlier turns: asked as single-turn
    assert "reference" not in mt_bench_rows([_mt("model_a")])[0]
    refs.write_text(json.dumps({"question_id": 81, "choices": []}) + "\n")
    with pytest.raises(HumanDataError, match="line 1: expected question_id and choices"):
        humans.read_mt_bench_references(refs)
