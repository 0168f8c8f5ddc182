"""The public API (issue 21 item 6): one list of names in mapo/__init__.py, each loaded on first use."""

from __future__ import annotations

import subprocess
import sys

import mapo
from tests.conftest import REPO


def test_every_public_name_resolves_to_the_object_its_module_defines():
    import importlib
    import importlib.util

    assert mapo.__all__ == sorted(mapo._MODULE_OF) and len(mapo.__all__) == len(set(mapo.__all__))
    for name in mapo.__all__:
        module = importlib.import_module(mapo._MODULE_OF[name])
        assert getattr(mapo, name) is getattr(module, name), name
    assert {"Evaluator", "PointwiseEvaluator", "EVALUATORS", "STRATEGIES", "from_config", "RunStatus"} <= set(
        mapo.__all__
    )
    assert set(mapo.__all__) <= set(dir(mapo))


def test_import_mapo_loads_no_heavy_module():
    code = (
        "import sys, mapo; heavy = ('torch', 'vllm', 'transformers', 'trl', 'openai', 'aiohttp', 'hydra', 'numpy');"
        "print([m for m in heavy if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


PACKAGES = (
    "mapo.core", "mapo.llm", "mapo.data", "mapo.metrics", "mapo.judging", "mapo.generation", "mapo.runs",
    "mapo.report", "mapo.report.sections", "mapo.view", "mapo.training", "mapo.serving", "mapo.cli",
)  # fmt: skip


def _package_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:3]) if parts[1:3] == ["report", "sections"] else ".".join(parts[:2])


def _imported_across_packages() -> dict[str, set[str]]:
    """package -> the names files of other packages import from its modules (``from mapo.P.m import x``)."""
    import ast

    out: dict[str, set[str]] = {p: set() for p in PACKAGES}
    for f in (REPO / "mapo").rglob("*.py"):
        here = ".".join(f.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("mapo.")):
                continue
            package = _package_of(node.module or "")
            if package in out and node.module != package and _package_of(here) != package:
                out[package] |= {a.name for a in node.names}
    return out


def test_each_subpackage_exports_what_other_packages_import_and_every_name_resolves():
    """Every subpackage's ``__all__`` lists the names other packages import from its modules (the import
    graph; a function named as its own module is left out, the submodule would shadow it), and each
    name resolves to its module's object."""
    import importlib
    import importlib.util

    imported = _imported_across_packages()
    for name in PACKAGES:
        package = importlib.import_module(name)
        exported = set(package.__all__)
        shadowed = {n for n in imported[name] if importlib.util.find_spec(f"{name}.{n}") is not None}
        assert imported[name] - shadowed <= exported, (name, sorted(imported[name] - shadowed - exported))
        for attr in package.__all__:
            value = getattr(package, attr)
            owner = getattr(package, "_EXPORTS", None)
            if owner is not None:
                module = next(m for m, names in owner.items() if attr in names)
                assert value is getattr(importlib.import_module(module), attr), (name, attr)


def test_importing_a_subpackage_loads_none_of_its_modules():
    code = (
        "import sys, mapo.judging, mapo.metrics, mapo.runs, mapo.report, mapo.llm, mapo.training;"
        "print(sorted(m for m in sys.modules if m.startswith(('mapo.judging.', 'mapo.metrics.', 'mapo.runs.',"
        " 'mapo.report.', 'mapo.llm.', 'mapo.training.'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
