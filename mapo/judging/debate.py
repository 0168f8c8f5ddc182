"""LLM debate after ChatEval (paper Tables 8-9): referees discuss, then each gives final scores.

Roles (``debate.roles``; each a prompt file ``prompts/<set>/debate_role_<role>.txt``) speak
in turn for ``debate.rounds`` rounds. Every turn is one conversation: the system prompt
(``debate.system``) and one user message (``debate.user``) holding the question, both
responses, the discussion history so far (every earlier turn, labelled with its speaker) and
the speaker's role prompt. After the discussion each role gives final scores for both
responses (``debate_final``, parsed by the ``debate_final`` parser, decoding constrained to
that format where the model supports structured outputs). The debate's verdict
(``debate.aggregate``):

* ``mean_score`` (the paper): mean of the referees' final scores; the higher mean wins,
  equal means are a tie;
* ``votes``: each referee's pick (higher of its two scores), then the mode; a multi-way
  mode is a tie.

A referee whose final answer does not parse (after ``debate.reask`` re-asks) abstains and is
counted; if all abstain the debate is a failure. Debaters (``roles.debaters``): one model
for every role, or one per role, in role order. Every utterance is kept.

The result, :class:`DebateJudgement`, is a :class:`~mapo.judging.base.Judgement` like a judge's
(``label`` in dataset terms, ``score_a``/``score_b``, ``failure``, raw texts), so
:mod:`mapo.metrics.agreement` treats judges, juries and debates alike.

Scheduling: a turn waits only for the turn before it in its own debate (each speaker sees every
earlier turn); nothing else is awaited between turns, so the turns of concurrent debates
(``max_items_in_flight`` of them in a run) interleave on the servers, and the referees' final
scores, which depend only on the finished discussion, are asked all at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from mapo.core import prompts
from mapo.core.config import ConfigError, DebateConfig, JudgeConfig, RunConfig
from mapo.core.parsers import PARSERS
from mapo.core.types import Label, Message, Question, is_multi_turn, question_text
from mapo.core.verdicts import label_from_scores
from mapo.judging.base import EVALUATORS, Evaluator, Judgement, Probe, ask, asked_probe, constraint_for
from mapo.llm.client import LLMClient
from mapo.metrics.agreement import jury_pick

__all__ = ["AGGREGATES", "Debate", "DebateJudgement", "FinalScore", "Utterance", "debate_name", "role_title"]

AGGREGATES = ("mean_score", "votes")


def role_title(role: str) -> str:
    """``general_public`` -> ``General Public`` (the name the role prompt speaks as)."""
    return role.replace("_", " ").title()


def debate_name(debaters: Sequence[str]) -> str:
    return "debate[" + "+".join(debaters) + "]"


@dataclass
class Utterance:
    """One discussion turn."""

    role: str
    model: str
    round: int
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    cached: bool = False


@dataclass
class FinalScore:
    """One referee's final scores (presentation order: a = shown first), with every raw text."""

    role: str
    model: str
    raw: list[str]
    score_a: float | None
    score_b: float | None
    failure: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.failure is None


@dataclass(kw_only=True)
class DebateJudgement(Judgement):
    """A debate's verdict on one pair (:class:`~mapo.judging.base.Judgement`), every turn and final kept."""

    kind: ClassVar[str] = "debate"

    aggregate: str
    utterances: list[Utterance] = field(default_factory=list)
    finals: list[FinalScore] = field(default_factory=list)
    n_failed: int = 0
    roles: list[str] = field(default_factory=list)
    rounds: int = 0
    debaters: list[str] = field(default_factory=list)

    @property
    def models(self) -> list[str]:
        return list(self.debaters)

    @property
    def raw(self) -> list[str]:
        return [u.text for u in self.utterances] + [t for f in self.finals for t in f.raw]

    @property
    def prompt_tokens(self) -> int:
        return sum(u.prompt_tokens for u in self.utterances) + sum(f.prompt_tokens for f in self.finals)

    @property
    def completion_tokens(self) -> int:
        return sum(u.completion_tokens for u in self.utterances) + sum(f.completion_tokens for f in self.finals)

    @property
    def latency_s(self) -> float:
        return sum(u.latency_s for u in self.utterances) + max((f.latency_s for f in self.finals), default=0.0)

    @property
    def cached(self) -> bool:
        return all(u.cached for u in self.utterances) and all(f.cached for f in self.finals)

    def detail(self, order: str) -> dict[str, Any]:
        return {
            "roles": list(self.roles),
            "rounds": self.rounds,
            "aggregate": self.aggregate,
            "n_failed": self.n_failed,
            "utterances": [asdict(u) for u in self.utterances],
            "finals": [asdict(f) for f in self.finals],
        }


def aggregate_finals(finals: Sequence[FinalScore], rule: str) -> tuple[Label | None, float | None, float | None]:
    """(label, mean score a, mean score b) from the referees' finals; failed ones abstain."""
    ok = [f for f in finals if f.ok and f.score_a is not None and f.score_b is not None]
    if not ok:
        return None, None, None
    sa = sum(f.score_a for f in ok) / len(ok)  # type: ignore[misc]
    sb = sum(f.score_b for f in ok) / len(ok)  # type: ignore[misc]
    if rule == "mean_score":
        return label_from_scores(sa, sb), sa, sb
    if rule == "votes":
        return jury_pick([label_from_scores(f.score_a, f.score_b) for f in ok], "mode"), sa, sb
    raise ConfigError(f"debate.aggregate={rule!r}; allowed: {', '.join(AGGREGATES)}")


@EVALUATORS.register("debate")
class Debate(Evaluator):
    """Referees (one model for every role, or one per role) discuss the pair, then each scores it."""

    kind: ClassVar[str] = "debate"
    config_roles: ClassVar[tuple[str, ...]] = ("debaters",)
    sections: ClassVar[tuple[tuple[str, tuple[str, ...] | None], ...]] = (
        ("debate", None),
        ("judge", ("version", "both_orders")),  # it judges with debate.*; judge.* only keys and orders its records
    )

    @classmethod
    def from_config(cls, cfg: RunConfig, client: LLMClient, judge_config: JudgeConfig | None = None) -> Debate:
        """``roles.debaters`` discussing with ``debate.*`` (``judge_config`` does not apply)."""
        return cls(client, cfg.roles.debaters, cfg.debate)

    def __init__(
        self, client: LLMClient, debaters: Sequence[str], config: DebateConfig, *, role: str = "debater"
    ) -> None:
        roles = list(config.roles)
        debaters = list(debaters)
        config.check("debate")  # roles, aggregate, rounds, scale, constrained, reask (mapo.core.config)
        if len(debaters) not in (1, len(roles)):
            raise ConfigError(
                f"roles.debaters lists {len(debaters)} models {debaters}; give one model for every role or one per role "
                f"({len(roles)}: {', '.join(roles)})"
            )
        self.client = client
        self.config = config
        self.roles = roles
        self.debaters = debaters
        self.speakers = debaters * len(roles) if len(debaters) == 1 else debaters
        """The model speaking for each role, in role order."""
        self.role = role
        # load every template now: a missing prompt or placeholder mismatch fails before any call
        self._system = self._t("debate.system")
        self._user = self._t("debate.user")
        self._final = self._t("debate_final")
        self._role_prompts = {r: self._t(f"debate_role_{r}") for r in roles}

    # ---- identity (Evaluator) ----------------------------------------------------------
    @property
    def name(self) -> str:
        return debate_name(self.debaters)

    @property
    def setup(self) -> str:
        return f"debate{self.config.scale}/r{self.config.rounds}/{self.config.aggregate}/" + ",".join(self.roles)

    @property
    def models(self) -> list[str]:
        return list(self.debaters)

    @property
    def strategy(self) -> str:
        return "debate"

    @property
    def scale(self) -> int:
        return self.config.scale

    def _t(self, name: str) -> prompts.Template:
        return prompts.load(self.config.prompt_set, name)

    @property
    def prompt_sha(self) -> str:
        texts = [
            self._system.text,
            self._user.text,
            self._final.text,
            *(self._role_prompts[r].text for r in self.roles),
        ]
        return hashlib.sha256("\n\x00".join(texts).encode("utf-8")).hexdigest()[:16]

    def _system_text(self) -> str:
        return self._system.render(scale=self.config.scale) if "scale" in self._system.fields else self._system.render()

    def _messages(
        self, question: Question, first: str, second: str, history: list[Utterance], role_prompt: str
    ) -> list[Message]:
        if is_multi_turn(question):  # Debate.conversations is False: a run refuses this before any call
            raise ConfigError(
                "evaluator=debate has no multi-turn prompt: a conversation's earlier turns cannot be shown"
            )
        question = question_text(question)
        hist = (
            "\n\n".join(f"[{role_title(u.role)}]: {prompts.quote_untrusted(u.text)}" for u in history) or "(none yet)"
        )
        return [
            {"role": "system", "content": self._system_text()},
            {
                "role": "user",
                "content": self._user.render(
                    question=prompts.quote_untrusted(question),
                    response_a=prompts.quote_untrusted(first),
                    response_b=prompts.quote_untrusted(second),
                    history=hist,
                    role_prompt=role_prompt,
                ),
            },
        ]

    def _final_ask(self, role: str) -> str:
        return self._final.render(
            **{
                k: v
                for k, v in {"role_name": role_title(role), "scale": self.config.scale}.items()
                if k in self._final.fields
            }
        )

    def probes(
        self, question: Question, response_a: str, response_b: str, produced: Sequence[tuple[str, int]] = ()
    ) -> list[Probe]:
        """Per debater model: its final-scores request (it carries the constraint) after every round,
        the discussion history at its longest (every turn at most its speaker's max_tokens), re-asks
        included (:class:`Probe`)."""
        turns = [
            (role, model)
            for _ in range(self.config.rounds)
            for role, model in zip(self.roles, self.speakers, strict=True)
        ]
        history = [Utterance(role, model, 0, "") for role, model in turns]
        spoken = tuple(
            (
                f"{sum(m == model for _, m in turns)} turn(s) x {self.client.max_tokens(model)} max_tokens of {model}",
                sum(m == model for _, m in turns) * self.client.max_tokens(model),
            )
            for model in dict.fromkeys(m for _, m in turns)
        )
        out = []
        for role, model in dict((m, (r, m)) for r, m in zip(self.roles, self.speakers, strict=True)).values():
            final_ask = self._final_ask(role)
            asked = asked_probe(
                self.client,
                self.role,
                model,
                self._messages(question, response_a, response_b, history, final_ask),
                reask_text=final_ask,
                reasks=self.config.reask,
                produced=[*produced, *spoken],
                constraint=constraint_for(
                    self.config.constrained, self.client, model, "debate_final", self.config.scale
                ),
            )
            out.append(
                dataclasses.replace(
                    asked,
                    messages=self._messages(question, response_a, response_b, [], final_ask),
                    turn=f"the final scores after {self.config.rounds} round(s) of {len(self.roles)} speakers"
                    + (f", {asked.turn}" if self.config.reask else ""),
                )
            )
        return out

    async def judge_pair(self, question: Question, response_a: str, response_b: str) -> DebateJudgement:
        """Debate one pair as presented: label model_a = ``response_a`` (shown as Assistant 1)."""
        history: list[Utterance] = []
        for rnd in range(self.config.rounds):
            for role, model in zip(self.roles, self.speakers, strict=True):  # each turn needs every turn before it
                role_prompt = self._role_prompts[role].render()
                c = await self.client.chat(
                    model, self._messages(question, response_a, response_b, history, role_prompt), role=self.role
                )
                history.append(
                    Utterance(role, model, rnd, c.text, c.prompt_tokens, c.completion_tokens, c.latency_s, c.cached)
                )
        finals = await asyncio.gather(
            *(
                self._final_scores(role, model, question, response_a, response_b, history)
                for role, model in zip(self.roles, self.speakers, strict=True)
            )
        )  # the finals depend only on the finished discussion: all asked at once
        label, sa, sb = aggregate_finals(finals, self.config.aggregate)
        n_failed = sum(not f.ok for f in finals)
        failure = None
        if label is None:
            failure = "every referee's final scores failed to parse: " + "; ".join(
                f"{f.role}: {f.failure}" for f in finals if f.failure
            )
        return DebateJudgement(
            judge=self.name,
            strategy="debate",
            scale=self.config.scale,
            prompt_sha=self.prompt_sha,
            setup=self.setup,
            aggregate=self.config.aggregate,
            roles=list(self.roles),
            rounds=self.config.rounds,
            debaters=list(self.debaters),
            utterances=history,
            finals=list(finals),
            label=label,
            score_a=sa,
            score_b=sb,
            failure=failure,
            n_failed=n_failed,
        )

    async def _final_scores(
        self, role: str, model: str, question: Question, first: str, second: str, history: list[Utterance]
    ) -> FinalScore:
        final_ask = self._final_ask(role)
        parse = PARSERS.get("debate_final")
        answer = await ask(
            self.client,
            model,
            self._messages(question, first, second, history, final_ask),
            role=self.role,
            parse=lambda text: parse(text, scale=self.config.scale),
            reask=lambda: final_ask,  # the same request again
            reasks=self.config.reask,
            constraint=constraint_for(self.config.constrained, self.client, model, "debate_final", self.config.scale),
        )
        a, b = (float(x) for x in answer.result.value) if answer.result.ok else (None, None)
        return FinalScore(
            role,
            model,
            answer.raw,
            a,
            b,
            None if answer.result.ok else answer.result.error or "unparseable",
            answer.prompt_tokens,
            answer.completion_tokens,
            answer.latency_s,
            answer.cached,
        )
