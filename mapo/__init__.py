"""mapo: preference-optimization datasets built by teams of open LLMs, and how well LLM
judges agree with humans (arXiv 2408.08688).

The public API is importable from here; heavy modules load on first use, so
``import mapo`` stays fast::

    from mapo import Judge, JudgeConfig, LLMClient
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

# name -> module that defines it (loaded lazily by __getattr__)
_EXPORTS: dict[str, str] = {
    # configs
    "RunConfig": "mapo.core.config",
    "ModelConfig": "mapo.core.config",
    "GenerationConfig": "mapo.core.config",
    "JudgeConfig": "mapo.core.config",
    "JuryConfig": "mapo.core.config",
    "DebateConfig": "mapo.core.config",
    "FeedbackConfig": "mapo.core.config",
    "SelectionConfig": "mapo.core.config",
    "PromptSourceConfig": "mapo.core.config",
    "ClientConfig": "mapo.core.config",
    "ConfigError": "mapo.core.config",
    # values
    "Completion": "mapo.core.types",
    "Label": "mapo.core.types",
    "Message": "mapo.core.types",
    "Pick": "mapo.core.types",
    "Verdict": "mapo.core.types",
    "PARSERS": "mapo.core.parsers",
    "constrained_regex": "mapo.core.parsers",
    # the client layer
    "LLMClient": "mapo.llm.client",
    "Constraint": "mapo.llm.client",
    "EndpointUnavailable": "mapo.llm.client",
    # evaluators
    "Judge": "mapo.judging.judge",
    "PairJudgement": "mapo.judging.judge",
    "Jury": "mapo.judging.jury",
    "Debate": "mapo.judging.debate",
    # generation and the dataset
    "FeedbackLoop": "mapo.generation.feedback",
    "SELECTORS": "mapo.generation.selection",
    "rows_for": "mapo.generation.dataset",
    "save_datasets": "mapo.generation.dataset",
    # metrics
    "cohen_kappa": "mapo.metrics.agreement",
    "jury_pick": "mapo.metrics.agreement",
    "jury_subsets": "mapo.metrics.agreement",
    "position_bias": "mapo.metrics.agreement",
    # commands as functions
    "build": "mapo.runs.build",
    "evaluate": "mapo.runs.evaluate",
    "winrate": "mapo.runs.winrate",
}

__all__ = [
    "ClientConfig",
    "Completion",
    "ConfigError",
    "Constraint",
    "Debate",
    "DebateConfig",
    "EndpointUnavailable",
    "FeedbackConfig",
    "FeedbackLoop",
    "GenerationConfig",
    "Judge",
    "JudgeConfig",
    "Jury",
    "JuryConfig",
    "LLMClient",
    "Label",
    "Message",
    "ModelConfig",
    "PARSERS",
    "PairJudgement",
    "Pick",
    "PromptSourceConfig",
    "RunConfig",
    "SELECTORS",
    "SelectionConfig",
    "Verdict",
    "build",
    "cohen_kappa",
    "constrained_regex",
    "evaluate",
    "jury_pick",
    "jury_subsets",
    "position_bias",
    "rows_for",
    "save_datasets",
    "winrate",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mapo' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:
    from mapo.core.config import (
        ClientConfig,
        ConfigError,
        DebateConfig,
        FeedbackConfig,
        GenerationConfig,
        JudgeConfig,
        JuryConfig,
        ModelConfig,
        PromptSourceConfig,
        RunConfig,
        SelectionConfig,
    )
    from mapo.core.parsers import PARSERS, constrained_regex
    from mapo.core.types import Completion, Label, Message, Pick, Verdict
    from mapo.generation.dataset import rows_for, save_datasets
    from mapo.generation.feedback import FeedbackLoop
    from mapo.generation.selection import SELECTORS
    from mapo.judging.debate import Debate
    from mapo.judging.judge import Judge, PairJudgement
    from mapo.judging.jury import Jury
    from mapo.llm.client import Constraint, EndpointUnavailable, LLMClient
    from mapo.metrics.agreement import cohen_kappa, jury_pick, jury_subsets, position_bias
    from mapo.runs.build import build
    from mapo.runs.evaluate import evaluate
    from mapo.runs.winrate import winrate
