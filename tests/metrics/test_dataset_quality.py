"""Dataset quality indicators on hand-made build records whose answers are known."""

from __future__ import annotations

import json

import pytest

from mapo.metrics.dataset_quality import dataset_quality, dataset_quality_of_run, quality_markdown, similarity


def _gen(key, responses, scores, reviewer="gemma"):
    return {
        "key": key,
        "prompt": f"question {key}",
        "generator": "llama",
        "reviewers": [reviewer],
        "iterations": [
            {
                "index": i,
                "response": r,
                "finish_reason": "stop",
                "score": s,
                "reviews": [{"reviewer": reviewer, "raw": [], "score": s, "evaluation": "", "feedback": ""}],
            }
            for i, (r, s) in enumerate(zip(responses, scores, strict=True))
        ],
    }


def _attempt(order, pick):
    return {"order": order, "raw": [], "verdict": {"pick": pick, "failure": None}}


def _sel(key, best, judgements=()):
    return {
        "key": key,
        "best": best,
        "method": "tournament",
        "scores": [],
        "judgements": list(judgements),
        "failure": None,
    }


def _dpo(key, best, other, chosen, rejected, margin):
    return {
        "key": f"{key}/{best}>{other}",
        "prompt": [{"role": "user", "content": "q"}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "chosen_iteration": best,
        "rejected_iteration": other,
        "margin": margin,
        "decisive": margin != 0,
    }


LONG = "a long and careful answer with many more words than the other one has in it"
SHORT = "a short answer"


@pytest.fixture
def records():
    gens = [
        _gen("p1", [SHORT, "middle answer here", LONG], [5.0, 6.0, 8.0]),
        _gen("p2", [LONG, SHORT, SHORT + " "], [7.0, 6.5, 6.0]),  # two identical responses (after strip)
        _gen("p3", ["x y z w", "x y z w v", "q"], [4.0, None, 5.0]),
    ]
    sels = [
        # p1: compared in both orders, consistent (AB: B wins; BA: A = response_b wins) then last wins
        _sel("p1", 2, [{"a": 0, "b": 1, "attempts": [_attempt("AB", "B"), _attempt("BA", "A")]}]),
        # p2: inconsistent orders (always the first shown)
        _sel("p2", 0, [{"a": 0, "b": 1, "attempts": [_attempt("AB", "A"), _attempt("BA", "A")]}]),
        {"key": "p3", "best": None, "failure": "judge failed"},
    ]
    dpo = [
        _dpo("p1", 2, 0, LONG, SHORT, 3.0),
        _dpo("p1", 2, 1, LONG, "middle answer here", 2.0),
        _dpo("p2", 0, 1, LONG, SHORT, 0.5),
        _dpo("p2", 0, 2, "the cat sat on the mat today", "the cat sat on the mat today!", 0.0),
    ]
    kto = [{"key": "p1/2", "label": True}, {"key": "p1/0", "label": False}, {"key": "p1/1", "label": False}]
    return gens, sels, dpo, kto


def test_indicators_have_the_known_values(records):
    q = dataset_quality(*records)
    assert q["items"] == {"generations": 3, "selections": 3, "dpo_pairs": 4, "kto_rows": 3}
    assert q["kto_desirable_share"] == pytest.approx(1 / 3)
    # length: the chosen is longer in 3 of 4 pairs; the 4th pair is near-identical
    assert q["length"]["chosen_longer_share"] == 0.75
    assert q["length"]["ratio"]["n"] == 4 and q["length"]["ratio"]["max"] == pytest.approx(len(LONG) / len(SHORT))
    # chosen iteration: p1 -> last (2), p2 -> first (0); p3 failed
    assert q["chosen_iteration"] == {"n": 2, "failed": 1, "by_index": {"0": 1, "2": 1}, "last_share": 0.5}
    m = q["margin"]
    assert (m["n"], m["median"], m["zero_share"], m["without_margin"]) == (4, 1.25, 0.25, 0)
    assert m["histogram"]["[0, 0.5)"] == 1 and m["histogram"]["[3, 5)"] == 1
    assert q["order_consistency"] == {"n": 2, "consistency": 0.5}
    d = q["duplicates"]
    assert d["identical_pairs"] == 0  # p2's best (0) differs from both others
    assert d["near_duplicate_pairs_written"] == 1 and d["near_duplicate_share"] == 0.25
    rs = q["reviewer_scores"]
    assert rs["by_iteration"]["0"]["mean"] == pytest.approx((5 + 7 + 4) / 3)
    assert rs["by_iteration"]["1"]["n"] == 2  # p3's second review failed
    # steps with two scores in a row: p1 5->6, 6->8 (up, up); p2 7->6.5, 6.5->6 (down, down)
    assert (rs["steps"], rs["improved_share"]) == (4, 0.5)
    assert rs["by_reviewer"]["gemma"]["2"] == pytest.approx((8 + 6 + 5) / 3)
    json.dumps(q)


def test_identical_responses_are_counted():
    gens = [_gen("p", ["same text", "same text ", "other"], [5, 5, 6])]
    q = dataset_quality(gens, [_sel("p", 0)], [])
    assert q["duplicates"]["identical_pairs"] == 1
    assert q["length"]["n"] == 0 and q["margin"]["n"] == 0 and q["order_consistency"]["consistency"] is None


def test_empty_run_and_markdown(tmp_path, records):
    q = dataset_quality_of_run(tmp_path)  # no files: every section says n = 0
    assert q["items"]["dpo_pairs"] == 0 and q["chosen_iteration"]["last_share"] is None
    for name, rows in zip(("generations", "selections", "dpo", "kto"), records, strict=True):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    q = dataset_quality_of_run(tmp_path)
    assert q["items"]["dpo_pairs"] == 4
    md = quality_markdown(q)
    assert md.startswith("## Dataset quality") and "| chosen is the longer response | 75.0% |" in md
    assert "| order consistency (both orders judged) | 50.0% (n=2) |" in md


def test_similarity():
    assert similarity("one two three four", "one two three four") == 1.0
    assert similarity("", "") == 1.0 and similarity("a", "") == 0.0
    assert 0 < similarity("the cat sat on the mat", "the cat sat on a mat") < 1


def test_a_run_folder_is_read_without_holding_its_records(tmp_path):
    """The indicators of a big run cost numbers per item, not the records: peak memory stays far
    below the size of the record files (they used to be read into lists: RSS grew with the run)."""
    import tracemalloc

    n, text = 3000, "word " * 200
    with open(tmp_path / "generations.jsonl", "w") as fh:
        for i in range(n):
            fh.write(
                json.dumps(_gen(f"p{i}", [f"{i} {text}", f"{i} b {text}", f"{i} c {text}"], [5.0, 6.0, 7.0])) + "\n"
            )
    with open(tmp_path / "selections.jsonl", "w") as fh:
        for i in range(n):
            fh.write(json.dumps(_sel(f"p{i}", 2)) + "\n")
    with open(tmp_path / "dpo.jsonl", "w") as fh:
        for i in range(n):
            fh.write(json.dumps(_dpo(f"p{i}", 2, 0, f"{i} c {text}", f"{i} {text}", 1.0)) + "\n")
    size = sum(p.stat().st_size for p in tmp_path.glob("*.jsonl"))
    tracemalloc.start()
    try:
        q = dataset_quality_of_run(tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert q["items"] == {"generations": n, "selections": n, "dpo_pairs": n, "kto_rows": 0}
    assert q["chosen_iteration"]["last_share"] == 1.0 and q["reviewer_scores"]["by_iteration"]["2"]["n"] == n
    assert peak < size / 10, f"peak {peak / 2**20:.1f} MB for {size / 2**20:.1f} MB of records"
