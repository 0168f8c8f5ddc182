"""Logprob-weighted judging (``judge.scoring=expected``), as G-Eval and alpaca_eval's weighted evaluators.

Instead of the score the judge wrote (``argmax``), take the judge's whole belief at the score:
the expected score over the allowed values (scoring strategies), or P(A) against P(B) (direct
comparison). The client asks for the top logprobs of every generated token
(``LLMClient.chat(top_logprobs=N)``); this module finds the token(s) of each value the parser
read and turns their distribution into a verdict.

**Locating the value.** The parser says where each value sits in the text
(:attr:`mapo.core.parsers.ParseResult.spans`): the score's number or the pick's letter. The
generated tokens are aligned with the text from its end backwards (only the answer's tail must
align; a token the server rendered oddly inside the explanation does not matter), and the token
that covers the first character of the value is *the value token*. Its text before the value
(``prefix``, e.g. ``"\\n"`` when the tokenizer merged the newline into it) must be shared by the
alternatives; each alternative token ``prefix + d...`` counts for the value its leading digits
spell:

* a token whose digits are followed by something else (``"8/"``, ``"8."``) is that integer;
* the *emitted* token when it ends in a digit (``"1"`` of ``"10"``, ``"8"`` of ``"8.5"``): the
  next position's distribution splits its mass between the value as it is (a non-digit comes
  next: ``"/"``, ``"."``) and the longer values (``"1"`` then ``"0"`` = 10);
* any other alternative is its own digits (``"1"`` not emitted counts as 1: its continuation was
  never sampled, so 10 cannot be told apart; tokenizers that write 10 as one token have no such
  ambiguity).

So ``8.5`` is scored on its integer part: the expected score is over the integers ``0..scale``
(the values the constrained format allows). Values outside ``[0, scale]`` and tokens that are no
value are dropped and the rest renormalised: E = sum(v * p(v)) / sum(p(v)). For a pick the
alternatives are ``prefix + "A" | "B" | "C"`` and the verdict compares P(A) with P(B) (C, the
tie, wins only when they are equal).

What is kept: one :class:`ValueDistribution` per located value, stored with the attempt
(``detail.attempts[i].logprobs``), so ``mapo reparse`` can recompute either scoring
(:func:`rescore_attempt`) with no model call.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

from mapo.core.parsers import VERDICT_SHAPE
from mapo.core.types import Pick, Verdict

__all__ = [
    "TOP_LOGPROBS",
    "ValueDistribution",
    "align_tail",
    "expected_verdict",
    "locate",
    "pick_probabilities",
    "rescore_attempt",
    "stored_verdict",
    "value_probabilities",
]

TOP_LOGPROBS = 20
"""Alternatives asked for at each generated token (the OpenAI API's maximum; vLLM's default cap)."""

_DIGITS = re.compile(r"\d+")
_MAX_STEPS = 20_000  # alignment search budget (backtracking over ambiguous token boundaries)

VALUE_NAMES = {
    "pick": ("pick",),
    "score": ("score",),
    "score_pair": ("score_a", "score_b"),
    # judge packs whose value is a letter A/B or a number (PandaLM's 1/2/Tie is neither: argmax only)
    "prometheus_score": ("score",),
    "prometheus_pick": ("pick",),
    "judgelm_pair": ("score_a", "score_b"),
    "skywork_pick": ("pick",),
}
"""Parser kind -> the names of the values it reads, in the order of ``ParseResult.spans``."""


class ValueDistribution(TypedDict):
    """The judge's distribution at one value it wrote (JSON-ready; kept in the record)."""

    value: str
    """Which value: ``pick``, ``score`` or ``score_a`` / ``score_b`` (presentation order)."""
    prefix: str
    """Text of the value token before the value (shared by every counted alternative)."""
    token: str
    """The emitted value token."""
    top: dict[str, float]
    """token -> logprob at the value token."""
    next: dict[str, float] | None
    """token -> logprob at the token after it (splits an emitted ``"1"`` into 1 and 10), if any."""


def align_tail(text: str, tops: Sequence[Mapping[str, float]], upto: int) -> tuple[int, list[tuple[int, str]]] | None:
    """The generated tokens from the end of ``text`` back to the token covering offset ``upto``:
    (position of the first of them, [(start offset, token), ...] in text order).

    The emitted token at each position is one of its alternatives (the client always includes
    it); where several fit the text, the likelier is tried first and a dead end backtracks.
    Positions after the text (an end-of-sequence token the text does not show) may be skipped.
    None when the tokens cannot rebuild the tail.
    """
    n = len(tops)
    steps = 0
    # (position, end offset, skips so far, tokens matched so far, newest first)
    stack: list[tuple[int, int, int, tuple[tuple[int, str], ...]]] = [(n - 1, len(text), 0, ())]
    while stack:
        i, end, skips, found = stack.pop()
        steps += 1
        if steps > _MAX_STEPS:
            return None
        if found and found[-1][0] <= upto:
            return i + 1, list(reversed(found))
        if i < 0:
            continue
        options = sorted(((lp, tok) for tok, lp in tops[i].items() if tok and text.endswith(tok, 0, end)), reverse=True)
        nexts = [(i - 1, end - len(tok), skips, (*found, (end - len(tok), tok))) for _, tok in options]
        if not found and skips < 2:  # trailing special tokens print nothing
            nexts.append((i - 1, end, skips + 1, found))
        stack.extend(reversed(nexts))  # likeliest on top
    return None


def locate(
    text: str, tops: Sequence[Mapping[str, float]] | None, spans: Sequence[tuple[int, int]], names: Sequence[str]
) -> list[ValueDistribution] | None:
    """The distribution at each value the parser read (module doc), or None when the logprobs
    are missing or do not align with the text."""
    if not tops or not spans or len(spans) != len(names):
        return None
    first = min(s for s, _ in spans)
    aligned = align_tail(text, tops, first)
    if aligned is None:
        return None
    offset, tokens = aligned
    out: list[ValueDistribution] = []
    for (start, _end), name in zip(spans, names, strict=True):
        k = max(j for j, (s, _) in enumerate(tokens) if s <= start)
        tok_start, tok = tokens[k]
        pos = offset + k
        out.append(
            ValueDistribution(
                value=name,
                prefix=text[tok_start:start],
                token=tok,
                top=dict(tops[pos]),
                next=dict(tops[pos + 1]) if pos + 1 < len(tops) else None,
            )
        )
    return out


def value_probabilities(dist: Mapping[str, Any], scale: int) -> dict[int, float]:
    """P(integer value) for v in 0..scale, renormalised over what the distribution covers (module doc)."""
    prefix, emitted = dist["prefix"], dist["token"]
    mass: dict[int, float] = defaultdict(float)
    for tok, lp in dist["top"].items():
        if not tok.startswith(prefix):
            continue
        rest = tok[len(prefix) :]
        m = _DIGITS.match(rest)
        if m is None:
            continue
        digits, p = m.group(), math.exp(lp)
        if tok == emitted and m.end() == len(rest) and dist.get("next"):
            nxt = {t: math.exp(q) for t, q in dist["next"].items()}
            total = sum(nxt.values())
            for t, q in nxt.items():
                more = _DIGITS.match(t)
                mass[int(digits + more.group()) if more else int(digits)] += p * q / total
        else:
            mass[int(digits)] += p
    allowed = {v: p for v, p in mass.items() if 0 <= v <= scale and p > 0}
    total = sum(allowed.values())
    return {v: p / total for v, p in sorted(allowed.items())} if total > 0 else {}


def _expected_value(dist: Mapping[str, Any], scale: int) -> float | None:
    """E[score] over 0..scale, or None when no alternative is a value."""
    probs = value_probabilities(dist, scale)
    return sum(v * p for v, p in probs.items()) if probs else None


def pick_probabilities(dist: Mapping[str, Any]) -> dict[str, float]:
    """P(A), P(B), P(C) at the pick token, renormalised over the three."""
    prefix = dist["prefix"]
    mass = {"A": 0.0, "B": 0.0, "C": 0.0}
    for tok, lp in dist["top"].items():
        rest = tok[len(prefix) :] if tok.startswith(prefix) else ""
        if rest[:1] in mass and rest[:1] and not rest[1:2].isalpha():
            mass[rest[:1]] += math.exp(lp)
    total = sum(mass.values())
    return {k: v / total for k, v in mass.items()} if total > 0 else {}


def expected_verdict(kind: str, dists: Sequence[Mapping[str, Any]], scale: int) -> Verdict | None:
    """The logprob-weighted verdict (presentation order) of parser ``kind`` from its stored
    distributions; None when they hold no usable value (the caller keeps the argmax verdict).

    >>> d = {"value": "score", "prefix": "", "token": "8", "top": {"8": math.log(0.5), "9": math.log(0.5)}, "next": None}
    >>> expected_verdict("score", [d], 10).score_a
    8.5
    """
    by_name = {d["value"]: d for d in dists}
    kind = VERDICT_SHAPE.get(kind, kind) if kind in VALUE_NAMES else kind
    if kind == "pick":
        probs = pick_probabilities(by_name["pick"]) if "pick" in by_name else {}
        if not probs or probs["A"] == probs["B"] == 0:
            return None
        pick: Pick = "A" if probs["A"] > probs["B"] else "B" if probs["B"] > probs["A"] else "tie"
        return Verdict(pick=pick)
    if kind == "score":
        e = _expected_value(by_name["score"], scale) if "score" in by_name else None
        return None if e is None else Verdict(score_a=e)
    if kind == "score_pair":
        if "score_a" not in by_name or "score_b" not in by_name:
            return None
        ea, eb = _expected_value(by_name["score_a"], scale), _expected_value(by_name["score_b"], scale)
        return None if ea is None or eb is None else Verdict.from_scores(ea, eb)
    raise ValueError(f"expected_verdict: no logprob scoring for parser kind {kind!r}; known: {', '.join(VALUE_NAMES)}")


def rescore_attempt(attempt: Mapping[str, Any], kind: str | None, scale: int) -> Verdict | None:
    """The logprob-weighted verdict of a stored attempt (a record's ``detail.attempts[i]``) from the
    distributions it kept, read as parser ``kind``'s values (a strategy's
    :attr:`~mapo.judging.strategy.Strategy.scoring_kind`: an independent attempt keeps ``score_a`` and
    ``score_b``, kind ``score_pair``); None when it kept none or ``kind`` is None (no logprob scoring).
    The written (argmax) verdict is the parser's reading of its raw text, as ever."""
    dists = attempt.get("logprobs")
    if not dists or kind is None:
        return None
    return expected_verdict(kind, dists, scale)


def _verdict_of(stored: Mapping[str, Any]) -> Verdict:
    return Verdict(
        pick=stored.get("pick"),
        score_a=stored.get("score_a"),
        score_b=stored.get("score_b"),
        failure=stored.get("failure"),
    )


def stored_verdict(attempt: Mapping[str, Any], kind: str | None, scale: int, scoring: str) -> tuple[Verdict, str]:
    """A stored attempt's verdict under ``scoring`` (``argmax`` | ``expected``), whichever scoring
    its run used, and how it was reached: ``argmax``, ``expected``, or ``argmax: <why>`` where the
    attempt kept no usable distribution (the written value stands, as the judge does live).

    The written verdict is the attempt's ``argmax`` (kept by an expected-scoring run) or else its
    ``verdict``; a failed attempt stays failed under both scorings.
    """
    written = _verdict_of(attempt.get("argmax") or attempt["verdict"])
    if str(scoring) == "argmax" or not written.ok:
        return written, "argmax"
    if not attempt.get("logprobs"):
        return written, "argmax: no logprobs stored"
    weighted = rescore_attempt(attempt, kind, scale)
    if weighted is None:
        return written, "argmax: the stored logprobs hold no value"
    return weighted, "expected"
