"""Lazy package exports: a package's public names, each loaded from its module on first use.

``mapo/__init__.py`` and each subpackage's ``__init__.py`` name their exports once (module -> names);
``__all__`` and the loader derive from that, so importing a package loads none of its modules
(``import mapo`` stays fast; ``tests/test_api.py`` checks every name resolves, and that every name another
package imports from a package's modules is among its exports)::

    __all__, __getattr__, __dir__ = lazy_exports(__name__, {"mapo.judging.base": ("Evaluator",)})
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, exports: Mapping[str, Sequence[str]]
) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """``(__all__, __getattr__, __dir__)`` for ``package``: ``exports`` maps a module to the names it defines
    that the package re-exports; a name is imported from its module when first asked for, then cached."""
    module_of = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        module = module_of.get(name)
        if module is None:  # a submodule not yet imported is found by the import system after this
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        vars(sys.modules[package])[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *module_of})

    return sorted(module_of), __getattr__, __dir__
