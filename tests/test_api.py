"""The public API (issue 21 item 6): one list of names in mapo/__init__.py, each loaded on first use."""

from __future__ import annotations

import subprocess
import sys

import mapo
from tests.conftest import REPO


def test_every_public_name_resolves_to_the_object_its_module_defines():
    import importlib

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
