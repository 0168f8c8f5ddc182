"""The evaluator registry: the one place an evaluator is chosen from config.

Each evaluator class registers itself under its ``evaluator`` choice (``@EVALUATORS.register(name)``
in its own module; this module imports them all) and builds itself (``from_config(cfg, client)``).
Every command builds ``evaluator`` through :func:`from_config`: ``mapo evaluate`` to judge the
human-labelled pairs, ``mapo build`` (best-of-N selection) and ``mapo winrate`` to compare responses.
The default, ``evaluator=judge``, is the pair judge of ``roles.judge``: a reward model when the model says
so (``models.<name>.pooling``), else a :class:`~mapo.judging.judge.Judge` with ``judge.*``; so
``mapo build roles.judge=<reward model>`` is one override, and ``mapo build evaluator=jury`` selects
with a jury. Commands use what is returned through the :class:`~mapo.judging.base.Evaluator` interface
only; nothing outside this module reads ``evaluator`` (:func:`selection_keys` is what build and winrate
add to their fingerprint for another evaluator than the default).
"""

from __future__ import annotations

from typing import Any

from mapo.core.config import JudgeConfig, RunConfig
from mapo.judging import cascade, debate, judge, jury, reward  # noqa: F401 - each registers its evaluator
from mapo.judging.base import EVALUATORS, Evaluator
from mapo.judging.reward import is_reward_model
from mapo.llm.client import LLMClient

__all__ = ["EVALUATORS", "evaluator_class", "from_config", "models_of", "selection_keys"]

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


Sections = tuple[tuple[str, tuple[str, ...] | None], ...]


def selection_keys(cfg: RunConfig) -> tuple[dict[str, Any], Sections]:
    """What ``evaluator`` adds to the fingerprint of a command that judges responses with it (build, winrate):
    (keys, config sections). Nothing for the default (``evaluator=judge``: those commands name ``roles.judge``
    and ``judge.*`` themselves, so the runs from before keep their fingerprint); else its name and its roles'
    models, and the sections it declares (:attr:`~mapo.judging.base.Evaluator.sections`)."""
    if cfg.evaluator == _PAIR_JUDGE:
        return {}, ()
    cls = evaluator_class(cfg)
    keys: dict[str, Any] = {"evaluator": str(cfg.evaluator)}
    for role in cls.config_roles:
        value = getattr(cfg.roles, role)
        keys[f"roles.{role}"] = value if isinstance(value, str) else list(value)
    return keys, cls.sections


def from_config(cfg: RunConfig, client: LLMClient, judge_config: JudgeConfig | None = None) -> Evaluator:
    """The evaluator ``evaluator`` names, built by its class over its roles' models; ``judge_config``
    (default ``judge.*``) is what its judges judge with. ``evaluator=reward`` needs a reward model."""
    return evaluator_class(cfg).from_config(cfg, client, judge_config)
