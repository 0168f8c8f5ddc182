"""A reward model as an evaluator: each response scored alone, a pair judged by its two rewards.

:class:`RewardJudge` is a :class:`~mapo.judging.base.PointwiseEvaluator`: it asks the client for the
reward of the conversation [user question, assistant response] (:meth:`mapo.llm.client.LLMClient.reward`,
vLLM's pooling API; the model's chat template renders it on the server). A pair is a preference only
when the rewards differ by at least ``reward.tie_margin``; closer (or equal) rewards are a tie, never a
preference. One forward pass per response, no prompt of mapo's (``prompt_sha`` is ``none``), no
parsing: a failure is a fault of the request (recorded as a failure, never a score).

Records (``kind`` ``reward``) keep each raw reward: ``score_a`` / ``score_b`` in dataset terms, and
``detail``: ``reward_a``, ``reward_b``, ``margin`` (``reward_a - reward_b``) and ``tie_margin``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, ClassVar

from mapo.core.config import ConfigError, JudgeConfig, RewardConfig, RunConfig
from mapo.core.types import Label, Message, Question, as_messages, side_question
from mapo.judging.base import EVALUATORS, Judgement, PointwiseEvaluator, Score
from mapo.llm.client import LLMClient

__all__ = ["RewardJudge", "RewardJudgement", "is_reward_model", "reward_label"]


def reward_label(reward_a: float, reward_b: float, tie_margin: float) -> Label:
    """The verdict of two rewards: a tie when they differ by less than ``tie_margin`` (or not at all)."""
    margin = reward_a - reward_b
    if margin == 0 or abs(margin) < tie_margin:
        return "tie"
    return "model_a" if margin > 0 else "model_b"


@dataclass(kw_only=True)
class RewardJudgement(Judgement):
    """A reward model's verdict on one pair (presentation order), with both scores behind it."""

    kind: ClassVar[str] = "reward"
    tie_margin: float = 0.0
    scores: tuple[Score, Score] | None = None

    @property
    def prompt_tokens(self) -> int:
        return sum(s.prompt_tokens for s in self.scores or ())

    @property
    def latency_s(self) -> float:
        return sum(s.latency_s for s in self.scores or ())

    @property
    def cached(self) -> bool:
        return bool(self.scores) and all(s.cached for s in self.scores or ())

    def detail(self, order: str) -> dict[str, Any]:
        ra, rb = (self.scores[0].value, self.scores[1].value) if self.scores else (None, None)
        if order == "BA":  # the record is in dataset terms
            ra, rb = rb, ra
        margin = None if ra is None or rb is None else ra - rb
        return {"reward_a": ra, "reward_b": rb, "margin": margin, "tie_margin": self.tie_margin}

    def to_record(self) -> dict[str, Any]:
        return {**self._named(), **self.detail("AB")}


def is_reward_model(cfg: RunConfig, name: str) -> bool:
    """Whether conf/model ``name`` is served as a reward model (``models.<name>.pooling`` set)."""
    model = cfg.models.get(name)
    return model is not None and model.pooling is not None


@EVALUATORS.register("reward")
class RewardJudge(PointwiseEvaluator):
    """Reward model ``model`` (``models.<model>.pooling`` set) judging pairs and scoring responses."""

    kind: ClassVar[str] = "reward"

    @classmethod
    def from_config(cls, cfg: RunConfig, client: LLMClient, judge_config: JudgeConfig | None = None) -> RewardJudge:
        """The reward model ``roles.judge`` with ``reward.*``; ``judge_config`` does not apply."""
        if not is_reward_model(cfg, cfg.roles.judge):
            raise ConfigError(
                f"evaluator=reward: roles.judge={cfg.roles.judge!r} is not a reward model "
                f"(models.{cfg.roles.judge}.pooling is not set; e.g. conf/model/skywork-reward-v2-8b.yaml)"
            )
        return cls(client, cfg.roles.judge, cfg.reward)

    def __init__(self, client: LLMClient, model: str, config: RewardConfig, *, role: str = "judge") -> None:
        self.client = client
        self.model = model
        self.config = config
        self.role = role

    @property
    def name(self) -> str:
        return self.model

    @property
    def setup(self) -> str:
        return f"reward/margin{self.config.tie_margin:g}"

    @property
    def models(self) -> list[str]:
        return [self.model]

    @property
    def tie_margin(self) -> float:
        return self.config.tie_margin

    def config_keys(self) -> dict[str, Any]:
        return {"reward.tie_margin": self.config.tie_margin}

    @property
    def conversations(self) -> bool:
        return True  # it scores the whole conversation

    async def score(self, question: Question, response: str) -> Score:
        # a multi-turn question: its earlier turns first (the conversation the reward model scores)
        conversation: list[Message] = [*as_messages(question), {"role": "assistant", "content": response}]
        r = await self.client.reward(self.model, conversation, role=self.role)
        return Score(r.value, prompt_tokens=r.prompt_tokens, latency_s=r.latency_s, cached=r.cached)

    async def judge_pair(self, question: Question, response_a: str, response_b: str) -> RewardJudgement:
        a, b = await asyncio.gather(
            self.score(side_question(question), response_a), self.score(side_question(question, b=True), response_b)
        )
        judgement = RewardJudgement(
            judge=self.name,
            strategy=self.strategy,
            scale=self.scale,
            prompt_sha=self.prompt_sha,
            tie_margin=self.config.tie_margin,
            scores=(a, b),
            setup=self.setup,
        )
        if a.value is None or b.value is None:
            judgement.failure = a.failure or b.failure or "no reward"
            return judgement
        judgement.score_a, judgement.score_b = a.value, b.value
        judgement.label = reward_label(a.value, b.value, self.config.tie_margin)
        return judgement
