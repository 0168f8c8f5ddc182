"""The evaluator registry: the one place an evaluator is chosen from config.

Each evaluator class registers itself under its ``evaluator`` choice (``@EVALUATORS.register(name)``
in its own module; this module imports them all) and builds itself (``from_config(cfg, client)``).
``mapo evaluate`` builds ``evaluator`` (:func:`from_config`); ``mapo build`` (best-of-N selection) and
``mapo winrate`` build the pair judge of ``roles.judge`` (:func:`pair_judge`): a reward model when the
model says so (``models.<name>.pooling``), else a :class:`~mapo.judging.judge.Judge` with ``judge.*``.
So ``mapo build roles.judge=<reward model>`` is one override. Commands use what is returned through the
:class:`~mapo.judging.base.Evaluator` interface only; nothing outside this module reads ``evaluator``.
"""

from __future__ import annotations

from mapo.core.config import JudgeConfig, RunConfig
from mapo.judging import cascade, debate, judge, jury, reward  # noqa: F401 - each registers its evaluator
from mapo.judging.base import EVALUATORS, Evaluator
from mapo.judging.reward import is_reward_model
from mapo.llm.client import LLMClient

__all__ = ["EVALUATORS", "evaluator_class", "from_config", "models_of", "pair_judge"]

_PAIR_JUDGE = "judge"
"""The evaluator of ``roles.judge`` for a chat model; a reward model (``models.<name>.pooling``) is judged
by ``reward`` instead."""


def _pair_judge_name(cfg: RunConfig) -> str:
    return "reward" if is_reward_model(cfg, cfg.roles.judge) else _PAIR_JUDGE


def evaluator_class(cfg: RunConfig) -> type[Evaluator]:
    """The class that ``evaluator`` builds (``evaluator=judge`` over a reward model: the reward model's)."""
    name = _pair_judge_name(cfg) if cfg.evaluator == _PAIR_JUDGE else str(cfg.evaluator)
    return EVALUATORS.get(name, key="evaluator")


def models_of(cfg: RunConfig, cls: type[Evaluator]) -> list[str]:
    """The models named by ``cls``'s config roles, in role order."""
    out: list[str] = []
    for role in cls.config_roles:
        value = getattr(cfg.roles, role)
        out += [value] if isinstance(value, str) else list(value)
    return out


def pair_judge(cfg: RunConfig, client: LLMClient, judge_config: JudgeConfig | None = None) -> Evaluator:
    """``roles.judge`` as a pair judge: a reward model (``models.<judge>.pooling``) scoring both responses,
    else a judge with ``judge_config`` (default ``judge.*``)."""
    return EVALUATORS.get(_pair_judge_name(cfg)).from_config(cfg, client, judge_config)


def from_config(cfg: RunConfig, client: LLMClient, judge_config: JudgeConfig | None = None) -> Evaluator:
    """The evaluator ``evaluator`` names, built by its class over its roles' models; ``judge_config``
    (default ``judge.*``) is what its judges judge with. ``evaluator=reward`` needs a reward model."""
    return evaluator_class(cfg).from_config(cfg, client, judge_config)
