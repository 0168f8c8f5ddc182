"""Shared value types: messages, verdicts and the pick labels every module speaks."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Literal, TypedDict

Pick = Literal["A", "B", "tie"]
"""A judge's pick in the order the responses were *presented*: A = first, B = second."""

Label = Literal["model_a", "model_b", "tie"]
"""A pick in dataset terms (FairEval's ``winner`` column): independent of presentation order."""

LABELS: tuple[Label, ...] = ("model_a", "model_b", "tie")


class Message(TypedDict):
    """One chat message as sent to a model."""

    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True)
class Conversation:
    """A question asked after earlier turns: what a judge, a reviewer and the generator see of a multi-turn item.

    ``question`` is the last user turn (the one answered and judged); ``history`` the turns before it
    (user and assistant, from a user turn on) as response A's model saw them; ``history_b`` response B's where
    its earlier answers differ (MT-Bench: each model answered turn 1 itself), None when both saw ``history``.
    ``reference`` is a reference answer to the question (shown to a judge only under ``judge.reference=guided``);
    a Conversation with no earlier turns carries just that and is asked as the single-turn question it is.
    A plain ``str`` question is a single-turn item and is judged exactly as before.
    """

    question: str
    history: tuple[Message, ...] = ()
    history_b: tuple[Message, ...] | None = None
    reference: str | None = None

    @property
    def multi_turn(self) -> bool:
        """Whether there are earlier turns to show."""
        return bool(self.history or self.history_b)

    def side(self, b: bool = False) -> tuple[Message, ...]:
        """The earlier turns as response A's (``b=False``) or response B's model saw them."""
        return self.history_b if b and self.history_b is not None else self.history

    def swapped(self) -> Conversation:
        """The same conversation with the sides exchanged (response B shown first)."""
        if self.history_b is None:
            return self
        return Conversation(self.question, self.history_b, self.history, self.reference)

    def for_side(self, b: bool = False) -> Conversation:
        """The conversation one response was given (its side's earlier turns for both)."""
        return Conversation(self.question, self.side(b), reference=self.reference)

    def messages(self, b: bool = False) -> list[Message]:
        """The chat messages one side's model answered: its earlier turns, then the question."""
        return [*self.side(b), {"role": "user", "content": self.question}]


Question = str | Conversation
"""What an evaluator is asked about: a single-turn question's text, or a :class:`Conversation`."""


def question_text(question: Question) -> str:
    """The last user turn's text (a plain question is its own text)."""
    return question if isinstance(question, str) else question.question


def is_multi_turn(question: Question) -> bool:
    """Whether ``question`` has earlier turns to show (a Conversation carrying only a reference has none)."""
    return isinstance(question, Conversation) and question.multi_turn


def reference_of(question: Question) -> str | None:
    """The question's reference answer, if it carries one."""
    return question.reference if isinstance(question, Conversation) else None


def swap_question(question: Question) -> Question:
    """``question`` for the swapped presentation order (response B shown first)."""
    return question if isinstance(question, str) else question.swapped()


def side_question(question: Question, b: bool = False) -> Question:
    """``question`` as one response was given it (a pointwise judge scores each response with its own turns)."""
    return question if isinstance(question, str) else question.for_side(b)


def as_messages(question: Question, b: bool = False) -> list[Message]:
    """The chat messages a model answers for ``question``: ``[user]`` alone for a plain question."""
    if isinstance(question, str):
        return [{"role": "user", "content": question}]
    return question.messages(b)


def conversation_of(turns: object, where: str) -> Conversation:
    """A list of ``{role, content}`` turns ending with a user turn (a file's ``conversation``/``messages``
    column) as a :class:`Conversation`; ValueError naming ``where`` and the fault otherwise. A leading system
    turn is refused (mapo sends no system message to a generator)."""
    if not isinstance(turns, list) or not turns:
        raise ValueError(f"{where}: expected a non-empty list of {{role, content}} turns, got {type(turns).__name__}")
    msgs: list[Message] = []
    for i, t in enumerate(turns):
        if not (isinstance(t, dict) and isinstance(t.get("content"), str) and t.get("role") in ("user", "assistant")):
            raise ValueError(f"{where}: turn {i} is not a {{role: user|assistant, content: text}} message: {t!r:.80}")
        want = "user" if i % 2 == 0 else "assistant"
        if t["role"] != want:
            raise ValueError(
                f"{where}: turn {i} is {t['role']!r}, expected {want!r} (turns alternate from a user turn; "
                "earlier answers must be given)"
            )
        msgs.append({"role": t["role"], "content": t["content"]})
    if msgs[-1]["role"] != "user":
        raise ValueError(f"{where}: the last turn must be the user's question, got an assistant turn")
    return Conversation(msgs[-1]["content"], tuple(msgs[:-1]))


class RunStatus(enum.StrEnum):
    """How a run ended (``manifest.status``): the same four words for every command (build,
    evaluate, winrate, train, merge). Only ``complete`` publishes; a run that did not finish never says it."""

    complete = "complete"
    """Every item done (some may have failed: counted in the manifest)."""
    stopped = "stopped"
    """A fault the run cannot ride out (endpoint, credentials, budget, disk, a config error found mid-run,
    the K-failure rule), with a ``reason``; everything finished is saved, a rerun resumes."""
    interrupted = "interrupted"
    """SIGINT (Ctrl-C) or SIGTERM (SLURM's scancel), with a ``reason``; everything finished is saved."""
    failed = "failed"
    """An internal error, with the ``error``; everything finished is saved."""


RUNNING = "running"
"""``manifest.status`` while a run that writes its manifest as it goes (``mapo train``) runs; a job killed
outright (SIGKILL, a node lost) leaves it: never an ending, never ``complete``."""


@dataclass(frozen=True)
class Verdict:
    """What one judge concluded about one pair, in presentation order.

    Exactly one of ``pick`` and ``failure`` is set. A failure is never a tie and never a
    score: aggregates leave it out and report its rate.
    """

    pick: Pick | None = None
    score_a: float | None = None
    score_b: float | None = None
    failure: str | None = None

    @property
    def ok(self) -> bool:
        """No failure: a pick was made."""
        return self.failure is None

    @classmethod
    def failed(cls, reason: str) -> Verdict:
        """A verdict that records why no pick was made."""
        return cls(failure=reason)

    @classmethod
    def from_scores(cls, score_a: float, score_b: float) -> Verdict:
        """The paper's pick rule: the higher score wins, equal scores are a tie."""
        pick: Pick = "A" if score_a > score_b else "B" if score_b > score_a else "tie"
        return cls(pick=pick, score_a=score_a, score_b=score_b)


def pick_to_label(pick: Pick, swapped: bool = False) -> Label:
    """Map a presentation-order pick back to dataset terms (undoing a position swap)."""
    if pick == "tie":
        return "tie"
    first_is_a = not swapped
    return "model_a" if (pick == "A") == first_is_a else "model_b"


@dataclass
class Usage:
    """Token and request accounting for one (role, model)."""

    requests: int = 0
    cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0
    failures: int = 0
    latency_s: float = 0.0
    unconstrained: int = 0
    """Requests sent again unconstrained because the server could not apply the structured-output constraint."""
    estimated: int = 0
    """Answers without ``usage`` from the server: their tokens are estimated (characters / 4)."""

    def add(self, other: Usage) -> None:
        """Add ``other``'s counts to these."""
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass(frozen=True)
class Completion:
    """One model answer as the client returns it; ``text`` is the raw output, always kept."""

    text: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    cached: bool = False
    finish_reason: str | None = None
    cache_key: str = ""
    top_logprobs: list[dict[str, float]] | None = None
    """One ``token -> logprob`` dict per generated token, in order, when requested
    (``LLMClient.chat(top_logprobs=N)``); None when not asked for or the server sent none."""
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Reward:
    """One reward model's score of one conversation, as the client returns it (``LLMClient.reward``)."""

    value: float
    """The raw reward (no activation applied): higher = better, in the model's own units."""
    model: str
    prompt_tokens: int = 0
    latency_s: float = 0.0
    cached: bool = False
    cache_key: str = ""


@dataclass(frozen=True)
class RecordKind:
    """How the readers of ``judgements.jsonl`` (tables, agreement, report, view, reparse) treat records of
    one ``kind``: by these traits, never by the kind's name. A kind not in :data:`RECORD_KINDS` (a cascade's,
    a reward model's, a new evaluator's) is an evaluator of its own: scored, listed, kept by reparse."""

    member: bool = False
    """One member of another evaluator's verdict (``member_of`` names it: a jury's juror, a cascade's cheap
    judge): listed after the evaluators; a jury's subsets are formed from its members."""
    aggregate: bool = False
    """Its verdict aggregates its members' records (``detail.members`` by ``detail.aggregate``: a jury)."""
    single: bool = False
    """One model judging a pair alone with a judge strategy: single judges sharing a setup form juries
    (``mapo agreement`` subsets, the leaderboard)."""
    replay: str | None = None
    """How ``mapo reparse`` derives it again from its raw texts: ``attempts`` (a judge's conversations),
    ``finals`` (a debate's referees), ``members`` (re-aggregated from its re-parsed members); None: kept as
    stored (a note says so when it has raw texts)."""


RECORD_KINDS: dict[str, RecordKind] = {
    "judge": RecordKind(single=True, replay="attempts"),
    "juror": RecordKind(member=True, replay="attempts"),
    "jury": RecordKind(aggregate=True, replay="members"),
    "debate": RecordKind(replay="finals"),
    "winrate": RecordKind(replay="attempts"),  # mapo winrate's judgements.jsonl
}
"""The record kinds with traits (the one place a kind's name means something to a reader)."""

_EVALUATOR_KIND = RecordKind()


def record_kind(kind: object) -> RecordKind:
    """The traits of record ``kind``; any kind not listed is an evaluator of its own (no trait)."""
    return RECORD_KINDS.get(str(kind), _EVALUATOR_KIND)


def is_judgement(record: object) -> bool:
    """Whether a stored record is one evaluator's verdict on one human-labelled item (``judgements.jsonl``
    of ``mapo evaluate``), whatever its kind: judge, juror, jury, debate, reward or one added later."""
    return isinstance(record, dict) and bool(record.get("kind")) and "item_id" in record and "human" in record
