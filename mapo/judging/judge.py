"""LLM-as-a-judge: direct comparison, independent scoring, combined scoring (paper Table 7).

A judge takes a question and two responses and returns a :class:`PairJudgement`: the pick
in dataset terms (model_a / model_b / tie) or a recorded failure, with every raw text.
Optionally both presentation orders are judged and combined to cancel position bias.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

from mapo.core import prompts
from mapo.core.config import JudgeConfig
from mapo.core.parsers import PARSERS, ParseResult, constrained_regex, text_budget
from mapo.core.registry import Registry
from mapo.core.types import Label, Message, Verdict, pick_to_label
from mapo.llm.client import Constraint, LLMClient


@dataclass
class Attempt:
    """One conversation with the judge in one presentation order; every raw text is kept."""

    order: str  # "AB" (as given) or "BA" (swapped)
    raw: list[str]
    verdict: Verdict
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    cached: bool = False


@dataclass
class PairJudgement:
    judge: str
    strategy: str
    scale: int
    prompt_sha: str
    attempts: list[Attempt]
    label: Label | None
    score_a: float | None = None
    score_b: float | None = None
    failure: str | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None

    def to_record(self) -> dict[str, Any]:
        return asdict(self)


Strategy = Callable[["Judge", str, str, str, str], Awaitable[Attempt]]
STRATEGIES: Registry[Strategy] = Registry("judge strategy")


class Judge:
    """One model judging with one strategy. Stateless across items; safe to share."""

    def __init__(self, client: LLMClient, model: str, config: JudgeConfig, *, role: str = "judge") -> None:
        self.client = client
        self.model = model
        self.config = config
        self.role = role
        self._strategy = STRATEGIES.get(config.strategy, key="judge.strategy")
        self.constrained = config.constrained == "on" or (
            config.constrained == "auto" and client.supports_constraints(model)
        )

    def template(self, name: str) -> prompts.Template:
        return prompts.load(self.config.prompt_set, name)

    @property
    def prompt_sha(self) -> str:
        return self.template(f"judge_{self.config.strategy}.system").sha

    async def judge_pair(self, question: str, response_a: str, response_b: str) -> PairJudgement:
        orders = ["AB", "BA"] if self.config.both_orders and self.config.strategy != "independent" else ["AB"]
        attempts = await asyncio.gather(
            *(
                self._strategy(
                    self, order, question, *((response_a, response_b) if order == "AB" else (response_b, response_a))
                )
                for order in orders
            )
        )
        return self._combine(list(attempts))

    def _combine(self, attempts: list[Attempt]) -> PairJudgement:
        base = dict(
            judge=self.model,
            strategy=self.config.strategy,
            scale=self.config.scale,
            prompt_sha=self.prompt_sha,
            attempts=attempts,
        )
        ok = [a for a in attempts if a.verdict.ok]
        if not ok:
            return PairJudgement(**base, label=None, failure="; ".join(a.verdict.failure or "" for a in attempts))
        # scores in dataset terms (a = the first response given to judge_pair)
        labelled = []
        for a in ok:
            swapped = a.order == "BA"
            sa, sb = (a.verdict.score_b, a.verdict.score_a) if swapped else (a.verdict.score_a, a.verdict.score_b)
            labelled.append((pick_to_label(a.verdict.pick, swapped), sa, sb))
        if len(labelled) == 1:
            label, sa, sb = labelled[0]
            return PairJudgement(**base, label=label, score_a=sa, score_b=sb)
        (l1, a1, b1), (l2, a2, b2) = labelled
        if self.config.order_combine == "mean_score" and None not in (a1, b1, a2, b2):
            sa, sb = (a1 + a2) / 2, (b1 + b2) / 2
            v = Verdict.from_scores(sa, sb)
            return PairJudgement(**base, label=pick_to_label(v.pick), score_a=sa, score_b=sb)
        both = lambda x, y: None if None in (x, y) else (x + y) / 2  # noqa: E731
        return PairJudgement(**base, label=l1 if l1 == l2 else "tie", score_a=both(a1, a2), score_b=both(b1, b2))

    async def score_single(self, question: str, response: str, order: str = "AB") -> Attempt:
        """One response scored alone out of ``scale`` in its own conversation (kept in verdict.score_a)."""
        messages: list[Message] = [
            {"role": "system", "content": _system(self, "judge_independent.system")},
            {
                "role": "user",
                "content": self.template("judge_single.user").render(
                    question=prompts.quote_untrusted(question), response=prompts.quote_untrusted(response)
                ),
            },
        ]
        return await self.converse(messages, "score", "reask_score", order, scale=self.config.scale)

    async def converse(
        self, messages: list[Message], parse_kind: str, reask_name: str, order: str, **parse_kwargs
    ) -> Attempt:
        """Ask, parse, and on failure re-ask (bounded) in the same conversation."""
        constraint = None
        if self.constrained:
            budget = text_budget(self.client.max_tokens(self.model))
            constraint = Constraint(regex=constrained_regex(parse_kind, self.config.scale, text_chars=budget))
        raws: list[str] = []
        totals = [0, 0, 0.0]
        cached = True
        result: ParseResult | None = None
        for attempt in range(self.config.reask + 1):
            c = await self.client.chat(self.model, messages, role=self.role, constraint=constraint)
            raws.append(c.text)
            totals[0] += c.prompt_tokens
            totals[1] += c.completion_tokens
            totals[2] += c.latency_s
            cached = cached and c.cached
            result = PARSERS.get(parse_kind)(c.text, **parse_kwargs)
            if result.ok or attempt == self.config.reask:
                break
            reask = self.template(reask_name)
            text = reask.render(scale=self.config.scale) if "scale" in reask.fields else reask.render()
            messages = [*messages, {"role": "assistant", "content": c.text}, {"role": "user", "content": text}]
        assert result is not None
        verdict = _verdict(parse_kind, result)
        return Attempt(
            order=order,
            raw=raws,
            verdict=verdict,
            prompt_tokens=totals[0],
            completion_tokens=totals[1],
            latency_s=totals[2],
            cached=cached,
        )


def _verdict(kind: str, result: ParseResult) -> Verdict:
    if not result.ok:
        return Verdict.failed(result.error or "unparseable")
    if kind == "pick":
        return Verdict(pick=result.value)
    if kind == "score":  # one response scored alone (independent strategy); kept in score_a
        return Verdict(score_a=float(result.value))
    if kind == "score_pair":
        a, b = result.value
        return Verdict.from_scores(float(a), float(b))
    raise ValueError(kind)


def _system(judge: Judge, name: str) -> str:
    t = judge.template(name)
    return t.render(scale=judge.config.scale) if "scale" in t.fields else t.render()


def _pair_user(judge: Judge, question: str, first: str, second: str) -> str:
    return judge.template("judge_pair.user").render(
        question=prompts.quote_untrusted(question),
        response_a=prompts.quote_untrusted(first),
        response_b=prompts.quote_untrusted(second),
    )


@STRATEGIES.register("direct")
async def _direct(judge: Judge, order: str, question: str, first: str, second: str) -> Attempt:
    messages: list[Message] = [
        {"role": "system", "content": _system(judge, "judge_direct.system")},
        {"role": "user", "content": _pair_user(judge, question, first, second)},
    ]
    return await judge.converse(messages, "pick", "reask_pick", order)


@STRATEGIES.register("combined")
async def _combined(judge: Judge, order: str, question: str, first: str, second: str) -> Attempt:
    messages: list[Message] = [
        {"role": "system", "content": _system(judge, "judge_combined.system")},
        {"role": "user", "content": _pair_user(judge, question, first, second)},
    ]
    return await judge.converse(messages, "score_pair", "reask_score_pair", order, scale=judge.config.scale)


@STRATEGIES.register("independent")
async def _independent(judge: Judge, order: str, question: str, first: str, second: str) -> Attempt:
    """Each response scored alone, in its own conversation; the pick compares the scores."""

    a, b = await asyncio.gather(judge.score_single(question, first, order), judge.score_single(question, second, order))
    raw = a.raw + b.raw
    if not (a.verdict.ok and b.verdict.ok):
        reason = "; ".join(f"{side}: {x.verdict.failure}" for side, x in (("A", a), ("B", b)) if not x.verdict.ok)
        verdict = Verdict.failed(reason)
    else:
        verdict = Verdict.from_scores(a.verdict.score_a, b.verdict.score_a)
    return Attempt(
        order=order,
        raw=raw,
        verdict=verdict,
        prompt_tokens=a.prompt_tokens + b.prompt_tokens,
        completion_tokens=a.completion_tokens + b.completion_tokens,
        latency_s=max(a.latency_s, b.latency_s),
        cached=a.cached and b.cached,
    )
