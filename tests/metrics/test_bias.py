"""Bias diagnostics on constructed judgements whose answers are known."""

from __future__ import annotations

import pytest

from mapo.metrics.bias import (
    bias_report,
    candidate_preference,
    family_of,
    length_bias,
    lengths_from_rows,
    position_bias_table,
    same_family,
)
from mapo.metrics.uncertainty import Bootstrap

A, B, T = "model_a", "model_b", "tie"
FAST = Bootstrap(n_resamples=1000, seed=0)
N = 40


def _rec(i, label, human, judge="gpt-4o", order="AB", pick=None, models=None):
    return {
        "item_id": str(i),
        "kind": "judge",
        "judge": judge,
        "setup": "combined10",
        "order": order,
        "label": label,
        "pick": pick,
        "human": human,
        "models": models or [judge],
    }


FAMS = {"gpt-4o": "openai", "gpt-3.5-turbo": "openai", "vicuna-13b": "lmsys"}


def test_family_of_comes_from_configuration_never_from_name_fragments():
    assert family_of("gpt-4o", FAMS) == family_of("gpt-3.5-turbo", FAMS) == "openai"
    assert family_of("openai/GPT-4o", FAMS) == "openai"  # exact name, case and a repo prefix aside
    # issue 25: these were "own family" of GPT-4o by the fragment "gpt"; nobody named their family
    for name in ("cerebras-gpt-6.7B", "gpt-j-6b", "gpt-neox-20b", "gpt-4o-mini"):
        assert family_of(name, FAMS) == "unknown"
        assert not same_family(name, "gpt-4o", FAMS)
    assert family_of("Meta-Llama-3.1-8B-Instruct") == "unknown"  # no table of fragments
    assert not same_family("x", "y")  # two unknowns are not one family


def test_unknown_families_are_never_own_family_and_are_left_out_by_family():
    """GPT-4o judging gpt-j-6b vs gpt-neox-20b (families not named): no "own family" mark, and the
    family table leaves the pairs out and counts them."""
    recs = [_rec(i, B, A) for i in range(N)]
    (row,) = candidate_preference(recs, ("gpt-j-6b", "gpt-neox-20b"), families=FAMS, settings=FAST)
    assert all(not c["own_family"] and c["family"] == "unknown" for c in row["candidates"])
    (fam,) = candidate_preference(recs, ("gpt-j-6b", "gpt-neox-20b"), by="family", families=FAMS, settings=FAST)
    assert fam["candidates"] == [] and fam["n_unknown_family"] == N
    (row,) = candidate_preference(recs, ("vicuna-13b", "gpt-3.5-turbo"), families=FAMS, settings=FAST)
    by = {c["candidate"]: c for c in row["candidates"]}
    assert by["gpt-3.5-turbo"]["own_family"] and not by["vicuna-13b"]["own_family"]


def test_family_preference_of_a_judge_that_always_picks_its_own_family():
    """GPT-4o always picks GPT-3.5 (response_b); humans split evenly: family preference +0.5."""
    humans = [A, B] * (N // 2)
    recs = [_rec(i, B, h) for i, h in enumerate(humans)]
    (row,) = candidate_preference(recs, ("vicuna-13b", "gpt-3.5-turbo"), by="family", families=FAMS, settings=FAST)
    by = {r["candidate"]: r for r in row["candidates"]}
    assert by["openai"]["self"] and not by["lmsys"]["self"]
    assert (by["openai"]["judge_rate"], by["openai"]["human_rate"], by["openai"]["n"]) == (1.0, 0.5, N)
    assert by["openai"]["diff"] == pytest.approx(0.5) and by["openai"]["diff_ci"][0] > 0.3
    assert by["lmsys"]["diff"] == pytest.approx(-0.5)
    assert row["self_preference"] == pytest.approx(0.5)


def test_model_preference_with_ties_and_failures_and_per_item_candidates():
    # items 0-9: (x, y); items 10-19: (y, z). The judge picks y always, ties once, fails once.
    cands = {str(i): ("x", "y") if i < 10 else ("y", "z") for i in range(20)}
    recs = []
    for i in range(20):
        y_side = B if i < 10 else A
        label = None if i == 0 else T if i == 1 else y_side
        recs.append(_rec(i, label, y_side if i % 2 else T, judge="judge-y", models=["y"]))
    (row,) = candidate_preference(recs, cands, settings=FAST)
    y = next(r for r in row["candidates"] if r["candidate"] == "y")
    # judge: 18 picks + 1 tie (0.5) over 19 judged; humans: 10 picks + 10 ties (5) over 20
    assert y["judge_rate"] == pytest.approx(18.5 / 19) and y["human_rate"] == pytest.approx(15 / 20)
    assert y["self"] and row["self_preference"] == pytest.approx(18.5 / 19 - 15 / 20)
    assert {r["candidate"]: r["n"] for r in row["candidates"]} == {"x": 10, "y": 20, "z": 10}


def test_length_bias_of_a_judge_that_always_picks_the_longer():
    rows = [
        {"id": str(i), "question": "q", "response_a": "a" * (10 + 5 * (i % 2)), "response_b": "b" * 12}
        for i in range(N)
    ]
    lengths = lengths_from_rows(rows)
    longer = [A if lengths[str(i)][0] > lengths[str(i)][1] else B for i in range(N)]
    humans = [longer[i] if i % 4 < 2 else (A if longer[i] == B else B) for i in range(N)]  # half prefer longer
    recs = [_rec(i, longer[i], humans[i]) for i in range(N)]
    recs[0]["label"] = T  # a tie: left out of the rate, counted
    (row,) = length_bias(recs, lengths, settings=FAST)
    assert row["n"] == N and row["judge_ties"] == 1 and row["human_ties"] == 0
    assert row["judge_rate"] == 1.0 and row["human_rate"] == pytest.approx(0.5)
    assert row["diff"] == pytest.approx(0.5) and row["diff_ci"][0] > 0.25
    same = dict(lengths, **{"0": (5, 5)})  # equal lengths: the item says nothing
    assert length_bias(recs, same, settings=FAST)[0]["n"] == N - 1
    assert lengths_from_rows([{"id": 1, "response_a": "a b c", "response_b": "d"}], unit="words") == {"1": (3, 1)}


def test_position_bias_of_a_judge_that_always_picks_the_first_shown():
    recs = []
    for i in range(N):
        recs.append(_rec(i, A, A, order="AB", pick="A"))
        recs.append(_rec(i, B, A, order="BA", pick="A"))  # shown b-then-a: "A" is response_b
    (row,) = position_bias_table(recs, settings=FAST)
    assert (row["first_rate"], row["consistency"], row["n_pairs"]) == (1.0, 0.0, N)
    assert row["first_rate_ci"] == [1.0, 1.0] and row["consistency_ci"] == [0.0, 0.0]
    unbiased = [_rec(i, A, A, order=o, pick=p) for i in range(N) for o, p in (("AB", "A"), ("BA", "B"))]
    (row,) = position_bias_table(unbiased, settings=FAST)
    assert (row["first_rate"], row["consistency"]) == (0.5, 1.0)
    assert position_bias_table([_rec(0, A, A)]) == []  # one order only: nothing to measure


def test_bias_report_combines_orders_like_the_judge_and_runs_what_the_inputs_allow():
    recs = [_rec(i, B, A, order=o, pick="B" if o == "AB" else "A") for i in range(N) for o in ("AB", "BA")]
    rep = bias_report(recs, settings=FAST)
    assert set(rep) == {"position"} and rep["position"][0]["consistency"] == 1.0
    lengths = {str(i): (5, 9) for i in range(N)}
    rep = bias_report(recs, candidates=("vicuna-13b", "gpt-3.5-turbo"), lengths=lengths, families=FAMS, settings=FAST)
    assert set(rep) == {"position", "length", "model_preference", "family_preference"}
    assert rep["length"][0]["judge_rate"] == 1.0 and rep["length"][0]["human_rate"] == 0.0
    assert rep["family_preference"][0]["self_preference"] == pytest.approx(1.0)
