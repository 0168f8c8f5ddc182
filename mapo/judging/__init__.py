"""Evaluators (judge, jury, debate, cascade, reward model), their registry, the judge strategies and scoring."""

from mapo.core.exports import lazy_exports

_EXPORTS: dict[str, tuple[str, ...]] = {
    "mapo.judging.base": ("Evaluator", "Judgement", "Probe", "RecordContext", "ask", "asked_probe", "constraint_for"),
    "mapo.judging.debate": ("FinalScore", "aggregate_finals"),
    "mapo.judging.evaluators": ("evaluator_class", "from_config", "models_of", "selection_keys"),
    "mapo.judging.judge": ("STRATEGIES", "judge_setup"),
    "mapo.judging.jury": ("combine_jurors", "jury_incomplete", "warn_self_judging"),
    "mapo.judging.strategy": ("INDEPENDENT", "Strategy", "first_ok", "verdict_dict"),
}
"""module -> the names other packages import from it (each loaded on first use)."""

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
