"""The run skeleton (runner.py) and the commands that call models (build, evaluate, winrate, train, reparse, merge)."""

from mapo.core.exports import lazy_exports

_EXPORTS: dict[str, tuple[str, ...]] = {
    "mapo.runs.runner": ("RunFailed", "RunInterrupted", "RunStopped"),
}
"""module -> the names other packages import from it (each loaded on first use)."""

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
