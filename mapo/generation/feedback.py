"""The LLM feedback loop (paper Tables 10-11): a generator writes, one or two reviewers
return an evaluation, a score out of 10 and feedback, and the generator revises in the same
growing conversation. Every iteration is kept, with every raw review; ``on_iteration`` hands
each one out as it finishes (the run saves it at once), and ``done`` continues a loop from the
iterations saved before (a failure at iteration 3 keeps iterations 1-2; a rerun goes on from there).

A multi-turn prompt (a :class:`~mapo.core.types.Conversation`) is answered with its earlier turns in
context: the generator's conversation starts with them, the loop revises the final turn's answer only,
and each reviewer reads the whole conversation (``multiturn_reviewer.user``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from mapo.core import prompts
from mapo.core.config import FeedbackConfig
from mapo.core.parsers import PARSERS
from mapo.core.types import Conversation, Message, Question, as_messages, question_text
from mapo.judging.base import Probe, ask, asked_probe, constraint_for
from mapo.llm.client import LLMClient

FEEDBACK_TEMPLATES = ("generator_", "reviewer", "reask_review")
"""Name prefixes of the loop's templates in ``prompts/<feedback.prompt_set>/``: a run's fingerprint hashes
them (:func:`mapo.runs.runner.templates_sha`), so an edited prompt text changes it."""


@dataclass
class Review:
    reviewer: str
    raw: list[str]
    score: float | None
    evaluation: str | None
    feedback: str | None
    failure: str | None = None


@dataclass
class Iteration:
    index: int
    response: str
    finish_reason: str | None
    reviews: list[Review] = field(default_factory=list)

    @property
    def score(self) -> float | None:
        """Mean reviewer score; None when every review failed to parse."""
        scores = [r.score for r in self.reviews if r.score is not None]
        return sum(scores) / len(scores) if scores else None

    def to_record(self) -> dict[str, Any]:
        return {**asdict(self), "score": self.score}

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Iteration:
        """The iteration of :meth:`to_record` (its ``score`` is derived, not read)."""
        reviews = [Review(**r) for r in rec["reviews"]]
        return cls(index=rec["index"], response=rec["response"], finish_reason=rec["finish_reason"], reviews=reviews)


@dataclass
class FeedbackResult:
    generator: str
    reviewers: list[str]
    iterations: list[Iteration]
    stopped_early: bool = False

    def to_record(self) -> dict[str, Any]:
        d = asdict(self)
        for it, obj in zip(d["iterations"], self.iterations, strict=True):
            it["score"] = obj.score
        return d


class FeedbackLoop:
    def __init__(self, client: LLMClient, generator: str, reviewers: Sequence[str], config: FeedbackConfig) -> None:
        if not 1 <= len(reviewers) <= 2:
            raise ValueError(f"roles.reviewers: 1 or 2 reviewers, got {list(reviewers)}")
        self.client = client
        self.generator = generator
        self.reviewers = list(reviewers)
        self.config = config

    def _t(self, name: str) -> prompts.Template:
        return prompts.load(self.config.prompt_set, name)

    async def run(
        self,
        question: Question,
        *,
        done: Sequence[Iteration] = (),
        on_iteration: Callable[[Iteration], None] | None = None,
    ) -> FeedbackResult:
        """The loop for ``question``: ``done`` are iterations saved by an earlier, unfinished run
        (the conversation is rebuilt from them and the loop goes on after the last); each new
        iteration goes to ``on_iteration`` as soon as it is complete."""
        conversation: list[Message] = as_messages(question)  # a multi-turn prompt: its earlier turns first
        iterations: list[Iteration] = []
        n = self.config.iterations
        for i in range(n):
            if i < len(done):
                it = done[i]
                conversation.append({"role": "assistant", "content": it.response})
            else:
                completion = await self.client.chat(
                    self.generator, conversation, role="generator", overrides=self.config.generator_sampling.request()
                )
                response = completion.text
                conversation.append({"role": "assistant", "content": response})
                reviews = await asyncio.gather(*(self.review(r, question, response) for r in self.reviewers))
                it = Iteration(
                    index=i, response=response, finish_reason=completion.finish_reason, reviews=list(reviews)
                )
                if on_iteration is not None:
                    on_iteration(it)
            iterations.append(it)
            if i == n - 1:
                break
            if self._should_stop(iterations):
                return FeedbackResult(self.generator, self.reviewers, iterations, stopped_early=True)
            conversation.append({"role": "user", "content": self._revision_message(it.reviews, question)})
        return FeedbackResult(self.generator, self.reviewers, iterations, stopped_early=False)

    async def answer_turns(self, turns: Sequence[str]) -> tuple[Message, ...]:
        """Earlier user turns given without answers (MT-Bench's ``turns``), answered in order by the generator,
        each with the turns before it in context (as MT-Bench generates): the history the last turn is asked in."""
        conversation: list[Message] = []
        for text in turns:
            conversation.append({"role": "user", "content": text})
            completion = await self.client.chat(
                self.generator, conversation, role="generator", overrides=self.config.generator_sampling.request()
            )
            conversation.append({"role": "assistant", "content": completion.text})
        return tuple(conversation)

    def _should_stop(self, iterations: list[Iteration]) -> bool:
        score = iterations[-1].score
        if self.config.early_stop_score is not None and score is not None and score >= self.config.early_stop_score:
            return True
        if self.config.early_stop_no_improve and len(iterations) >= 2:
            prev = iterations[-2].score
            return score is not None and prev is not None and score <= prev
        return False

    def _revision_message(self, reviews: list[Review], question: Question) -> str:
        """The generator's revision request: every reviewer's feedback, and the (last) question where the
        template names ``{question}`` (the ``restate`` set: a tiny generator otherwise answers the feedback)."""
        # an unparseable review still carries words the generator can use: pass its raw text
        texts = [r.feedback if r.feedback else r.raw[-1] for r in reviews]
        if len(texts) == 1:
            t, values = self._t("generator_single_feedback"), {"feedback": texts[0]}
        else:
            t, values = self._t("generator_double_feedback"), {"feedback_1": texts[0], "feedback_2": texts[1]}
        if "question" in t.fields:
            values["question"] = question_text(question)
        return t.render(**values)

    def probes(self, question: Question) -> list[Probe]:
        """The generator's and each reviewer's requests for ``question``, for the pre-flight
        (:class:`~mapo.judging.base.Probe`). The generator's conversation grows by one response and one
        revision message per iteration: its longest is the last iteration, N-1 responses (each at most
        the generator's max_tokens) and N-1 revision messages (each carrying every reviewer's feedback,
        at most that reviewer's max_tokens) after the question. A reviewer sees the question and one
        response, then its re-asks."""
        n, gen = self.config.iterations, self.generator
        conversation: list[Message] = as_messages(question)
        empty = [Review(r, [""], None, None, "") for r in self.reviewers]
        for _ in range(n - 1):
            conversation += [
                {"role": "assistant", "content": ""},
                {"role": "user", "content": self._revision_message(empty, question)},
            ]
        produced = [
            (
                f"{n - 1} response(s) x {self.client.max_tokens(gen)} max_tokens of {gen}",
                (n - 1) * self.client.max_tokens(gen),
            )
        ]
        produced += (
            [
                (
                    f"{n - 1} feedback(s) of {r} x {self.client.max_tokens(r)} max_tokens",
                    (n - 1) * self.client.max_tokens(r),
                )
                for r in self.reviewers
            ]
            if n > 1
            else []
        )
        probes = [
            Probe(
                "generator",
                gen,
                as_messages(question),
                longest=conversation,
                produced=tuple(produced),
                turn=f"iteration {n} of {n}",
            )
        ]
        response = (f"a response of {gen} (<= {self.client.max_tokens(gen)} max_tokens)", self.client.max_tokens(gen))
        for r in dict.fromkeys(self.reviewers):
            probes.append(
                asked_probe(
                    self.client,
                    "reviewer",
                    r,
                    self._review_messages(question, ""),
                    reask_text=self._t("reask_review").render(),
                    reasks=self.config.reask,
                    produced=[response],
                    constraint=constraint_for(self.config.constrained, self.client, r, "review", 10),
                )
            )
        return probes

    def _review_messages(self, question: Question, response: str) -> list[Message]:
        if isinstance(question, Conversation) and question.multi_turn:  # the reviewer reads the whole conversation
            turns: list[Message] = [*question.messages(), {"role": "assistant", "content": response}]
            user = self._t("multiturn_reviewer.user").render(
                conversation=prompts.render_turns(self._t, turns, "Assistant")
            )
            return [
                {"role": "system", "content": self._t("reviewer.system").render()},
                {"role": "user", "content": user},
            ]
        return [
            {"role": "system", "content": self._t("reviewer.system").render()},
            {
                "role": "user",
                "content": self._t("reviewer.user").render(
                    question=prompts.quote_untrusted(question_text(question)),
                    response=prompts.quote_untrusted(response),
                ),
            },
        ]

    async def review(self, reviewer: str, question: Question, response: str) -> Review:
        """One reviewer's evaluation, score and feedback (re-asked, bounded, while unparseable)."""
        answer = await ask(
            self.client,
            reviewer,
            self._review_messages(question, response),
            role="reviewer",
            parse=PARSERS.get("review"),
            reask=lambda: self._t("reask_review").render(),
            reasks=self.config.reask,
            constraint=constraint_for(self.config.constrained, self.client, reviewer, "review", 10),
        )
        if answer.result.ok:
            v = answer.result.value
            return Review(reviewer, answer.raw, float(v.score), v.evaluation, v.feedback)
        return Review(reviewer, answer.raw, None, None, None, failure=answer.result.error or "unparseable review")
