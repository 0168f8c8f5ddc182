"""Agreement (kappa, juries, bootstrap intervals), bias, the cascade curve, dataset quality, tables."""

from mapo.core.exports import lazy_exports

_EXPORTS: dict[str, tuple[str, ...]] = {
    "mapo.metrics.agreement": ("jury_pick",),
    "mapo.metrics.bias": ("UNKNOWN", "candidate_preference", "family_of", "length_bias", "lengths_from_rows"),
    "mapo.metrics.cascade": ("CascadeRule", "CheapVerdict"),
    "mapo.metrics.dataset_quality": ("dataset_quality_of_run", "quality_markdown"),
    "mapo.metrics.length_control": ("ASSUMPTIONS", "lc_note", "length_controlled_cells"),
    "mapo.metrics.recompute": ("authors_tables", "record_tables"),
    "mapo.metrics.tables": (
        "ANNOTATORS_KEY",
        "add_uncertainty",
        "agreement_tables",
        "build_tables",
        "combine_orders",
        "format_table",
        "jury_subset_block",
        "reference_choice_text",
    ),
    "mapo.metrics.uncertainty": (
        "Bootstrap",
        "CONFIDENCE",
        "MARGIN",
        "N_RESAMPLES",
        "SEED",
        "VERDICT_WORDS",
        "needed_text",
        "stats_options",
        "verdict_words",
        "winrate_comparisons",
        "winrate_intervals",
    ),
}
"""module -> the names other packages import from it (each loaded on first use)."""

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
