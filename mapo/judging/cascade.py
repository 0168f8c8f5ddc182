"""A judge cascade (``evaluator=cascade``): a cheap judge first, the items it is unsure of
escalated to a strong judge (:class:`mapo.metrics.cascade.CascadeRule`: a failure, a small score
margin, orders that disagree, low logprob confidence). Both are :class:`~mapo.judging.judge.Judge`s
behind the one evaluator interface; the strong one is called only on escalated items.

Records: the cheap judge's judgement is a member record (``kind`` juror, ``member_of`` the
cascade), so its kappa alone is in the table; the cascade's own record carries the final
verdict (the strong judge's where escalated) and, in ``detail``, whether and why it escalated
and the strong judge's attempts; its tokens are both judges' (the cost of the cascade).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from mapo.core.config import CascadeConfig, JudgeConfig, RunConfig
from mapo.core.types import Question
from mapo.judging.base import EVALUATORS, Evaluator, Judgement, Probe, RecordContext
from mapo.judging.judge import Judge, PairJudgement
from mapo.judging.scoring import pick_probabilities
from mapo.llm.client import LLMClient
from mapo.metrics.cascade import CascadeRule, CheapVerdict

__all__ = ["Cascade", "CascadeJudgement", "cheap_verdict"]


def cheap_verdict(j: PairJudgement) -> CheapVerdict:
    """What the rule reads from the cheap judge's judgement: label, scores, whether its orders
    agreed, and P(its pick) where the logprobs of a pick were kept."""
    ok = [a for a in j.attempts if a.verdict.ok]
    agree = None
    if len(ok) == 2:
        picks = [
            a.verdict.pick if a.order == "AB" else {"A": "B", "B": "A"}.get(a.verdict.pick or "", "tie") for a in ok
        ]
        agree = picks[0] == picks[1]
    confidence = None
    for a in ok:
        for d in a.logprobs or []:
            if d["value"] == "pick" and a.verdict.pick in ("A", "B"):
                p = pick_probabilities(d).get(a.verdict.pick)
                confidence = p if confidence is None or (p is not None and p < confidence) else confidence
    return CheapVerdict(j.label if j.ok else None, j.score_a, j.score_b, orders_agree=agree, confidence=confidence)


@dataclass(kw_only=True)
class CascadeJudgement(Judgement):
    """The cascade's verdict: the strong judge's where escalated, else the cheap judge's."""

    kind: ClassVar[str] = "cascade"
    cheap: PairJudgement
    strong: PairJudgement | None = None
    reason: str = ""

    @property
    def escalated(self) -> bool:
        return self.strong is not None

    @property
    def raw(self) -> list[str]:
        return self.cheap.raw + (self.strong.raw if self.strong else [])

    @property
    def models(self) -> list[str]:
        return [self.cheap.judge, *([self.strong.judge] if self.strong else [])]

    @property
    def prompt_tokens(self) -> int:
        return self.cheap.prompt_tokens + (self.strong.prompt_tokens if self.strong else 0)

    @property
    def completion_tokens(self) -> int:
        return self.cheap.completion_tokens + (self.strong.completion_tokens if self.strong else 0)

    @property
    def latency_s(self) -> float:
        return self.cheap.latency_s + (self.strong.latency_s if self.strong else 0.0)

    @property
    def cached(self) -> bool:
        return self.cheap.cached and (self.strong is None or self.strong.cached)

    def record_raw(self) -> list[str]:
        return self.strong.raw if self.strong else []  # the cheap judge's texts are in its own record

    def detail(self, order: str) -> dict[str, Any]:
        return {
            "escalated": self.escalated,
            "reason": self.reason,
            "cheap": {"judge": self.cheap.judge, "label": self.cheap.label, "failure": self.cheap.failure},
            "strong": self.strong.to_record() if self.strong else None,
        }

    def records(self, ctx: RecordContext) -> list[dict[str, Any]]:
        return [self.cheap.record(ctx, kind="juror", member_of=self.judge), self.record(ctx)]


def _why(rule: CascadeRule, v: CheapVerdict) -> str:
    if v.label is None:
        return "failure"
    if rule.max_margin is not None and v.margin is not None and v.margin <= rule.max_margin:
        return f"margin {v.margin:g} <= {rule.max_margin:g}"
    if rule.orders_disagree and v.orders_agree is False:
        return "orders disagree"
    return f"confidence {v.confidence:.3f} < {rule.min_confidence:g}"


@EVALUATORS.register("cascade")
class Cascade(Evaluator):
    """``cheap`` judges every item; ``strong`` judges the ones ``rule`` escalates."""

    kind: ClassVar[str] = "cascade"
    config_roles: ClassVar[tuple[str, ...]] = ("judge", "strong_judge")
    sections: ClassVar[tuple[tuple[str, tuple[str, ...] | None], ...]] = (("judge", None), ("cascade", None))

    @classmethod
    def from_config(cls, cfg: RunConfig, client: LLMClient, judge_config: JudgeConfig | None = None) -> Cascade:
        """``roles.judge`` (cheap) and ``roles.strong_judge`` with ``judge.*``, escalating by ``cascade.*``.
        The cheap judge judges both orders itself: ``cfg.judge``, never ``judge_config``."""
        return cls(
            Judge(client, cfg.roles.judge, cfg.judge), Judge(client, cfg.roles.strong_judge, cfg.judge), cfg.cascade
        )

    @property
    def ordered(self) -> bool:
        """A run gives it one order: its cheap judge judges both itself (their disagreement escalates)."""
        return False

    def __init__(self, cheap: Judge, strong: Judge, config: CascadeConfig) -> None:
        self.cheap, self.strong = cheap, strong
        self.rule = CascadeRule(
            max_margin=None if config.max_margin is None else float(config.max_margin),
            orders_disagree=bool(config.orders_disagree),
            min_confidence=None if config.min_confidence is None else float(config.min_confidence),
        )
        self.escalations = 0

    @property
    def name(self) -> str:
        return f"cascade[{self.cheap.name}>{self.strong.name}]"

    @property
    def setup(self) -> str:
        r = self.rule
        rule = "+".join(
            p
            for p in (
                f"m{r.max_margin:g}" if r.max_margin is not None else "",
                "orders" if r.orders_disagree else "",
                f"c{r.min_confidence:g}" if r.min_confidence is not None else "",
            )
            if p
        )
        return f"{self.cheap.setup}>{self.strong.setup}/{rule or 'failures'}"

    @property
    def prompt_sha(self) -> str:
        return hashlib.sha256(f"{self.cheap.prompt_sha}>{self.strong.prompt_sha}".encode()).hexdigest()[:16]

    @property
    def member_prompt_shas(self) -> frozenset[str]:
        return frozenset({self.cheap.prompt_sha})  # its member record is the cheap judge's

    @property
    def models(self) -> list[str]:
        return [self.cheap.model, self.strong.model]

    @property
    def strategy(self) -> str:
        return self.cheap.strategy

    @property
    def scale(self) -> int:
        return self.cheap.scale

    @property
    def conversations(self) -> bool:
        return self.cheap.conversations and self.strong.conversations

    @property
    def references(self) -> bool:
        return self.cheap.references and self.strong.references

    def probes(
        self, question: Question, response_a: str, response_b: str, produced: Sequence[tuple[str, int]] = ()
    ) -> list[Probe]:
        args = (question, response_a, response_b, produced)
        return [*self.cheap.probes(*args), *self.strong.probes(*args)]

    async def judge_pair(self, question: Question, response_a: str, response_b: str) -> CascadeJudgement:
        cheap = await self.cheap.judge_pair(question, response_a, response_b)
        v = cheap_verdict(cheap)
        base: dict[str, Any] = dict(
            judge=self.name, strategy=self.strategy, scale=self.scale, prompt_sha=self.prompt_sha, setup=self.setup
        )
        if not self.rule.escalate(v):
            return CascadeJudgement(
                **base, cheap=cheap, label=cheap.label, score_a=cheap.score_a, score_b=cheap.score_b, reason="sure"
            )
        self.escalations += 1
        strong = await self.strong.judge_pair(question, response_a, response_b)
        return CascadeJudgement(
            **base,
            cheap=cheap,
            strong=strong,
            label=strong.label if strong.ok else None,
            score_a=strong.score_a,
            score_b=strong.score_b,
            failure=strong.failure,
            reason=_why(self.rule, v),
        )
