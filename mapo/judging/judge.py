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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from mapo.core import prompts
from mapo.core.config import JudgeConfig, RunConfig
from mapo.core.parsers import PARSERS, to_verdict
from mapo.core.registry import Registry
from mapo.core.types import Message, Verdict, pick_to_label
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
from mapo.judging.packs import PACKS, pack_prompt_sha
from mapo.judging.packs import _messages as _pack_messages
from mapo.judging.packs import register as _register_packs
from mapo.judging.scoring import TOP_LOGPROBS, VALUE_NAMES, ValueDistribution, expected_verdict, locate
from mapo.llm.client import LLMClient

__all__ = ["STRATEGIES", "Attempt", "Judge", "PairJudgement", "judge_setup"]

log = logging.getLogger(__name__)


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
    # judge.scoring=expected only (left out of the record otherwise):
    scoring: str | None = None
    """``expected``, or why the written value was kept (``argmax: ...``)."""
    argmax: Verdict | None = None
    """The verdict as written (``verdict`` holds the weighted one)."""
    logprobs: list[ValueDistribution] | None = None
    """The distribution at each value (:mod:`mapo.judging.scoring`): recomputes either scoring."""

    def to_record(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("scoring", "argmax", "logprobs") and value is None:
                continue
            out[f.name] = vars(value).copy() if isinstance(value, Verdict) else value
        return out


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


Strategy = Callable[["Judge", str, str, str, str], Awaitable[Attempt]]
STRATEGIES: Registry[Strategy] = Registry("judge strategy")


def judge_setup(config: JudgeConfig) -> str:
    """``direct``, ``combined10``, ``independent5``; ``+expected`` for logprob-weighted scoring and
    ``+score_only`` without the explanation (the defaults add nothing, so stored keys stay valid)."""
    setup = str(config.strategy) if config.strategy == "direct" else f"{config.strategy}{config.scale}"
    if config.scoring == "expected":
        setup += "+expected"
    if not config.explain:
        setup += "+score_only"
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
    def pair_setup(self) -> str:
        """``mapo winrate``'s key: ``direct``, ``combined10``, ``/both`` when it judges both orders (no
        ``+expected`` / ``+score_only``: the fingerprint holds judge.*, and stored keys stay valid)."""
        c = self.config
        setup = str(c.strategy) if c.strategy == "direct" else f"{c.strategy}{c.scale}"
        return setup + ("/both" if c.both_orders and not c.pointwise else "")

    @property
    def scoring_counts(self) -> Counter[str]:
        """judge.scoring=expected: answers weighed (``expected``) and kept as written (``argmax: <why>``)."""
        return self._scoring_counts

    def template(self, name: str) -> prompts.Template:
        return prompts.load(self.config.prompt_set, name)

    def _variant(self, name: str) -> str:
        """``judge_combined.system`` -> ``judge_combined_score_only.system`` when explain=false."""
        if self.explain:
            return name
        stem, dot, rest = name.partition(".")
        return f"{stem}_score_only{dot}{rest}"

    @property
    def prompt_sha(self) -> str:
        pack = PACKS.get(self.config.strategy)
        if pack is not None:
            return pack_prompt_sha(self.config.prompt_set, pack)
        return self.template(self._variant(f"judge_{self.config.strategy}.system")).sha

    # ---- judging -----------------------------------------------------------------------
    async def judge_pair(self, question: str, response_a: str, response_b: str) -> PairJudgement:
        orders = ["AB", "BA"] if self.config.both_orders and not self.config.pointwise else ["AB"]
        attempts = await asyncio.gather(
            *(
                self._strategy(
                    self, order, question, *((response_a, response_b) if order == "AB" else (response_b, response_a))
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
        base = dict(self._identity_fields(), attempts=attempts)
        ok = [a for a in attempts if a.verdict.ok]
        if not ok:
            return PairJudgement(**base, label=None, failure="; ".join(a.verdict.failure or "" for a in attempts))
        # scores in dataset terms (a = the first response given to judge_pair)
        labelled = []
        for a in ok:
            swapped = a.order == "BA"
            sa, sb = (a.verdict.score_b, a.verdict.score_a) if swapped else (a.verdict.score_a, a.verdict.score_b)
            labelled.append((pick_to_label(a.verdict.pick, swapped), sa, sb))  # type: ignore[arg-type]
        if len(labelled) == 1:
            label, sa, sb = labelled[0]
            return PairJudgement(**base, label=label, score_a=sa, score_b=sb)
        (l1, a1, b1), (l2, a2, b2) = labelled
        if self.config.order_combine == "mean_score" and None not in (a1, b1, a2, b2):
            sa, sb = (a1 + a2) / 2, (b1 + b2) / 2  # type: ignore[operator]
            v = Verdict.from_scores(sa, sb)
            return PairJudgement(**base, label=pick_to_label(v.pick), score_a=sa, score_b=sb)  # type: ignore[arg-type]
        both = lambda x, y: None if x is None or y is None else (x + y) / 2  # noqa: E731
        return PairJudgement(**base, label=l1 if l1 == l2 else "tie", score_a=both(a1, a2), score_b=both(b1, b2))

    async def score(self, question: str, response: str) -> Score:
        """``response`` scored alone with the independent prompt (``selection.method=score_all``)."""
        a = await self.score_single(question, response)
        return Score(a.verdict.score_a if a.verdict.ok else None, failure=a.verdict.failure, raw=a.raw)

    async def score_single(self, question: str, response: str, order: str = "AB") -> Attempt:
        """One response scored alone out of ``scale`` in its own conversation (kept in verdict.score_a)."""
        messages = _single_messages(self, question, response)
        return await self.converse(messages, "score", "reask_score", order, scale=self.config.scale)

    def probes(
        self, question: str, response_a: str, response_b: str, produced: Sequence[tuple[str, int]] = ()
    ) -> list[Probe]:
        """The first request of this judge's strategy for one pair, grown by its re-asks (:class:`Probe`)."""
        strategy = self.config.strategy
        pack = PACKS.get(strategy)
        if pack is not None:  # a judge pack: its own prompts, parser and re-ask
            kind, reask_name, pointwise = pack.parser, pack.reask, pack.pointwise
            fields = {"response": response_a} if pointwise else {"response_a": response_a, "response_b": response_b}
            messages = _pack_messages(self, pack, question=question, **fields)
        else:
            (kind, reask_name), pointwise = _ASKS[strategy], strategy == "independent"
            messages = (
                _single_messages(self, question, response_a)
                if pointwise
                else _pair_messages(self, f"judge_{strategy}.system", question, response_a, response_b)
            )
        # a pointwise strategy shows one response per conversation: the longer one bounds it
        room = sorted(produced, key=lambda p: -p[1])[:1] if pointwise else list(produced)
        return [
            asked_probe(
                self.client,
                self.role,
                self.model,
                messages,
                reask_text=_render(self.template(self._variant(reask_name)), self.config.scale),
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
            reask=lambda: _render(self.template(self._variant(reask_name)), self.config.scale),
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


def _render(template: prompts.Template, scale: int) -> str:
    return template.render(scale=scale) if "scale" in template.fields else template.render()


def _system(judge: Judge, name: str) -> str:
    return _render(judge.template(judge._variant(name)), judge.config.scale)


def _pair_user(judge: Judge, question: str, first: str, second: str) -> str:
    return judge.template("judge_pair.user").render(
        question=prompts.quote_untrusted(question),
        response_a=prompts.quote_untrusted(first),
        response_b=prompts.quote_untrusted(second),
    )


def _pair_messages(judge: Judge, system: str, question: str, first: str, second: str) -> list[Message]:
    return [
        {"role": "system", "content": _system(judge, system)},
        {"role": "user", "content": _pair_user(judge, question, first, second)},
    ]


def _single_messages(judge: Judge, question: str, response: str) -> list[Message]:
    return [
        {"role": "system", "content": _system(judge, "judge_independent.system")},
        {
            "role": "user",
            "content": judge.template("judge_single.user").render(
                question=prompts.quote_untrusted(question), response=prompts.quote_untrusted(response)
            ),
        },
    ]


_ASKS = {
    "direct": ("pick", "reask_pick"),
    "combined": ("score_pair", "reask_score_pair"),
    "independent": ("score", "reask_score"),
}
"""strategy -> (the parser its answers go through, its re-ask prompt)."""


@STRATEGIES.register("direct")
async def _direct(judge: Judge, order: str, question: str, first: str, second: str) -> Attempt:
    messages = _pair_messages(judge, "judge_direct.system", question, first, second)
    return await judge.converse(messages, "pick", "reask_pick", order)


@STRATEGIES.register("combined")
async def _combined(judge: Judge, order: str, question: str, first: str, second: str) -> Attempt:
    messages = _pair_messages(judge, "judge_combined.system", question, first, second)
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
        verdict = Verdict.from_scores(a.verdict.score_a, b.verdict.score_a)  # type: ignore[arg-type]
    attempt = Attempt(
        order=order,
        raw=raw,
        verdict=verdict,
        prompt_tokens=a.prompt_tokens + b.prompt_tokens,
        completion_tokens=a.completion_tokens + b.completion_tokens,
        latency_s=max(a.latency_s, b.latency_s),
        cached=a.cached and b.cached,
    )
    if a.scoring is not None or b.scoring is not None:
        # one pair of values: A's score and B's, each weighed in its own conversation
        attempt.scoring = next((x.scoring for x in (a, b) if x.scoring != "expected"), "expected")
        if a.argmax is not None or b.argmax is not None:
            sa, sb = ((x.argmax or x.verdict).score_a for x in (a, b))
            attempt.argmax = Verdict.from_scores(sa, sb) if sa is not None and sb is not None else None
        attempt.logprobs = [
            ValueDistribution(**{**d, "value": name})
            for x, name in ((a, "score_a"), (b, "score_b"))
            for d in x.logprobs or []
        ] or None
    return attempt


_register_packs(STRATEGIES)  # the judge packs (mapo.judging.packs) are strategies like the three above
