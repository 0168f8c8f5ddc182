"""Human-labelled sets, prompt sources and importers of published judgements."""

from mapo.core.exports import lazy_exports

_EXPORTS: dict[str, tuple[str, ...]] = {
    "mapo.data.humans": (
        "HumanDataError",
        "HumanRow",
        "MAJORITY_RULE",
        "default_faireval_path",
        "human_labels_spec",
        "item_question",
        "load_items",
        "load_local",
        "majority_label",
        "read_human_labels",
        "read_objects",
    ),
    "mapo.data.importers": (
        "JudgmentsFormatError",
        "STRATEGIES",
        "author_evaluators",
        "load_author_judgments",
        "strategies_in",
    ),
    "mapo.data.sources": ("PromptItem", "SourceStats", "check_source", "iter_prompts", "validate_prompts"),
}
"""module -> the names other packages import from it (each loaded on first use)."""

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
