"""What every evaluator shares: the interface, the result base, and the one ask -> parse -> re-ask loop.

An evaluator (:class:`Evaluator`; in the spirit of TRL's ``BasePairwiseJudge``) judges one pair:
``await ev.judge_pair(question, response_a, response_b)`` returns a :class:`Judgement` in the
order the responses were given (``model_a`` = ``response_a``). :class:`~mapo.judging.judge.Judge`,
:class:`~mapo.judging.jury.Jury`, :class:`~mapo.judging.debate.Debate` and
:class:`~mapo.judging.reward.RewardJudge` implement it; each names itself (``name``, ``kind``,
``setup``, ``prompt_sha``, ``models``) so a run keys and resumes its records without asking what type
of evaluator it holds. :class:`PointwiseEvaluator` (in the spirit of TRL's ``BaseRankJudge``) adds
``score(question, response)`` for an evaluator that scores each response alone (a reward model): it
judges pairs and selects best-of-N through the same interface, with no prompt to name.

A :class:`Judgement` (``PairJudgement``, ``JuryJudgement``, ``DebateJudgement``) carries the
shared verdict fields and turns itself into ``judgements.jsonl`` records
(:meth:`Judgement.records`; the schema is documented in :mod:`mapo.runs.evaluate`).

:func:`ask` is the only place a judging conversation is held: ask, parse, and on an
unparseable answer re-ask (bounded) in the same conversation. :func:`constraint_for` is the only
place the constrained-decoding setting (``on | off | auto``) is decided.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from mapo.core.config import JudgeConfig, RunConfig
from mapo.core.parsers import ParseResult, constrained_regex, text_budget
from mapo.core.registry import Registry
from mapo.core.types import Label, Message, Question
from mapo.core.verdicts import label_pick, swap_label
from mapo.llm.client import Constraint, LLMClient

__all__ = [
    "EVALUATORS",
    "NO_PROMPT",
    "Answer",
    "Evaluator",
    "Judgement",
    "PointwiseEvaluator",
    "Probe",
    "RecordContext",
    "Score",
    "ask",
    "asked_probe",
    "constraint_for",
    "use_constraint",
]

NO_PROMPT = "none"
"""``prompt_sha`` of an evaluator that sends no prompt of mapo's (a reward model scores the conversation)."""


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class RecordContext:
    """Where a judgement was made: the item, its presentation order and the run's identity."""

    item_id: str
    human: str | None
    order: str
    """AB = the item's response_a shown first; BA = swapped (the judgement is in presentation order)."""
    version: int
    """``judge.version``: part of every record key."""
    evaluator: str
    """The run's evaluator (judge | jury | debate | reward)."""
    annotators: Mapping[str, str] | None = None
    """Several annotators' labels (column -> label) when the item has them; ``human`` is their majority."""


def _record(
    ctx: RecordContext,
    *,
    kind: str,
    judge: str,
    keyed: str,
    models: list[str],
    member_of: str | None,
    setup: str,
    strategy: str,
    scale: int | None,
    prompt_sha: str,
    label: Label | None,
    score_a: float | None,
    score_b: float | None,
    failure: str | None,
    raw: list[str],
    detail: dict[str, Any],
    prompt_tokens: int,
    completion_tokens: int,
    latency_s: float,
    cached: bool,
    incomplete: str | None = None,
) -> dict[str, Any]:
    """One judgements.jsonl record; a presentation-order verdict is turned into dataset terms.
    ``incomplete``: why a verdict lacks some of its members (written only when set: the unit is not
    done, a rerun redoes it; :class:`mapo.core.store.RecordStore`)."""
    if ctx.order == "BA":
        score_a, score_b = score_b, score_a
    return {
        "key": "|".join([ctx.item_id, keyed, setup, f"v{ctx.version}", prompt_sha, ctx.order]),
        "item_id": ctx.item_id,
        "evaluator": ctx.evaluator,
        "kind": kind,
        "judge": judge,
        "models": models,
        "member_of": member_of,
        "setup": setup,
        "strategy": strategy,
        "scale": scale,
        "version": ctx.version,
        "order": ctx.order,
        "prompt_sha": prompt_sha,
        "pick": label_pick(label),
        "label": swap_label(label) if ctx.order == "BA" else label,
        "score_a": score_a,
        "score_b": score_b,
        "failure": failure,
        "human": ctx.human,
        **({"annotators": dict(ctx.annotators)} if ctx.annotators else {}),
        "raw": raw,
        "detail": detail,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "latency_s": round(latency_s, 4),
        "cached": cached,
        **({"incomplete": incomplete} if incomplete else {}),
    }


def dataset_label(label: Label | None, order: str) -> Label | None:
    """A presentation-order label in dataset terms (undoing a BA swap)."""
    return swap_label(label) if order == "BA" else label


@dataclass(kw_only=True)
class Judgement:
    """The verdict fields every evaluator's result shares, in presentation order.

    ``label`` is ``model_a`` (the first response given), ``model_b`` or ``tie``, or None with
    ``failure`` saying why there is no verdict (a failure is never a tie); ``score_a`` /
    ``score_b`` are the scores behind it where there are any. ``setup`` names how it was judged
    (it keys the records; it is not part of :meth:`to_record`).
    """

    kind: ClassVar[str] = "judge"
    """What this result's own record is: judge | jury | debate | reward."""

    judge: str
    strategy: str
    scale: int | None
    prompt_sha: str
    label: Label | None = None
    score_a: float | None = None
    score_b: float | None = None
    failure: str | None = None
    setup: str = field(default="", repr=False)

    @property
    def ok(self) -> bool:
        return self.failure is None

    @property
    def incomplete(self) -> str | None:
        """Why a verdict was reached without some of its members (a jury with a failed juror), else None:
        such a unit is not done, a rerun asks the failed members again."""
        return None

    @property
    def raw(self) -> list[str]:
        """Every raw model text behind this judgement, in the order produced."""
        return []

    @property
    def models(self) -> list[str]:
        """The models behind this judgement."""
        return [self.judge]

    @property
    def prompt_tokens(self) -> int:
        return 0

    @property
    def completion_tokens(self) -> int:
        return 0

    @property
    def latency_s(self) -> float:
        return 0.0

    @property
    def cached(self) -> bool:
        """Every call behind it was a cache hit."""
        return False

    def detail(self, order: str) -> dict[str, Any]:
        """The record's ``detail`` (what is specific to this kind of judgement)."""
        return {}

    def record_raw(self) -> list[str]:
        """The raw texts its own record keeps (a jury's live in its jurors' records)."""
        return self.raw

    def to_record(self) -> dict[str, Any]:
        """Every field as plain data (selection and win-rate records embed it)."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self) if f.name != "setup"}

    def _named(self, *between: str) -> dict[str, Any]:
        """The shared fields in record order, for a subclass's own ``to_record``: what names the evaluator (judge,
        strategy, scale, prompt_sha), then the fields ``between`` (its own), then the verdict (label, scores,
        failure)."""
        names = ("judge", "strategy", "scale", "prompt_sha", *between, "label", "score_a", "score_b", "failure")
        return {name: getattr(self, name) for name in names}

    def record(self, ctx: RecordContext, *, kind: str | None = None, member_of: str | None = None) -> dict[str, Any]:
        """This judgement's own judgements.jsonl record (``kind`` juror + ``member_of`` for a jury member)."""
        return _record(
            ctx,
            kind=kind or self.kind,
            judge=self.judge,
            # a juror's key names its jury: another jury reusing this juror gets its own records (cache hits)
            keyed=f"{member_of}/{self.judge}" if member_of else self.judge,
            models=self.models,
            member_of=member_of,
            setup=self.setup,
            strategy=self.strategy,
            scale=self.scale,
            prompt_sha=self.prompt_sha,
            label=self.label if self.ok else None,
            score_a=self.score_a,
            score_b=self.score_b,
            failure=self.failure,
            raw=self.record_raw(),
            detail=self.detail(ctx.order),
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            latency_s=self.latency_s,
            cached=self.cached,
            incomplete=self.incomplete,
        )

    def records(self, ctx: RecordContext) -> list[dict[str, Any]]:
        """Every record this judgement writes, its own last (it marks the unit done)."""
        return [self.record(ctx)]


def _plain(value: Any) -> Any:
    """Dataclasses (with their own ``to_record``) and containers of them as plain data."""
    if hasattr(value, "to_record"):
        return value.to_record()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if hasattr(value, "__dataclass_fields__"):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    return value


# --------------------------------------------------------------------------- pre-flight probes


@dataclass(frozen=True)
class Probe:
    """One role's requests as a run will send them, for the pre-flight (:mod:`mapo.runs.preflight`).

    ``messages`` is the role's first request: the item's real texts, ``""`` where the run puts text
    it produces (a response, a review). ``longest`` is the shape of the longest request the role
    makes (the last feedback iteration, the final scores after every debate round, the last
    re-ask), with the produced texts left empty too; ``produced`` bounds what they add, in tokens
    (each at most its producer's max_tokens). The pre-flight checks rendered(``longest``) +
    sum(``produced``) + the model's max_tokens against the server's max_model_len."""

    role: str
    model: str
    messages: list[Message]
    constraint: Constraint | None = None
    top_logprobs: int | None = None
    longest: list[Message] | None = None
    produced: tuple[tuple[str, int], ...] = ()
    """(what, tokens at most): e.g. ``("2 responses x 192 max_tokens of smollm2-135m", 384)``."""
    turn: str = "its first request"
    """Which request ``longest`` is, for messages: ``iteration 3 of 3``, ``re-ask 1``."""


def asked_probe(
    client: LLMClient,
    role: str,
    model: str,
    messages: list[Message],
    *,
    reask_text: str,
    reasks: int,
    produced: Sequence[tuple[str, int]] = (),
    constraint: Constraint | None = None,
    top_logprobs: int | None = None,
) -> Probe:
    """The probe of a request asked through :func:`ask`: its longest form is the last re-ask (each
    adds the unparseable answer, at most max_tokens, and the re-ask message)."""
    longest = list(messages)
    grown = list(produced)
    for _ in range(reasks):
        longest += [{"role": "assistant", "content": ""}, {"role": "user", "content": reask_text}]
    if reasks:
        grown.append(
            (
                f"{reasks} unparseable answer(s) x {client.max_tokens(model)} max_tokens",
                reasks * client.max_tokens(model),
            )
        )
    return Probe(
        role,
        model,
        list(messages),
        constraint=constraint,
        top_logprobs=top_logprobs,
        longest=longest,
        produced=tuple(grown),
        turn=f"re-ask {reasks}" if reasks else "its first request",
    )


# --------------------------------------------------------------------------- the evaluator interface


class Evaluator(ABC):
    """Anything that judges a pair: a judge, a jury, a debate, a reward model.

    Implementations register under their ``evaluator`` choice (``@EVALUATORS.register(name)``), build
    themselves from config (:meth:`from_config`), declare the config roles they use
    (:attr:`config_roles`), the config sections that join a run's fingerprint (:attr:`sections`) and
    the ``kind`` of their records, and name themselves; a command needs nothing else to build, key,
    resume and record them. The abstract members are what every evaluator has: :meth:`from_config`,
    :attr:`name`, :attr:`setup`, :attr:`models` and :meth:`judge_pair`.
    """

    kind: ClassVar[str]
    """The ``kind`` of its own records: judge | jury | debate | cascade | reward, or its own."""

    config_roles: ClassVar[tuple[str, ...]] = ("judge",)
    """The ``roles.<role>`` keys naming its models (validated before any call); the first names them in
    the fingerprint (``roles.<first>``) and the manifest."""

    sections: ClassVar[tuple[tuple[str, tuple[str, ...] | None], ...]] = (("judge", None),)
    """(config section, its fields or None for all) that change its verdicts: ``mapo evaluate``'s
    fingerprint holds them, in this order (after :meth:`config_keys`)."""

    @classmethod
    @abstractmethod
    def from_config(cls, cfg: RunConfig, client: LLMClient, judge_config: JudgeConfig | None = None) -> Evaluator:
        """Build it from a run's config (``cfg``: :class:`~mapo.core.config.RunConfig`) over ``client``;
        ``judge_config`` (default ``cfg.judge``) is what the judges inside it judge with. A bad name or
        value is a :class:`~mapo.core.config.ConfigError` (or ``UnknownNameError``) before any call."""

    @property
    @abstractmethod
    def name(self) -> str:
        """The ``judge`` field of its records: a model name, ``jury[a+b]``, ``debate[a+b]``."""

    @property
    @abstractmethod
    def setup(self) -> str:
        """How it judges, e.g. ``combined10``, ``combined10/mode-tie``, ``debate10/r2/mean_score/...``."""

    @property
    def prompt_sha(self) -> str:
        """Hash of the prompt text(s) it uses; :data:`NO_PROMPT` for an evaluator that sends none (a reward model)."""
        return NO_PROMPT

    @property
    @abstractmethod
    def models(self) -> list[str]:
        """The models behind it (conf/model names)."""

    @property
    def strategy(self) -> str:
        """The judge strategy (``debate`` for a debate); by default its ``kind``."""
        return self.kind

    @property
    def scale(self) -> int | None:
        """Score total; None for an evaluator whose scores have no fixed total (a reward model)."""
        return None

    @property
    def ordered(self) -> bool:
        """Whether the presentation order can change its verdict (``judge.both_orders`` judges both); a
        pointwise evaluator scores each response alone, so it has one order."""
        return True

    @property
    def pair_setup(self) -> str:
        """The setup that keys the records of a command where it judges each pair in every order it
        judges itself (``mapo winrate``); by default :attr:`setup`."""
        return self.setup

    @property
    def subset_members(self) -> list[str]:
        """Members whose every subset the agreement table scores as a jury of its own (a jury's jurors;
        ``stats.reference`` may name them); none by default."""
        return []

    scores_alone: ClassVar[bool] = False
    """Whether it can score one response alone (:meth:`score`; ``selection.method=score_all``)."""

    @property
    def conversations(self) -> bool:
        """Whether it judges a multi-turn question (a :class:`~mapo.core.types.Conversation`: the earlier turns
        shown to its models); a run with conversations refuses one that does not, before any call."""
        return False

    @property
    def references(self) -> bool:
        """Whether it shows a reference answer under ``judge.reference=guided`` (a paper-strategy judge, juries and
        cascades of them); a run with ``judge.reference=guided`` refuses one that does not, before any call."""
        return False

    async def score(self, question: Question, response: str) -> Score:
        """Score ``response`` to ``question`` alone (when :attr:`scores_alone`)."""
        raise NotImplementedError(f"evaluator {self.kind} cannot score one response alone")

    def score_fields(self) -> dict[str, Any]:
        """What a selection's per-response score record adds for it (a pointwise evaluator's tie margin)."""
        return {}

    def config_keys(self) -> dict[str, Any]:
        """Config keys that change its verdicts beyond ``judge.*`` (a run's fingerprint adds them)."""
        return {}

    @abstractmethod
    async def judge_pair(self, question: Question, response_a: str, response_b: str) -> Judgement:
        """Judge one pair as presented (``model_a`` = ``response_a``, shown first)."""

    async def judge_again(
        self, question: Question, response_a: str, response_b: str, kept: Mapping[str, Mapping[str, Any]]
    ) -> Judgement:
        """Judge an :attr:`Judgement.incomplete` unit again: ``kept`` holds its members' stored records
        that have a verdict (member model -> record); an evaluator with members asks only the others.
        By default the pair is judged anew."""
        return await self.judge_pair(question, response_a, response_b)

    @property
    def scoring_counts(self) -> Counter[str]:
        """How its answers were scored under ``judge.scoring=expected`` (``expected`` / ``argmax: <why>``)."""
        return Counter()

    def probes(
        self, question: Question, response_a: str, response_b: str, produced: Sequence[tuple[str, int]] = ()
    ) -> list[Probe]:
        """Its models' requests for one pair, for the pre-flight (:class:`Probe`); ``produced``: when the
        run writes the responses, (what, tokens at most) for each one (``response_a``/``b`` are then "").
        An evaluator without probes is not pre-flighted."""
        return []

    @property
    def member_prompt_shas(self) -> frozenset[str]:
        """The prompt hashes its member records carry (a jury's jurors share its own)."""
        return frozenset({self.prompt_sha})

    def identity(self) -> tuple[str, str, str]:
        """(name, setup, prompt_sha): what keys its records."""
        return self.name, self.setup, self.prompt_sha

    def failed_records(self, ctx: RecordContext, reason: str) -> list[dict[str, Any]]:
        """A per-item fault (e.g. a rejected request) as a failure record, so a rerun skips it."""
        return [
            _record(
                ctx,
                kind=self.kind,
                judge=self.name,
                keyed=self.name,
                models=self.models,
                member_of=None,
                setup=self.setup,
                strategy=self.strategy,
                scale=self.scale,
                prompt_sha=self.prompt_sha,
                label=None,
                score_a=None,
                score_b=None,
                failure=reason,
                raw=[],
                detail={},
                prompt_tokens=0,
                completion_tokens=0,
                latency_s=0.0,
                cached=False,
            )
        ]


# --------------------------------------------------------------------------- the pointwise protocol


@dataclass
class Score:
    """One response scored alone by a pointwise evaluator: ``value`` (higher = better), or None with
    ``failure`` saying why (a failure is never a score)."""

    value: float | None
    failure: str | None = None
    raw: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.failure is None and self.value is not None


class PointwiseEvaluator(Evaluator):
    """An evaluator that scores each response alone (in the spirit of TRL's ``BaseRankJudge`` beside
    ``BasePairwiseJudge``): :meth:`score` ranks N responses (``selection.method=score_all``) and
    :meth:`judge_pair` judges a pair by scoring both. It has one presentation order."""

    scores_alone: ClassVar[bool] = True

    @property
    def ordered(self) -> bool:
        return False

    @property
    def tie_margin(self) -> float:
        """Scores closer than this are a tie, never a preference (equal scores always are)."""
        return 0.0

    def score_fields(self) -> dict[str, Any]:
        return {"tie_margin": self.tie_margin}

    @abstractmethod
    async def score(self, question: Question, response: str) -> Score:
        """Score ``response`` to ``question`` alone."""


EVALUATORS: Registry[type[Evaluator]] = Registry("evaluator")
"""``evaluator`` choice -> the class that builds itself from config (:meth:`Evaluator.from_config`).
Each evaluator module registers its class; :mod:`mapo.judging.evaluators` imports them all."""


# --------------------------------------------------------------------------- asking


@dataclass
class Answer:
    """What one bounded ask -> parse -> re-ask conversation produced."""

    raw: list[str] = field(default_factory=list)
    """Every answer, in order (the last is the one parsed or the last that failed)."""
    result: ParseResult = field(default_factory=lambda: ParseResult.fail("unparseable"))
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    cached: bool = True
    top_logprobs: list[dict[str, float]] | None = None
    """Of the last answer, when asked for and the server sent them."""


async def ask(
    client: LLMClient,
    model: str,
    messages: Sequence[Message],
    *,
    role: str,
    parse: Callable[[str], ParseResult],
    reask: Callable[[], str],
    reasks: int,
    constraint: Constraint | None = None,
    top_logprobs: int | None = None,
) -> Answer:
    """Ask ``model``; parse the answer; while it does not parse, re-ask (``reask()``, at most
    ``reasks`` times) in the same conversation. Every raw text and the summed accounting are kept."""
    answer = Answer()
    extra: dict[str, Any] = {"top_logprobs": top_logprobs} if top_logprobs else {}
    convo = list(messages)
    for attempt in range(reasks + 1):
        c = await client.chat(model, convo, role=role, constraint=constraint, **extra)
        answer.raw.append(c.text)
        answer.prompt_tokens += c.prompt_tokens
        answer.completion_tokens += c.completion_tokens
        answer.latency_s += c.latency_s
        answer.cached = answer.cached and c.cached
        answer.top_logprobs = getattr(c, "top_logprobs", None)
        answer.result = parse(c.text)
        if answer.result.ok or attempt == reasks:
            break
        convo = [*convo, {"role": "assistant", "content": c.text}, {"role": "user", "content": reask()}]
    return answer


def use_constraint(setting: str, client: LLMClient, model: str) -> bool:
    """``constrained``: on | off | auto (on where the model's server honours structured outputs)."""
    return setting == "on" or (setting == "auto" and client.supports_constraints(model))


def constraint_for(
    setting: str, client: LLMClient, model: str, kind: str, scale: int = 10, *, explain: bool = True
) -> Constraint | None:
    """The structured-output constraint that makes ``model``'s answer readable by parser ``kind``,
    or None when ``setting`` leaves it unconstrained. Free text is sized so the verdict fits
    ``max_tokens``; ``explain=False`` leaves only the answer sections."""
    if not use_constraint(setting, client, model):
        return None
    budget = text_budget(client.max_tokens(model))
    if explain:
        return Constraint(regex=constrained_regex(kind, scale, text_chars=budget))
    return Constraint(regex=constrained_regex(kind, scale, text_chars=budget, explain=False))
