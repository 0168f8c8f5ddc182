"""Judge strategies: how one judge model is asked about a pair, and how its stored answers are replayed.

A :class:`Strategy` is one object that says everything about itself: its prompts (and their
hash, ``prompt_sha``), the parser kind its answers go through and its re-ask prompt, whether it
is pointwise (each response scored alone in its own conversation, so the presentation order
cannot matter), its setup name (part of every record key), how a judge asks it
(:meth:`Strategy.ask`, through :meth:`mapo.judging.judge.Judge.converse`) and how ``mapo
reparse`` replays a stored attempt from its raw texts with no model call
(:meth:`Strategy.replay`, :meth:`Strategy.stored_verdict`). The live path and the replay call
the same parser and the same rules (:mod:`mapo.core.verdicts`), so a replay of unchanged texts
gives the live verdict.

The paper's three (Table 7) are :class:`PaperStrategy` objects here; the judge packs
(:mod:`mapo.judging.packs`) are :class:`~mapo.judging.packs.Pack` objects; all are registered in
:data:`mapo.judging.judge.STRATEGIES` by their ``judge.strategy`` name.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol

from mapo.core import prompts
from mapo.core.config import ConfigError, JudgeConfig, Reference
from mapo.core.parsers import PARSERS, ParseResult, to_verdict
from mapo.core.types import (
    Conversation,
    Message,
    Question,
    Verdict,
    is_multi_turn,
    question_text,
    reference_of,
    side_question,
)
from mapo.judging.scoring import VALUE_NAMES, ValueDistribution, rescore_attempt, stored_verdict

__all__ = [
    "Asker",
    "Attempt",
    "PaperStrategy",
    "Strategy",
    "first_ok",
    "render_conversation",
    "render_scaled",
    "split_sides",
    "verdict_dict",
]


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


class Asker(Protocol):
    """What a strategy needs of the judge that asks it (:class:`mapo.judging.judge.Judge`)."""

    config: JudgeConfig

    def template(self, name: str) -> prompts.Template: ...

    def variant(self, name: str) -> str: ...

    async def converse(
        self, messages: list[Message], parse_kind: str, reask_name: str, order: str, **parse_kwargs: Any
    ) -> Attempt: ...


# --------------------------------------------------------------------------- replay helpers


def first_ok(raws: Sequence[str], kind: str, **kw: Any) -> ParseResult:
    """The first raw text that parses (the asker stops there); else the last failure."""
    result = ParseResult.fail("no raw text stored")
    for text in raws:
        result = PARSERS.get(kind)(text, **kw)
        if result.ok:
            return result
    return result


def split_sides(raws: Sequence[str], scale: int, kind: str = "score") -> int | None:
    """Where side A's raw texts end in a flattened pointwise attempt (A's asks then B's). A split
    is consistent when every text but each side's last fails to parse (the judge re-asks only
    after a failure); None when zero or several splits fit."""
    parse = PARSERS.get(kind)
    fails = [not parse(t, scale=scale).ok for t in raws]
    fits = [k for k in range(1, len(raws)) if all(fails[: k - 1]) and all(fails[k:-1])]
    return fits[0] if len(fits) == 1 else None


def verdict_dict(v: Verdict) -> dict[str, Any]:
    """A verdict as an attempt record stores it."""
    return {"pick": v.pick, "score_a": v.score_a, "score_b": v.score_b, "failure": v.failure}


def _scores_compared(a: ParseResult | Verdict, b: ParseResult | Verdict, what: str = "A", other: str = "B") -> Verdict:
    """Two sides scored alone -> the pair's verdict (higher wins, equal = tie); a failed side fails it."""
    oks = [x.ok for x in (a, b)]
    if all(oks):
        sa = float(a.value) if isinstance(a, ParseResult) else a.score_a
        sb = float(b.value) if isinstance(b, ParseResult) else b.score_a
        return Verdict.from_scores(sa, sb)  # type: ignore[arg-type]
    errors = [x.error if isinstance(x, ParseResult) else x.failure for x in (a, b)]
    return Verdict.failed("; ".join(f"{s}: {e}" for s, e, ok in zip((what, other), errors, oks, strict=True) if not ok))


# --------------------------------------------------------------------------- the strategy object


@dataclass(frozen=True, kw_only=True)
class Strategy:
    """One ``judge.strategy``: its prompts, parser, re-ask, pointwise-ness, setup name, asking and replay.

    Subclasses supply the prompts (:meth:`pair_messages` / :meth:`single_messages`,
    :meth:`prompt_sha`) and the setup name; asking, combining two single scores and replaying are
    shared here.
    """

    name: str
    parser: str
    """The parser kind one answer goes through (:data:`mapo.core.parsers.PARSERS`)."""
    reask: str
    """The prompt sent after an unparseable answer (in ``judge.prompt_set``)."""
    pointwise: bool = False
    """Each response is scored alone, in its own conversation: no presentation order."""
    multi_turn: bool = False
    """It has a prompt that shows a :class:`~mapo.core.types.Conversation`'s earlier turns (the paper's three:
    ``multiturn_judge_*.user``); one without it refuses a multi-turn item before any call."""
    reference_guided: bool = False
    """It can show a reference answer (``judge.reference=guided``: the paper's three, ``reference_guided.user``)."""

    # ---- what each strategy says of itself ----------------------------------------------
    @property
    def ordered(self) -> bool:
        """Whether the presentation order can change a verdict (``judge.both_orders`` applies)."""
        return not self.pointwise

    def setup_name(self, scale: int) -> str:
        """The setup part of a record key: ``combined10``, ``independent5``, ``direct``."""
        return f"{self.name}{scale}"

    def parse_kwargs(self, scale: int) -> dict[str, Any]:
        """What the parser is given beside the text (the scale, for a scoring format)."""
        return {"scale": scale}

    @property
    def logprob_kind(self) -> str | None:
        """The parser kind whose value distributions an attempt keeps under ``judge.scoring=expected``
        (:func:`mapo.judging.scoring.expected_verdict`); None: no logprob scoring."""
        return None if self.pointwise or self.parser not in VALUE_NAMES else self.parser

    keeps_side_logprobs: bool = False
    """Pointwise: the pair's attempt keeps each side's scoring and distributions (``score_a`` / ``score_b``)."""

    def prompt_sha(self, judge: Asker) -> str:
        raise NotImplementedError

    def single_turn(self, question: Question) -> str:
        """A plain question's text; a :class:`~mapo.core.types.Conversation` is refused by a strategy without
        a multi-turn prompt (its earlier turns would silently be lost)."""
        if is_multi_turn(question):
            raise ConfigError(
                f"judge.strategy={self.name} has no multi-turn prompt: a conversation's earlier turns cannot be "
                "shown; use direct, combined or independent for multi-turn items"
            )
        return question_text(question)

    def pair_messages(self, judge: Asker, question: Question, first: str, second: str) -> list[Message]:
        """The first request of a pairwise strategy (``first`` shown as A)."""
        raise NotImplementedError

    def single_messages(self, judge: Asker, question: Question, response: str) -> list[Message]:
        """The first request of a pointwise strategy: one response alone."""
        raise NotImplementedError

    def first_messages(self, judge: Asker, question: Question, response_a: str, response_b: str) -> list[Message]:
        """The first request this strategy sends for a pair (a pointwise one: response A's)."""
        if self.pointwise:
            return self.single_messages(judge, question, response_a)
        return self.pair_messages(judge, question, response_a, response_b)

    # ---- live -------------------------------------------------------------------------
    async def ask_one(self, judge: Asker, question: Question, response: str, order: str = "AB") -> Attempt:
        """One response scored alone in its own conversation (its score in ``verdict.score_a``)."""
        messages = self.single_messages(judge, question, response)
        return await judge.converse(messages, self.parser, self.reask, order, **self.parse_kwargs(judge.config.scale))

    async def ask(self, judge: Asker, order: str, question: Question, first: str, second: str) -> Attempt:
        """One attempt in one presentation order (``first`` shown as A; a conversation's sides in that order)."""
        if not self.pointwise:
            messages = self.pair_messages(judge, question, first, second)
            kwargs = self.parse_kwargs(judge.config.scale)
            return await judge.converse(messages, self.parser, self.reask, order, **kwargs)
        a, b = await asyncio.gather(
            self.ask_one(judge, side_question(question), first, order),
            self.ask_one(judge, side_question(question, b=True), second, order),
        )
        return self.combine_singles(a, b, order)

    def combine_singles(self, a: Attempt, b: Attempt, order: str) -> Attempt:
        """Two responses scored alone -> one attempt: the pick compares the scores (equal = tie)."""
        attempt = Attempt(
            order=order,
            raw=a.raw + b.raw,
            verdict=_scores_compared(a.verdict, b.verdict),
            prompt_tokens=a.prompt_tokens + b.prompt_tokens,
            completion_tokens=a.completion_tokens + b.completion_tokens,
            latency_s=max(a.latency_s, b.latency_s),
            cached=a.cached and b.cached,
        )
        if self.keeps_side_logprobs and (a.scoring is not None or b.scoring is not None):
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

    # ---- replay (no model call) ---------------------------------------------------------
    def replay(self, attempt: Mapping[str, Any], scale: int) -> tuple[dict[str, Any], str | None]:
        """A stored attempt ({order, raw, verdict}) re-parsed from its raw texts -> (verdict dict, note).

        The written (argmax) verdict, as the judge reached it live from the same texts; a note
        (and the stored verdict) only where the texts cannot be assigned to the two sides."""
        raws = list(attempt.get("raw") or [])
        if not self.pointwise:
            return verdict_dict(to_verdict(first_ok(raws, self.parser, scale=scale), self.parser)), None
        k = split_sides(raws, scale, self.parser)
        if k is None:
            return dict(
                attempt["verdict"]
            ), f"independent attempt of {len(raws)} texts cannot be split into A and B; kept"
        a, b = first_ok(raws[:k], self.parser, scale=scale), first_ok(raws[k:], self.parser, scale=scale)
        return verdict_dict(_scores_compared(a, b)), None

    def rescore(self, attempt: Mapping[str, Any], scale: int) -> Verdict | None:
        """The logprob-weighted verdict of a stored attempt (:func:`mapo.judging.scoring.rescore_attempt`)."""
        return rescore_attempt(attempt, self.scoring_kind, scale)

    def stored_verdict(self, attempt: Mapping[str, Any], scale: int, scoring: str) -> tuple[Verdict, str]:
        """A stored attempt's verdict under ``scoring`` (:func:`mapo.judging.scoring.stored_verdict`)."""
        return stored_verdict(attempt, self.scoring_kind, scale, scoring)

    @property
    def scoring_kind(self) -> str | None:
        """The verdict kind of a stored attempt's distributions: the parser's, or ``score_pair`` for a
        pointwise strategy that keeps both sides' (None: none kept)."""
        return "score_pair" if self.keeps_side_logprobs else self.logprob_kind


def render_conversation(
    judge: Asker, conversation: Conversation, response: str, assistant: str, b: bool = False
) -> str:
    """One side's conversation as a judge reads it: its earlier turns, the question and ``response`` (the
    answer judged), each turn through ``multiturn_turn_user`` / ``multiturn_turn_assistant``, untrusted
    text defused (FastChat's MT-Bench multi-turn layout, prompts/SOURCE.md)."""
    turns: list[Message] = [*conversation.messages(b), {"role": "assistant", "content": response}]
    return prompts.render_turns(judge.template, turns, assistant)


def render_scaled(template: prompts.Template, scale: int) -> str:
    """A prompt rendered with ``scale`` where it has that field."""
    return template.render(scale=scale) if "scale" in template.fields else template.render()


@dataclass(frozen=True, kw_only=True)
class PaperStrategy(Strategy):
    """The paper's strategies (Table 7): ``judge_<name>.system`` (``_score_only`` with
    ``judge.explain=false``) and ``judge_pair.user`` / ``judge_single.user`` in ``judge.prompt_set``."""

    scored: bool = True
    """A score out of ``judge.scale`` (in the setup name and given to the parser); direct picks."""
    multi_turn: bool = True
    reference_guided: bool = True

    @property
    def system(self) -> str:
        return f"judge_{self.name}.system"

    def setup_name(self, scale: int) -> str:
        return f"{self.name}{scale}" if self.scored else self.name

    def parse_kwargs(self, scale: int) -> dict[str, Any]:
        return {"scale": scale} if self.scored else {}

    def prompt_sha(self, judge: Asker) -> str:
        return judge.template(judge.variant(self.system)).sha

    def _system(self, judge: Asker) -> Message:
        return {
            "role": "system",
            "content": render_scaled(judge.template(judge.variant(self.system)), judge.config.scale),
        }

    def _guided(self, judge: Asker, question: Question, user: str) -> list[Message]:
        """The request: the paper's system prompt and ``user``, under ``judge.reference=guided`` preceded by
        the question's reference answer (``reference_guided.user``; FastChat's reference-guided judging)."""
        if judge.config.reference == Reference.guided:
            reference = reference_of(question)
            if reference is None:
                raise ConfigError(
                    "judge.reference=guided: an item has no reference answer (eval_data's reference column, "
                    "prompts.reference_column)"
                )
            user = judge.template("reference_guided.user").render(
                reference=prompts.quote_untrusted(reference), judged=user
            )
        return [self._system(judge), {"role": "user", "content": user}]

    def pair_messages(self, judge: Asker, question: Question, first: str, second: str) -> list[Message]:
        if isinstance(question, Conversation) and question.multi_turn:  # the user turn shows both conversations
            user = judge.template("multiturn_judge_pair.user").render(
                conversation_a=render_conversation(judge, question, first, "Assistant A"),
                conversation_b=render_conversation(judge, question, second, "Assistant B", b=True),
            )
            return self._guided(judge, question, user)
        user = judge.template("judge_pair.user").render(
            question=prompts.quote_untrusted(question_text(question)),
            response_a=prompts.quote_untrusted(first),
            response_b=prompts.quote_untrusted(second),
        )
        return self._guided(judge, question, user)

    def single_messages(self, judge: Asker, question: Question, response: str) -> list[Message]:
        if isinstance(question, Conversation) and question.multi_turn:
            user = judge.template("multiturn_judge_single.user").render(
                conversation=render_conversation(judge, question, response, "Assistant")
            )
            return self._guided(judge, question, user)
        user = judge.template("judge_single.user").render(
            question=prompts.quote_untrusted(question_text(question)), response=prompts.quote_untrusted(response)
        )
        return self._guided(judge, question, user)


DIRECT = PaperStrategy(name="direct", parser="pick", reask="reask_pick", scored=False)
COMBINED = PaperStrategy(name="combined", parser="score_pair", reask="reask_score_pair")
INDEPENDENT = PaperStrategy(
    name="independent", parser="score", reask="reask_score", pointwise=True, keeps_side_logprobs=True
)
"""Each response scored alone, in its own conversation; the pick compares the scores."""
PAPER = (DIRECT, COMBINED, INDEPENDENT)
