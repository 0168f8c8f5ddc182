"""Pure parsers from a judge's raw text to a pick, a score, a pair of scores or a review.

Every parser is registered in :data:`PARSERS` under the name configs use, has the shape
``fn(text: str, **kwargs) -> ParseResult`` and never raises on any text: an unreadable
answer is ``ParseResult(ok=False, error=...)``, never a guessed value, NaN or -1. A score
outside ``[0, scale]`` (or written over another denominator) is refused, not clipped.

Rules shared by all parsers:

* **the last answer wins**: models restate and revise ("Assistant 1: 9/10 ... on reflection
  Assistant 1: 8/10"), so the last well-formed occurrence is taken. For a pair of scores
  this holds per side: when a judge states a second pair after re-evaluating, the second
  pair is kept; when the restatement names one side only, that side takes its new score and
  the other keeps its last one. (The original authors' parser took the *first* match of each
  side instead; on their published FairEval outputs both rules read the same scores, so the
  paper's kappas are unchanged: ``tests/data/test_importers.py``.) Example below;
* markdown (``**bold**``, ``### headers``, ``__x__``) around labels and numbers is ignored;
* a value may sit on the line after its header (``### Score Assistant A:\\n8/10``);
* A/B and Assistant 1/2 name the same positions (first / second presented).

>>> PARSERS.get("pick")("### Evaluation Evidence: ...\\n### Answer: C (tie)").value
'tie'
>>> PARSERS.get("score")("**Overall Score:** 7.5/10").value
7.5
>>> PARSERS.get("score_pair")("### Score Assistant A:\\n8/10\\n\\n### Score Assistant B:\\n6/10").value
(8.0, 6.0)
>>> PARSERS.get("score_pair")("Assistant 1: 9/10\\nAssistant 2: 7/10").value
(9.0, 7.0)
>>> PARSERS.get("score_pair")(
...     "Assistant 1: 9/10\\nAssistant 2: 7/10\\nOn re-evaluation:\\nAssistant 1: 6/10\\nAssistant 2: 8/10"
... ).value                                   # a second pair: the last pair is kept
(6.0, 8.0)
>>> PARSERS.get("score")("Score: 11/10").error
'score 11 is outside [0, 10]'

:func:`constrained_regex` gives, for each parser kind, a regex (no lookarounds, no
backreferences: Python ``re`` and vLLM/xgrammar structured outputs accept it) that forces a
model into a format its parser reads.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mapo.core.registry import Registry
from mapo.core.types import Pick, Verdict

__all__ = ["PACK_CONSTRAINTS", "PARSERS", "VERDICT_SHAPE", "ParseResult", "Review", "constrained_regex", "to_verdict"]


@dataclass(frozen=True)
class ParseResult:
    """What a parser read: ``value`` when ``ok``, else ``error`` says why nothing was read."""

    ok: bool
    value: Any = None
    error: str | None = None
    spans: tuple[tuple[int, int], ...] = field(default=(), compare=False)
    """Where each read value sits in the text (start, end), in the order of ``value``: the score,
    both scores (A, B) or the pick; empty where not tracked. Logprob-weighted scoring reads the
    token distribution at these offsets (:mod:`mapo.judging.scoring`)."""

    @classmethod
    def success(cls, value: Any, spans: tuple[tuple[int, int], ...] = ()) -> ParseResult:
        return cls(ok=True, value=value, spans=spans)

    @classmethod
    def fail(cls, error: str) -> ParseResult:
        return cls(ok=False, error=error)


@dataclass(frozen=True)
class Review:
    """The feedback-loop reviewer's answer (paper Table 11): score out of 10, one decimal."""

    evaluation: str
    score: float
    feedback: str


Parser = Callable[..., ParseResult]
PARSERS: Registry[Parser] = Registry("parser")

# --------------------------------------------------------------------------- shared bits

_NUM = r"(?P<num>\d{1,6}(?:\.\d{1,6})?)"
# "/10", "out of 10", with markdown allowed between the number and the slash ("**8**/10")
_DEN = r"(?:[ \t*_]*(?:/|(?i:out\s+of))[ \t]*(?P<den>\d{1,6}))?"
# what may separate a label from its number: markdown, colons, brackets, a newline or two,
# and a dash only when followed by a space (so "-1/10" is never read as 1)
_SEP = r"(?:[\s*_:=(\[|>#]|[-\u2013\u2014](?=\s)){0,24}"
# after a bare number (no denominator): end of line, punctuation, "points", or a clause
# joiner ("a score of 8 and Assistant 2 ..."); never a word such as "tips" or "times"
_BARE_TAIL = re.compile(r"[ \t*_]*(?:$|[,;:!)\]]|\.[ \t*_]*$|(?i:points?|and|but|while)\b)", re.MULTILINE)


def _check_scale(scale: Any) -> int:
    if isinstance(scale, bool) or not isinstance(scale, int) or not 1 <= scale <= 1000:
        raise ValueError(f"parser kwarg scale must be an int in [1, 1000], got {scale!r}")
    return scale


def _not_text(text: Any) -> ParseResult | None:
    if not isinstance(text, str):
        return ParseResult.fail(f"expected text, got {type(text).__name__}")
    if not text.strip():
        return ParseResult.fail("empty output")
    return None


@dataclass(frozen=True)
class _Hit:
    pos: int
    value: float
    den: int | None
    side: str = ""
    span: tuple[int, int] = (0, 0)


def _hits(pattern: re.Pattern[str], text: str) -> list[_Hit]:
    """Every labelled number in ``text``; a bare number (no /den) must end its clause."""
    out: list[_Hit] = []
    for m in pattern.finditer(text):
        den = m.group("den")
        if den is None and not _BARE_TAIL.match(text, m.end()):
            continue
        value = float(m.group("num"))
        side = m.groupdict().get("side") or ""
        side = {"1": "A", "2": "B"}.get(side, side)
        out.append(_Hit(m.start(), value, int(den) if den else None, side, m.span("num")))
    return out


def _validate(hit: _Hit, scale: int, what: str = "score") -> str | None:
    if hit.den is not None and hit.den != scale:
        return f"{what} {_fmt(hit.value)}/{hit.den} is not out of {scale}"
    if not (math.isfinite(hit.value) and 0 <= hit.value <= scale):
        return f"{what} {_fmt(hit.value)} is outside [0, {scale}]"
    return None


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


# --------------------------------------------------------------------------- pick


_CHOICE = r"(?:(?i:option|assistant|response)\s*)?(?P<c>[ABC](?![\w/])|(?i:tie)\b)"
_PICK_PATTERNS = [
    # "Answer: A", "**Answer:** B", "Final answer = C", "Verdict: tie", "### Answer:\nA"
    re.compile(
        r"(?i:answer|verdict|decision|choice)[ \t]*(?:\*\*|__)?[ \t]*[:=\uff1a][\s*_\[\](>\"'`]{0,12}" + _CHOICE
    ),
    # "### Answer\nB" (header without colon)
    re.compile(r"(?m)^[ \t]*#{1,6}[ \t]*(?i:final[ \t]+)?(?i:answer|verdict)[ \t]*$[\s*_\[\](>\"'`]{0,12}" + _CHOICE),
    # "The answer is B", "my verdict is: A"
    re.compile(r"(?i:answer|verdict|choice)\s+(?i:is)[ \t]*:?[\s*_\[\](>\"'`]{0,6}" + _CHOICE),
    # MT-Bench style "[[A]]"
    re.compile(r"\[\[(?P<c>[ABC])\]\]"),
]
_PLACEHOLDER = re.compile(r"\s*(?:/|,|\bor\b)\s*[ABC]\b")
_LAST_LINE = re.compile(r"^[\W_]*(?:(?i:option|assistant|response)\s+)?(?P<c>[ABC]|(?i:tie))[\W_]*$")
_PICK_OF = {"A": "A", "B": "B", "C": "tie", "TIE": "tie"}


@PARSERS.register("pick")
def _parse_pick(text: str, **_: Any) -> ParseResult:
    """Direct comparison: A, B or C (= tie) -> "A" | "B" | "tie"; the last answer wins.

    >>> _parse_pick("**Answer:** B").value
    'B'
    >>> _parse_pick("### Answer: A or B or C").ok   # the template echoed back
    False
    """
    if (bad := _not_text(text)) is not None:
        return bad
    found: list[tuple[int, int, str]] = []
    for pattern in _PICK_PATTERNS:
        for m in pattern.finditer(text):
            if _PLACEHOLDER.match(text, m.end()):
                continue
            found.append((m.start("c"), m.end("c"), m.group("c")))
    if not found:
        lines = [ln for ln in text.strip().splitlines() if ln.strip()]
        last = _LAST_LINE.match(lines[-1].strip()) if lines else None
        if last is None:
            return ParseResult.fail("no answer (A, B or C) found")
        at = text.rindex(lines[-1].strip()) + last.start("c")
        found.append((at, at + len(last.group("c")), last.group("c")))
    start, end, choice = max(found)
    pick: Pick = _PICK_OF[choice.upper()]  # type: ignore[assignment]
    return ParseResult.success(pick, ((start, end),))


# --------------------------------------------------------------------------- one score

_SCORE_LABELLED = re.compile(
    r"\b(?i:(?:overall|final|total)\s+)?(?i:score|rating|grade)(?i:\s+(?:for|of)\s+(?:the\s+)?(?:response|answer))?"
    + _SEP
    + _NUM
    + _DEN
)
_SCORE_WITH_DEN = re.compile(r"(?<![\d.\-])" + _NUM + r"[ \t*_]*(?:/|(?i:out\s+of))[ \t]*(?P<den>\d{1,6})")
_LEADING = re.compile(r"[\s*_:=(\[]{0,12}" + _NUM + _DEN)


def _one_score(text: str, scale: int) -> ParseResult:
    hits = _hits(_SCORE_LABELLED, text)
    if not hits:  # "I would rate it 8/10", "8 out of 10"
        hits = [h for h in _hits(_SCORE_WITH_DEN, text) if h.den == scale] or _hits(_SCORE_WITH_DEN, text)
    if not hits:
        return ParseResult.fail(f"no score out of {scale} found")
    last = max(hits, key=lambda h: h.pos)
    if (err := _validate(last, scale)) is not None:
        return ParseResult.fail(err)
    return ParseResult.success(last.value, (last.span,))


@PARSERS.register("score")
def parse_score(text: str, scale: int = 10, **_: Any) -> ParseResult:
    """One score out of ``scale`` (independent scoring) -> float; the last score wins.

    >>> parse_score("### Overall Score:\\n**8**/10").value
    8.0
    >>> parse_score("I'd say 7 out of 10.").value
    7.0
    >>> parse_score("Score: 85/100").error
    'score 85/100 is not out of 10'
    """
    scale = _check_scale(scale)
    if (bad := _not_text(text)) is not None:
        return bad
    return _one_score(text, scale)


# --------------------------------------------------------------------------- pair of scores

_SIDE = r"\b(?i:assistant|response|answer|model|output)[ \t]*[_#]?[ \t]*(?P<side>[AB12])(?!\w|\.\d)"
_PAIR_LABELLED = re.compile(
    r"(?:(?i:(?:overall|final)\s+)?(?i:score|rating)s?(?:[ \t]+(?i:for|of))?[ \t]*(?:(?i:the)[ \t]+)?[:\-]?[ \t]*)?"
    + _SIDE
    # "Assistant A's score", "Assistant 1's response a score of", "Assistant 1's answer is an",
    # "Assistant 1 at" (a short connective; a bare number must still end its clause)
    + r"(?:['\u2019]s)?(?:[ \t]+(?i:response|answer))?(?:[ \t]+(?i:is|as|at|gets|deserves|receives|earns))?"
    + r"(?:[ \t]+(?i:an?|the))?(?:[ \t]*(?i:score|rating|overall\s+score)s?)?(?:[ \t]+(?i:of|at))?"
    + _SEP
    + _NUM
    + _DEN
)
# "a score of 7/10 for Assistant 1": the number first, so its denominator is required
_PAIR_REVERSED = re.compile(
    r"(?<![\d.\-])"
    + _NUM
    + r"[ \t*_]*(?:/|(?i:out\s+of))[ \t]*(?P<den>\d{1,6})[ \t*_]+(?i:for|to)[ \t]+(?:(?i:the)[ \t]+)?"
    + _SIDE
)


@PARSERS.register("score_pair")
def _parse_score_pair(text: str, scale: int = 10, **_: Any) -> ParseResult:
    """Combined scoring / debate final scores -> (score of A or 1, score of B or 2).

    The last score given to each assistant wins (a debater may restate or revise).

    >>> _parse_score_pair("**Assistant A:** 7.5/10, **Assistant B:** 9/10").value
    (7.5, 9.0)
    >>> _parse_score_pair("Assistant 1: 9/10\\nAssistant 2: 7/10\\n...revised:\\nAssistant 2: 8/10").value
    (9.0, 8.0)
    """
    scale = _check_scale(scale)
    if (bad := _not_text(text)) is not None:
        return bad
    hits = _hits(_PAIR_LABELLED, text) + _hits(_PAIR_REVERSED, text)
    last = {side: max((h for h in hits if h.side == side), key=lambda h: h.pos, default=None) for side in "AB"}
    missing = [s for s in "AB" if last[s] is None]
    if missing:
        return ParseResult.fail(f"no score out of {scale} for assistant {' and '.join(missing)}")
    for side in "AB":
        if (err := _validate(last[side], scale, f"score of {side}")) is not None:  # type: ignore[arg-type]
            return ParseResult.fail(err)
    return ParseResult.success(
        (last["A"].value, last["B"].value),  # type: ignore[union-attr]
        (last["A"].span, last["B"].span),  # type: ignore[union-attr]
    )


# a debate's final turn ("Assistant 1: X/10\nAssistant 2: Y/10") reads like a score pair
PARSERS.register("debate_final")(_parse_score_pair)


# --------------------------------------------------------------------------- review

_SECTION = re.compile(
    r"(?im)^[ \t]*(?:#{1,6}[ \t]*)?(?:\*\*|__)?[ \t]*"
    r"(?P<name>evaluation|overall[ \t]+score|score|feedback)[ \t]*(?:\*\*|__)?[ \t]*"
    r"(?::[ \t]*(?:\*\*|__)?|(?=[ \t]*$))"  # a colon, or the header alone on its line
)


def _sections(text: str) -> dict[str, str]:
    """Section name -> body, the last header of each name winning (the last answer wins).

    A ``Feedback`` body runs on to the next ``Evaluation`` / ``Overall Score`` header (a
    line such as "Score: ..." inside the feedback does not cut it short).
    """
    marks = [(re.sub(r"\s+", " ", m.group("name").lower()), m) for m in _SECTION.finditer(text)]
    out: dict[str, str] = {}
    for i, (name, m) in enumerate(marks):
        stops = ("evaluation", "overall score") if name == "feedback" else None
        end = next((n.start() for other, n in marks[i + 1 :] if stops is None or other in stops), len(text))
        out[name] = text[m.end() : end]
    return out


@PARSERS.register("review")
def _parse_review(text: str, **_: Any) -> ParseResult:
    """Reviewer output -> :class:`Review`; score out of 10, rounded to one decimal.

    >>> r = _parse_review("### Evaluation: ok\\n### Overall Score: 7.5/10\\n### Feedback: add sources")
    >>> (r.value.score, r.value.feedback)
    (7.5, 'add sources')
    """
    if (bad := _not_text(text)) is not None:
        return bad
    parts = _sections(text)
    feedback = parts.get("feedback", "").strip()
    if not feedback:
        return ParseResult.fail("no '### Feedback:' section (or it is empty)")
    body = parts.get("overall score", parts.get("score"))
    score = _section_score(body) if body is not None else _one_score(text, 10)
    if not score.ok:
        return score
    return ParseResult.success(Review(parts.get("evaluation", "").strip(), round(score.value, 1), feedback))


def _section_score(body: str) -> ParseResult:
    """The score under an '### Overall Score:' header: a leading number, else any score."""
    m = _LEADING.match(body)
    if m is None or (m.group("den") is None and not _BARE_TAIL.match(body, m.end())):
        return _one_score(body, 10)
    hit = _Hit(0, float(m.group("num")), int(m.group("den")) if m.group("den") else None)
    if (err := _validate(hit, 10)) is not None:
        return ParseResult.fail(err)
    return ParseResult.success(hit.value)


# --------------------------------------------------------------------------- verdicts


VERDICT_SHAPE = {
    "pick": "pick",
    "score": "score",
    "score_pair": "score_pair",
    "debate_final": "score_pair",
    # judge packs (below): their formats read as one of the three shapes
    "prometheus_score": "score",
    "prometheus_pick": "pick",
    "judgelm_pair": "score_pair",
    "pandalm_pick": "pick",
    "skywork_pick": "pick",
}
"""Parser kind -> what its value is: a pick, one score, or a pair of scores."""


def to_verdict(result: ParseResult, kind: str) -> Verdict:
    """A parse result as a :class:`~mapo.core.types.Verdict` in presentation order.

    ``pick`` -> ``Verdict(pick=...)``; ``score_pair`` / ``debate_final`` -> higher score wins
    (equal = tie, :meth:`Verdict.from_scores`); ``score`` -> ``score_a`` only, no pick (the
    caller compares two independent scores). A failed parse is ``Verdict.failed(reason)``.
    """
    shape = VERDICT_SHAPE.get(kind)
    if shape is None:
        raise ValueError(f"to_verdict: no verdict for parser kind {kind!r}; known: {', '.join(sorted(VERDICT_SHAPE))}")
    if not result.ok:
        return Verdict.failed(result.error or f"unparseable {kind}")
    if shape == "pick":
        return Verdict(pick=result.value)
    if shape == "score":
        return Verdict(score_a=float(result.value))
    a, b = result.value
    return Verdict.from_scores(float(a), float(b))


# --------------------------------------------------------------------------- constrained decoding


def _int_range(hi: int) -> str:
    """A regex group matching the integers 0..hi exactly (no leading zeros)."""
    if hi < 10:
        return f"[0-{hi}]"
    alts: list[str] = []
    s = str(hi)
    # numbers with as many digits as hi, at most hi, built digit by digit
    for i, d in enumerate(s):
        first = 1 if i == 0 else 0
        top = int(d) - 1
        if top >= first:
            rest = "[0-9]" * (len(s) - i - 1)
            alts.append(s[:i] + (f"[{first}-{top}]" if top > first else str(first)) + rest)
    alts.insert(0, s)
    # every shorter length
    for n in range(len(s) - 1, 0, -1):
        alts.append(("[1-9]" + "[0-9]" * (n - 1)) if n > 1 else "[0-9]")
    return "(" + "|".join(alts) + ")"


def _decimal_range(hi: int) -> str:
    """0..hi with at most one decimal; hi itself only as hi or hi.0."""
    below = _int_range(hi - 1) if hi > 1 else "0"
    return f"({hi}(\\.0)?|{below}(\\.[0-9])?)"


def _free_text(chars: int, *, prose: bool = False) -> str:
    """Free text of at most ``chars`` characters, with no '#' (it would open the next section)
    and not starting with '[' or a space: small models otherwise copy the prompt's
    "[Add your feedback here]" placeholder instead of writing. ``prose``: nor with a digit or a
    list marker ('*', '-'), for a review's sections: Gemma-3-270M otherwise answers "Feedback:"
    with an empty numbered list ("1. \\n2. \\n3. ..."), and the generator copies it into its
    revision until max_tokens (README "The README main job on an AVX2-only CPU")."""
    first = "[^#\\[\\s0-9*-]" if prose else "[^#\\[\\s]"
    return f"{first}[^#]{{0,{max(chars - 1, 1)}}}"


def text_budget(max_tokens: int) -> int:
    """Free-text characters a constrained answer may use so that the scores still fit in
    ``max_tokens`` (worst case ~2 characters a token, ~48 tokens of structure): a long
    explanation must never push the verdict past the token limit."""
    return max(16, (max_tokens - 48) * 2)


def constrained_regex(kind: str, scale: int = 10, text_chars: int = 800, explain: bool = True) -> str:
    """A regex the model's output is forced into so that parser ``kind`` reads it.

    Python ``re`` and vLLM/xgrammar compatible: groups, classes, bounded repeats only.
    ``explain=False`` drops the "### Evaluation Evidence" text of pick / score / score_pair: a
    score-only answer (``judge.explain=false``, for tiny judges).

    >>> print(constrained_regex("debate_final", 10))
    Assistant 1: (10|[0-9])/10\\nAssistant 2: (10|[0-9])/10
    """
    scale = _check_scale(scale)
    if kind in PACK_CONSTRAINTS:  # a judge pack's own format (explain does not apply)
        return PACK_CONSTRAINTS[kind](scale, max(text_chars - 1, 1))
    n = _int_range(scale)
    _EVIDENCE = _free_text(text_chars)  # noqa: N806
    if not explain and kind in ("pick", "score", "score_pair"):
        # the same answer sections, without the evidence before them
        return constrained_regex(kind, scale, text_chars).split("\\n\\n", 1)[1]
    if kind == "pick":
        return f"### Evaluation Evidence:\\n{_EVIDENCE}\\n\\n### Answer:\\n(A|B|C)"
    if kind == "score":
        return f"### Evaluation Evidence:\\n{_EVIDENCE}\\n\\n### Overall Score:\\n{n}/{scale}"
    if kind == "score_pair":
        return (
            f"### Evaluation Evidence:\\n{_EVIDENCE}\\n\\n### Score Assistant A:\\n{n}/{scale}"
            f"\\n\\n### Score Assistant B:\\n{n}/{scale}"
        )
    if kind == "debate_final":
        return f"Assistant 1: {n}/{scale}\\nAssistant 2: {n}/{scale}"
    if kind == "review":
        if scale != 10:
            raise ValueError(f"constrained_regex: the review score is out of 10, got scale={scale}")
        half = max(8, text_chars // 2)
        return (
            f"### Evaluation:\\n{_free_text(half, prose=True)}\\n\\n### Overall Score:\\n{_decimal_range(10)}/10"
            f"\\n\\n### Feedback:\\n{_free_text(half, prose=True)}"
        )
    known = ", ".join(sorted(["debate_final", "pick", "review", "score", "score_pair", *PACK_CONSTRAINTS]))
    raise ValueError(f"constrained_regex: unknown kind {kind!r}; known: {known}")


# --------------------------------------------------------------------------- judge packs
#
# Specialised judge models answer in their own published formats (prompts/<pack>/SOURCE.md).
# Each format has one parser here, with the same contract as above: a text that does not
# state its verdict exactly once (or states it twice, differently) is a failure, never a
# guess. Unlike the authors' parsers: no fallback to "Score: 4" without the marker (which
# matched the prompt's own template, prometheus-eval #58), no "tie" for an unreadable PandaLM
# answer, no -1 for an unreadable JudgeLM line.

# "[RESULT]", "[Result]", "[RESULT:" then what may stand before the value: brackets, a
# "Score:"/"Result:"/"Response" label (prometheus-eval's own test cases)
_RESULT_MARK = re.compile(r"\[(?i:result)\][ \t]*:?|\[(?i:result)[ \t]*:")
_RESULT_LEAD = re.compile(r"[\s*_(\[]*(?:(?i:score|result)[ \t]*:?[ \t]*(?i:of)?[\s(\[]*|(?i:response)[ \t]+)?")
_RESULT_INT = re.compile(r"(?P<num>\d+)(?![\d.]\d|\w)(?P<den>[ \t]*(?:/|(?i:out\s+of))[ \t]*\d+)?")
_RESULT_AB = re.compile(r"(?P<c>[AB])(?!\w)(?![ \t]+(?i:or)\b)")


def _marked(text: str, value: re.Pattern[str]) -> list[tuple[re.Match[str], int]]:
    """Every value that follows a [RESULT] marker (a marker followed by no value, such as the
    template's own "[RESULT] (an integer number between 1 and 5)", reads nothing)."""
    out = []
    for m in _RESULT_MARK.finditer(text):
        lead = _RESULT_LEAD.match(text, m.end())
        at = lead.end() if lead else m.end()
        v = value.match(text, at)
        if v is not None:
            out.append((v, m.start()))
    return out


def _one_value(values: list[str], what: str) -> str | ParseResult:
    if not values:
        return ParseResult.fail(f"no '[RESULT] {what}' found")
    if len(set(values)) > 1:
        return ParseResult.fail(f"conflicting [RESULT] markers: {', '.join(values)}")
    return values[-1]


@PARSERS.register("prometheus_score")
def _parse_prometheus_score(text: str, scale: int = 5, **_: Any) -> ParseResult:
    """Prometheus-2 absolute grading: ``Feedback: ... [RESULT] 4`` -> 4.0 (an integer 1..scale).

    Repeated markers must agree; no marker, or a marker followed by no integer, is a failure.

    >>> _parse_prometheus_score("Feedback: clear and correct. [RESULT] 4").value
    4.0
    >>> _parse_prometheus_score("Feedback: fine. Score: 4").error
    "no '[RESULT] <1..5>' found"
    >>> _parse_prometheus_score("[RESULT] 5 ... on reflection [RESULT] 2").error
    'conflicting [RESULT] markers: 5, 2'
    """
    scale = _check_scale(scale)
    if (bad := _not_text(text)) is not None:
        return bad
    hits = _marked(text, _RESULT_INT)
    for v, _at in hits:
        den = v.group("den")
        if den and int(re.sub(r"\D", "", den)) != scale:
            return ParseResult.fail(f"[RESULT] {v.group(0).strip()} is not out of {scale}")
    one = _one_value([v.group("num") for v, _ in hits], f"<1..{scale}>")
    if isinstance(one, ParseResult):
        return one
    if not 1 <= int(one) <= scale:
        return ParseResult.fail(f"[RESULT] {one} is outside [1, {scale}]")
    last = hits[-1][0]
    return ParseResult.success(float(one), (last.span("num"),))


@PARSERS.register("prometheus_pick")
def _parse_prometheus_pick(text: str, **_: Any) -> ParseResult:
    """Prometheus-2 relative grading: ``Feedback: ... [RESULT] B`` -> "B" (no tie in this format).

    >>> _parse_prometheus_pick("Feedback: Response A misses the point. [RESULT] B").value
    'B'
    >>> _parse_prometheus_pick("Feedback: ... [RESULT] (A or B)").ok   # the template echoed back
    False
    """
    if (bad := _not_text(text)) is not None:
        return bad
    hits = _marked(text, _RESULT_AB)
    one = _one_value([v.group("c") for v, _ in hits], "A|B")
    if isinstance(one, ParseResult):
        return one
    return ParseResult.success(one, (hits[-1][0].span("c"),))


_JUDGELM_LINE = re.compile(r"^[ \t]*" + _NUM + r"[ \t]*[, \t][ \t]*(?P<num2>\d{1,6}(?:\.\d{1,6})?)[ \t]*$")


@PARSERS.register("judgelm_pair")
def _parse_judgelm_pair(text: str, scale: int = 10, **_: Any) -> ParseResult:
    """JudgeLM: the first line holds exactly the two scores (Assistant 1, Assistant 2), space-
    or comma-separated, then the explanation. Anything else on the first line is a failure.

    >>> _parse_judgelm_pair("8 9\\nAssistant 2 gave more detail ...").value
    (8.0, 9.0)
    >>> _parse_judgelm_pair("Assistant 1: 8\\nAssistant 2: 9").ok
    False
    """
    scale = _check_scale(scale)
    if (bad := _not_text(text)) is not None:
        return bad
    first = text.lstrip("\n").split("\n", 1)[0]
    offset = len(text) - len(text.lstrip("\n"))
    m = _JUDGELM_LINE.match(first)
    if m is None:
        return ParseResult.fail(f"first line {first.strip()[:60]!r} is not two scores")
    a, b = float(m.group("num")), float(m.group("num2"))
    for side, v in (("1", a), ("2", b)):
        if not 0 <= v <= scale:
            return ParseResult.fail(f"score of assistant {side} {_fmt(v)} is outside [0, {scale}]")
    spans = ((offset + m.start("num"), offset + m.end("num")), (offset + m.start("num2"), offset + m.end("num2")))
    return ParseResult.success((a, b), spans)


_PANDALM_FIRST = {"1": "A", "2": "B", "tie": "tie"}


@PARSERS.register("pandalm_pick")
def _parse_pandalm_pick(text: str, **_: Any) -> ParseResult:
    """PandaLM: the first line is ``1``, ``2`` or ``Tie``, then ``### Reason: ...`` (and a
    reference answer). Anything else on the first line is a failure (PandaLM's own parser calls
    it a tie).

    >>> _parse_pandalm_pick("2\\n\\n### Reason: Response 2 is more concise.\\n\\n### Reference: ...").value
    'B'
    >>> _parse_pandalm_pick("Response 2 is better.").ok
    False
    """
    if (bad := _not_text(text)) is not None:
        return bad
    stripped = text.lstrip()
    first = stripped.split("\n", 1)[0].strip()
    pick = _PANDALM_FIRST.get(first.lower())
    if pick is None:
        return ParseResult.fail(f"first line {first[:60]!r} is not 1, 2 or Tie")
    at = len(text) - len(stripped)
    return ParseResult.success(pick, ((at, at + len(first)),))


_DOUBLE_BRACKET = re.compile(r"\[\[(?P<c>[A-Za-z]{1,3})\]\]")


@PARSERS.register("skywork_pick")
def _parse_skywork_pick(text: str, **_: Any) -> ParseResult:
    """Skywork-Critic: ``[[A]]`` or ``[[B]]`` (its prompt allows no tie). Several verdicts must agree.

    >>> _parse_skywork_pick("[[B]]").value
    'B'
    >>> _parse_skywork_pick("[[C]]").error
    'verdict [[C]] is not [[A]] or [[B]]'
    """
    if (bad := _not_text(text)) is not None:
        return bad
    hits = list(_DOUBLE_BRACKET.finditer(text))
    if not hits:
        return ParseResult.fail("no [[A]] or [[B]] verdict found")
    for h in hits:
        if h.group("c") not in ("A", "B"):
            return ParseResult.fail(f"verdict [[{h.group('c')}]] is not [[A]] or [[B]]")
    picks = [h.group("c") for h in hits]
    if len(set(picks)) > 1:
        return ParseResult.fail(f"conflicting verdicts: {', '.join(f'[[{p}]]' for p in picks)}")
    return ParseResult.success(picks[-1], (hits[-1].span("c"),))


PACK_CONSTRAINTS = {
    # the published formats, forced (free text never opens another '[' marker or '#' header)
    "prometheus_score": lambda scale, chars: f"[^\\[#\\s][^\\[#]{{0,{chars}}} \\[RESULT\\] {_int_range(scale)}",
    "prometheus_pick": lambda scale, chars: f"[^\\[#\\s][^\\[#]{{0,{chars}}} \\[RESULT\\] (A|B)",
    "judgelm_pair": lambda scale, chars: f"{_int_range(scale)} {_int_range(scale)}\\n{_free_text(chars)}",
    "pandalm_pick": lambda scale, chars: f"(1|2|Tie)\\n\\n### Reason: {_free_text(chars)}",
    "skywork_pick": lambda scale, chars: "\\[\\[(A|B)\\]\\]",
}
"""Parser kind of a judge pack -> its constrained-decoding regex (``constrained_regex``)."""
