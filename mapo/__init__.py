"""mapo: preference-optimization datasets built by teams of open LLMs, and how well LLM
judges agree with humans (arXiv 2408.08688).

The public API is importable from here; heavy modules load on first use, so
``import mapo`` stays fast::

    from mapo import Judge, JudgeConfig, LLMClient
"""

from __future__ import annotations

from mapo.core.exports import lazy_exports

__version__ = "0.2.0"

_EXPORTS: dict[str, tuple[str, ...]] = {
    # configs
    "mapo.core.config": (
        "ClientConfig",
        "ConfigError",
        "DebateConfig",
        "FeedbackConfig",
        "GenerationConfig",
        "JudgeConfig",
        "JuryConfig",
        "ModelConfig",
        "PromptSourceConfig",
        "RunConfig",
        "SelectionConfig",
    ),
    # values
    "mapo.core.types": ("Completion", "Label", "Message", "Pick", "RunStatus", "Verdict"),
    "mapo.core.parsers": ("PARSERS", "constrained_regex"),
    # the client layer
    "mapo.llm.client": ("Constraint", "EndpointUnavailable", "LLMClient"),
    # evaluators: the interface, the registries, the built-in ones, and building one from config
    "mapo.judging.base": ("EVALUATORS", "Evaluator", "PointwiseEvaluator"),
    "mapo.judging.evaluators": ("from_config",),
    "mapo.judging.judge": ("STRATEGIES", "Judge", "PairJudgement"),
    "mapo.judging.jury": ("Jury",),
    "mapo.judging.debate": ("Debate",),
    # generation and the dataset
    "mapo.generation.feedback": ("FeedbackLoop",),
    "mapo.generation.selection": ("SELECTORS",),
    "mapo.generation.dataset": ("rows_for", "save_datasets"),
    # metrics
    "mapo.metrics.agreement": ("cohen_kappa", "jury_pick", "jury_subsets", "position_bias"),
    # commands as functions
    "mapo.runs.build": ("build",),
    "mapo.runs.evaluate": ("evaluate",),
    "mapo.runs.winrate": ("winrate",),
}
"""module -> the names it defines that ``mapo`` re-exports (each loaded on first use by ``__getattr__``)."""

_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
