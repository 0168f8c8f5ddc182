"""Parsers: tables of awkward real-world outputs, constrained-decoding regexes, fuzzing and the
authors' 480 answers + 1440 debate finals re-parsed."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mapo.core.parsers import PARSERS, ParseResult, Review, constrained_regex, to_verdict
from mapo.core.registry import UnknownNameError
from mapo.core.types import Verdict

SHARED = Path(os.environ.get("MAPO_SHARED", Path(__file__).resolve().parents[3] / "shared"))
JUDGMENTS = SHARED / "data" / "faireval" / "mapo-judgments"

pick = PARSERS.get("pick")
score = PARSERS.get("score")
pair = PARSERS.get("score_pair")
review = PARSERS.get("review")

# --------------------------------------------------------------------------- pick

PICKS = [
    ("### Evaluation Evidence:\nA is more detailed.\n\n### Answer:\nA", "A"),
    ("### Answer: B", "B"),
    ("**Answer:** B", "B"),
    ("**Answer**: C", "tie"),
    ("Answer: C (tie)", "tie"),
    ("### Answer: Tie", "tie"),
    ("Answer: Assistant B", "B"),
    ("Answer: Response A is better", "A"),
    ("### Answer: [[A]]", "A"),
    ("My final verdict is [[B]]", "B"),
    ("Final answer: B.", "B"),
    ("The answer is A.", "A"),
    ("Verdict: C", "tie"),
    ("### Answer\nB", "B"),
    ("### Answer:\n\n**A**", "A"),
    # the last answer wins
    ("Answer: A\n\nWait, looking again at accuracy...\n\nAnswer: B", "B"),
    ("The correct answer is B (Paris).\n\n### Answer: A", "A"),
    # prose "answer A gives" is not an answer marker; the header is
    ("The answer A gives is short.\n### Answer: B", "B"),
    # no marker: a bare final line
    ("Both are fine but B is more accurate.\n\nB", "B"),
    ("Evaluation...\n\n**C**", "tie"),
    ("Evaluation...\nOption A", "A"),
]

PICK_FAILURES = [
    "",
    "   \n ",
    "I cannot decide between them.",
    "### Answer: A or B or C",  # the template echoed back
    "Answer: A/B/C",
    "Answer: As both responses are similar, it's hard to say.",  # "As" is not "A"
    "### Evaluation Evidence: both good",
    "answer: a",  # lower-case letters are prose, not options
]


@pytest.mark.parametrize("text,expected", PICKS)
def test_pick_reads_awkward_outputs(text, expected):
    r = pick(text)
    assert r.ok, r.error
    assert r.value == expected


@pytest.mark.parametrize("text", PICK_FAILURES)
def test_pick_fails_explicitly(text):
    r = pick(text)
    assert not r.ok and r.value is None and r.error


# --------------------------------------------------------------------------- one score

SCORES = [
    ("### Overall Score: 8/10", 10, 8.0),
    ("**Overall Score:** 7.5/10", 10, 7.5),
    ("### Overall Score:\n8/10", 10, 8.0),
    ("### Overall Score:\n\n**8/10**", 10, 8.0),
    ("Score: 8", 10, 8.0),
    ("Score: 8.5", 10, 8.5),
    ("Rating: **9**/10", 10, 9.0),
    ("Overall, I would give it 8 out of 10.", 10, 8.0),
    ("Overall Score: 7.5/10 (good, but verbose)", 10, 7.5),
    ("Score: 6/10\n\nOn reflection the accuracy issue is minor.\nScore: 7/10", 10, 7.0),
    ("Final score - 9/10", 10, 9.0),
    ("Score: 10/10", 10, 10.0),
    ("Score: 0/10", 10, 0.0),
    ("Clarity: 4/5. Depth: 3/5.\nOverall Score: 7/10", 10, 7.0),
    ("Overall Score: 85/100", 100, 85.0),
    ("Score: 4/5", 5, 4.0),
    ("Score: 4 points.", 5, 4.0),
]

SCORE_FAILURES = [
    ("Score: 11/10", 10),
    ("Score: 10.5/10", 10),
    ("Score: 85/100", 10),  # another denominator: not rescaled, refused
    ("Score: -1/10", 10),
    ("Score: X/10", 10),
    ("Score: 6/5", 5),
    ("The response is good.", 10),
    ("Score: 8th place", 10),
    ("", 10),
]


@pytest.mark.parametrize("text,scale,expected", SCORES)
def test_score_reads_awkward_outputs(text, scale, expected):
    r = score(text, scale=scale)
    assert r.ok, r.error
    assert r.value == expected


@pytest.mark.parametrize("text,scale", SCORE_FAILURES)
def test_score_refuses(text, scale):
    r = score(text, scale=scale)
    assert not r.ok and r.error


@pytest.mark.parametrize("bad", [0, -3, 10.0, "10", True, None])
def test_a_bad_scale_is_a_config_error(bad):
    with pytest.raises(ValueError, match="scale"):
        score("Score: 1/10", scale=bad)


# --------------------------------------------------------------------------- pair of scores

PAIRS = [
    # the paper's format, one line and header-then-value
    ("### Evaluation Evidence: A is deeper.\n### Score Assistant A: 8/10\n### Score Assistant B: 6/10", 10, (8.0, 6.0)),
    ("### Evaluation Evidence:\nx\n\n### Score Assistant A:\n8/10\n\n### Score Assistant B:\n6/10", 10, (8.0, 6.0)),
    ("### Score Assistant A:\n8/10 \n\n### Score Assistant B:\n7/10 \n\n\n\n", 10, (8.0, 7.0)),
    ("**Score Assistant A:** 7.5/10\n**Score Assistant B:** 9/10", 10, (7.5, 9.0)),
    ("**Score Assistant A**: 7/10\n**Score Assistant B**: 9/10", 10, (7.0, 9.0)),
    # the debate format (GPT-4o debate finals use "### Score Assistant 1:")
    ("Assistant 1: 9/10\nAssistant 2: 7/10", 10, (9.0, 7.0)),
    ("**Assistant 1:** 9/10\n**Assistant 2:** 7/10", 10, (9.0, 7.0)),
    ("### Score Assistant 1: 9/10\n### Score Assistant 2: 8/10", 10, (9.0, 8.0)),
    ("Assistant 1: 9\nAssistant 2: 7", 10, (9.0, 7.0)),
    # repeated: the final pair wins
    (
        "Assistant 1: 9/10\nAssistant 2: 7/10\n\nAfter the discussion I revise:\nAssistant 1: 8/10\nAssistant 2: 8/10",
        10,
        (8.0, 8.0),
    ),
    ("Assistant 1: 9/10\nAssistant 2: 7/10\n\nThis slight adjustment acknowledges Assistant 2's tip.", 10, (9.0, 7.0)),
    # other phrasings
    ("Response A: 8/10, Response B: 6/10", 10, (8.0, 6.0)),
    ("Assistant A's score: 8/10\nAssistant B's score: 6/10", 10, (8.0, 6.0)),
    ("Assistant A (8/10) is thorough; Assistant B (9/10) is more precise.", 10, (8.0, 9.0)),
    ("- Assistant A - 6.5/10\n- Assistant B - 8/10", 10, (6.5, 8.0)),
    ("Assistant A: **8**/10\nAssistant B: **6**/10", 10, (8.0, 6.0)),
    ("Score for Assistant A: 7 out of 10\nScore for Assistant B: 9 out of 10", 10, (7.0, 9.0)),
    (
        "I would give Assistant 1's response a score of 7.5/10 and Assistant 2's response a score of 8/10.",
        10,
        (7.5, 8.0),
    ),
    ("**Score for Assistant 1**: 6  \n**Score for Assistant 2**: 9", 10, (6.0, 9.0)),
    ("Score: Assistant 1 - 9, Assistant 2 - 7", 10, (9.0, 7.0)),
    ("I propose a score of 7/10 for Assistant 1 and 5/10 for Assistant 2.", 10, (7.0, 5.0)),
    ("I suggest scoring Assistant 1 at 8.5/10, and Assistant 2 at 7.5/10.", 10, (8.5, 7.5)),
    ("I'd give Assistant 1 a score of 8 and Assistant 2 a score of 7. ", 10, (8.0, 7.0)),
    (
        "My revised ratings are: Assistant 1's answer is a 9 out of 10, and Assistant 2's answer is a 7.5 out of 10.",
        10,
        (9.0, 7.5),
    ),
    (
        "I would rate Assistant 2's response as a 9 out of 10 and Assistant 1's response as an 8 out of 10.",
        10,
        (8.0, 9.0),
    ),
    # a numbered list after a label is not a score; the real scores come later
    (
        "Response A: 1. Set clear goals\n2. Plan\n\n### Score Assistant A: 8/10\n### Score Assistant B: 6/10",
        10,
        (8.0, 6.0),
    ),
    # other totals (paper compared 5, 10 and 100)
    ("### Score Assistant A: 85/100\n### Score Assistant B: 90/100", 100, (85.0, 90.0)),
    ("### Score Assistant A: 4/5\n### Score Assistant B: 5/5", 5, (4.0, 5.0)),
]

PAIR_FAILURES = [
    ("Assistant A: 8/10", 10),  # B missing
    ("### Score Assistant A: X/10\n### Score Assistant B: Y/10", 10),  # template echoed
    ("Assistant A: 12/10\nAssistant B: 6/10", 10),
    ("Assistant A: 8/5\nAssistant B: 6/10", 10),
    ("Assistant A: -2/10\nAssistant B: 6/10", 10),
    ("Assistant 1 gave 3 tips and Assistant 2 gave 5 tips.", 10),
    ("Assistant 1's answer is 3 times longer; Assistant 2's answer is 2 paragraphs.", 10),
    ("### Score Assistant A: 85/100\n### Score Assistant B: 90/100", 10),
    ("Both responses are good.", 10),
]


@pytest.mark.parametrize("text,scale,expected", PAIRS)
def test_score_pair_reads_awkward_outputs(text, scale, expected):
    r = pair(text, scale=scale)
    assert r.ok, r.error
    assert r.value == expected


@pytest.mark.parametrize("text,scale", PAIR_FAILURES)
def test_score_pair_refuses(text, scale):
    r = pair(text, scale=scale)
    assert not r.ok and r.error


def test_debate_final_is_the_pair_parser():
    assert PARSERS.get("debate_final")("Assistant 1: 6/10\nAssistant 2: 7/10").value == (6.0, 7.0)


# --------------------------------------------------------------------------- review

REVIEW_OK = [
    ("### Evaluation: Clear.\n### Overall Score: 7.5/10\n### Feedback: Add sources.", ("Clear.", 7.5, "Add sources.")),
    (
        "### Evaluation:\nClear.\n\n### Overall Score:\n8/10\n\n### Feedback:\nAdd sources.\nCut the intro.",
        ("Clear.", 8.0, "Add sources.\nCut the intro."),
    ),
    ("**Evaluation:** ok\n**Overall Score:** 6.26/10\n**Feedback:** more detail", ("ok", 6.3, "more detail")),
    ("### Evaluation\nok\n### Overall Score\n9\n### Feedback\nnone needed", ("ok", 9.0, "none needed")),
    # no evaluation header; score inline
    ("The answer is fine. Overall Score: 6/10\n### Feedback: more examples", ("", 6.0, "more examples")),
    # a "Score:" line inside the feedback neither cuts it nor overrides the overall score
    (
        "### Evaluation: ok\n### Overall Score: 7/10\n### Feedback: The tone is fine.\nScore: 3/10 for style alone.",
        ("ok", 7.0, "The tone is fine.\nScore: 3/10 for style alone."),
    ),
]

REVIEW_FAILURES = [
    "### Evaluation: ok\n### Overall Score: 7/10",  # no feedback
    "### Evaluation: ok\n### Overall Score: 10.5/10\n### Feedback: x",
    "### Evaluation: ok\n### Overall Score: X/10\n### Feedback: x",
    "### Evaluation: ok\n### Feedback: x",
    "",
]


@pytest.mark.parametrize("text,expected", REVIEW_OK)
def test_review(text, expected):
    r = review(text)
    assert r.ok, r.error
    assert isinstance(r.value, Review)
    assert (r.value.evaluation, r.value.score, r.value.feedback) == expected


@pytest.mark.parametrize("text", REVIEW_FAILURES)
def test_review_refuses(text):
    assert not review(text).ok


# --------------------------------------------------------------------------- verdicts + registry


def test_to_verdict():
    assert to_verdict(pick("Answer: C"), "pick") == Verdict(pick="tie")
    assert to_verdict(pair("Assistant A: 8/10\nAssistant B: 9/10"), "score_pair") == Verdict(
        pick="B", score_a=8.0, score_b=9.0
    )
    assert to_verdict(pair("Assistant A: 7/10\nAssistant B: 7/10"), "score_pair").pick == "tie"
    failed = to_verdict(pair("nothing"), "score_pair")
    assert not failed.ok and failed.pick is None and "no score" in failed.failure
    assert to_verdict(score("Score: 4/10"), "score") == Verdict(score_a=4.0)
    with pytest.raises(ValueError, match="known"):
        to_verdict(ParseResult.success(1), "review")


def test_unknown_parser_lists_known_names():
    with pytest.raises(UnknownNameError, match="pick.*score_pair"):
        PARSERS.get("scores")


# --------------------------------------------------------------------------- constrained decoding

KINDS = [
    ("pick", 10),
    ("score", 10),
    ("score", 5),
    ("score", 100),
    ("score_pair", 10),
    ("score_pair", 5),
    ("score_pair", 100),
    ("debate_final", 10),
    ("review", 10),
]


@pytest.mark.parametrize("kind,scale", KINDS)
def test_constrained_regex_is_portable(kind, scale):
    rx = constrained_regex(kind, scale)
    re.compile(rx)
    # no lookarounds, backreferences, non-capturing/named groups or anchors (xgrammar/outlines subset)
    outside_classes = rx.replace("[^", "[")
    for banned in ("(?", "\\1", "^", "$", "\\b"):
        assert banned not in outside_classes, (banned, rx)


@pytest.mark.parametrize("scale", [1, 5, 9, 10, 20, 57, 99, 100, 215])
def test_integer_range_is_exact(scale):
    rx = constrained_regex("debate_final", scale)
    ok = {
        v
        for v in map(str, range(2 * scale + 20))
        if re.fullmatch(rx, f"Assistant 1: {v}/{scale}\nAssistant 2: 0/{scale}")
    }
    assert ok == {str(i) for i in range(scale + 1)}
    assert not re.fullmatch(rx, f"Assistant 1: 01/{scale}\nAssistant 2: 0/{scale}")


def test_review_regex_allows_one_decimal_only():
    rx = constrained_regex("review")
    good = "### Evaluation:\nok\n\n### Overall Score:\n{}/10\n\n### Feedback:\nmore"
    for v in ("0", "7", "7.5", "9.9", "10", "10.0"):
        assert re.fullmatch(rx, good.format(v)), v
    for v in ("10.5", "7.25", "11", "-1"):
        assert not re.fullmatch(rx, good.format(v)), v


def test_review_sections_open_with_a_word():
    # Gemma-3-270M answered "### Feedback:" with an empty numbered list ("1. \n2. \n3. ...") and SmolLM2
    # copied it into its revision until max_tokens (README main job, AVX2-only EPYC)
    rx = constrained_regex("review")
    review = "### Evaluation:\n{}\n\n### Overall Score:\n7/10\n\n### Feedback:\n{}"
    for evaluation, feedback in [
        ("ok", "more"),
        ("Le texte", "Ajoutez 3 idées"),
        ("回答", "更具体"),
        ("ok", "Add: 1. a 2. b"),
    ]:
        assert re.fullmatch(rx, review.format(evaluation, feedback)), (evaluation, feedback)
    for evaluation, feedback in [
        ("ok", "1. \n2. \n3. "),
        ("ok", "- a"),
        ("* a", "ok"),
        ("1. ok", "ok"),
        ("ok", "[Add your feedback here]"),
    ]:
        assert not re.fullmatch(rx, review.format(evaluation, feedback)), (evaluation, feedback)
    # a judge's evidence is unchanged: it may open with a number
    assert re.fullmatch(constrained_regex("score"), "### Evaluation Evidence:\n1. ok\n\n### Overall Score:\n7/10")


def test_constrained_regex_rejects_unknown_kind():
    with pytest.raises(ValueError, match="known"):
        constrained_regex("verdict", 10)
    with pytest.raises(ValueError, match="out of 10"):
        constrained_regex("review", 5)


FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]
)


@pytest.mark.parametrize("kind,scale", KINDS)
def test_every_string_the_regex_allows_parses(kind, scale):
    rx = constrained_regex(kind, scale)
    parser = PARSERS.get(kind)

    @FUZZ
    @given(st.from_regex(rx, fullmatch=True))
    def check(text):
        r = parser(text, scale=scale)
        assert r.ok, (r.error, text)
        if kind == "pick":
            assert r.value == {"A": "A", "B": "B", "C": "tie"}[text[-1]]
        elif kind == "score":
            assert r.value == float(text.rsplit("\n", 1)[1].split("/")[0])
        elif kind in ("score_pair", "debate_final"):
            lines = text.rsplit("\n", 4 if kind == "score_pair" else 1)
            nums = re.findall(r"(\d+)/\d+", "\n".join(lines[-4:] if kind == "score_pair" else lines[-2:]))
            assert r.value == (float(nums[-2]), float(nums[-1]))
        else:
            score_line = text.split("### Overall Score:\n")[-1].split("/10")[0]
            assert r.value.score == float(score_line)

    check()


# --------------------------------------------------------------------------- fuzz: no exception, nothing out of scale

_AWKWARD = st.text(alphabet=st.sampled_from(list("AaBbC12#*_: \n/.-09outfScoreAssistantAnswer")), max_size=120)
_ANY = st.one_of(st.text(max_size=300), _AWKWARD, st.builds(lambda a, b: a + b, _AWKWARD, st.text(max_size=40)))


@FUZZ
@given(text=_ANY, scale=st.sampled_from([5, 10, 100]))
def test_fuzz_parsers_never_raise_and_stay_in_scale(text, scale):
    for name in ("pick", "score", "score_pair", "debate_final", "review"):
        r = PARSERS.get(name)(text, scale=scale)
        assert isinstance(r, ParseResult)
        assert r.ok == (r.error is None)
        if not r.ok:
            assert r.value is None
            continue
        if name == "pick":
            assert r.value in ("A", "B", "tie")
        elif name == "score":
            assert 0 <= r.value <= scale
        elif name in ("score_pair", "debate_final"):
            assert all(0 <= v <= scale for v in r.value)
        else:
            assert 0 <= r.value.score <= 10 and r.value.feedback


@pytest.mark.parametrize("bad", [None, 3, b"Answer: A", ["Answer: A"]])
def test_non_text_is_a_failure_not_an_exception(bad):
    for name in ("pick", "score", "score_pair", "review"):
        assert not PARSERS.get(name)(bad).ok


# --------------------------------------------------------------------------- the authors' real outputs


@pytest.fixture(scope="module")
def author_records():
    if not JUDGMENTS.is_dir():
        pytest.skip(f"the authors' judge outputs are not at {JUDGMENTS} (set MAPO_SHARED to the shared/ folder)")
    from mapo.data.importers import STRATEGIES, iter_author_records

    # the shared copy holds the multi-rater10 and debate folders; the other strategies' folders are optional
    present = [s for s in STRATEGIES if (JUDGMENTS / s).is_dir()]
    return [r for s in present for r in iter_author_records(JUDGMENTS, s)]


def test_real_outputs_reparse_to_the_recorded_scores(author_records):
    assert len(author_records) == 960
    texts = sum(len(r.texts) for r in author_records)
    assert texts == 480 + 1440
    wrong = [
        (r.judge, r.strategy, r.index, r.parsed, r.recorded, r.parse_errors) for r in author_records if not r.agrees
    ]
    assert not wrong, wrong[:5]
