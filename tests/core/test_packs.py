"""Judge-pack parsers (mapo.core.parsers: prometheus_score, prometheus_pick, judgelm_pair,
pandalm_pick, skywork_pick) on published outputs of these models and on the adversarial cases
of prometheus-eval's issue threads. The contract: 0 wrong parses; what is not read is a
failure (ok=False with a reason), never a score, a tie or -1.

Each example names its source. ``None`` as the expected value: the text must fail.
"""

from __future__ import annotations

import re

import pytest

from mapo.core.parsers import PARSERS, constrained_regex, to_verdict

PROMETHEUS_TESTS = "prometheus-eval/prometheus-eval libs/prometheus-eval/tests/test_parser.py"
PANDALM_TESTSET = "WeOpenML/PandaLM data/pandalm-7b-testset-v1.json (PandaLM-7B outputs), raw text rebuilt in the model's output format (pandalm_inference.py)"

# (text, expected, source). prometheus-eval's own parser test cases: where that parser reads a
# value without the [RESULT] marker ("score: 3", "(Score 5)", "[Response B]") mapo's parser
# refuses (the published format requires the marker; a re-ask follows) -- a failure, not a wrong value.
PROMETHEUS_ABSOLUTE = [
    ("Excellent. [RESULT] 5 out of 5", 5.0, PROMETHEUS_TESTS),
    ("Poor performance. [RESULT] score of 1", 1.0, PROMETHEUS_TESTS),
    ("Good job. [Result] 3", 3.0, PROMETHEUS_TESTS),
    ("Needs improvement. [Result] Score: 2", 2.0, PROMETHEUS_TESTS),
    ("Well done. [Result] Result: 4", 4.0, PROMETHEUS_TESTS),
    ("Average. [Result] 4/5", 4.0, PROMETHEUS_TESTS),
    ("Excellent. [Result] 5 out of 5", 5.0, PROMETHEUS_TESTS),
    ("Poor performance. [Result] score of 1", 1.0, PROMETHEUS_TESTS),
    ("Good job. (Score 5)", None, PROMETHEUS_TESTS + " (theirs: 5, no marker)"),
    ("Good job. [Score 4]", None, PROMETHEUS_TESTS + " (theirs: 4, no marker)"),
    ("Good job. score: 3", None, PROMETHEUS_TESTS + " (theirs: 3, no marker)"),
    ("Good job. Score: 3", None, PROMETHEUS_TESTS + " (theirs: 3, no marker)"),
    ("Good job. score of 1", None, PROMETHEUS_TESTS + " (theirs: 1, no marker)"),
    ("Good job. [RESULT] (5)", 5.0, PROMETHEUS_TESTS),
    ("The score is definitely not 3.", None, PROMETHEUS_TESTS),
    ("I rate this a perfect 10!", None, PROMETHEUS_TESTS),
    ("Score: 2.5", None, PROMETHEUS_TESTS),
    ("Result: A", None, PROMETHEUS_TESTS),
    (
        "Feedback: The response gives a correct and complete list of steps, with a short example for each. "
        "It could mention edge cases, but it addresses the user's need directly. [RESULT] 4",
        4.0,
        "prometheus-eval README: the documented output shape 'Feedback: ... [RESULT] n'",
    ),
]
PROMETHEUS_RELATIVE = [
    ("Response A is better. [RESULT] A", "A", PROMETHEUS_TESTS),
    ("Prefer Response B. [RESULT] B", "B", PROMETHEUS_TESTS),
    ("Feedback: Both responses are similar... [Response B]", None, PROMETHEUS_TESTS + " (theirs: B, no marker)"),
    ("Feedback: Both responses are clear... [Result] Response B", "B", PROMETHEUS_TESTS),
    ("Feedback: Both responses are clear... Response B Response A", None, PROMETHEUS_TESTS),
    ("Feedback: Both responses are clear... [RESULT: B]", "B", PROMETHEUS_TESTS),
    ("Feedback: Both responses are clear... [Result: B]", "B", PROMETHEUS_TESTS),
    ("Feedback: Both responses are clear...Response A. [RESULT] B", "B", PROMETHEUS_TESTS),
    ("After careful consideration, I select Response B.", None, PROMETHEUS_TESTS),
    ("Both responses have their merits.", None, PROMETHEUS_TESTS),
    ("Response C is clearly superior.", None, PROMETHEUS_TESTS),
    ("The better response is obviously B... or is it A? It's hard to decide.", None, PROMETHEUS_TESTS),
]
# Adversarial cases of the prometheus-eval threads: #58/#59 (the regex matched the prompt's own
# "[RESULT] (an integer ...)" template, so the library always returned 5), #11 (too short a
# max_model_len: outputs cut before any [RESULT]), #50 "Wrong RE Extraction" (relative grading read
# the wrong answer: a response label in the feedback taken for the verdict); the brief's list:
# marker missing, score repeated, "Score: 4" without the marker, several markers, trailing text.
ADVERSARIAL_ABSOLUTE = [
    ("(write a feedback for criteria) [RESULT] (an integer number between 1 and 5)", None, "#58: template echoed"),
    (
        "(write a feedback for criteria) [RESULT] (an integer number between 1 and 5)\n"
        "Feedback: accurate but terse. [RESULT] 3",
        3.0,
        "#58: template echoed, then the real verdict",
    ),
    ("Feedback: The response addresses the question but the explanation of", None, "#11: cut off, no marker"),
    ("Feedback: solid answer. Score: 4", None, "'Score: 4' without the marker"),
    ("Feedback: solid. [RESULT] 4 [RESULT] 4", 4.0, "score repeated (agreeing)"),
    ("Feedback: [RESULT] 5 says the response. [RESULT] 2", None, "two markers, different scores"),
    ("Feedback: good. [RESULT] 4\n\nThe response could be improved by citing sources.", 4.0, "trailing text"),
    ("Feedback: good. [RESULT] 4 out of 5.", 4.0, "trailing 'out of 5.'"),
    ("Feedback: good. [RESULT] 4/10", None, "another denominator"),
    ("Feedback: good. [RESULT] 6", None, "outside 1..5"),
    ("Feedback: good. [RESULT] 0", None, "outside 1..5"),
    ("Feedback: good. [RESULT] 4.5", None, "not an integer"),
    ("Feedback: good. [RESULT] 45", None, "digits run on"),
    ("Feedback: good. [RESULT]", None, "marker with nothing after it"),
    ("", None, "empty"),
]
ADVERSARIAL_RELATIVE = [
    ("Feedback: ... [RESULT] (A or B)", None, "template echoed"),
    ("Feedback: [Response B] is longer, but Response A is correct. [RESULT] A", "A", "#50: a label before the verdict"),
    ("Feedback: Response A is better. [RESULT] A\n[RESULT] B", None, "#50: two markers, different picks"),
    ("Feedback: Response B wins. [RESULT] B\n\nNote: Response A had typos.", "B", "trailing text"),
    ("Feedback: Response A is correct; Response B is not.", None, "no marker"),
    ("Feedback: they tie. [RESULT] C", None, "no tie in this format"),
    ("Feedback: ... [RESULT] Both", None, "no tie in this format"),
]

JUDGELM = [
    # JudgeLM's own contract (judgelm/llm_judge/common.py parse_score): first line, two values,
    # space or comma separated; otherwise it writes [-1, -1] (here: a failure)
    ("8 9\nAssistant 2 provided a more detailed answer, with examples.", (8.0, 9.0), "JudgeLM common.py format"),
    ("10 7\nBoth assistants answered; Assistant 1 was more precise.", (10.0, 7.0), "JudgeLM common.py format"),
    ("7,8\nAssistant 2 is slightly better.", (7.0, 8.0), "JudgeLM common.py: comma replaced by a space"),
    ("6.5 8\nAssistant 2 ...", (6.5, 8.0), "JudgeLM common.py: float()"),
    ("8 8\nBoth are equally helpful.", (8.0, 8.0), "equal scores (a tie)"),
    ("Assistant 1: 8\nAssistant 2: 9", None, "labels instead of the score line"),
    ("8\nAssistant 2: 9", None, "one score on the first line"),
    ("8 9 7\n...", None, "three values"),
    ("11 9\n...", None, "outside the scale"),
    ("The scores are 8 and 9.\n", None, "prose first line"),
    ("", None, "empty"),
]

PANDALM = [
    (
        "2\n\n### Reason: Response 2 is better because it is more concise and still conveys the same meaning as the "
        "original sentence.\n\n### Reference: If you have any questions, please let me know.\n",
        "B",
        PANDALM_TESTSET + " idx 0",
    ),
    (
        "1\n\n### Reason: Response 1 is better because it is concise and still conveys the same meaning as the original "
        "sentence.\n\n### Reference: If you have any questions about my rate, please let me know.\n",
        "A",
        PANDALM_TESTSET + " idx 1",
    ),
    (
        "Tie\n\n### Reason: Both responses are identical and accurately translate the article into French.\n\n"
        "### Reference: La médecine dentaire, ou médecine dentaire, est la branche de la médecine ...\n",
        "tie",
        PANDALM_TESTSET + " idx 8 (pandalm_result 0 = Tie)",
    ),
    (
        "2\n\n### Reason: Response 2 provides a more detailed and specific evaluation of the article's quality, while "
        "Response 1 is more general.\n\n### Reference: The article is well-written ...\n",
        "B",
        PANDALM_TESTSET + " idx 13",
    ),
    (
        "Tie\n\n### Reason: Both responses provide a positive evaluation of the article's quality.\n\n"
        "### Reference: The article is well-written ...\n",
        "tie",
        PANDALM_TESTSET + " idx 15",
    ),
    ("Response 2 is better.\n\n### Reason: ...", None, "no verdict line (PandaLM's parser: a tie)"),
    ("### Reason: Response 1 is better.", None, "verdict line missing (PandaLM's parser: a tie)"),
    ("3\n\n### Reason: ...", None, "not 1, 2 or Tie"),
    ("12\n\n### Reason: ...", None, "not 1, 2 or Tie"),
    ("", None, "empty"),
]

SKYWORK = [
    ("[[A]]", "A", "Skywork-Critic model card demo: the verdict alone"),
    ("[[B]]", "B", "Skywork-Critic model card demo: the verdict alone"),
    ("[[B]]<|eot_id|>", "B", "a stop token printed"),
    ("Assistant A is wrong about 9.11. [[B]]", "B", "reasoning before the verdict (the '#' prompt variant)"),
    ("[[A]] ... on reflection [[B]]", None, "conflicting verdicts"),
    ("[[C]]", None, "no tie in this format"),
    ("[[A or B]]", None, "template echoed"),
    ("Assistant B is better.", None, "no marker"),
    ("", None, "empty"),
]

CASES = {
    "prometheus_score": PROMETHEUS_ABSOLUTE + ADVERSARIAL_ABSOLUTE,
    "prometheus_pick": PROMETHEUS_RELATIVE + ADVERSARIAL_RELATIVE,
    "judgelm_pair": JUDGELM,
    "pandalm_pick": PANDALM,
    "skywork_pick": SKYWORK,
}


@pytest.mark.parametrize(
    ("kind", "text", "expected", "source"),
    [(k, t, e, s) for k, cases in CASES.items() for t, e, s in cases],
    ids=[f"{k}-{i}" for k, cases in CASES.items() for i in range(len(cases))],
)
def test_pack_parser(kind, text, expected, source):
    r = PARSERS.get(kind)(text)
    if expected is None:
        assert not r.ok and r.value is None and r.error, (source, r)
        assert to_verdict(r, kind).failure  # a failure stays a failure, never a tie
    else:
        assert r.ok and r.value == expected, (source, r)


def parse_rates() -> dict[str, dict[str, int]]:
    """Per pack: examples, parsed, wrong (a value that differs from the expected one), failed."""
    out = {}
    for kind, cases in CASES.items():
        parse = PARSERS.get(kind)
        rs = [(parse(t), e) for t, e, _ in cases]
        out[kind] = {
            "examples": len(rs),
            "parsed": sum(r.ok for r, _ in rs),
            "wrong": sum(r.ok and r.value != e for r, e in rs),
            "failed": sum(not r.ok for r, _ in rs),
        }
    return out


def test_no_wrong_parse_and_every_failure_recorded():
    for kind, rate in parse_rates().items():
        assert rate["wrong"] == 0, kind
        assert rate["parsed"] + rate["failed"] == rate["examples"], kind


def test_spans_point_at_the_value():
    text = "Feedback: fine. [RESULT] 4"
    r = PARSERS.get("prometheus_score")(text)
    ((s, e),) = r.spans
    assert text[s:e] == "4"
    text = "\n7 9\nAssistant 2 ..."
    r = PARSERS.get("judgelm_pair")(text)
    assert [text[s:e] for s, e in r.spans] == ["7", "9"]


@pytest.mark.parametrize(
    ("kind", "scale", "sample", "expected"),
    [
        ("prometheus_score", 5, "The response is accurate and complete. [RESULT] 5", 5.0),
        ("prometheus_pick", 10, "Response B is more complete. [RESULT] B", "B"),
        ("judgelm_pair", 10, "8 9\nAssistant 2 is more detailed.", (8.0, 9.0)),
        ("pandalm_pick", 10, "Tie\n\n### Reason: Both are equally good.", "tie"),
        ("skywork_pick", 10, "[[A]]", "A"),
    ],
)
def test_constrained_pattern_admits_only_what_the_parser_reads(kind, scale, sample, expected):
    pattern = re.compile(constrained_regex(kind, scale, text_chars=200))
    assert pattern.fullmatch(sample)
    assert PARSERS.get(kind)(sample, scale=scale).value == expected
    # the forced format never carries a second marker or an echo of the template
    for bad in ("[RESULT] (A or B)", "Feedback [RESULT] 6", "[[C]]", "3\n\n### Reason: x", "11 9\nx"):
        assert not pattern.fullmatch(bad)
