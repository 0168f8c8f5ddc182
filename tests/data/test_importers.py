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


def test_debate_with_an_unreadable_final_is_not_guessed(tmp_path):
    _write(
        tmp_path,
        "debate",
        "gpt-4o_gpt-4o.json",
        [
            _debate(
                ["Assistant 1: 9/10\nAssistant 2: 7/10", "no scores", "Assistant 1: 9/10\nAssistant 2: 7/10"], 9.0, 7.0
            )
        ],
    )
    (rec,) = iter_author_records(tmp_path, "debate")
    assert rec.parsed is None and rec.parse_errors[0].startswith("text 2:")


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
    with pytest.raises(ValueError, match="known: multi-rater10, debate"):
        list(iter_author_records(tmp_path, "jury"))
    (tmp_path / "debate").mkdir()
    with pytest.raises(JudgmentsFormatError, match="no \\*.json"):
        list(iter_author_records(tmp_path, "debate"))


@pytest.fixture(scope="module")
def real():
    if not JUDGMENTS.is_dir():
        pytest.skip(f"the authors' judge outputs are not at {JUDGMENTS} (set MAPO_SHARED to the shared/ folder)")
    return {s: load_author_judgments(JUDGMENTS, s) for s in STRATEGIES}


def test_real_files_six_judges_eighty_items_each(real):
    for strategy, runs in real.items():
        assert sorted(runs) == sorted(CANONICAL.values()), strategy
        for judge, recs in runs.items():
            assert [r.index for r in recs] == list(range(80))
            assert all(r.recorded is not None for r in recs), (strategy, judge)


def test_real_files_reparse_agrees_everywhere(real):
    for strategy, runs in real.items():
        for judge, recs in runs.items():
            bad = [r.index for r in recs if not r.agrees]
            assert not bad, (strategy, judge, bad)
