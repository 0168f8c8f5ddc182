"""Reports and leaderboards of run folders (read only, never a model)."""

from mapo.core.exports import lazy_exports

_EXPORTS: dict[str, tuple[str, ...]] = {
    "mapo.report.document": (  # its whole public API: document.py's __all__ is this entry (one list)
        "EXAMPLE_CHARS",
        "Block",
        "Code",
        "Document",
        "Example",
        "Fig",
        "ItemRef",
        "Section",
        "Table",
        "Text",
        "ci",
        "cut",
        "dur",
        "md_escape",
        "num",
        "pct",
        "render_html",
        "render_markdown",
    ),
    "mapo.report.evidence": (
        *("ItemsOnHub", "ItemsUnreadable", "bias_diagnostics", "earlier_turns", "eval_spec", "offline_items"),
    ),
    "mapo.report.run": ("Run", "find_sources", "load_run", "read_json"),
    "mapo.report.winrate": ("write_files",),
}
"""module -> the names other packages import from it (each loaded on first use)."""

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
