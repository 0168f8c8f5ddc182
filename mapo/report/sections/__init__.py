"""The sections of a run report: :mod:`.common` (every run), :mod:`.build`, :mod:`.evaluate`, :mod:`.winrate`.

Each function reads a :class:`mapo.report.run.Run` and returns :class:`mapo.report.document.Section`
values; nothing here renders text or writes files.
"""

from mapo.core.exports import lazy_exports

_EXPORTS: dict[str, tuple[str, ...]] = {
    "mapo.report.sections.build": ("build_sections",),
    "mapo.report.sections.evaluate": ("agreement", "agreement_overview", "evaluate_sections"),
    "mapo.report.sections.train": ("train_sections",),
    "mapo.report.sections.winrate": ("winrate_sections",),
}
"""module -> the names other packages import from it (each loaded on first use)."""

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
