"""LLM-as-a-judge: direct comparison, independent scoring, combined scoring (paper Table 7).

A judge takes a question and two responses and returns a :class:`PairJudgement`: the pick
in dataset terms (model_a / model_b / tie) or a recorded failure, with every raw text.
Optionally both presentation orders are judged and combined to cancel position bias.

``judge.scoring``: ``argmax`` takes the score (or pick) the judge wrote; ``expected`` weighs
every value by its probability (:mod:`mapo.judging.scoring`): the expected score for the
scoring strategies, P(A) against P(B) for direct comparison. Where the server sends no
logprobs the judge says so once and keeps the written value, counted in
:attr:`Judge.scoring_counts`. ``judge.explain=false`` asks for the answer only (the
``*_score_only`` prompts, and a constraint without free text): no "Evaluation Evidence".
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from mapo.core import prompts
from mapo.core.config import JudgeConfig, RunConfig
from mapo.core.parsers import PARSERS, to_verdict
from mapo.core.registry import Registry
from mapo.core.types import Message, Question, swap_question
from mapo.core.verdicts import combine_orders, order_row
from mapo.judging.base import (
    EVALUATORS,
    Answer,
    Evaluator,
    Judgement,
    Probe,
    Score,
    ask,
    asked_probe,
    constraint_for,
    use_constraint,
)
from mapo.judging.packs import PACKS
from mapo.judging.scoring import TOP_LOGPROBS, VALUE_NAMES, expected_verdict, locate
from mapo.judging.strategy import INDEPENDENT, PAPER, Attempt, Strategy, render_scaled
from mapo.llm.client import LLMClient

__all__ = ["STRATEGIES", "Attempt", "Judge", "PairJudgement", "Strategy", "judge_setup"]

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class PairJudgement(Judgement):
    """One judge's verdict on one pair (every attempt kept; :class:`~mapo.judging.base.Judgement`)."""

    attempts: list[Attempt] = field(default_factory=list)

    @property
    def raw(self) -> list[str]:
        return [t for a in self.attempts for t in a.raw]

    @property
    def prompt_tokens(self) -> int:
        return sum(a.prompt_tokens for a in self.attempts)

    @property
    def completion_tokens(self) -> int:
        return sum(a.completion_tokens for a in self.attempts)

    @property
    def latency_s(self) -> float:
        return sum(a.latency_s for a in self.attempts)

    @property
    def cached(self) -> bool:
        return bool(self.attempts) and all(a.cached for a in self.attempts)

    def detail(self, order: str) -> dict[str, Any]:
        return {"attempts": [a.to_record() for a in self.attempts]}


STRATEGIES: Registry[Strategy] = Registry("judge strategy")
"""``judge.strategy`` -> its :class:`~mapo.judging.strategy.Strategy`: the paper's three and the judge packs."""
for _s in (*PAPER, *PACKS.values()):
    STRATEGIES.register(_s.name)(_s)


def judge_setup(config: JudgeConfig) -> str:
    """``direct``, ``combined10``, ``independent5`` (:meth:`Strategy.setup_name`); ``+expected`` for
    logprob-weighted scoring and ``+score_only`` without the explanation (the defaults add nothing,
    so stored keys stay valid)."""
    setup = STRATEGIES.get(config.strategy, key="judge.strategy").setup_name(config.scale)
    if config.scoring == "expected":
        setup += "+expected"
    if not config.explain:
        setup += "+score_only"
    if config.reference == "guided":
        setup += "+reference"
    return setup


@EVALUATORS.register("judge")
class Judge(Evaluator):
    """One model judging with one strategy. Stateless across items; safe to share."""

    kind: ClassVar[str] = "judge"
    scores_alone: ClassVar[bool] = True  # its independent prompt scores one response (selection.method=score_all)

    @classmethod
    def from_config(cls, cfg: RunConfig, client: LLMClient, judge_config: JudgeConfig | None = None) -> Judge:
        """``roles.judge`` judging with ``judge_config`` (default ``judge.*``)."""
        return cls(client, cfg.roles.judge, judge_config or cfg.judge)

    def __init__(self, client: LLMClient, model: str, config: JudgeConfig, *, role: str = "judge") -> None:
        self.client = client
        self.model = model
        self.config = config
        self.role = role
        self._strategy = STRATEGIES.get(config.strategy, key="judge.strategy")
        self.constrained = use_constraint(config.constrained, client, model)
        self.scoring: str = config.scoring
        self.explain: bool = config.explain
        self._scoring_counts: Counter[str] = Counter()
        self._said: set[str] = set()  # fallback reasons already logged: each is said once

    # ---- identity (Evaluator) ----------------------------------------------------------
    @property
    def name(self) -> str:
        return self.model

    @property
    def setup(self) -> str:
        return judge_setup(self.config)

    @property
    def models(self) -> list[str]:
        return [self.model]

    @property
    def strategy(self) -> str:
        return self.config.strategy

    @property
    def scale(self) -> int:
        return self.config.scale

    @property
    def ordered(self) -> bool:
        return not self.config.pointwise  # a pointwise strategy judges each response alone

    @property
    def conversations(self) -> bool:
        return self._strategy.multi_turn

    @property
    def references(self) -> bool:
        return self._strategy.reference_guided

    @property
    def pair_setup(self) -> str:
        """``mapo winrate``'s key: ``direct``, ``combined10``, ``/both`` when it judges both orders (no
        ``+expected`` / ``+score_only``: the fingerprint holds judge.*, and stored keys stay valid)."""
        c = self.config
        return self._strategy.setup_name(c.scale) + ("/both" if c.both_orders and self._strategy.ordered else "")

    @property
    def scoring_counts(self) -> Counter[str]:
        """judge.scoring=expected: answers weighed (``expected``) and kept as written (``argmax: <why>``)."""
        return self._scoring_counts

    def template(self, name: str) -> prompts.Template:
        return prompts.load(self.config.prompt_set, name)

    def variant(self, name: str) -> str:
        """``judge_combined.system`` -> ``judge_combined_score_only.system`` when explain=false."""
        if self.explain:
            return name
        stem, dot, rest = name.partition(".")
        return f"{stem}_score_only{dot}{rest}"

    @property
    def prompt_sha(self) -> str:
        return self._strategy.prompt_sha(self)

    # ---- judging -----------------------------------------------------------------------
    async def judge_pair(self, question: Question, response_a: str, response_b: str) -> PairJudgement:
        orders = ["AB", "BA"] if self.config.both_orders and self._strategy.ordered else ["AB"]
        attempts = await asyncio.gather(
            *(
                self._strategy.ask(
                    self,
                    order,
                    *(
                        (question, response_a, response_b)
                        if order == "AB"
                        else (swap_question(question), response_b, response_a)
                    ),
                )
                for order in orders
            )
        )
        return self._combine(list(attempts))

    def failed(self, reason: str) -> PairJudgement:
        """A judgement that never happened (e.g. its request was rejected), as a failure."""
        return PairJudgement(**self._identity_fields(), attempts=[], label=None, failure=reason)

    def _identity_fields(self) -> dict[str, Any]:
        return dict(
            judge=self.model,
            strategy=self.config.strategy,
            scale=self.config.scale,
            prompt_sha=self.prompt_sha,
            setup=self.setup,
        )

    def _combine(self, attempts: list[Attempt]) -> PairJudgement:
        """The attempts (one per presentation order) in dataset terms, orders combined
        (:func:`mapo.core.verdicts.combine_orders`, as ``mapo reparse`` and the tables do)."""
        base = dict(self._identity_fields(), attempts=attempts)
        rows = [
            order_row(a.verdict.pick, a.verdict.score_a, a.verdict.score_b, a.verdict.failure, a.order)
            for a in attempts
        ]
        label, sa, sb = combine_orders(rows, self.config.order_combine)
        if label is None:
            return PairJudgement(**base, label=None, failure="; ".join(a.verdict.failure or "" for a in attempts))
        return PairJudgement(**base, label=label, score_a=sa, score_b=sb)

    async def score(self, question: Question, response: str) -> Score:
        """``response`` scored alone with the independent prompt (``selection.method=score_all``)."""
        a = await self.score_single(question, response)
        return Score(a.verdict.score_a if a.verdict.ok else None, failure=a.verdict.failure, raw=a.raw)

    async def score_single(self, question: Question, response: str, order: str = "AB") -> Attempt:
        """One response scored alone out of ``scale`` in its own conversation (kept in verdict.score_a):
        the ``independent`` strategy's single ask, whatever this judge's strategy (best-of-N ``score_all``)."""
        return await INDEPENDENT.ask_one(self, question, response, order)

    def probes(
        self, question: Question, response_a: str, response_b: str, produced: Sequence[tuple[str, int]] = ()
    ) -> list[Probe]:
        """The first request of this judge's strategy for one pair, grown by its re-asks (:class:`Probe`)."""
        strategy = self._strategy
        kind, reask_name, pointwise = strategy.parser, strategy.reask, strategy.pointwise
        messages = strategy.first_messages(self, question, response_a, response_b)
        # a pointwise strategy shows one response per conversation: the longer one bounds it
        room = sorted(produced, key=lambda p: -p[1])[:1] if pointwise else list(produced)
        return [
            asked_probe(
                self.client,
                self.role,
                self.model,
                messages,
                reask_text=render_scaled(self.template(self.variant(reask_name)), self.config.scale),
                reasks=self.config.reask,
                produced=room,
                constraint=constraint_for(
                    self.config.constrained, self.client, self.model, kind, self.config.scale, explain=self.explain
                ),
                top_logprobs=TOP_LOGPROBS if self.scoring == "expected" else None,
            )
        ]

    async def converse(
        self, messages: list[Message], parse_kind: str, reask_name: str, order: str, **parse_kwargs: Any
    ) -> Attempt:
        """Ask, parse, and on failure re-ask (bounded) in the same conversation (:func:`~mapo.judging.base.ask`)."""
        parse = PARSERS.get(parse_kind)
        answer = await ask(
            self.client,
            self.model,
            messages,
            role=self.role,
            parse=lambda text: parse(text, **parse_kwargs),
            reask=lambda: render_scaled(self.template(self.variant(reask_name)), self.config.scale),
            reasks=self.config.reask,
            constraint=constraint_for(
                self.config.constrained, self.client, self.model, parse_kind, self.config.scale, explain=self.explain
            ),
            top_logprobs=TOP_LOGPROBS if self.scoring == "expected" else None,
        )
        attempt = Attempt(
            order=order,
            raw=answer.raw,
            verdict=to_verdict(answer.result, parse_kind),
            prompt_tokens=answer.prompt_tokens,
            completion_tokens=answer.completion_tokens,
            latency_s=answer.latency_s,
            cached=answer.cached,
        )
        if self.scoring == "expected" and attempt.verdict.ok:
            self._weigh(attempt, answer, parse_kind)
        return attempt

    def _weigh(self, attempt: Attempt, answer: Answer, kind: str) -> None:
        """Replace the written verdict by the logprob-weighted one, or say why not (once) and count it."""
        attempt.argmax = attempt.verdict
        if answer.top_logprobs is None:
            return self._keep(attempt, "the server sent no logprobs")
        names = VALUE_NAMES.get(kind)
        if names is None:
            return self._keep(attempt, f"the {kind} format has no logprob scoring")
        dists = locate(answer.raw[-1], answer.top_logprobs, answer.result.spans, names)
        attempt.logprobs = dists
        weighted = expected_verdict(kind, dists, self.config.scale) if dists else None
        if weighted is None:
            return self._keep(attempt, "the logprobs do not locate the answer's value")
        attempt.verdict, attempt.scoring = weighted, "expected"
        self._scoring_counts["expected"] += 1

    def _keep(self, attempt: Attempt, why: str) -> None:
        attempt.scoring = f"argmax: {why}"
        self._scoring_counts[attempt.scoring] += 1
        if why not in self._said:
            self._said.add(why)
            log.warning("judge %s: %s; keeping the written value (argmax scoring) there, counted", self.model, why)
