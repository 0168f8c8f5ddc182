"""The one place an evaluator is built from config: the only code that reads ``evaluator``.

``mapo evaluate`` builds ``evaluator`` (:func:`from_config`); ``mapo build`` (best-of-N selection) and
``mapo winrate`` build the pair judge of ``roles.judge`` (:func:`pair_judge`): a reward model when the
model says so (``models.<name>.pooling``), else a :class:`~mapo.judging.judge.Judge` with ``judge.*``.
So ``mapo build roles.judge=<reward model>`` is one override. Commands use what is returned through the
:class:`~mapo.judging.base.Evaluator` interface only.
"""

from __future__ import annotations

from collections.abc import Mapping

from mapo.core.config import ConfigError, JudgeConfig, ModelConfig, RunConfig
from mapo.judging.base import Evaluator
from mapo.llm.client import LLMClient

__all__ = ["ROLES", "from_config", "pair_judge"]

ROLES = {"judge": "judge", "jury": "jurors", "debate": "debaters", "cascade": "judge", "reward": "judge"}
"""evaluator -> the role (``roles.<role>``) naming its models."""


def _is_reward_model(models: Mapping[str, ModelConfig], name: str) -> bool:
    model = models.get(name)
    return model is not None and model.pooling is not None


def pair_judge(cfg: RunConfig, client: LLMClient, judge_config: JudgeConfig | None = None) -> Evaluator:
    """``roles.judge`` as a pair judge: a reward model (``models.<judge>.pooling``) scoring both responses,
    else a judge with ``judge_config`` (default ``judge.*``)."""
    from mapo.judging.judge import Judge
    from mapo.judging.reward import RewardJudge

    if _is_reward_model(cfg.models, cfg.roles.judge):
        return RewardJudge(client, cfg.roles.judge, cfg.reward)
    return Judge(client, cfg.roles.judge, judge_config or cfg.judge)


def from_config(cfg: RunConfig, client: LLMClient, judge_config: JudgeConfig | None = None) -> Evaluator:
    """The evaluator ``evaluator`` names, over its role's models; ``judge_config`` (default ``judge.*``) is
    what its judges judge with. A reward model must be one (``models.<name>.pooling``)."""
    from mapo.judging.cascade import Cascade
    from mapo.judging.debate import Debate
    from mapo.judging.judge import Judge
    from mapo.judging.jury import Jury

    judge_config = judge_config or cfg.judge
    if cfg.evaluator == "reward" and not _is_reward_model(cfg.models, cfg.roles.judge):
        raise ConfigError(
            f"evaluator=reward: roles.judge={cfg.roles.judge!r} is not a reward model "
            f"(models.{cfg.roles.judge}.pooling is not set; e.g. conf/model/skywork-reward-v2-8b.yaml)"
        )
    if cfg.evaluator in ("judge", "reward"):
        return pair_judge(cfg, client, judge_config)
    if cfg.evaluator == "jury":
        return Jury(client, cfg.roles.jurors, judge_config, cfg.jury)
    if cfg.evaluator == "cascade":  # the cheap judge judges both orders itself: cfg.judge, not judge_config
        return Cascade(
            Judge(client, cfg.roles.judge, cfg.judge), Judge(client, cfg.roles.strong_judge, cfg.judge), cfg.cascade
        )
    return Debate(client, cfg.roles.debaters, cfg.debate)
