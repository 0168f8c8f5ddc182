"""Importer of the authors' FairEval judge outputs: shape checks on tiny fixtures, and the
real files when ../shared is there."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mapo.data.importers import (
    CANONICAL,
    STRATEGIES,
    AuthorRecord,
    JudgmentsFormatError,
    iter_author_records,
    load_author_judgments,
    strategies_in,
)

SHARED = Path(os.environ.get("MAPO_SHARED", Path(__file__).resolve().parents[3] / "shared"))
JUDGMENTS = SHARED / "data" / "faireval" / "mapo-judgments"

PAPER_ANSWER = "### Evaluation Evidence:\nA is deeper.\n\n### Score Assistant A:\n8/10\n\n### Score Assistant B:\n6/10"


def _write(root: Path, strategy: str, name: str, data) -> Path:
    folder = root / strategy
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


def _debate(finals: list[str], s1: float, s2: float) -> dict:
    rec = {f"response_{s}_{r}": f"turn {s}.{r}" for r in (1, 2) for s in (1, 2, 3)}
    rec.update({f"response_{i + 1}": t for i, t in enumerate(finals)})
    rec.update(score_1=s1, score_2=s2)
    return rec


def test_multi_rater_record(tmp_path):
    _write(
        tmp_path,
        "multi-rater10",
        "gemma-2-9b-it_none.json",
        [
            {"response": PAPER_ANSWER, "score_1": 8.0, "score_2": 6.0, "turns_to_answer": 1},
            {"response": "I refuse.", "score_1": None, "score_2": None, "turns_to_answer": 3},
        ],
    )
    ok, failed = iter_author_records(tmp_path, "multi-rater10")
    assert isinstance(ok, AuthorRecord)
    assert (ok.judge, ok.model, ok.index) == ("gemma-2-9b", "gemma-2-9b-it", 0)
    assert ok.recorded == ok.parsed == (8.0, 6.0) and ok.agrees
    assert ok.recorded_label == ok.parsed_label == "model_a"
    assert ok.texts == (PAPER_ANSWER,) and ok.discussion == ()
    # the authors' parser gave None: kept as a failure, never a tie
    assert failed.recorded is None and failed.recorded_label is None
    assert failed.parsed is None and failed.parse_errors and not failed.agrees


def test_debate_record_is_the_mean_of_the_three_finals(tmp_path):
    finals = [
        "Assistant 1: 9/10\nAssistant 2: 7/10",
        "### Score Assistant 1: 8/10\n### Score Assistant 2: 8/10",
        "**Assistant 1:** 7/10\n**Assistant 2:** 9/10",
    ]
    _write(tmp_path, "debate", "gpt-4o_gpt-4o.json", [_debate(finals, 8.0, 8.0)])
    (rec,) = iter_author_records(tmp_path, "debate")
    assert rec.parsed == (8.0, 8.0) and rec.parsed_label == "tie" and rec.agrees
    assert len(rec.texts) == 3 and rec.discussion[0] == "turn 1.1" and rec.discussion[-1] == "turn 3.2"


def test_debate_referee_that_cannot_be_read_abstains(tmp_path):
    """One rule with mapo's own debate: an unreadable referee abstains; the others decide.
    All referees unreadable: the record is a failure (never guessed)."""
    ok = "Assistant 1: 9/10\nAssistant 2: 7/10"
    _write(
        tmp_path,
        "debate",
        "gpt-4o_gpt-4o.json",
        [
            # the authors' code scored the failed referee 0/0: (9 + 0 + 8) / 3 vs (7 + 0 + 8) / 3
            _debate([ok, "no scores", "Assistant 1: 8/10\nAssistant 2: 8/10"], 17 / 3, 15 / 3),
            _debate(["none", "no scores", "still none"], 0.0, 0.0),
        ],
    )
    rec, failed = iter_author_records(tmp_path, "debate")
    assert rec.parsed == (8.5, 7.5) and rec.n_abstained == 1 and rec.parse_errors[0].startswith("text 2:")
    assert rec.parsed_label == rec.recorded_label == "model_a"  # both rules pick alike
    assert failed.parsed is None and failed.n_abstained == 3 and failed.parsed_label is None


def test_mapos_debate_states_the_same_rule():
    from mapo.data import importers
    from mapo.judging import debate

    assert "abstains" in (debate.__doc__ or "") and "abstains" in (importers.__doc__ or "")


PAIR = "### Evaluation Evidence:\nok\n\n### Score Assistant A:\n{a}/{s}\n\n### Score Assistant B:\n{b}/{s}"


@pytest.mark.parametrize("strategy,scale", [("multi-rater5", 5), ("multi-rater100", 100)])
def test_combined_scoring_over_5_and_100(tmp_path, strategy, scale):
    """Same record shape as multi-rater10 (their MultiRater class), other score totals."""
    hi, lo = (4, 2) if scale == 5 else (85, 60)
    _write(
        tmp_path,
        strategy,
        "gemma-2-27b-it_none.json",
        [
            {"response": PAIR.format(a=hi, b=lo, s=scale), "score_1": hi, "score_2": lo, "turns_to_answer": 1},
            {"response": "no scores at all", "score_1": -1, "score_2": -1, "turns_to_answer": 3},
        ],
    )
    ok, failed = iter_author_records(tmp_path, strategy)
    assert ok.judge == "gemma-2-27b" and ok.parsed == ok.recorded == (hi, lo) and ok.agrees
    assert not ok.authors_failed
    # their -1: a score to their kappa script (reproduced with recorded), a parse failure to mapo
    assert failed.recorded == (-1.0, -1.0) and failed.recorded_label == "tie" and failed.authors_failed
    assert failed.parsed is None and failed.parsed_label is None


def test_independent_scoring_rater10(tmp_path):
    """Their Rater: one conversation per response, ``response_1``/``response_2`` and their scores."""
    _write(
        tmp_path,
        "rater10",
        "gpt-4o_none.json",
        [
            {
                "response_1": "### Overall Score:\n7/10",
                "score_1": 7.0,
                "turns_to_answer_1": 1,
                "response_2": "### Overall Score:\n9/10",
                "score_2": 9.0,
                "turns_to_answer_2": 1,
            },
            {
                "response_1": "### Overall Score:\n6/10",
                "score_1": 6.0,
                "turns_to_answer_1": 1,
                "response_2": "I cannot rate this.",
                "score_2": -1,
                "turns_to_answer_2": 2,
            },
        ],
    )
    ok, half = iter_author_records(tmp_path, "rater10")
    assert ok.parsed == ok.recorded == (7.0, 9.0) and ok.parsed_label == "model_b" and len(ok.texts) == 2
    assert half.recorded_label == "model_a" and half.authors_failed  # -1 loses in their script
    assert half.parsed is None and half.parse_errors[0].startswith("response_2:")


def test_direct_comparison_judge(tmp_path):
    """Their Judge: ``pick`` is model_a / model_b / tie, and tie when their parser found nothing."""
    _write(
        tmp_path,
        "judge",
        "gpt-4o-mini_none.json",
        [
            {"response": "### Evaluation Evidence:\nB is better.\n\n### Answer:\nB", "pick": "model_b"},
            {"response": "### Answer:\nC", "pick": "tie"},
            {"response": "Both are fine, I cannot decide.", "pick": "tie"},
        ],
    )
    b, tie, silent = iter_author_records(tmp_path, "judge")
    assert (b.recorded_label, b.parsed_label, b.agrees, b.authors_failed) == ("model_b", "model_b", True, False)
    assert (tie.parsed_label, tie.authors_failed) == ("tie", False)
    assert silent.recorded_label == "tie" and silent.parsed_label is None and silent.authors_failed
    with pytest.raises(JudgmentsFormatError, match="record 0: field 'pick' is 'A'"):
        _write(tmp_path, "judge", "gpt-4o-mini_none.json", [{"response": "x", "pick": "A"}])
        list(iter_author_records(tmp_path, "judge"))


@pytest.mark.parametrize(
    "data,match",
    [
        ('[{"response": "x", "score_1": 1,', "broken JSON at line 1"),
        ({"response": "x"}, "expected a list"),
        (["just text"], "record 0: expected an object"),
        ([{"response": "x", "score_1": 1}], "record 0: missing field 'score_2'"),
        ([{"score_1": 1, "score_2": 2}], "record 0: field 'response' is missing"),
    ],
)
def test_bad_files_are_named(tmp_path, data, match):
    path = _write(tmp_path, "multi-rater10", "m_none.json", data)
    with pytest.raises(JudgmentsFormatError, match=match) as e:
        list(iter_author_records(tmp_path, "multi-rater10"))
    assert str(path) in str(e.value)


def test_unknown_strategy_and_empty_folder(tmp_path):
    with pytest.raises(ValueError, match="known: judge, rater10, multi-rater5, multi-rater10, multi-rater100, debate"):
        list(iter_author_records(tmp_path, "jury"))
    (tmp_path / "debate").mkdir()
    with pytest.raises(JudgmentsFormatError, match="no \\*.json"):
        list(iter_author_records(tmp_path, "debate"))


@pytest.fixture(scope="module")
def real():
    if not JUDGMENTS.is_dir():
        pytest.skip(f"the authors' judge outputs are not at {JUDGMENTS} (set MAPO_SHARED to the shared/ folder)")
    return {s: load_author_judgments(JUDGMENTS, s) for s in strategies_in(JUDGMENTS)}


def test_strategies_in_lists_the_present_folders(tmp_path):
    for name in ("debate", "judge", "notes"):
        (tmp_path / name).mkdir()
    assert strategies_in(tmp_path) == ["judge", "debate"]
    assert set(STRATEGIES) >= {"judge", "rater10", "multi-rater5", "multi-rater10", "multi-rater100", "debate"}


def test_real_files_six_judges_eighty_items_each(real):
    for strategy, runs in real.items():
        assert sorted(runs) == sorted(CANONICAL.values()), strategy
        for judge, recs in runs.items():
            assert [r.index for r in recs] == list(range(80))
            assert all(r.recorded is not None for r in recs), (strategy, judge)
            assert not any(r.authors_failed for r in recs), (strategy, judge)  # no -1 in these files


def test_real_files_reparse_agrees_everywhere(real):
    for strategy, runs in real.items():
        for judge, recs in runs.items():
            bad = [r.index for r in recs if not r.agrees]
            assert not bad, (strategy, judge, bad)
