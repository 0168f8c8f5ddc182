"""Best of N by the judge (any :class:`~mapo.judging.base.Evaluator`, a reward model too): the
authors' pairwise tournament (1 vs 2, winner vs 3, ...) or scoring all N at once. Every judge call's raw text is kept in the result.

A selection also says how each other response lost to the chosen one (:func:`losses`): by a
decision of the judge, or by a tie. The datasets are built from that (a preference needs a
decision, see :mod:`mapo.generation.dataset`). Responses cut by ``max_tokens`` can be left
out of the selection (:func:`excluded`) so that they are never chosen.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mapo.core.registry import Registry
from mapo.core.types import Question, pick_to_label
from mapo.judging.base import Evaluator

TRUNCATED = "length"
"""The OpenAI ``finish_reason`` of a response cut by ``max_tokens``."""


@dataclass
class Selection:
    best: int | None
    """Index of the chosen response; None when none could be chosen (``failure`` says why)."""
    method: str
    judgements: list[dict[str, Any]] = field(default_factory=list)
    scores: list[float | None] = field(default_factory=list)
    failure: str | None = None

    def losses(self) -> dict[int, Loss]:
        """How each other judged response lost to the chosen one (see :func:`losses`)."""
        return losses(self.method, self.best, self.judgements, self.scores)

    @property
    def incomplete(self) -> str | None:
        """Why a judgement behind the pick lacks a member's verdict (a jury with a failed juror), the first
        one's; None when none does. Such a selection decided, but a rerun does it again."""
        return next((j["incomplete"] for j in self.judgements if j.get("incomplete")), None)


@dataclass(frozen=True)
class Loss:
    """The comparison that put one response out of the running."""

    winner: int
    """The response it lost to: the chosen one, or (in a tournament) the incumbent of that round."""
    decisive: bool
    """True when the judge preferred the winner (a pick, or a higher score); False for a tie."""
    margin: float | None
    """Winner's score minus this response's score in that comparison; None for a pick-only judge."""
    reason: str | None = None
    """Why it was not decisive: ``judge_tie`` | ``equal_scores`` | ``orders_disagree`` | ``within_tie_margin``."""
    winner_score: float | None = None
    """The winner's score in that comparison, as it decided (logprob-expected with judge.scoring=expected)."""
    loser_score: float | None = None
    """This response's score in that comparison, as it decided."""
    winner_written: float | None = None
    """judge.scoring=expected: the winner's score as the judge wrote it (argmax); None otherwise."""
    loser_written: float | None = None
    """judge.scoring=expected: this response's score as written; None otherwise."""


def excluded(iterations: Sequence[Mapping[str, Any]], allow_truncated: bool) -> list[int]:
    """Indices of responses that may not be chosen: those cut by ``max_tokens`` unless
    ``allow_truncated``. A record without ``finish_reason`` counts as not truncated."""
    if allow_truncated:
        return []
    return [i for i, it in enumerate(iterations) if it.get("finish_reason") == TRUNCATED]


SELECTORS: Registry = Registry("selection method")


def _no_candidate(method: str, n: int, skip: Collection[int]) -> Selection:
    return Selection(
        None,
        method,
        failure=f"no response may be chosen: all {n} were cut by max_tokens (selection.allow_truncated=false)"
        if skip
        else "no responses",
    )


@SELECTORS.register("tournament")
async def tournament(
    judge: Evaluator, question: Question, responses: Sequence[str], *, skip: Collection[int] = ()
) -> Selection:
    """Incumbent vs challenger; a tie keeps the incumbent (the earlier response).

    Responses in ``skip`` take no part (they are never judged, chosen or rejected)."""
    candidates = [i for i in range(len(responses)) if i not in skip]
    if not candidates:
        return _no_candidate("tournament", len(responses), skip)
    best = candidates[0]
    records = []
    for challenger in candidates[1:]:
        j = await judge.judge_pair(question, responses[best], responses[challenger])
        incomplete = {"incomplete": j.incomplete} if j.incomplete else {}  # only when set: records stay as before
        records.append({"a": best, "b": challenger, **j.to_record(), **incomplete})
        if not j.ok:
            return Selection(
                None, "tournament", records, failure=f"judge failed on {best} vs {challenger}: {j.failure}"
            )
        if j.label == "model_b":
            best = challenger
    return Selection(best, "tournament", records)


@SELECTORS.register("score_all")
async def score_all(
    judge: Evaluator, question: Question, responses: Sequence[str], *, skip: Collection[int] = ()
) -> Selection:
    """Score every response alone (:meth:`Evaluator.score`: a pointwise evaluator's score, e.g. a reward
    model's; a judge's independent scoring); the highest wins, ties go to the earliest.

    Responses in ``skip`` are not scored (their score is None) and cannot win."""
    candidates = [i for i in range(len(responses)) if i not in skip]
    if not candidates:
        return _no_candidate("score_all", len(responses), skip)
    scores: list[float | None] = [None] * len(responses)
    records = []
    if not judge.scores_alone:
        raise TypeError(
            f"selection.method=score_all needs an evaluator that scores one response alone, not {judge.kind}"
        )
    scored = await asyncio.gather(*(judge.score(question, responses[i]) for i in candidates))
    for i, sc in zip(candidates, scored, strict=True):
        scores[i] = sc.value if sc.ok else None
        records.append({"index": i, "raw": sc.raw, "score": scores[i], "failure": sc.failure, **judge.score_fields()})
    if any(scores[i] is None for i in candidates):
        return Selection(None, "score_all", records, scores, failure="a response could not be scored")
    best = max(candidates, key=lambda i: (scores[i], -i))
    return Selection(best, "score_all", records, scores)


def losses(
    method: str, best: int | None, judgements: Sequence[Mapping[str, Any]], scores: Sequence[float | None]
) -> dict[int, Loss]:
    """How each judged response other than ``best`` lost, from a selection (or its stored record).

    Tournament: the round that put it out (a loss to the incumbent or challenger that the
    judge preferred, or a tie, which keeps the incumbent). Score all: its score against the
    best score (equal scores are a tie). Responses never judged are absent.
    """
    if best is None:
        return {}
    out: dict[int, Loss] = {}
    if method == "score_all":
        top = scores[best]
        # a pointwise evaluator's tie margin (a reward model's reward.tie_margin): closer scores are a tie
        tie_margin = max((j.get("tie_margin") or 0.0 for j in judgements), default=0.0)
        for i, s in enumerate(scores):
            if i == best or s is None or top is None:
                continue
            decisive = top > s and top - s >= tie_margin
            reason = None if decisive else ("equal_scores" if top == s else "within_tie_margin")
            out[i] = Loss(best, decisive, top - s, reason, top, s)
        return out
    for j in judgements:
        a, b, label = j["a"], j["b"], j.get("label")
        sa, sb = j.get("score_a"), j.get("score_b")
        wa, wb = _written_scores(j)
        if label == "model_b":
            out[a] = Loss(b, True, _diff(sb, sa), None, sb, sa, wb, wa)
        elif label == "model_a":
            out[b] = Loss(a, True, _diff(sa, sb), None, sa, sb, wa, wb)
        elif label == "tie":
            out[b] = Loss(a, False, _diff(sa, sb), _tie_reason(j), sa, sb, wa, wb)
    return out


def _written_scores(judgement: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """(score of a, score of b) as the judge wrote them, both orders averaged, when the decision
    used other scores (judge.scoring=expected keeps the written verdict as ``argmax``); else (None, None)."""
    attempts = [a for a in judgement.get("attempts") or [] if a.get("argmax")]
    pairs = []
    for a in attempts:
        v = a["argmax"]
        if v.get("failure") is None and v.get("score_a") is not None and v.get("score_b") is not None:
            x, y = float(v["score_a"]), float(v["score_b"])
            pairs.append((y, x) if a.get("order") == "BA" else (x, y))  # back to the pair's own order
    if not pairs:
        return None, None
    return sum(x for x, _ in pairs) / len(pairs), sum(y for _, y in pairs) / len(pairs)


def _diff(x: float | None, y: float | None) -> float | None:
    return None if x is None or y is None else x - y


def _tie_reason(judgement: Mapping[str, Any]) -> str:
    """Why a pair judgement is a tie: the two presentation orders disagreed, the scores were
    equal, or the judge itself answered tie."""
    labels = {
        pick_to_label(v["pick"], a.get("order") == "BA")
        for a in judgement.get("attempts") or []
        if (v := a.get("verdict") or {}).get("failure") is None and v.get("pick") is not None
    }
    if len(labels) > 1:
        return "orders_disagree"
    if judgement.get("tie_margin") and judgement.get("score_a") != judgement.get("score_b"):
        return "within_tie_margin"  # a reward model's rewards closer than reward.tie_margin
    if judgement.get("score_a") is not None and judgement.get("score_b") is not None:
        return "equal_scores"
    return "judge_tie"
