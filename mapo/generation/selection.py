"""Best of N by the judge: the authors' pairwise tournament (1 vs 2, winner vs 3, ...) or
scoring all N at once. Every judge call's raw text is kept in the result.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mapo.core.registry import Registry
from mapo.judging.judge import Judge, PairJudgement


@dataclass
class Selection:
    best: int | None
    """Index of the chosen response; None when the judge could not decide (a recorded failure)."""
    method: str
    judgements: list[dict[str, Any]] = field(default_factory=list)
    scores: list[float | None] = field(default_factory=list)
    failure: str | None = None


SELECTORS: Registry = Registry("selection method")


@SELECTORS.register("tournament")
async def tournament(judge: Judge, question: str, responses: Sequence[str]) -> Selection:
    """Incumbent vs challenger; a tie keeps the incumbent (the earlier response)."""
    best = 0
    records = []
    for challenger in range(1, len(responses)):
        j: PairJudgement = await judge.judge_pair(question, responses[best], responses[challenger])
        records.append({"a": best, "b": challenger, **j.to_record()})
        if not j.ok:
            return Selection(
                None, "tournament", records, failure=f"judge failed on {best} vs {challenger}: {j.failure}"
            )
        if j.label == "model_b":
            best = challenger
    return Selection(best, "tournament", records)


@SELECTORS.register("score_all")
async def score_all(judge: Judge, question: str, responses: Sequence[str]) -> Selection:
    """Score every response alone (independent scoring); the highest wins, ties go to the earliest."""
    attempts = await asyncio.gather(*(judge.score_single(question, r) for r in responses))
    scores: list[float | None] = [a.verdict.score_a if a.verdict.ok else None for a in attempts]
    records = [
        {"index": i, "raw": a.raw, "score": s, "failure": a.verdict.failure}
        for i, (a, s) in enumerate(zip(attempts, scores))
    ]
    if any(s is None for s in scores):
        return Selection(None, "score_all", records, scores, failure="a response could not be scored")
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))
    return Selection(best, "score_all", records, scores)
