"""The feedback loop, best-of-N selection and the DPO/KTO rows."""

from mapo.core.exports import lazy_exports

_EXPORTS: dict[str, tuple[str, ...]] = {
    "mapo.generation.dataset": ("RowCounts", "RowError", "item_rows", "length_summary", "save_datasets"),
    "mapo.generation.feedback": ("FEEDBACK_TEMPLATES", "FeedbackLoop", "Iteration"),
    "mapo.generation.selection": ("SELECTORS", "excluded", "losses"),
}
"""module -> the names other packages import from it (each loaded on first use)."""

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
